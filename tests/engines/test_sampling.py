"""The on-device sampler: uniforms strictly inside (0, 1), draws that follow the distribution,
never a removed token, and a seeded row independent of the rest of the batch."""

import torch

from gateway.engines.native.sampling import RowParams, draw, row_uniform, sample, uniform_open


def test_uniform_is_strictly_inside_the_unit_interval_at_the_extremes():
    h = torch.tensor([0, 1, 2**31, 2**32 - 512, 2**32 - 2, 2**32 - 1], dtype=torch.int64)
    u = uniform_open(h)
    assert bool((u > 0).all()) and bool((u < 1).all())


def test_row_uniforms_spread_over_the_interval():
    u = row_uniform(torch.arange(20000, dtype=torch.int64), torch.full((20000,), 5, dtype=torch.int64))
    counts = torch.histc(u, bins=10, min=0.0, max=1.0)
    assert bool((counts > 1800).all()) and bool((counts < 2200).all()), counts


def test_draws_follow_the_softmax():
    probs = torch.tensor([0.5, 0.0, 0.2, 0.25, 0.05])
    n = 40000
    scaled = probs.log().expand(n, -1)  # log 0 = -inf: a removed token
    u = row_uniform(torch.arange(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64))
    tokens = draw(scaled, u)
    freq = torch.bincount(tokens, minlength=5).float() / n
    assert int(freq[1].item() * n) == 0, "a zero-weight token was drawn"
    assert torch.allclose(freq, probs, atol=0.01), freq


def test_edges_of_the_cdf_pick_the_first_and_last_token_with_weight():
    scaled = torch.tensor([[float("-inf"), 0.0, 0.0, float("-inf")]] * 2)
    u = torch.tensor([1e-7, 1.0 - 1e-7])
    assert draw(scaled, u).tolist() == [1, 2]


def _params(b: int, seeds: list[int], temperature: float = 1.0) -> RowParams:
    return RowParams(
        temperature=torch.full((b,), temperature),
        top_p=torch.full((b,), 2.0),
        min_p=torch.zeros(b),
        top_k=torch.full((b,), 1 << 30, dtype=torch.int64),
        seed=torch.tensor(seeds, dtype=torch.int64),
        position=torch.arange(b, dtype=torch.int64) * 0 + 3,
        any_sampled=temperature > 0,
        any_filter=False,
    )


def test_a_seeded_row_draws_the_same_token_in_any_batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1000, generator=gen)
    alone, _ = sample(logits[:1], _params(1, [7]))
    crowd, logprobs = sample(logits, _params(6, [7, 1, 2, 3, 4, 5]))
    assert crowd[0] == alone[0]
    ref = torch.log_softmax(logits, -1).gather(1, crowd[:, None])[:, 0]
    assert torch.allclose(logprobs, ref, atol=1e-5)
    greedy, _ = sample(logits, _params(6, [7, 1, 2, 3, 4, 5], temperature=0.0))
    assert greedy.tolist() == logits.argmax(-1).tolist()
