"""What the white-box loop accepts from an environment's step (anything else aborts the episode)."""

import math

import numpy as np
import pytest

from agent_side.env import StepResult
from agent_side.runner import EpisodeError, _check_step


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ({"reward": 1.0, "done": True}, "returned dict, not a StepResult"),
        (None, "returned NoneType"),
        (StepResult(reward="1"), "reward is str"),  # type: ignore[arg-type]
        (StepResult(reward=None), "reward is NoneType"),  # type: ignore[arg-type]
        (StepResult(reward=math.inf), "reward is inf"),
        (StepResult(reward=True), "reward is bool"),
        (StepResult(reward=1.0, step_rewards={"process": "a lot"}), "step_rewards['process'] is str"),
        (StepResult(reward=1.0, step_rewards={"process": math.nan}), "step_rewards['process'] is nan"),
        (StepResult(reward=1.0, step_rewards=[0.1]), "step_rewards is not a mapping"),  # type: ignore[arg-type]
        (StepResult(reward=1.0, metrics={"accuracy": "yes"}), "metrics['accuracy'] is str"),
        (StepResult(reward=1.0, observation="tool said 4"), "observation is not a list"),  # type: ignore[arg-type]
        (StepResult(reward=1.0, observation=["tool said 4"]), "observation is not a list of messages"),
    ],
)
def test_malformed_step_results_are_refused(result, message: str) -> None:
    with pytest.raises(EpisodeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _check_step(result, 0)


def test_numeric_rewards_of_any_real_type_are_accepted() -> None:
    for value in (1, 0.5, np.float32(0.25), np.int64(2), -3.0):
        assert _check_step(StepResult(reward=value, step_rewards={"p": value}), 0).reward == value
