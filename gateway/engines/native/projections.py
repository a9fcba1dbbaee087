"""One matrix product for q/k/v and one for gate/up: fewer, larger GEMMs in every decoder layer.

A decode step at batch 64 is a few hundred small kernels, each a few µs, most of its time above
the memory-bandwidth floor (docs/BENCHMARKS.md). `fuse_projections(model)` halves the GEMMs of
a Llama/Qwen-style decoder layer (q, k, v, o, gate, up, down → qkv, o, gate_up, down):
- each attention module's q/k/v weights (and biases) are concatenated into one
  [q + k + v, hidden] weight, and the gated MLP's gate/up into one [2 · intermediate, hidden];
- the original parameters become views of the fused weight, so `state_dict()` keeps its names
  and shapes, no memory is doubled, and a weight update (`weights.apply` copies into
  `q_proj.weight` in place) writes the fused weight the forward reads;
- the attention forward: qkv GEMM → `qk_rope` (Qwen3's q/k RMSNorm, then RoPE, for q and k at
  once: one compiled kernel on CUDA, fuse.py) → the paged KV attention → o_proj. The MLP: gate_up
  GEMM → `act_mul` (SiLU(gate) · up, compiled on CUDA) → down.
The math is the transformers modules' own (fp32 RMSNorm, rotate-half RoPE in the model dtype), on
every device, so the CPU runs the same engine code path as the GPU.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm: fp32 mean of squares, weight · normalised input in the input dtype."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def qk_rope(
    qkv: torch.Tensor,  # [N, (Hq + 2·Hkv)·D]
    cos: torch.Tensor,  # [N, D]
    sin: torch.Tensor,  # [N, D]
    q_weight: torch.Tensor | None,  # [D] (Qwen3's q_norm) or None
    k_weight: torch.Tensor | None,
    eps: float,
    q_heads: int,
    kv_heads: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [N, Hq, D], k [N, Hkv, D]): the q and k columns of the fused projection, head-normed
    when the model has q/k norms, with RoPE applied."""
    n, d = qkv.shape[0], cos.shape[-1]
    q = qkv[:, : q_heads * d].view(n, q_heads, d)
    k = qkv[:, q_heads * d : (q_heads + kv_heads) * d].view(n, kv_heads, d)
    if q_weight is not None and k_weight is not None:
        q, k = rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps)
    c, s = cos[:, None, :], sin[:, None, :]
    return _rotate(q, c, s), _rotate(k, c, s)


def act_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def _cat(*tensors: torch.Tensor | None) -> torch.Tensor | None:
    if all(t is None for t in tensors):
        return None
    if any(t is None for t in tensors):
        raise ValueError("some projections have a bias and some do not")
    return torch.cat([t.detach() for t in tensors if t is not None], dim=0)


def _share(linears: list[torch.nn.Linear], name: str, fused: torch.Tensor) -> None:
    """Make each linear's `name` parameter a view of its rows of `fused` (same storage)."""
    row = 0
    for lin in linears:
        old = getattr(lin, name)
        rows = old.shape[0]
        setattr(lin, name, torch.nn.Parameter(fused[row : row + rows], requires_grad=old.requires_grad))
        row += rows


def _attention_forward(
    self: Any,
    hidden_states: torch.Tensor,  # [B, T, hidden]
    position_embeddings: tuple[torch.Tensor, torch.Tensor],  # cos, sin: [B, T, D]
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    batch, t = hidden_states.shape[:2]
    qkv = F.linear(hidden_states, self.forge_qkv_weight, self.forge_qkv_bias).view(batch * t, -1)
    cos, sin = position_embeddings
    d = cos.shape[-1]
    hq, hkv = self.forge_heads
    q, k = self.forge_qk_rope(
        qkv,
        cos.reshape(-1, d),
        sin.reshape(-1, d),
        self.forge_q_norm,
        self.forge_k_norm,
        self.forge_eps,
        hq,
        hkv,
    )
    v = qkv[:, (hq + hkv) * d :].view(batch, t, hkv, d)
    out = self.forge_kv.attend(
        self.layer_idx,
        q.view(batch, t, hq, d).transpose(1, 2),
        k.view(batch, t, hkv, d).transpose(1, 2),
        v.transpose(1, 2),
        self.scaling,
    )  # [B, T, Hq, D]
    return self.o_proj(out.reshape(batch, t, hq * d)), None


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    inter = self.forge_inter
    gate_up = F.linear(x, self.forge_gate_up_weight).view(-1, 2 * inter)
    h = self.forge_act_mul(gate_up[:, :inter], gate_up[:, inter:])
    return self.down_proj(h.view(*x.shape[:-1], inter))


def fuse_projections(model: torch.nn.Module) -> list[str]:
    """Fuse the q/k/v and gate/up projections of `model` (its attention already bound to a PagedKV,
    kv.bind); returns what was fused. Modules of another shape are left as they are."""
    cfg = model.config
    hq = int(cfg.num_attention_heads)
    hkv = int(getattr(cfg, "num_key_value_heads", None) or hq)
    attn_done = mlp_done = 0
    for mod in model.modules():
        if all(hasattr(mod, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "layer_idx", "forge_kv")):
            lins = [mod.q_proj, mod.k_proj, mod.v_proj]
            weight = _cat(*(lin.weight for lin in lins))
            assert weight is not None
            bias = _cat(*(lin.bias for lin in lins))
            _share(lins, "weight", weight)
            if bias is not None:
                _share(lins, "bias", bias)
            q_norm, k_norm = getattr(mod, "q_norm", None), getattr(mod, "k_norm", None)
            mod.forge_qkv_weight, mod.forge_qkv_bias = weight, bias
            mod.forge_heads = (hq, hkv)
            # detached: a Parameter attribute would register under a new state_dict name; the
            # detached tensor shares the norm weight's storage, so updates still show
            mod.forge_q_norm = q_norm.weight.detach() if q_norm is not None else None
            mod.forge_k_norm = k_norm.weight.detach() if k_norm is not None else None
            eps = (
                getattr(q_norm, "variance_epsilon", getattr(q_norm, "eps", 1e-6))
                if q_norm is not None
                else 0.0
            )
            mod.forge_eps = float(eps)
            mod.forge_qk_rope = qk_rope
            mod.forward = types.MethodType(_attention_forward, mod)
            attn_done += 1
        elif (
            getattr(cfg, "hidden_act", None) == "silu"
            and all(hasattr(mod, a) for a in ("gate_proj", "up_proj", "down_proj"))
            and mod.gate_proj.bias is None
            and mod.up_proj.bias is None
        ):
            lins = [mod.gate_proj, mod.up_proj]
            weight = _cat(*(lin.weight for lin in lins))
            assert weight is not None
            _share(lins, "weight", weight)
            mod.forge_gate_up_weight = weight
            mod.forge_inter = int(mod.gate_proj.weight.shape[0])
            mod.forge_act_mul = act_mul
            mod.forward = types.MethodType(_mlp_forward, mod)
            mlp_done += 1
    done = []
    if attn_done:
        done.append(f"{attn_done} qkv")
    if mlp_done:
        done.append(f"{mlp_done} gate_up")
    return done
