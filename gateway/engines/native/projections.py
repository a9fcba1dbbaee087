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
Two more fusions, each one kernel fewer per layer and step (a graph-replayed decode step at batch
128 spent ~14 µs per layer in small kernels and ~1 µs between kernels; docs/BENCHMARKS.md):
- `qk_rope_store`: the new keys (normed, rotated) and values are written to the layer's KV pages
  inside the q/k-norm + RoPE region, instead of two `index_copy_` kernels in `PagedKV.attend`;
- the decoder layer's two residual adds go into the o_proj and down GEMMs (`addmm_`: the residual
  stream x ← x + h·Wᵀ in place, one cuBLAS call with beta = 1), for Llama/Qwen-shaped layers
  (input norm, attention, post-attention norm, MLP; no o/down bias). The sum is rounded once
  instead of twice (the GEMM's fp32 accumulator takes the residual).
`DISABLED` names fusions to leave out ("kv_write", "residual"): A/B benchmarks only.
The math is the transformers modules' own (fp32 RMSNorm, rotate-half RoPE in the model dtype), on
every device, so the CPU runs the same engine code path as the GPU.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

DISABLED: set[str] = set()  # fusions left out by fuse_projections: "kv_write", "residual" (A/B only)


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


def qk_rope_store(
    qkv: torch.Tensor,  # [N, (Hq + 2·Hkv)·D]
    cos: torch.Tensor,  # [N, D]
    sin: torch.Tensor,  # [N, D]
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    eps: float,
    q_heads: int,
    kv_heads: int,
    k_cache: torch.Tensor,  # [slots, Hkv, D]
    v_cache: torch.Tensor,  # [slots, Hkv, D]
    slots: torch.Tensor,  # [N] int64: where each token's key/value goes
) -> torch.Tensor:
    """`qk_rope`'s q [N, Hq, D]; its k and the v columns written to the caches at `slots`."""
    q, k = qk_rope(qkv, cos, sin, q_weight, k_weight, eps, q_heads, kv_heads)
    d = cos.shape[-1]
    k_cache.index_copy_(0, slots, k)
    v_cache.index_copy_(0, slots, qkv[:, (q_heads + kv_heads) * d :].view(-1, kv_heads, d))
    return q


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


def _attention_core(
    self: Any,
    hidden_states: torch.Tensor,  # [B, T, hidden]
    position_embeddings: tuple[torch.Tensor, torch.Tensor],  # cos, sin: [B, T, D]
) -> torch.Tensor:
    """The attention up to o_proj: [B·T, Hq·D]."""
    batch, t = hidden_states.shape[:2]
    qkv = F.linear(hidden_states, self.forge_qkv_weight, self.forge_qkv_bias).view(batch * t, -1)
    cos, sin = position_embeddings
    d = cos.shape[-1]
    hq, hkv = self.forge_heads
    kv, layer = self.forge_kv, self.layer_idx
    norms = (self.forge_q_norm, self.forge_k_norm, self.forge_eps, hq, hkv)
    if self.forge_qk_rope_store is not None:  # keys/values written inside the RoPE region
        slots = kv.plan.write_slots
        q = self.forge_qk_rope_store(qkv, cos.reshape(-1, d), sin.reshape(-1, d), *norms, kv.k[layer],
                                     kv.v[layer], slots)  # fmt: skip
        out = kv.attend(layer, q.view(batch, t, hq, d).transpose(1, 2), None, None, self.scaling)
    else:
        q, k = self.forge_qk_rope(qkv, cos.reshape(-1, d), sin.reshape(-1, d), *norms)
        v = qkv[:, (hq + hkv) * d :].view(batch, t, hkv, d)
        out = kv.attend(
            layer,
            q.view(batch, t, hq, d).transpose(1, 2),
            k.view(batch, t, hkv, d).transpose(1, 2),
            v.transpose(1, 2),
            self.scaling,
        )  # [B, T, Hq, D]
    return out.reshape(batch * t, hq * d)


def _attention_forward(
    self: Any,
    hidden_states: torch.Tensor,  # [B, T, hidden]
    position_embeddings: tuple[torch.Tensor, torch.Tensor],  # cos, sin: [B, T, D]
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    out = _attention_core(self, hidden_states, position_embeddings)
    return self.o_proj(out.view(*hidden_states.shape[:2], -1)), None


def _mlp_act(self: Any, x: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) · up of the fused gate/up GEMM: [N, intermediate]."""
    inter = self.forge_inter
    gate_up = F.linear(x, self.forge_gate_up_weight).view(-1, 2 * inter)
    return self.forge_act_mul(gate_up[:, :inter], gate_up[:, inter:])


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(_mlp_act(self, x).view(*x.shape[:-1], self.forge_inter))


def _layer_forward(
    self: Any,
    hidden_states: torch.Tensor,  # [B, T, hidden]
    attention_mask: torch.Tensor | None = None,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """A Llama/Qwen decoder layer with each residual add inside its GEMM: x ← x + attn·W_oᵀ, then
    x ← x + act·W_downᵀ, in place on the residual stream (inference only: no autograd)."""
    assert position_embeddings is not None, "the fused layer needs the model's position embeddings"
    shape = hidden_states.shape
    x = hidden_states.reshape(-1, shape[-1])
    attn, mlp = self.self_attn, self.mlp
    h = self.input_layernorm(x).view(shape)
    x.addmm_(_attention_core(attn, h, position_embeddings), attn.o_proj.weight.t())
    x.addmm_(_mlp_act(mlp, self.post_attention_layernorm(x)), mlp.down_proj.weight.t())
    return x.view(shape)


def _plain_layer(layer: torch.nn.Module) -> bool:
    """A pre-norm decoder layer of exactly input norm → attention → post-attention norm → MLP,
    both fused, with no o_proj / down_proj bias: the shape `_layer_forward` computes."""
    names = {name for name, _ in layer.named_children()}
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    return (
        names == {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
        and hasattr(attn, "forge_qkv_weight")
        and hasattr(mlp, "forge_gate_up_weight")
        and attn.o_proj.bias is None  # type: ignore[union-attr]
        and mlp.down_proj.bias is None  # type: ignore[union-attr]
    )


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
            mod.forge_qk_rope_store = None if "kv_write" in DISABLED else qk_rope_store
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
    layers_done = 0
    if "residual" not in DISABLED:
        for mod in model.modules():
            if _plain_layer(mod):
                mod.forward = types.MethodType(_layer_forward, mod)
                layers_done += 1
    done = []
    if attn_done:
        done.append(f"{attn_done} qkv")
        if "kv_write" not in DISABLED:
            done.append(f"{attn_done} KV write in RoPE")
    if mlp_done:
        done.append(f"{mlp_done} gate_up")
    if layers_done:
        done.append(f"{layers_done} residual in GEMM")
    return done
