"""`calculator`: multi-turn tool use. The model may call a `calculator` tool (OpenAI tool calling)
any number of times, then answers in plain text.

Rewards, per model call (`Episode.step_rewards` gets one value per call for each component):
- outcome (`reward`, final step): 1 for the correct final answer (`verifiers.check_number`).
- "process": +`process_reward` per valid tool call (known tool, JSON arguments with an
  `expression` the calculator evaluates), for at most `process_reward_max_calls` calls per
  episode so calling the tool forever does not pay; −`process_reward` per invalid call.
- "speed" (final step, only when correct): `speed_reward` · h(x), h(x) = min(1, 1/x), where x is
  model calls / `speed_baseline_calls` (`speed_basis="calls"`) or episode seconds /
  `speed_baseline_s` (`speed_basis="time"`).
An episode that reaches `max_turns` still calling tools ends with outcome 0.

Context management (`keep_tool_outputs` > 0): only the newest that many tool outputs are kept
verbatim; older ones are replaced by a marker, an example of the f(history) hook.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from agent_side.env import EnvConfig, Environment, Message, StepResult
from agent_side.envs.calc_tool import CalcError, evaluate, format_value
from agent_side.registry import register_env
from agent_side.verifiers import check_number

SYSTEM_PROMPT = (
    "You can use the `calculator` tool to evaluate arithmetic expressions. Call it as often as you "
    "need, then reply with the final answer on the last line in the form 'Answer: <number>'."
)
ELIDED = "[older calculator output removed]"

CALCULATOR_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression with + - * / // % ** and parentheses.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. (1234 * 56) - 789"}},
            "required": ["expression"],
        },
    },
}


@dataclass
class CalculatorConfig(EnvConfig):
    max_turns: int = 4
    digits: int = 3  # operand size; 3-4 digit products are where a small model needs the tool
    operands: int = 3
    process_reward: float = 0.1
    process_reward_max_calls: int = 2
    speed_reward: float = 0.0  # weight β of the speed reward; 0 turns it off
    speed_basis: str = "calls"  # "calls" or "time"
    speed_baseline_calls: float = 2.0  # one tool call + one answer
    speed_baseline_s: float = 10.0
    keep_tool_outputs: int = 0  # 0 keeps every tool output in the context


def make_problem(rng: random.Random, digits: int, operands: int) -> tuple[str, int]:
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    terms = [str(rng.randint(lo, hi)) for _ in range(operands)]
    expr = terms[0]
    for i, term in enumerate(terms[1:], start=1):
        op = "*" if i == 1 else rng.choice("+-")
        expr = f"{expr} {op} {term}"
    value = evaluate(expr)
    return expr, int(value)


@register_env("calculator")
class Calculator(Environment):
    config_class: ClassVar[type[EnvConfig]] = CalculatorConfig
    required_keys: ClassVar[tuple[str, ...]] = ("question", "answer")
    config: CalculatorConfig

    @classmethod
    def generate(cls, rng: random.Random, config: EnvConfig) -> dict[str, Any]:
        assert isinstance(config, CalculatorConfig)
        expr, value = make_problem(rng, config.digits, config.operands)
        return {"question": f"Compute {expr}.", "answer": str(value)}

    def reset(self) -> list[Message]:
        if self.config.speed_basis not in ("calls", "time"):
            raise ValueError(f"speed_basis must be 'calls' or 'time', got {self.config.speed_basis!r}")
        self.calls = 0
        self.rewarded_calls = 0
        self.started = time.monotonic()
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": str(self.payload["question"])},
        ]

    @property
    def tools(self) -> list[dict[str, Any]]:
        return [CALCULATOR_TOOL]

    def _run_tool(self, call: dict[str, Any]) -> tuple[str, bool]:
        fn = call.get("function") or {}
        if fn.get("name") != "calculator":
            return f"error: unknown tool {fn.get('name')!r}", False
        try:
            args = json.loads(fn.get("arguments") or "")
            expression = args["expression"]
            return format_value(evaluate(expression)), True
        except (json.JSONDecodeError, TypeError, KeyError):
            return "error: arguments must be a JSON object with an 'expression' string", False
        except CalcError as exc:
            return f"error: {exc}", False

    def step(self, reply: Message) -> StepResult:
        self.calls += 1
        cfg = self.config
        tool_calls = reply.get("tool_calls") or []
        if tool_calls:
            observation, process = [], 0.0
            for i, call in enumerate(tool_calls):
                output, valid = self._run_tool(call)
                if valid and self.rewarded_calls < cfg.process_reward_max_calls:
                    self.rewarded_calls += 1
                    process += cfg.process_reward
                elif not valid:
                    process -= cfg.process_reward
                observation.append(
                    {"role": "tool", "tool_call_id": call.get("id") or f"call_{i}", "content": output}
                )
            done = self.calls >= cfg.max_turns
            metrics = {"accuracy": 0.0, "tool_calls": float(self.calls), "truncated": 1.0} if done else {}
            return StepResult(observation, 0.0, done, {"process": process}, metrics)

        verdict = check_number(reply.get("content") or "", self.payload["answer"])
        speed = 0.0
        if verdict.correct and cfg.speed_reward:
            if cfg.speed_basis == "calls":
                x = self.calls / cfg.speed_baseline_calls
            else:
                x = (time.monotonic() - self.started) / cfg.speed_baseline_s
            speed = cfg.speed_reward * min(1.0, 1.0 / max(x, 1e-9))
        metrics = {"accuracy": float(verdict.correct), "tool_calls": float(self.calls - 1), "truncated": 0.0}
        step_rewards = {"process": 0.0, **({"speed": speed} if cfg.speed_reward else {})}
        return StepResult([], float(verdict.correct), True, step_rewards, metrics)

    def context(self, history: list[Message]) -> list[Message]:
        keep = self.config.keep_tool_outputs
        if keep <= 0:
            return history
        tool_positions = [i for i, m in enumerate(history) if m.get("role") == "tool"]
        old = set(tool_positions[:-keep])
        return [{**m, "content": ELIDED} if i in old else m for i, m in enumerate(history)]
