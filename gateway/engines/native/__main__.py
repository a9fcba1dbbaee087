"""python -m gateway.engines.native --model PATH [--host 127.0.0.1] [--port 30000] [--device cpu|cuda] ..."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from gateway.engines.native.launch import EngineConfig, build_core, serve_core


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gateway.engines.native", description=__doc__)
    p.add_argument(
        "--model", "--model-path", dest="model", required=True, help="HF directory or forge model name"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-running-requests", type=int, default=64)
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--max-prefill-tokens", type=int, default=None)
    p.add_argument(
        "--kv-cache-gb", type=float, default=None, help="KV cache budget (default: 2 on CPU, half free GPU)"
    )
    p.add_argument("--page-size", type=int, default=16, help="token positions per KV page")
    p.add_argument("--disable-radix-cache", action="store_true", help="no prefix reuse (as SGLang's flag)")
    p.add_argument("--attention-backend", default="auto", choices=["auto", "triton", "sdpa"])
    p.add_argument("--disable-cuda-graph", action="store_true")
    p.add_argument("--disable-compile", action="store_true", help="no torch.compile of the decode regions")
    p.add_argument("--weight-version", default="0")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = EngineConfig(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        max_running_requests=args.max_running_requests,
        context_length=args.context_length,
        cuda_graph=not args.disable_cuda_graph,
        weight_version=args.weight_version,
        max_prefill_tokens=args.max_prefill_tokens,
        kv_cache_gb=args.kv_cache_gb,
        page_size=args.page_size,
        prefix_cache=not args.disable_radix_cache,
        attention=args.attention_backend,
        compile=not args.disable_compile,
        seed=args.seed,
    )
    core, info = build_core(cfg)
    handle = serve_core(core, info, args.host, args.port)
    print(f"forge engine serving {info['model_path']} at {handle.url}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):
        if not core.alive():
            print("engine scheduler died", file=sys.stderr, flush=True)
            break
    handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
