import numpy as np
import pytest

from forge.ground.types import Episode, Sample, Task
from trainer.advantages import compute_advantages, group_relative, m2_reward_to_go
from trainer.config import AlgoConfig


def ep(tid, group, reward, calls=1, **step):
    samples = [Sample(tid, tid, t, [1], [2], [-1.0]) for t in range(calls)]
    return Episode(Task(tid, "e", group_id=group), samples, reward=reward, step_rewards=step)


def test_group_relative_is_standardised_per_group():
    eps = [ep("a", "g", 1.0), ep("b", "g", 0.0), ep("c", "g", 0.0), ep("d", "h", 5.0)]
    adv = group_relative(eps)
    r = np.array([1.0, 0.0, 0.0])
    expected = (r - r.mean()) / r.std()
    assert [adv[("a", 0)], adv[("b", 0)], adv[("c", 0)]] == pytest.approx(expected.tolist(), rel=1e-5)
    assert adv[("d", 0)] == 0.0  # a group of one has no relative signal
    raw = group_relative(eps, normalize_std=False)
    assert raw[("a", 0)] == pytest.approx(2 / 3)


def test_m2_reward_to_go_minus_group_baseline():
    a = ep("a", "g", 1.0, calls=3, process=[0.5, 0.0, 0.5], speed=[0.0, -0.1, 0.0])
    b = ep("b", "g", 0.0, calls=2, process=[0.0, 0.5], speed=[0.0, 0.0])
    adv = m2_reward_to_go([a, b], alpha=2.0, beta=1.0, normalize_std=False)
    # a: r = [1.0, -0.1, 1.0 + 1.0] → G = [2.9, 1.9, 2.0]; b: r = [0, 1.0] → G = [1.0, 1.0]
    baseline = (2.9 + 1.0) / 2
    assert [adv[("a", t)] for t in range(3)] == pytest.approx(
        [2.9 - baseline, 1.9 - baseline, 2.0 - baseline]
    )
    assert [adv[("b", t)] for t in range(2)] == pytest.approx([1.0 - baseline] * 2)


def test_unknown_advantage_is_named():
    with pytest.raises(ValueError, match="algo.advantage='gae'"):
        compute_advantages([ep("a", "g", 1.0)], AlgoConfig(advantage="gae"))
