"""The fused LM head (trainer.fused_head) gives the checkpointed, chunked head's loss, gradients,
log-probs, entropies and per-token stats (fp32, CPU), for every loss and its options."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from forge.ground.models import tiny_model_dir
from trainer.advantages import group_relative
from trainer.batch import build_samples, make_microbatches
from trainer.config import AlgoConfig
from trainer.step import forward_backward
from trainer.synthetic import agent_batch


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def model(request):
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir(request.param), attn_implementation="sdpa")
    return m.float().train()


def run(model, mbs, algo, fused, chunk, fp32_head=False):
    model.zero_grad(set_to_none=True)
    metrics = forward_backward(
        model, mbs, algo, "sdpa_dense", chunk=chunk, fp32_head=fp32_head, fused_head=fused
    )
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return metrics, grads


ALGOS = {
    "cispo": AlgoConfig(),
    "cispo_unified_mask": AlgoConfig(unified_mask=True, eps_low=0.2),
    "cispo_m2_tis": AlgoConfig(name="cispo_m2", tis_cap=2.0),
    "grpo": AlgoConfig(name="grpo"),
    "ppo": AlgoConfig(name="ppo"),
}


@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("chunk", [7, 1024])
def test_fused_head_equals_checkpointed_head(model, algo, chunk):
    rng = np.random.default_rng(3)
    episodes = agent_batch(rng, 2, 3, 2, 10, 6, 300)
    for e in episodes:  # behaviour log-probs spread around the policy's, so ratios clip both ways
        for s in e.samples:
            s.logprobs = list(rng.uniform(-11.3, -10.3, len(s.completion_ids)))  # log π ≈ −log 49152
    samples, _ = build_samples(episodes, group_relative(episodes), "token")
    mbs = make_microbatches(samples, 60, True)
    assert len(mbs) > 1
    mf, gf = run(model, mbs, ALGOS[algo], True, chunk)
    mu, gu = run(model, mbs, ALGOS[algo], False, chunk)
    assert gf.keys() == gu.keys() and len(gu) == len(list(model.parameters()))
    for k in ("loss", "entropy", "clip_fraction", "masked_fraction", "is_ratio_mean", "is_ratio_max"):
        assert mf[k] == pytest.approx(mu[k], rel=1e-5, abs=1e-7), k
    if "tis_mean" in mu:
        assert mf["tis_mean"] == pytest.approx(mu["tis_mean"], rel=1e-5) and mf["tis_max"] == mu["tis_max"]
    else:  # without TIS, π_old is the behaviour policy: ratios spread and some clip
        assert 0 < mu["clip_fraction"] < 1
    for name in gu:
        scale = gu[name].norm().clamp_min(1e-30)
        assert float((gf[name] - gu[name]).norm() / scale) <= 1e-5, name


def test_fp32_head_fused_equals_unfused(model):
    rng = np.random.default_rng(4)
    episodes = agent_batch(rng, 2, 2, 1, 8, 5, 300)
    samples, _ = build_samples(episodes, group_relative(episodes), "token")
    mbs = make_microbatches(samples, 1000, True)
    mf, gf = run(model, mbs, AlgoConfig(), True, 4, fp32_head=True)
    mu, gu = run(model, mbs, AlgoConfig(), False, 4, fp32_head=True)
    assert mf["loss"] == pytest.approx(mu["loss"], rel=1e-5)
    for name in gu:
        scale = gu[name].norm().clamp_min(1e-30)
        assert float((gf[name] - gu[name]).norm() / scale) <= 1e-5, name


def test_compiled_and_eager_forms_agree():
    """trainer.fused_head's two forms (torch.compile's and eager) compute the same function."""
    from trainer.fused_head import fused_head_loss
    from trainer.losses import cispo

    g = torch.Generator().manual_seed(0)
    m, h, v = 50, 16, 300
    rows = torch.randn(m, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (m,), generator=g)
    old, adv, w = torch.randn(m, generator=g) - 5, torch.randn(m, generator=g), torch.rand(m, generator=g)
    results = []
    for compiled in (False, True):
        out, logp, entropy = fused_head_loss(
            rows,
            weight,
            targets,
            lambda lp, sl: cispo(lp, old[sl], adv[sl], w[sl], 1.0, 0.28),
            16,
            False,
            compiled,
        )
        results.append((out.loss, logp, entropy, *torch.autograd.grad(out.loss, (rows, weight))))
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-4)  # entropy = lse − Σp·x cancels
