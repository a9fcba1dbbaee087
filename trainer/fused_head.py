"""LM head + log-softmax + policy loss in one pass over the logits, gradient included.

The unfused path (trainer.logprobs) runs the head in chunks under activation checkpointing:
each [chunk × vocab] logits block is computed in the forward pass, dropped, and computed again
in the backward pass, so the head's matrix product runs four times per chunk (forward, recompute,
two gradient products) and its softmax reductions twice.

Every policy loss in trainer.losses is a sum of per-token terms, loss = Σ_t f_t(log π_t), so each
token's d loss / d log π_t is known as soon as its log-prob is. Here the forward pass computes,
per chunk: the logits, their log-softmax, the chunk's loss, g_t = d loss / d log π_t (autograd on
the chunk's [m] log-probs alone), and then the gradient of the logits, g_t·(onehot(y_t) − softmax_t),
through the two gradient products into d loss / d hidden [M, H] and d loss / d W [V, H]. The
logits block is then dropped for good; the backward pass only scales the stored gradients by the
upstream gradient of the scalar loss. Three matrix products per chunk instead of four, one
softmax pass instead of two, and no [chunk × vocab] tensor outlives its chunk.

Requires the head weight in full on this rank (ZeRO 0–2; ZeRO-3 partitions it, and the trainer
falls back to the unfused path there).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from trainer.losses import LossOut

ChunkLoss = Callable[[torch.Tensor, slice], LossOut]  # (log π [m] of rows sl, sl) → that chunk's loss


# Two forms of the same arithmetic. Under torch.compile the logits are re-read for the gradient:
# inductor fuses each function into one pass over the bf16 logits and never writes an fp32
# [m, V] tensor. In eager mode every op is its own pass, so the softmax is kept from the first
# function and overwritten in place by the second. (H200: the compiled form took the trainer
# bench's forward+backward to 132-133 ms; compiling the eager form instead gave 167 ms.)


def _stats_from_logits(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compiled form: logits [m, V] → (log π(target) [m], entropy [m], logsumexp [m]), fp32."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(1, targets.unsqueeze(1)).squeeze(1) - lse
    probs = torch.exp(logits - lse.unsqueeze(1))
    entropy = lse - (probs * logits).sum(-1)
    return logp, entropy, lse


def _grad_from_logits(
    logits: torch.Tensor, lse: torch.Tensor, g: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Compiled form: d loss / d logits [m, V] = g_t · (onehot(y_t) − softmax_t), in `dtype`."""
    probs = torch.exp(logits.float() - lse.unsqueeze(1))
    onehot = torch.arange(logits.shape[1], device=logits.device).unsqueeze(0) == targets.unsqueeze(1)
    return (g.unsqueeze(1) * (onehot.float() - probs)).to(dtype)


def _softmax_pass(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eager form: logits [m, V] → (log π(target) [m], entropy [m], softmax [m, V]), fp32.

    One upcast, the logsumexp, one exp, and the entropy's Σ p·x as p·x written over x (the logits
    are not read again) and one sum: a batched dot product (einsum) ran as a slow gemv, 79 ms
    against 50 ms for [1024 × 49152] on the 2-core CPU."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    probs = (x - lse.unsqueeze(1)).exp_()
    logp = x.gather(1, targets.unsqueeze(1)).squeeze(1) - lse
    entropy = lse - x.mul_(probs).sum(-1)
    return logp, entropy, probs


def _grad_pass(
    probs: torch.Tensor, g: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Eager form: d loss / d logits [m, V] in `dtype`, overwriting the softmax `probs`."""
    grad = probs.mul_(-g.unsqueeze(1))
    grad.scatter_add_(1, targets.unsqueeze(1), g.unsqueeze(1))
    return grad.to(dtype)


_compiled: dict[str, Callable] = {}


def _compiled_kernels() -> tuple[Callable, Callable]:
    if not _compiled:
        _compiled["stats"] = torch.compile(_stats_from_logits, dynamic=True)
        _compiled["grad"] = torch.compile(_grad_from_logits, dynamic=True)
    return _compiled["stats"], _compiled["grad"]


def _logits_to_grad(logits, targets, loss_fn, sl, dtype, compiled):
    """One chunk: (logits [m, V] → d loss / d logits [m, V] in dtype, log π [m], entropy [m], LossOut)."""
    if compiled:
        stats_fn, grad_fn = _compiled_kernels()
        logp, entropy, lse = stats_fn(logits, targets)
    else:
        logp, entropy, probs = _softmax_pass(logits, targets)
        del logits
    with torch.enable_grad():
        leaf = logp.detach().requires_grad_()
        out = loss_fn(leaf, sl)
        (g,) = torch.autograd.grad(out.loss, leaf)
    grad = grad_fn(logits, lse, g, targets, dtype) if compiled else _grad_pass(probs, g, targets, dtype)
    return grad, logp, entropy, out


class _FusedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, weight, targets, loss_fn, chunk, fp32, compiled, side):
        w = weight.float() if fp32 else weight
        grad_rows = torch.empty_like(rows)
        grad_w = torch.zeros(weight.shape, dtype=w.dtype, device=weight.device)
        loss = torch.zeros((), dtype=torch.float32, device=rows.device)
        logps, ents, stats = [], [], []
        for start in range(0, rows.shape[0], chunk):
            sl = slice(start, start + chunk)
            h = rows[sl].to(w.dtype)  # [m, H]
            dlogits, logp, entropy, out = _logits_to_grad(
                h @ w.T, targets[sl], loss_fn, sl, w.dtype, compiled
            )
            grad_rows[sl] = (dlogits @ w).to(rows.dtype)
            grad_w.addmm_(dlogits.T, h)
            loss += out.loss.detach().float()
            logps.append(logp)
            ents.append(entropy)
            stats.append(out.stats)
        side["logp"], side["entropy"] = torch.cat(logps), torch.cat(ents)
        side["stats"] = {k: torch.cat([s[k] for s in stats]) for k in stats[0]} if stats else {}
        ctx.save_for_backward(grad_rows, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_rows, grad_w = ctx.saved_tensors
        return (
            grad_rows * grad_loss.to(grad_rows.dtype),
            (grad_w * grad_loss.to(grad_w.dtype)).to(ctx.weight_dtype),
            None, None, None, None, None, None,
        )  # fmt: skip


def fused_head_loss(
    rows: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: ChunkLoss,
    chunk: int = 1024,
    fp32: bool = False,
    compiled: bool = False,
) -> tuple[LossOut, torch.Tensor, torch.Tensor]:
    """rows [M, H] (the hidden states that predict each completion token), weight [V, H],
    targets [M] → (loss with its per-token stats, log π [M] (detached), entropy [M]).

    loss_fn(log π of rows sl, sl) must return the loss of those tokens alone; the total loss is
    the sum over chunks (true of every loss in trainer.losses: each is Σ_t w_t · term_t)."""
    if rows.shape[0] == 0:
        raise ValueError("fused_head_loss: no completion rows")
    side: dict = {}
    loss = _FusedHeadLoss.apply(rows, weight, targets, loss_fn, chunk, fp32, compiled, side)
    return LossOut(loss, side["stats"]), side["logp"], side["entropy"]
