"""Advantage estimators. Each returns {(task_id, sample_index): advantage} for every sample.

- group: Â_i = (R_i − mean_j R_j) / (std_j R_j + eps) over the members of a group (episodes
  sharing `task.group_id`), the same value for every call and token of an episode
  (MiniMax-M1 eq. 5; std division optional). A group of one gets Â = 0.
- m2_step: per-step reward r_t = α·process_t + β·speed_t, plus the outcome reward at the last
  call; Â_{i,t} = Σ_{p≥t} r_p − B_i, with B_i the mean over the group of the episode returns
  G_0 (the "trajectory baseline"); optionally divided by the group's std of G_0. MiniMax does
  not publish α, β or B's exact form; these are config values and this choice is ours.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from forge.ground.types import Episode
from trainer.config import AlgoConfig

EPS = 1e-6


def _groups(episodes: Sequence[Episode]) -> dict[str, list[Episode]]:
    groups: dict[str, list[Episode]] = defaultdict(list)
    for ep in episodes:
        groups[ep.task.group_id or ep.task.id].append(ep)
    return groups


def group_relative(episodes: Sequence[Episode], normalize_std: bool = True) -> dict[tuple[str, int], float]:
    out: dict[tuple[str, int], float] = {}
    for members in _groups(episodes).values():
        # plain floats: groups are small, and numpy's per-call cost was most of a step's batch
        # preparation (1.5 ms for 32 groups)
        rewards = [float(ep.reward) for ep in members]
        mean = math.fsum(rewards) / len(rewards)
        adv = [r - mean for r in rewards]
        if normalize_std:
            std = math.sqrt(math.fsum(a * a for a in adv) / len(adv))  # population std, as np.std
            adv = [a / (std + EPS) for a in adv]
        for ep, a in zip(members, adv, strict=True):
            out.update({(ep.task.id, i): a for i in range(len(ep.samples))})
    return out


def step_rewards(ep: Episode, alpha: float, beta: float) -> np.ndarray:
    """r_t for each call t of the episode: α·process + β·speed, outcome reward at the last call."""
    r = np.zeros(len(ep.samples), dtype=np.float64)
    weights = {"process": alpha, "speed": beta}
    for name, values in ep.step_rewards.items():
        r += weights.get(name, 1.0) * np.asarray(values, dtype=np.float64)
    if len(r):
        r[-1] += ep.reward
    return r


def m2_reward_to_go(
    episodes: Sequence[Episode], alpha: float, beta: float, normalize_std: bool = True
) -> dict[tuple[str, int], float]:
    out: dict[tuple[str, int], float] = {}
    for members in _groups(episodes).values():
        to_go = [np.cumsum(step_rewards(ep, alpha, beta)[::-1])[::-1] for ep in members]
        returns = np.array([g[0] if len(g) else 0.0 for g in to_go])
        baseline, scale = returns.mean(), (returns.std() + EPS if normalize_std and len(members) > 1 else 1.0)
        for ep, g in zip(members, to_go, strict=True):
            out.update({(ep.task.id, i): float((g[i] - baseline) / scale) for i in range(len(g))})
    return out


def compute_advantages(episodes: Sequence[Episode], algo: AlgoConfig) -> dict[tuple[str, int], float]:
    if algo.advantage == "group":
        return group_relative(episodes, algo.normalize_std)
    if algo.advantage == "m2_step":
        return m2_reward_to_go(episodes, algo.alpha_process, algo.beta_speed, algo.normalize_std)
    raise ValueError(f"algo.advantage={algo.advantage!r}: expected 'group' or 'm2_step'")
