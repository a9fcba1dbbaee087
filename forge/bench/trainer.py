"""`forge bench trainer`: tokens/s and MFU of full DeepSpeed train steps (fwd + bwd + optimizer).

The batch holds --samples samples of --prompt + --completion tokens (no shared prefixes by
default, so computed tokens = flat tokens and MFU is the usual one). Model FLOPs per step are
counted by trainer.flops (recompute not counted: model FLOPs, not hardware FLOPs).
MFU divides by the device's dense bf16 peak: 989 TFLOP/s for H100/H200 SXM, or --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from trainer.config import AlgoConfig, TrainerConfig
from trainer.flops import body_params, model_flops

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="forge bench trainer", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default=None, help="default: tiny (cpu), qwen3_0p6b_random (cuda)")
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--samples", type=int, default=None, help="default 8 (cpu), 32 (cuda)")
    p.add_argument("--prompt", type=int, default=None, help="prompt tokens; default 64 (cpu), 256 (cuda)")
    p.add_argument("--completion", type=int, default=None, help="completion tokens; default 64 / 256")
    p.add_argument("--group-size", type=int, default=1, help=">1: samples of a group share their prompt")
    p.add_argument("--budget", type=int, default=16384, help="micro-batch tokens")
    p.add_argument("--no-checkpointing", action="store_true")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="trainer.compile_layers: torch.compile each decoder layer (CUDA with ZeRO 0-2; default on)",
    )
    p.add_argument(
        "--compile-mode", default="default", help="trainer.compile_mode: default | max-autotune-no-cudagraphs"
    )
    p.add_argument("--checkpointed-head", action="store_true", help="trainer.fused_lm_head=false")
    p.add_argument("--eager-head", action="store_true", help="trainer.compile_lm_head=false")
    p.add_argument(
        "--flex-options",
        type=json.loads,
        default={},
        help='trainer.flex_kernel_options as JSON, e.g. {"bwd_num_warps": 8}',
    )
    p.add_argument(
        "--zero-options",
        type=json.loads,
        default={},
        help='trainer.zero_options as JSON, e.g. {"overlap_comm": true}',
    )
    p.add_argument("--chunk", type=int, default=1024, help="trainer.logprob_chunk: LM-head rows per chunk")
    p.add_argument("--backend", default="auto")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    samples = args.samples or (32 if cuda else 8)
    prompt = args.prompt or (256 if cuda else 64)
    completion = args.completion or (256 if cuda else 64)

    from forge.ground.models import build_model
    from forge.ground.types import Episode, Sample, Task
    from trainer.advantages import group_relative
    from trainer.batch import build_samples, make_microbatches
    from trainer.engine import Trainer

    cfg = TrainerConfig(
        model=args.model or ("qwen3_0p6b_random" if cuda else "tiny"),
        device=args.device,
        zero_stage=args.zero_stage,
        micro_batch_tokens=args.budget,
        gradient_checkpointing=not args.no_checkpointing,
        compile_layers=args.compile,
        compile_mode=args.compile_mode,
        fused_lm_head=not args.checkpointed_head,
        compile_lm_head=not args.eager_head,
        flex_kernel_options=args.flex_options,
        zero_options=args.zero_options,
        logprob_chunk=args.chunk,
        backend=args.backend,
        lr=1e-6,
    )
    model = build_model(cfg.model, dtype=torch.float32, device="cpu")
    trainer = Trainer(cfg, AlgoConfig(), model=model)
    rng = np.random.default_rng(0)
    vocab = trainer.model.config.vocab_size
    episodes = []
    for i in range(samples):
        g = i // args.group_size
        prompt_ids = np.random.default_rng(g).integers(0, vocab, prompt).tolist()
        out = rng.integers(0, vocab, completion).tolist()
        task = Task(f"t{i}", "bench", group_id=f"g{g}", group_size=args.group_size)
        episodes.append(
            Episode(task, [Sample(task.id, "s", 0, prompt_ids, out, [-12.0] * completion)], float(i % 2))
        )
    mbs = make_microbatches(
        build_samples(episodes, group_relative(episodes), "token")[0], args.budget, trainer.merge
    )
    flops = model_flops(trainer.model.config, body_params(trainer.model), mbs)
    peak = peak_flops(args.device, args.peak_tflops)
    for _ in range(args.warmup):
        trainer.train_step(episodes)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        m = trainer.train_step(episodes)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times))
    row = {
        "model": cfg.model,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "zero_stage": cfg.zero_stage,
        "precision": trainer.precision,
        "checkpointing": cfg.gradient_checkpointing,
        "compile": trainer.compiled_layers,
        "compile_mode": cfg.compile_mode,
        "fused_lm_head": cfg.fused_lm_head,
        "compile_lm_head": cfg.compile_lm_head,
        "flex_kernel_options": cfg.flex_kernel_options,
        "zero_options": cfg.zero_options,
        "logprob_chunk": cfg.logprob_chunk,
        "tokens_per_step": int(m["tree_tokens"]),
        "step_s": round(step_s, 4),
        "tokens_per_s": round(m["tree_tokens"] / step_s, 1),
        "tflops": round(flops / step_s / 1e12, 2),
        "mfu": None if peak is None else round(flops / step_s / peak, 4),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "fwd_bwd_s": round(m["time_forward_backward_s"], 4),
        "optimizer_s": round(m["time_optimizer_s"], 4),
        "prepare_s": round(m["time_prepare_s"], 4),
    }
    print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return 0
