"""Model FLOPs of a forward+backward over packed micro-batches (for MFU and speedup bounds).

6·N_body·T (decoder weights, T packed tokens) + 6·V·H·M (LM head on the M completion rows)
+ 12·L·heads·head_dim·P (attention, P = visible (query, key) pairs = Σ (position + 1), exact
for the tree mask). Activation-checkpoint recompute is not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

from trainer.batch import MicroBatch


def model_flops(config, n_body: int, mbs: Sequence[MicroBatch]) -> float:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    tokens = sum(mb.packed.num_tokens for mb in mbs)
    rows = sum(mb.targets.numel() for mb in mbs)
    pairs = sum(int((mb.packed.position_ids + 1).sum()) for mb in mbs)
    attn = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * pairs
    return 6 * n_body * tokens + 6 * config.vocab_size * config.hidden_size * rows + attn


def body_params(model) -> int:
    """Decoder parameters without the input embedding (the LM head is counted per row)."""
    cfg = model.config
    return sum(p.numel() for p in model.get_decoder().parameters()) - cfg.vocab_size * cfg.hidden_size
