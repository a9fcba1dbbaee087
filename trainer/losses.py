"""Policy-gradient objectives on flat per-token tensors (all [M], one entry per completion token).

Every loss returns Σ_t w_t · term_t where w_t already holds the normaliser (1/Σ|o_i| for the
token-level losses; 1/(|o_i|·N) for GRPO's sequence mean), so micro-batch losses simply add.

CISPO (MiniMax-M1 eq. 4–5):  term = −sg(clip(r, 1−ε_low, 1+ε_high)) · Â · log π_θ
  r = π_θ / π_old. The clipped IS weight scales a REINFORCE term under stop-gradient, so no
  token leaves the gradient: d term / d log π = −sg(r̂)·Â. The optional unified mask (eq. 6–7)
  zeroes tokens with (Â>0, r>1+ε_high) or (Â<0, r<1−ε_low). M2 form: clip(r, 0, 1+ε_high).
PPO-clip / GRPO: term = −min(r·Â, clip(r, 1−ε, 1+ε)·Â), which zeroes the gradient of clipped tokens.
KL to a reference policy (algo.kl_coef > 0): + β·KL_t per token, with Schulman's estimators of
KL(π_θ ‖ π_ref) from d = log π_ref − log π_θ: k1 = −d, k2 = d²/2, k3 = e^d − d − 1 (≥ 0,
low variance; GRPO's choice). Gradients: dk1/dlog π = 1, dk2/dlog π = −d, dk3/dlog π = 1 − e^d.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.config import AlgoConfig


@dataclass
class LossOut:
    loss: torch.Tensor  # scalar, differentiable
    stats: dict[str, torch.Tensor]  # per-token diagnostics, detached, all [M]


def cispo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    weight: torch.Tensor,
    eps_low: float,
    eps_high: float,
    unified_mask: bool = False,
) -> LossOut:
    ratio = torch.exp(logp.detach() - old_logp)
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    keep = torch.ones_like(ratio)
    if unified_mask:
        keep = (~(((adv > 0) & (ratio > 1 + eps_high)) | ((adv < 0) & (ratio < 1 - eps_low)))).to(ratio.dtype)
    loss = -(clipped * adv * logp * keep * weight).sum()
    return LossOut(loss, {"ratio": ratio, "clipped": (ratio != clipped).float(), "masked": 1.0 - keep})


def ppo_clip(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, weight: torch.Tensor, eps: float
) -> LossOut:
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    loss = -(surrogate * weight).sum()
    r = ratio.detach()
    clipped = ((r > 1 + eps) & (adv > 0)) | ((r < 1 - eps) & (adv < 0))
    return LossOut(loss, {"ratio": r, "clipped": clipped.float(), "masked": clipped.float()})


ALGOS = ("cispo", "cispo_m2", "grpo", "ppo")
KL_ESTIMATORS = ("k1", "k2", "k3")


def check_algo(algo: AlgoConfig) -> None:
    """Fail at start, naming the key, on a value only the loss would otherwise reject."""
    if algo.name not in ALGOS:
        raise ValueError(f"algo.name={algo.name!r}: expected one of {ALGOS}")
    if algo.kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"algo.kl_estimator={algo.kl_estimator!r}: expected one of {KL_ESTIMATORS}")
    if algo.kl_coef < 0:
        raise ValueError(f"algo.kl_coef={algo.kl_coef}: must be ≥ 0 (0 turns the KL term off)")


def kl_to_reference(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) [M] from sampled tokens' log-probs (differentiable in logp)."""
    d = ref_logp - logp
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return torch.exp(d) - d - 1.0
    raise ValueError(f"algo.kl_estimator={estimator!r}: expected one of {KL_ESTIMATORS}")


def normalisation(algo: AlgoConfig) -> str:
    """'token' (1/Σ|o_i| over the batch) or 'sequence' (mean over samples of per-sample means)."""
    return "sequence" if algo.name == "grpo" else "token"


def policy_loss(
    algo: AlgoConfig,
    logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    adv: torch.Tensor,
    weight: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
) -> LossOut:
    """Dispatch on algo.name; applies the optional truncated IS correction (algo.tis_cap > 0)
    and the optional KL term to the reference policy (algo.kl_coef > 0, needs `ref_logp` [M]).

    With tis_cap, π_old is the trainer's own log-prob at the start of the step (sg(log π_θ)) and
    every token is weighted by sg(min(π_θ/π_behaviour, cap)), which corrects the train/inference
    mismatch without clipping it; without it, π_old is the engine's behaviour policy. The KL term
    takes the normalising weight alone (no IS weight: it is an expectation under π_θ itself).
    """
    old, base_weight = behaviour_logp, weight
    if algo.tis_cap > 0:
        tis = torch.exp(logp.detach() - behaviour_logp).clamp(max=algo.tis_cap)
        weight, old = weight * tis, logp.detach()
    if algo.name == "cispo":
        out = cispo(logp, old, adv, weight, algo.eps_low, algo.eps_high, algo.unified_mask)
    elif algo.name == "cispo_m2":
        out = cispo(logp, old, adv, weight, 1.0, algo.eps_high, algo.unified_mask)
    elif algo.name in ("ppo", "grpo"):
        out = ppo_clip(logp, old, adv, weight, algo.ppo_eps)
    else:
        raise ValueError(f"algo.name={algo.name!r}: expected one of {ALGOS}")
    if algo.tis_cap > 0:
        out.stats["tis"] = tis
    if algo.kl_coef > 0:
        if ref_logp is None:
            raise ValueError("algo.kl_coef > 0 needs the reference policy's log-probs")
        kl = kl_to_reference(logp, ref_logp, algo.kl_estimator)
        out.loss = out.loss + algo.kl_coef * (kl * base_weight).sum()
        out.stats["kl"] = kl.detach()
    return out
