"""On-device sampling for a batch of rows with per-row parameters, and the sampled tokens' log-probs.

Order (as SGLang's sampler): logits / temperature → softmax → top-k, top-p, min-p filtering →
draw. temperature 0 (or below 1e-5) is greedy (argmax of the raw logits).

The draw is by inverse CDF with one uniform per row, a counter-based hash of (seed, position):
token = the first index whose running sum of exp(scaled − max) reaches u · total. A seeded request
draws the same tokens whatever else is in the batch, with no per-row generator object and no host
round trip; unseeded requests get a random seed at admission. A handful of passes over [B, V]
(max, exp, cumsum, compare), where the earlier Gumbel-max hashed every (row, token): the step's
sampling part at batch 128 × 151936 vocab went 2.85 → 1.49 ms on an H100 (read-back included;
`scripts/device/profile_engine.py`, 07b5530 → c5a77bc, 2026-12-06). A token the filters removed has zero weight and is never
drawn (the pick is the first token *with weight* whose running sum reaches u · total).

Log-prob returned: log_softmax of the model's raw logits (fp32) at the sampled token, i.e. the
model's own distribution at temperature 1 before any filtering, whatever temperature / top-p /
top-k / min-p were used to draw. This is what a trainer recomputes from a forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_M32 = 0xFFFFFFFF
_GREEDY_EPS = 1e-5


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply) on int64 tensors holding values < 2**32."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def row_uniform(seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[B] float32 uniforms in (0, 1), a pure function of (seed, position) per row."""
    return uniform_open(_mix32((seeds & _M32) ^ _mix32((positions * 0x27D4EB2D) & _M32)))


def draw(scaled: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: scaled logits [B, V] (-inf = removed), uniforms u [B] → token ids [B]."""
    weights = torch.exp(scaled - scaled.amax(dim=-1, keepdim=True))
    cdf = torch.cumsum(weights, dim=-1)
    target = (u * cdf[:, -1])[:, None]
    # the first token with weight whose running sum reaches the target (argmax: first maximum)
    return ((cdf >= target) & (weights > 0)).to(torch.int8).argmax(dim=-1)


def uniform_open(h: torch.Tensor) -> torch.Tensor:
    """32-bit hashes → float32 uniforms strictly inside (0, 1).

    23 bits, not 24: (2^24 − 0.5) / 2^24 rounds to exactly 1.0 in float32 (u = 1 would let the
    draw run past the last token with weight)."""
    return ((h >> 9).to(torch.float32) + 0.5) * (1.0 / 8388608.0)


@dataclass
class RowParams:
    """Per-row sampling parameters as device tensors of length B."""

    temperature: torch.Tensor  # float32
    top_p: torch.Tensor  # float32
    min_p: torch.Tensor  # float32
    top_k: torch.Tensor  # int64; >= vocab means no top-k
    seed: torch.Tensor  # int64
    position: torch.Tensor  # int64: the position of the token being drawn
    any_sampled: bool  # some row has temperature > 0
    any_filter: bool  # some sampled row uses top-k / top-p / min-p


def sample(logits: torch.Tensor, p: RowParams) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] float32 → (tokens [B] int64, log-probs [B] float32 of those tokens)."""
    log_z = torch.logsumexp(logits, dim=-1)
    greedy = torch.argmax(logits, dim=-1)
    if not p.any_sampled:
        tokens = greedy
    else:
        temp = p.temperature.clamp_min(_GREEDY_EPS)[:, None]
        scaled = logits / temp
        if p.any_filter:
            scaled = _filter(scaled, p)
        drawn = draw(scaled, row_uniform(p.seed, p.position))
        tokens = torch.where(p.temperature > _GREEDY_EPS, drawn, greedy)
    logprobs = logits.gather(1, tokens[:, None])[:, 0] - log_z
    return tokens, logprobs


def _filter(scaled: torch.Tensor, p: RowParams) -> torch.Tensor:
    """Mask (to -inf) the tokens top-k, top-p and min-p remove; the most likely token always stays."""
    probs = torch.softmax(scaled, dim=-1)
    sorted_p, order = torch.sort(probs, dim=-1, descending=True)
    rank = torch.arange(scaled.shape[-1], device=scaled.device)[None, :]
    cum_before = torch.cumsum(sorted_p, dim=-1) - sorted_p
    remove = cum_before > p.top_p[:, None]
    remove |= rank >= p.top_k[:, None]
    remove |= sorted_p < (p.min_p[:, None] * sorted_p[:, :1])
    remove[:, 0] = False
    removed = torch.zeros_like(remove).scatter(1, order, remove)
    return scaled.masked_fill(removed, float("-inf"))
