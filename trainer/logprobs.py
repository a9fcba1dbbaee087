"""Per-token log-probs of completion tokens from one packed forward pass.

The decoder runs once over the packed sequence; the LM head and log-softmax then run only on
the rows that predict a completion token (a branch's next-token logits come from its parent
token's row; several children may read one row), in chunks of `chunk` rows under activation
checkpointing, so at most [chunk × vocab] logits exist at any time, in forward and backward.
trainer.fused_head does the same with the loss's gradient taken in the forward pass (no recompute).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from trainer.attention import build_mask, pad_for
from trainer.batch import MicroBatch


def _chunk_logprobs(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, fp32: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [m, H], targets [m] → (log π(target) [m], entropy [m] (no grad)).

    The head is called as a module so ZeRO-3 gathers its (partitioned) weight; the fp32 path
    reads the weight directly and is therefore refused under ZeRO-3 (see Trainer).
    """
    if fp32:
        logits = torch.nn.functional.linear(hidden.float(), head.weight.float())  # [m, V]
    else:
        logits = head(hidden).float()  # [m, V]
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(1, targets.unsqueeze(1)).squeeze(1) - lse
    with torch.no_grad():
        probs = torch.softmax(logits, dim=-1)
        entropy = lse - (probs * logits).sum(-1)
    return logp, entropy


_compiled_chunk = None


def compiled_chunk_logprobs():
    """`_chunk_logprobs` under torch.compile: one fused pass for upcast, logsumexp, gather, entropy."""
    global _compiled_chunk
    if _compiled_chunk is None:
        _compiled_chunk = torch.compile(_chunk_logprobs, dynamic=True)
    return _compiled_chunk


def completion_rows(
    model: torch.nn.Module, mb: MicroBatch, backend: str, kernel_options: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden [M, H], targets [M]): the decoder's output row that predicts each completion token.

    kernel_options: FlexAttention kernel options (backend "flex" only)."""
    device = next(model.parameters()).device
    mb = mb.to(device)  # no-op once forward_backward has staged it
    packed = mb.packed
    pad = pad_for(backend, packed)
    ids, pos = packed.input_ids, packed.position_ids
    if pad:
        ids = torch.cat([ids, ids.new_zeros(pad)])
        pos = torch.cat([pos, pos.new_zeros(pad)])
    mask = build_mask(backend, packed, device, pad)
    decoder = model.get_decoder()
    hidden = decoder(
        input_ids=ids[None],
        position_ids=pos[None],
        attention_mask=mask,
        use_cache=False,
        **({"kernel_options": kernel_options} if kernel_options and backend == "flex" else {}),
    ).last_hidden_state[0]
    return hidden.index_select(0, mb.pred_rows), mb.targets


def completion_logprobs(
    model: torch.nn.Module,
    mb: MicroBatch,
    backend: str,
    fp32_head: bool = False,
    chunk: int = 1024,
    compiled_head: bool = False,
    kernel_options: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π [M], entropy [M]) for every completion token of the micro-batch."""
    rows, targets = completion_rows(model, mb, backend, kernel_options)
    head = model.get_output_embeddings()
    fn = compiled_chunk_logprobs() if compiled_head else _chunk_logprobs
    logps, ents = [], []
    for start in range(0, rows.shape[0], chunk):
        sl = slice(start, start + chunk)
        if torch.is_grad_enabled():
            lp, ent = checkpoint(fn, rows[sl], head, targets[sl], fp32_head, use_reentrant=False)
        else:
            lp, ent = fn(rows[sl], head, targets[sl], fp32_head)
        logps.append(lp)
        ents.append(ent)
    return torch.cat(logps), torch.cat(ents)
