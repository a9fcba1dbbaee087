"""Synthetic agent batches with the structure real ones have, for tests and benchmarks.

An episode of K calls: call t's prompt is call t−1's prompt + completion + a new observation,
so the K samples of an episode form one chain; G episodes share the first prompt (a group).
"""

from __future__ import annotations

import numpy as np

from forge.ground.types import Episode, Sample, Task


def agent_batch(
    rng: np.random.Generator,
    groups: int,
    group_size: int,
    calls: int,
    prompt_tokens: int,
    tokens_per_call: int,
    vocab: int,
    duplicate_completion: bool = False,
    obs_tokens: int | None = None,
) -> list[Episode]:
    """`tokens_per_call` completion tokens per call, `obs_tokens` (default: the same) observation tokens."""
    obs_tokens = tokens_per_call if obs_tokens is None else obs_tokens
    episodes = []
    for g in range(groups):
        prompt = rng.integers(0, vocab, prompt_tokens).tolist()
        first_completion = rng.integers(0, vocab, tokens_per_call).tolist()
        for m in range(group_size):
            task = Task(id=f"g{g}m{m}", env="synthetic", group_id=f"g{g}", group_size=group_size)
            context, samples = list(prompt), []
            for t in range(calls):
                n_out = max(1, int(rng.integers(1, tokens_per_call + 1))) if tokens_per_call > 1 else 1
                completion = (
                    list(first_completion)
                    if duplicate_completion and t == 0
                    else rng.integers(0, vocab, n_out).tolist()
                )
                logprobs = (-rng.exponential(1.0, len(completion))).tolist()
                samples.append(Sample(task.id, task.id, t, list(context), completion, logprobs))
                context = context + completion + rng.integers(0, vocab, obs_tokens).tolist()
            episodes.append(Episode(task=task, samples=samples, reward=float(rng.normal())))
    return episodes
