"""Fused decode pieces: torch.compile the small elementwise regions of a decoder, not the whole model.

A graph-replayed decode step of a 28-layer model was ~800 kernels, most of them 1–3 µs
elementwise ones (RMSNorm's six, RoPE's ten, SiLU·mul). `fuse(model)` compiles those regions
with dynamic shapes (the kernels are captured in the runner's CUDA graphs like any other):
- every `*RMSNorm` module → one kernel (same math: fp32 variance, weight · normalised input),
- the gated MLP's `act(gate) · up` → one kernel (SiLU models only),
- the attention module's `apply_rotary_pos_emb` → one kernel for q and k.
The sampler stays eager: compiled, its hash noise failed on an H100 (inductor indexes in int32
and the hash's 2654435761 constant does not fit; 2026-12-06).
The matrix products stay cuBLAS and attention stays the paged kernel. CUDA only.

Recompiles: dynamo specialises a size of 1 and the rank, so a norm fed decode [B, 1, H], prefill
[B, T, H] and the head norms [B, T, h, D] compiled 8 times, each a few seconds in the middle of
serving (40 s of a 98 s multiturn run on an H100 was prefill, most of it this; 2026-12-06). The norm
and the MLP product take a rank-2 view ([tokens, features]): 2 variants each (1 token or more).
RoPE keeps its model-defined shapes (4 variants). The runner compiles every variant at start
(`ModelRunner.warm_up`), and the recompile limit is raised so several models in one process (the
GPU self-check) never hit dynamo's hard failure.
"""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger("forge.engine")


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def _rows(fn: Callable[..., torch.Tensor], gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """fn over [tokens, features] views of gate and up, reshaped back: one rank for every caller."""
    return fn(gate.reshape(-1, gate.shape[-1]), up.reshape(-1, up.shape[-1])).view(gate.shape)


_compiled: dict[str, Callable[..., Any]] = {}


def _compile(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    config = torch._dynamo.config
    for key in ("recompile_limit", "cache_size_limit"):  # the new name and the old one
        if hasattr(config, key):
            setattr(config, key, max(getattr(config, key), 64))
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _compiled[name]


def fuse(model: torch.nn.Module) -> list[str]:
    """Patch `model`'s norms, MLP activation and RoPE with compiled versions; returns what was fused."""
    done: list[str] = []
    norm = _compile("rms_norm", _rms_norm)
    act = getattr(model.config, "hidden_act", None)
    silu_mul = _compile("silu_mul", _silu_mul)
    norms = mlps = 0
    for mod in model.modules():
        name = type(mod).__name__
        if name.endswith("RMSNorm") and hasattr(mod, "weight"):
            eps = float(getattr(mod, "variance_epsilon", getattr(mod, "eps", 1e-6)))
            mod.forward = types.MethodType(
                lambda self, x, _e=eps: norm(x.reshape(-1, x.shape[-1]), self.weight, _e).view(x.shape), mod
            )
            norms += 1
        elif act == "silu" and all(hasattr(mod, a) for a in ("gate_proj", "up_proj", "down_proj")):
            mod.forward = types.MethodType(
                lambda self, x: self.down_proj(_rows(silu_mul, self.gate_proj(x), self.up_proj(x))), mod
            )
            mlps += 1
    if norms:
        done.append(f"{norms} RMSNorm")
    if mlps:
        done.append(f"{mlps} MLP silu*mul")
    attn = next((m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "k_proj")), None)
    module = sys.modules.get(type(attn).__module__) if attn is not None else None
    rope = getattr(module, "apply_rotary_pos_emb", None)
    if rope is not None and not getattr(rope, "_forge_fused", False):
        fused = _compile(f"rope:{module.__name__}", rope)
        fused._forge_fused = True  # type: ignore[attr-defined]
        module.apply_rotary_pos_emb = fused
        done.append("RoPE")
    return done
