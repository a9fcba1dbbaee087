"""Gumbel noise is finite for every possible hash (regression: u rounded to 1.0 → +inf noise)."""

import torch

from gateway.engines.native.sampling import gumbel_noise, uniform_open


def test_uniform_is_strictly_inside_the_unit_interval_at_the_extremes():
    h = torch.tensor([0, 1, 2**31, 2**32 - 512, 2**32 - 2, 2**32 - 1], dtype=torch.int64)
    u = uniform_open(h)
    assert bool((u > 0).all()) and bool((u < 1).all())


def test_noise_is_finite_over_many_draws():
    seeds = torch.arange(64, dtype=torch.int64)
    positions = torch.arange(64, dtype=torch.int64) * 7
    noise = gumbel_noise(seeds, positions, 49152)  # 3.1M draws
    assert bool(torch.isfinite(noise).all())
