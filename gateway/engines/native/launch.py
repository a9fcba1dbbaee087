"""Building and starting the built-in engine: load a model, make the core, serve HTTP.

handle = start_engine_in_thread("tiny", device="cpu")    # in-process, for tests / Ray actors
handle.url  → "http://127.0.0.1:PORT";  handle.stop()

python -m gateway.engines.native --model PATH --host 127.0.0.1 --port 30000 [--device cuda]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gateway.engines.native.core import EngineCore

log = logging.getLogger("forge.engine")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EngineConfig:
    model: str  # a local HF directory, or a forge.ground.models name (tiny, smollm2_135m, qwen3_0p6b_random)
    device: str = "cpu"
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    max_running_requests: int = 64
    context_length: int | None = None  # default: min(model's max positions, 4096)
    cuda_graph: bool = True
    weight_version: str = "0"
    max_prefill_tokens: int | None = None
    kv_cache_gb: float | None = None  # default: 2 GiB on CPU, half the free GPU memory on CUDA
    page_size: int = 16  # token positions per KV page
    prefix_cache: bool = True  # reuse cached prompt prefixes across requests (flushed on weight updates)
    attention: str = "auto"  # decode attention: triton (CUDA), sdpa (any device), auto: triton on CUDA
    compile: bool = True  # CUDA: torch.compile the norms, q/k norm + RoPE and MLP activation (fuse.py)
    seed: int = 0
    pad_to_buckets: bool | None = None  # None: as CUDA graphs; True on CPU runs graph shapes eagerly
    prefill_batch: int = 16  # while others decode, admit new requests in groups of this many...
    prefill_delay_steps: int = 12  # ...or once the oldest has waited this many decode steps

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}")
        return DTYPES[self.dtype]


def load_model(name: str, device: str, dtype: torch.dtype, seed: int = 0) -> tuple[Any, Any, str]:
    """(model, tokenizer or None, resolved path) for a directory or a forge.ground.models name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forge.ground.models import build_model, resolve_model

    if name == "qwen3_0p6b_random":
        return build_model(name, dtype=dtype, device=device, seed=seed).eval(), None, name
    path = resolve_model(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    tokenizer = None
    if any((Path(path) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer, str(path)


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """The ids that end generation by default, as `model.generate` sees them."""
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for src in (getattr(gen, "eos_token_id", None), getattr(model.config, "eos_token_id", None)):
        if src is None:
            continue
        ids.update([src] if isinstance(src, int) else list(src))
        break
    if not ids and tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def build_core(
    cfg: EngineConfig, model: Any = None, tokenizer: Any = None
) -> tuple[EngineCore, dict[str, Any]]:
    """An EngineCore (not started) and the model-info dict; pass `model` to reuse one in memory."""
    torch.manual_seed(cfg.seed)
    path = cfg.model
    if model is None:
        model, tokenizer, path = load_model(cfg.model, cfg.device, cfg.torch_dtype(), cfg.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    max_pos = int(getattr(model.config, "max_position_embeddings", 4096) or 4096)
    context = cfg.context_length or min(max_pos, 4096)
    device = next(model.parameters()).device
    on_cuda = device.type == "cuda"
    num_pages = fit_pages(model, cfg.max_running_requests, context, cfg.page_size, kv_budget(cfg, device))
    core = EngineCore(
        model,
        tokenizer,
        max_running=cfg.max_running_requests,
        context_length=context,
        use_cuda_graph=cfg.cuda_graph,
        eos_token_ids=eos_ids(model, tokenizer),
        weight_version=cfg.weight_version,
        max_prefill_tokens=cfg.max_prefill_tokens or (16384 if on_cuda else 2048),
        pad_to_buckets=cfg.pad_to_buckets,
        prefill_batch=cfg.prefill_batch,
        prefill_delay_steps=cfg.prefill_delay_steps,
        num_pages=num_pages,
        page_size=cfg.page_size,
        prefix_cache=cfg.prefix_cache,
        attention=cfg.attention,
        compile=cfg.compile and on_cuda,  # inductor's CPU build costs more than it saves here
    )
    info = {
        "model_path": path,
        "tokenizer_path": path if tokenizer is not None else None,
        "served_model_name": path,
        "model_type": getattr(model.config, "model_type", None),
        "architectures": getattr(model.config, "architectures", None),
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "engine": "forge-native",
    }
    return core, info


def kv_bytes_per_token(model: Any) -> int:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    itemsize = next(model.parameters()).element_size()
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * itemsize


def kv_budget(cfg: EngineConfig, device: torch.device) -> int:
    if cfg.kv_cache_gb is not None:
        return int(cfg.kv_cache_gb * (1 << 30))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return 2 << 30


def fit_pages(model: Any, max_running: int, context: int, page_size: int, budget: int) -> int:
    """Pages of the KV pool (scratch page included): as many as `budget` bytes hold, but no more
    than every running request at full context needs; at least one full-context sequence."""
    if page_size < 1 or page_size & (page_size - 1):
        raise ValueError(f"page_size={page_size}: must be a power of two")
    per_page = kv_bytes_per_token(model) * page_size
    max_pages = -(-context // page_size)
    pages = min(budget // per_page, max_running * max_pages + 1)
    if pages - 1 < max_pages:
        raise ValueError(
            f"one sequence of {context} tokens needs {max_pages * per_page / 2**30:.2f} GiB of KV cache, "
            f"over the {budget / 2**30:.2f} GiB budget: lower --context-length or raise --kv-cache-gb"
        )
    return int(pages)


@dataclass
class EngineHandle:
    """A running engine: its URL, its core, and how to stop it."""

    url: str
    core: EngineCore
    _served: Any  # gateway.serving.ServedApp

    def stop(self) -> None:
        # the core first: requests still running are answered (503, "engine stopped") while the
        # server's loop can still deliver the replies; then the server
        self.core.stop()
        self._served.stop()

    def __enter__(self) -> EngineHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_core(
    core: EngineCore, info: dict[str, Any], host: str = "127.0.0.1", port: int = 0
) -> EngineHandle:
    """Start `core` and an HTTP server for it on a thread of its own; returns once it listens."""
    from gateway.engines.native.server import build_app
    from gateway.serving import serve_in_thread

    core.start()
    try:
        served = serve_in_thread(lambda: build_app(core, info), host, port, name="forge-engine-http")
    except BaseException:
        core.stop()
        raise
    return EngineHandle(url=f"http://{host}:{served.port}", core=core, _served=served)


def start_engine_in_thread(
    model: str | Any = "tiny",
    host: str = "127.0.0.1",
    port: int = 0,
    tokenizer: Any = None,
    **config: Any,
) -> EngineHandle:
    """Load (or take) a model and serve it in-process. `model`: a name/path, or a model object.
    Keyword arguments are EngineConfig fields (device, dtype, max_running_requests, ...)."""
    if isinstance(model, str):
        core, info = build_core(EngineConfig(model=model, **config))
    else:
        device = str(next(model.parameters()).device)
        core, info = build_core(EngineConfig(model="<in-memory>", device=device, **config), model, tokenizer)
    return serve_core(core, info, host, port)
