"""Acceptance 1: the prefix tree gives the same loss and gradients as flat packing (fp32, CPU)."""

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

VOCAB = 300  # a small id range makes accidental shared prefixes and duplicate branches likely


@pytest.fixture(scope="module", params=["qwen3", "llama", "qwen2"])
def model(request):
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir(request.param), attn_implementation="sdpa")
    return m.float().train()


def loss_and_grads(model, episodes, merge, budget, algo=AlgoConfig(), **kwargs):
    samples, _ = build_samples(episodes, group_relative(episodes), "token")
    mbs = make_microbatches(samples, budget, merge)
    model.zero_grad(set_to_none=True)
    metrics = forward_backward(model, mbs, algo, "sdpa_dense", **kwargs)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return metrics, grads


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def assert_same(tree, flat, tol=1e-5):
    (mt, gt), (mf, gf) = tree, flat
    assert abs(mt["loss"] - mf["loss"]) <= tol * max(abs(mf["loss"]), 1e-8)
    assert gt.keys() == gf.keys()
    for name in gf:
        if gf[name].norm() > 0:
            assert rel(gt[name], gf[name]) <= tol, name
    total_t = torch.cat([g.flatten() for g in gt.values()])
    total_f = torch.cat([g.flatten() for g in gf.values()])
    assert rel(total_t, total_f) <= tol


CASES = {
    # name: (groups, group_size, calls, prompt, tokens_per_call, duplicate first completion)
    "groups_shared_prompt": (3, 4, 1, 24, 9, False),
    "multi_turn_chains": (2, 2, 5, 12, 6, False),
    "duplicate_completions": (2, 3, 2, 10, 5, True),
    "one_token_branches": (2, 4, 3, 8, 1, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_tree_equals_flat(model, case, seed):
    groups, gsize, calls, prompt, per_call, dup = CASES[case]
    rng = np.random.default_rng(seed)
    episodes = agent_batch(rng, groups, gsize, calls, prompt, per_call, VOCAB, duplicate_completion=dup)
    budget = 10_000  # several trees in one pack
    tree = loss_and_grads(model, episodes, True, budget)
    flat = loss_and_grads(model, episodes, False, budget)
    assert tree[0]["tree_tokens"] < flat[0]["flat_tokens"]
    assert_same(tree, flat)


@pytest.mark.parametrize("fused_head", [False, True])
def test_kl_to_reference_tree_equals_flat(model, fused_head):
    """The reference's log-probs come through the same packed tree: KL term and its gradient exact."""
    import copy

    reference = copy.deepcopy(model).eval().requires_grad_(False)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # a policy that has moved away from the reference
    rng = np.random.default_rng(5)
    episodes = agent_batch(rng, 2, 3, 3, 12, 6, VOCAB)
    algo = AlgoConfig(kl_coef=0.3)
    kw = dict(algo=algo, reference=reference, fused_head=fused_head, chunk=7)
    tree = loss_and_grads(model, episodes, True, 10_000, **kw)
    flat = loss_and_grads(model, episodes, False, 10_000, **kw)
    no_kl = loss_and_grads(model, episodes, True, 10_000, fused_head=fused_head)
    assert tree[0]["kl"] > 1e-4 and tree[0]["kl"] == pytest.approx(flat[0]["kl"], rel=1e-5)
    assert tree[0]["loss"] > no_kl[0]["loss"]  # k3 ≥ 0 adds to the loss
    assert_same(tree, flat)


def test_split_micro_batches_equal_one_pack(model):
    rng = np.random.default_rng(7)
    episodes = agent_batch(rng, 3, 3, 3, 16, 6, VOCAB)
    one = loss_and_grads(model, episodes, True, 10_000)
    many = loss_and_grads(model, episodes, True, 80)
    assert many[0]["microbatches"] > 1
    assert_same(many, one)


def test_flat_packing_equals_separate_forward_passes(model):
    """Pins the baseline itself: packed flat == each sample run alone, unpacked."""
    rng = np.random.default_rng(3)
    episodes = agent_batch(rng, 2, 2, 2, 10, 5, VOCAB)
    samples, _ = build_samples(episodes, group_relative(episodes), "token")
    flat = loss_and_grads(model, episodes, False, 10_000)
    model.zero_grad(set_to_none=True)
    total = 0.0
    for s in samples:
        logits = model(input_ids=torch.from_numpy(s.tokens)[None]).logits[0].float()
        logp_all = torch.log_softmax(logits[s.prompt_len - 1 : -1], -1)
        logp = logp_all.gather(1, torch.from_numpy(s.tokens[s.prompt_len :])[:, None]).squeeze(1)
        ratio = torch.exp(logp.detach() - torch.from_numpy(s.behaviour_logprobs)).clamp(0.0, 1.28)
        loss = -(ratio * torch.from_numpy(s.advantages) * logp * s.token_weight).sum()
        loss.backward()
        total += float(loss.detach())
    sep = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    assert_same(flat, ({"loss": total}, sep))
