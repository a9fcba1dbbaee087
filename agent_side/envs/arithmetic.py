"""`arithmetic`: one question, one model call, a verifiable integer answer.

Difficulty d (1…5) sets the operand count, the operand size and the operators:
    1: a ± b, one-digit          2: a ± b, two-digit          3: a op b (+ − ×), two-digit
    4: three operands up to 99 with × and parentheses          5: four operands up to 999
Every answer is an integer (no division). Reward: 1 for the correct final answer (graded by
`agent_side.verifiers.check_number`), plus `format_reward` when the last line reads
``Answer: <number>``; with `strict_format` an answer without that line scores nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

from agent_side.env import EnvConfig, Environment, Message, StepResult
from agent_side.registry import register_env
from agent_side.verifiers import check_number

SYSTEM_PROMPT = (
    "Solve the arithmetic problem. Think briefly, then give the final answer on the last line "
    "in the form 'Answer: <integer>'."
)

_LEVELS: dict[int, tuple[int, int, str]] = {  # difficulty → (operands, max operand, operators)
    1: (2, 9, "+-"),
    2: (2, 99, "+-"),
    3: (2, 99, "+-*"),
    4: (3, 99, "+-*"),
    5: (4, 999, "+-*"),
}


@dataclass
class ArithmeticConfig(EnvConfig):
    max_turns: int = 1
    difficulty: int = 2
    format_reward: float = 0.0  # added when the last line is "Answer: <number>"
    strict_format: bool = False  # only a well-formatted answer can be correct


def make_problem(rng: random.Random, difficulty: int) -> tuple[str, int]:
    """A random expression of the given difficulty and its integer value."""
    if difficulty not in _LEVELS:
        raise ValueError(f"difficulty must be one of {sorted(_LEVELS)}, got {difficulty}")
    n, hi, ops = _LEVELS[difficulty]
    expr = str(rng.randint(0, hi))
    for i in range(1, n):
        op = rng.choice(ops)
        term = str(rng.randint(0, hi))
        # from difficulty 4 on, sometimes group the running expression
        if difficulty >= 4 and i > 1 and rng.random() < 0.5:
            expr = f"({expr})"
        expr = f"{expr} {op} {term}"
    value = eval(expr, {"__builtins__": {}}, {})  # noqa: S307 - our own digits and + - * ( ) only
    return expr, int(value)


@register_env("arithmetic")
class Arithmetic(Environment):
    config_class: ClassVar[type[EnvConfig]] = ArithmeticConfig
    required_keys: ClassVar[tuple[str, ...]] = ("question", "answer")
    config: ArithmeticConfig

    @classmethod
    def generate(cls, rng: random.Random, config: EnvConfig) -> dict[str, Any]:
        assert isinstance(config, ArithmeticConfig)
        expr, value = make_problem(rng, config.difficulty)
        return {"question": f"What is {expr}?", "answer": str(value), "difficulty": config.difficulty}

    def reset(self) -> list[Message]:
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": str(self.payload["question"])},
        ]

    def step(self, reply: Message) -> StepResult:
        verdict = check_number(reply.get("content") or "", self.payload["answer"])
        correct = verdict.correct and (verdict.well_formatted or not self.config.strict_format)
        fmt = self.config.format_reward if verdict.well_formatted else 0.0
        return StepResult(
            reward=float(correct) + fmt,
            done=True,
            metrics={"accuracy": float(correct), "formatted": float(verdict.well_formatted)},
        )
