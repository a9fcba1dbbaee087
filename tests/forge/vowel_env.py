"""A test environment registered through `env.modules`: reward = share of vowels in the reply.

A random tiny model earns varied rewards here (arithmetic gives it a constant 0, hence zero
advantages and no weight change), so the launch test can see weights and outputs move."""

from __future__ import annotations

import random
from typing import Any, ClassVar

from agent_side.env import EnvConfig, Environment, Message, StepResult
from agent_side.registry import register_env


@register_env("vowels", replace=True)
class Vowels(Environment):
    config_class: ClassVar[type[EnvConfig]] = EnvConfig

    @classmethod
    def generate(cls, rng: random.Random, config: EnvConfig) -> dict[str, Any]:
        return {"word": "".join(rng.choice("abcdefghij") for _ in range(5))}

    def reset(self) -> list[Message]:
        return [{"role": "user", "content": f"Say something about {self.payload['word']}."}]

    def step(self, reply: Message) -> StepResult:
        text = reply.get("content") or ""
        share = sum(c in "aeiou" for c in text.lower()) / max(len(text), 1)
        return StepResult(reward=share, done=True, metrics={"accuracy": float(share > 0.3)})
