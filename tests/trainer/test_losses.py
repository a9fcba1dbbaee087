"""Acceptance 2: CISPO against hand-computed values; GRPO/PPO clipping; TIS; KL to a reference."""

import math

import pytest
import torch

from trainer.config import AlgoConfig
from trainer.losses import check_algo, cispo, kl_to_reference, policy_loss, ppo_clip

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


REF = [-1.5, -1.0, -0.5]  # d = log π_ref − log π = [−0.5, 1, 0]


@pytest.mark.parametrize(
    ("estimator", "value", "grad"),
    [
        ("k1", [0.5, -1.0, 0.0], [1.0, 1.0, 1.0]),
        ("k2", [0.125, 0.5, 0.0], [0.5, -1.0, 0.0]),
        ("k3", [math.exp(-0.5) - 0.5, math.e - 2.0, 0.0], [1 - math.exp(-0.5), 1 - math.e, 0.0]),
    ],
)
def test_kl_estimators_values_and_gradients(estimator, value, grad):
    logp = t(LOGP, grad=True)
    kl = kl_to_reference(logp, t(REF), estimator)
    assert kl.tolist() == pytest.approx(value, abs=1e-12)
    kl.sum().backward()
    assert logp.grad.tolist() == pytest.approx(grad, abs=1e-12)


def test_kl_term_adds_to_the_loss_with_the_normalising_weight_only():
    """β·Σ w·k3 on top of CISPO; the TIS weight scales the policy term, not the KL term."""
    base = AlgoConfig(name="cispo", eps_low=0.2, eps_high=0.1, tis_cap=1.1)
    with_kl = AlgoConfig(**{**vars(base), "kl_coef": 0.5})
    grads, losses = [], []
    for algo in (base, with_kl):
        logp = t(LOGP, grad=True)
        out = policy_loss(algo, logp, t(OLD), t(ADV), t(W), t(REF))
        out.loss.backward()
        grads.append(logp.grad.tolist())
        losses.append(out.loss.item())
    k3 = [math.exp(-0.5) - 0.5, math.e - 2.0, 0.0]
    assert losses[1] - losses[0] == pytest.approx(0.5 * sum(k / 3 for k in k3), rel=1e-12)
    dk3 = [1 - math.exp(-0.5), 1 - math.e, 0.0]
    assert [b - a for a, b in zip(*grads, strict=True)] == pytest.approx(
        [0.5 * g / 3 for g in dk3], abs=1e-12
    )
    assert "kl" not in policy_loss(base, t(LOGP), t(OLD), t(ADV), t(W)).stats


def test_kl_without_reference_logprobs_or_with_bad_settings_fails_naming_the_key():
    with pytest.raises(ValueError, match="reference"):
        policy_loss(AlgoConfig(kl_coef=0.1), t(LOGP), t(OLD), t(ADV), t(W))
    with pytest.raises(ValueError, match="algo.kl_estimator='k4'"):
        check_algo(AlgoConfig(kl_coef=0.1, kl_estimator="k4"))
    with pytest.raises(ValueError, match="algo.kl_coef=-0.1"):
        check_algo(AlgoConfig(kl_coef=-0.1))
    with pytest.raises(ValueError, match="algo.name='reinforce'"):
        check_algo(AlgoConfig(name="reinforce"))
