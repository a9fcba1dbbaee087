"""Environments for the worker tests. A Ray actor imports this file by path (EnvWorker
`env_modules`), so the same classes are registered in the test process and in the actors."""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from agent_side.env import EnvConfig, Environment, Message, StepResult
from agent_side.registry import register_env


class _Base(Environment):
    config_class: ClassVar[type[EnvConfig]] = EnvConfig

    @classmethod
    def generate(cls, rng: Any, config: EnvConfig) -> dict[str, Any]:
        return {"question": f"Say a number. {rng.randint(0, 10**6)}"}

    def reset(self) -> list[Message]:
        self.turn = 0
        return [{"role": "user", "content": str(self.payload.get("question", "Say hi."))}]


@register_env("test_turns")
class Turns(_Base):
    """`payload["turns"]` model calls (whatever the model says), `sleep_s` async sleep per step;
    process reward 0.1·turn per call, outcome 1.0 at the end."""

    async def step(self, reply: Message) -> StepResult:
        self.turn += 1
        await asyncio.sleep(float(self.payload.get("sleep_s", 0.0)))
        done = self.turn >= int(self.payload.get("turns", 1))
        obs = [] if done else [{"role": "user", "content": f"Again ({self.turn})."}]
        return StepResult(obs, 1.0 if done else 0.0, done, {"process": 0.1 * self.turn}, {"turns": self.turn})


@register_env("test_slow")
class Slow(Turns):
    """`test_turns` under another name, so a test can give it its own (short) episode timeout."""


@register_env("test_raises")
class Raises(_Base):
    def step(self, reply: Message) -> StepResult:
        raise ValueError("env exploded on purpose")


@register_env("test_bad_reward")
class BadReward(_Base):
    def step(self, reply: Message) -> StepResult:
        return StepResult(reward=self.payload.get("reward", "high"), done=True)  # type: ignore[arg-type]


@register_env("test_hangs")
class Hangs(_Base):
    """Hangs in a plain (thread) step, or in reset when payload["where"] == "reset"."""

    def reset(self) -> list[Message]:
        if self.payload.get("where") == "reset":
            time.sleep(120)
        return super().reset()

    def step(self, reply: Message) -> StepResult:
        time.sleep(120)
        raise AssertionError("unreachable")
