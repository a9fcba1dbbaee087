"""One policy-gradient pass over a list of micro-batches: plain torch, no DeepSpeed, no Ray.

`forward_backward` runs forward + loss + `backward(loss)` per micro-batch and returns the
summed loss and per-step diagnostics. fused_head=True takes the LM head, log-softmax and loss
together with their gradient in one pass (trainer.fused_head); the default is the checkpointed,
chunked head of trainer.logprobs. The DeepSpeed engine passes its own `backward`; tests and
benchmarks pass `Tensor.backward`. `reference` (a frozen model, algo.kl_coef > 0) gets one
no-grad pass per micro-batch over the same packed tree for the KL term's log π_ref.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from trainer.batch import MicroBatch
from trainer.config import AlgoConfig
from trainer.fused_head import fused_head_loss
from trainer.logprobs import completion_logprobs, completion_rows
from trainer.losses import LossOut, policy_loss


def forward_backward(
    model: torch.nn.Module,
    microbatches: Sequence[MicroBatch],
    algo: AlgoConfig,
    backend: str,
    backward: Callable[[torch.Tensor], None] | None = None,
    fp32_head: bool = False,
    chunk: int = 1024,
    compiled_head: bool = False,
    kernel_options: dict | None = None,
    fused_head: bool = False,
    reference: torch.nn.Module | None = None,
) -> dict[str, float]:
    backward = backward or (lambda loss: loss.backward())
    device = next(model.parameters()).device
    staged = [mb.to(device) for mb in microbatches]  # every copy made before the first kernel
    total = torch.zeros((), dtype=torch.float64, device=device)
    sums: dict[str, torch.Tensor] = {}
    maxes: dict[str, torch.Tensor] = {}
    mins: dict[str, torch.Tensor] = {}
    n_tok = tree_tokens = flat_tokens = 0
    for mb in staged:
        behaviour, adv, weight = mb.behaviour_logprobs, mb.advantages, mb.token_weights
        ref = None
        if reference is not None:
            with torch.no_grad():
                ref, _ = completion_logprobs(
                    reference, mb, backend, fp32_head, chunk, compiled_head, kernel_options
                )
        if fused_head:
            rows, targets = completion_rows(model, mb, backend, kernel_options)

            def chunk_loss(lp: torch.Tensor, sl: slice, b=behaviour, a=adv, w=weight, r=ref) -> LossOut:
                return policy_loss(algo, lp, b[sl], a[sl], w[sl], None if r is None else r[sl])

            out, logp, entropy = fused_head_loss(
                rows,
                model.get_output_embeddings().weight,
                targets,
                chunk_loss,
                chunk,
                fp32_head,
                compiled_head,
            )
        else:
            logp, entropy = completion_logprobs(
                model, mb, backend, fp32_head, chunk, compiled_head, kernel_options
            )
            out = policy_loss(algo, logp, behaviour, adv, weight, ref)
        backward(out.loss)
        total += out.loss.detach().double()
        stats = {**out.stats, "entropy": entropy, "logp": logp.detach()}
        for k, v in stats.items():
            v = v.detach().float()
            sums[k] = sums.get(k, 0) + v.sum()
            if k in ("ratio", "tis"):
                maxes[k] = torch.maximum(maxes[k], v.max()) if k in maxes else v.max()
                mins[k] = torch.minimum(mins[k], v.min()) if k in mins else v.min()
        n_tok += int(mb.targets.numel())
        tree_tokens += mb.packed.num_tokens
        flat_tokens += mb.flat_tokens
    n = max(n_tok, 1)
    # one device → host read for every statistic (each float() of a GPU tensor is a sync)
    names = ["loss", *(f"sum_{k}" for k in sums), *(f"max_{k}" for k in maxes), *(f"min_{k}" for k in mins)]
    read = torch.stack([total, *sums.values(), *maxes.values(), *mins.values()]).double().tolist()
    got = dict(zip(names, read, strict=True))
    metrics = {
        "loss": got["loss"],
        "clip_fraction": got.get("sum_clipped", 0.0) / n,
        "masked_fraction": got.get("sum_masked", 0.0) / n,
        "entropy": got.get("sum_entropy", 0.0) / n,
        "is_ratio_mean": got.get("sum_ratio", 0.0) / n,
        "is_ratio_max": got.get("max_ratio", 0.0),
        "is_ratio_min": got.get("min_ratio", 0.0),
        "trained_tokens": float(n_tok),
        "tree_tokens": float(tree_tokens),
        "flat_tokens": float(flat_tokens),
        "microbatches": float(len(microbatches)),
    }
    if "tis" in sums:
        metrics.update(tis_mean=got["sum_tis"] / n, tis_max=got["max_tis"])
    if "kl" in sums:
        metrics["kl"] = got["sum_kl"] / n
    return metrics
