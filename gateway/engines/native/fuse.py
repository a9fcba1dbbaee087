"""Fused decode pieces: torch.compile the small elementwise regions of a decoder, not the whole model.

A graph-replayed decode step of a 28-layer model was ~800 kernels, most of them 1–3 µs
elementwise ones (RMSNorm's six, RoPE's ten, SiLU·mul). `fuse(model)` compiles those regions
with dynamic shapes (the kernels are captured in the runner's CUDA graphs like any other):
- every `*RMSNorm` module (the layer norms, the final norm) → one kernel (fp32 variance, weight ·
  normalised input),
- the fused attention's q/k head norms + RoPE (`projections.qk_rope`) → one kernel for q and k,
- the fused MLP's SiLU(gate) · up (`projections.act_mul`) → one kernel.
The sampler stays eager: compiled, its hash noise failed on an H100 (inductor indexes in int32
and the hash's 2654435761 constant does not fit; 2026-12-06).
The matrix products stay cuBLAS and attention stays the paged kernel. The engine compiles on CUDA
only (launch.py); inductor also builds these for the CPU (tests/engines/test_fuse.py).

Recompiles: dynamo specialises a size of 1 and the rank, so a norm fed decode [B, 1, H], prefill
[B, T, H] and the head norms [B, T, h, D] compiled 8 times, each a few seconds in the middle of
serving (40 s of a 98 s multiturn run on an H100 was prefill, most of it this; 2026-12-06). Every
compiled function takes rank-2 [tokens, features] inputs: 2 variants each (1 token or more). The
runner compiles every variant at start (`ModelRunner.warm_up`), and the recompile limit is raised
so several models in one process (the GPU self-check) never hit dynamo's hard failure.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from typing import Any

import torch

from gateway.engines.native import projections

log = logging.getLogger("forge.engine")


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
    """Compile `model`'s norms and its fused layers' q/k norm + RoPE and SiLU·mul (projections.py,
    applied first); returns what was compiled."""
    done: list[str] = []
    norm = _compile("rms_norm", projections.rms_norm)
    qk_rope = _compile("qk_rope", projections.qk_rope)
    qk_rope_store = _compile("qk_rope_store", projections.qk_rope_store)
    act_mul = _compile("act_mul", projections.act_mul)
    norms = attns = mlps = 0
    for mod in model.modules():
        if hasattr(mod, "forge_qk_rope"):
            mod.forge_qk_rope = qk_rope
            if mod.forge_qk_rope_store is not None:
                mod.forge_qk_rope_store = qk_rope_store
            attns += 1
        elif hasattr(mod, "forge_act_mul"):
            mod.forge_act_mul = act_mul
            mlps += 1
        elif type(mod).__name__.endswith("RMSNorm") and hasattr(mod, "weight"):
            eps = float(getattr(mod, "variance_epsilon", getattr(mod, "eps", 1e-6)))
            mod.forward = types.MethodType(
                lambda self, x, _e=eps: norm(x.reshape(-1, x.shape[-1]), self.weight, _e).view(x.shape), mod
            )
            norms += 1
    for count, what in ((norms, "RMSNorm"), (attns, "q/k norm + RoPE"), (mlps, "MLP silu*mul")):
        if count:
            done.append(f"{count} {what}")
    return done
