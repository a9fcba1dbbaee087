"""Set-up of a trainer rank: device, attention backend and precision from the config, the node's
address and a free port, and the DeepSpeed configs (policy and frozen reference)."""

from __future__ import annotations

from typing import Any

import torch

from trainer.config import TrainerConfig


def resolve_device(cfg: TrainerConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device not in ("cpu", "cuda"):
        raise ValueError(f"trainer.device={cfg.device!r}: expected auto, cpu or cuda")
    return cfg.device


def resolve_backend(cfg: TrainerConfig, device: str) -> tuple[str, bool]:
    """(attention kernel, merge?) from trainer.backend."""
    kernel = "flex" if device == "cuda" else "sdpa_dense"
    if cfg.backend == "auto":
        return kernel, True
    if cfg.backend == "flat":
        return kernel, False
    if cfg.backend in ("sdpa_dense", "flex"):
        if cfg.backend == "flex" and device != "cuda":
            raise ValueError("trainer.backend='flex' needs CUDA (FlexAttention has no CPU backward)")
        return cfg.backend, True
    raise ValueError(f"trainer.backend={cfg.backend!r}: expected auto, sdpa_dense, flex or flat")


def resolve_precision(cfg: TrainerConfig, device: str) -> str:
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"trainer.precision={cfg.precision!r}: expected auto, fp32 or bf16")
    return precision


def node_ip() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return "127.0.0.1"


def deepspeed_config(
    cfg: TrainerConfig, precision: str, world_size: int, device: str = "cpu"
) -> dict[str, Any]:
    if cfg.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"trainer.zero_stage={cfg.zero_stage}: expected 0, 1, 2 or 3")
    if "stage" in cfg.zero_options:
        raise ValueError(
            "trainer.zero_options: set the stage with trainer.zero_stage, not zero_options.stage"
        )
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "gradient_clipping": cfg.grad_clip,
        "steps_per_print": 10**9,
        "zero_optimization": {**cfg.zero_options, "stage": cfg.zero_stage},
        "bf16": {"enabled": precision == "bf16", "check_grad_overflow": True},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.lr,
                "betas": [cfg.beta1, cfg.beta2],
                "eps": cfg.adam_eps,
                "weight_decay": cfg.weight_decay,
                "torch_adam": True,  # torch.optim.AdamW: no JIT-built op needed
                **({"fused": True} if device == "cuda" else {}),  # one fused kernel for the update
            },
        },
        "wall_clock_breakdown": False,
    }


def reference_config(precision: str, world_size: int) -> dict[str, Any]:
    """DeepSpeed for the frozen KL reference under ZeRO-3: partitioned weights, no optimizer."""
    return {
        "train_micro_batch_size_per_gpu": 1,
        "train_batch_size": world_size,
        "steps_per_print": 10**9,
        "zero_optimization": {"stage": 3},
        "bf16": {"enabled": precision == "bf16"},
    }
