"""Acceptance 2: CISPO against hand-computed values; GRPO/PPO clipping; TIS."""

import math

import pytest
import torch

from trainer.config import AlgoConfig
from trainer.losses import cispo, policy_loss, ppo_clip

LOGP = [-1.0, -2.0, -0.5]
OLD = [-1.2, -1.5, -0.5]  # r = e^0.2 = 1.2214, e^-0.5 = 0.6065, 1
ADV = [1.0, -2.0, 0.5]
W = [1 / 3] * 3


def t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def test_cispo_m1_clipped_weight_value_and_stop_gradient():
    logp = t(LOGP, grad=True)
    out = cispo(logp, t(OLD), t(ADV), t(W), eps_low=0.2, eps_high=0.1)
    # r̂ = clip(r, 0.8, 1.1) = [1.1, 0.8, 1.0]
    expected = -(1.1 * 1.0 * -1.0 + 0.8 * -2.0 * -2.0 + 1.0 * 0.5 * -0.5) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    out.loss.backward()
    # d loss / d log π = −sg(r̂)·Â / N : the weight is a constant, no token is dropped
    assert logp.grad.tolist() == pytest.approx([-1.1 / 3, 1.6 / 3, -0.5 / 3], rel=1e-12)
    assert out.stats["clipped"].tolist() == [1.0, 1.0, 0.0]
    assert out.stats["ratio"].tolist() == pytest.approx([math.exp(0.2), math.exp(-0.5), 1.0])


def test_cispo_unified_mask_recovers_trust_region():
    logp = t(LOGP, grad=True)
    out = cispo(logp, t(OLD), t(ADV), t(W), eps_low=0.2, eps_high=0.1, unified_mask=True)
    # token 0: Â>0 and r>1.1 → M=0; token 1: Â<0 and r<0.8 → M=0; token 2 kept
    assert out.loss.item() == pytest.approx(-(1.0 * 0.5 * -0.5) / 3, rel=1e-12)
    out.loss.backward()
    assert logp.grad.tolist() == pytest.approx([0.0, 0.0, -0.5 / 3], rel=1e-12)
    assert out.stats["masked"].tolist() == [1.0, 1.0, 0.0]


def test_cispo_m2_form_has_no_lower_clip():
    logp = t(LOGP, grad=True)
    algo = AlgoConfig(name="cispo_m2", eps_low=0.2, eps_high=0.1)  # eps_low is ignored by the M2 form
    out = policy_loss(algo, logp, t(OLD), t(ADV), t(W))
    r1 = math.exp(-0.5)
    assert out.loss.item() == pytest.approx(
        -(1.1 * -1.0 + r1 * -2.0 * -2.0 + 1.0 * 0.5 * -0.5) / 3, rel=1e-12
    )
    out.loss.backward()
    assert logp.grad.tolist() == pytest.approx([-1.1 / 3, 2 * r1 / 3, -0.5 / 3], rel=1e-12)


def test_ppo_clip_zeroes_gradient_of_clipped_tokens():
    logp = t(LOGP, grad=True)
    out = ppo_clip(logp, t(OLD), t(ADV), t(W), eps=0.1)
    out.loss.backward()
    # token 0 (Â>0, r>1.1) and token 1 (Â<0, r<0.9) are clipped: zero gradient; token 2: −r·Â/N
    assert logp.grad.tolist() == pytest.approx([0.0, 0.0, -0.5 / 3], abs=1e-12)
    assert out.stats["clipped"].tolist() == [1.0, 1.0, 0.0]


def test_truncated_is_correction_weights_tokens():
    logp = t(LOGP, grad=True)
    algo = AlgoConfig(name="cispo", eps_low=0.2, eps_high=0.1, tis_cap=1.1)
    out = policy_loss(algo, logp, t(OLD), t(ADV), t(W))
    out.loss.backward()
    # π_old = sg(π_θ) → r = 1 inside the clip; tis = min(r_behaviour, 1.1) = [1.1, 0.6065, 1]
    tis = [1.1, math.exp(-0.5), 1.0]
    assert logp.grad.tolist() == pytest.approx([-tis[i] * ADV[i] / 3 for i in range(3)], rel=1e-12)
    assert out.stats["tis"].tolist() == pytest.approx(tis)


def test_unknown_algorithm_is_named():
    with pytest.raises(ValueError, match="algo.name='reinforce'"):
        policy_loss(AlgoConfig(name="reinforce"), t(LOGP), t(OLD), t(ADV), t(W))
