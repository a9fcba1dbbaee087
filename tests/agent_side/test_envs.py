"""The built-in white-box environments, driven with hand-written model replies."""

import json
import random

import pytest

from agent_side.envs.arithmetic import Arithmetic, ArithmeticConfig, make_problem
from agent_side.envs.calc_tool import CalcError, evaluate, format_value
from agent_side.envs.calculator import ELIDED, Calculator, CalculatorConfig
from forge.ground.types import Task


def _task(env: str, question: str, answer: str) -> Task:
    return Task(id="t", env=env, payload={"question": question, "answer": answer})


def _call(expression: object, name: str = "calculator", call_id: str = "c1", raw: str | None = None) -> dict:
    arguments = raw if raw is not None else json.dumps({"expression": expression})
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_arithmetic_problems_are_correct_and_deterministic(difficulty: int) -> None:
    for seed in range(50):
        expr, value = make_problem(random.Random(seed), difficulty)
        assert evaluate(expr) == value
        assert make_problem(random.Random(seed), difficulty) == (expr, value)
    with pytest.raises(ValueError):
        make_problem(random.Random(0), 9)


def test_arithmetic_rewards() -> None:
    task = _task("arithmetic", "What is 6 * 7?", "42")
    env = Arithmetic(ArithmeticConfig(format_reward=0.25), task)
    messages = env.reset()
    assert messages[-1] == {"role": "user", "content": "What is 6 * 7?"}
    right = env.step({"role": "assistant", "content": "6*7 = 42\nAnswer: 42"})
    assert (right.reward, right.done, right.metrics["accuracy"]) == (1.25, True, 1.0)
    unformatted = Arithmetic(ArithmeticConfig(format_reward=0.25), task).step(
        {"role": "assistant", "content": "It is 42."}
    )
    assert unformatted.reward == 1.0
    wrong_but_formatted = Arithmetic(ArithmeticConfig(format_reward=0.25), task).step(
        {"role": "assistant", "content": "Answer: 41"}
    )
    assert wrong_but_formatted.reward == 0.25 and wrong_but_formatted.metrics["accuracy"] == 0.0
    strict = Arithmetic(ArithmeticConfig(strict_format=True), task)
    assert strict.step({"role": "assistant", "content": "It is 42."}).reward == 0.0
    assert Arithmetic(ArithmeticConfig(), task).step({"role": "assistant", "content": None}).reward == 0.0


def test_calc_tool_is_safe_and_exact() -> None:
    assert format_value(evaluate("1234 * 5678 - 9")) == str(1234 * 5678 - 9)
    assert format_value(evaluate("10 / 4")) == "2.5"
    assert format_value(evaluate("2 ^ 10")) == "1024"
    for bad in ["__import__('os').system('true')", "1/0", "9**9**9", "", "x + 1", "1" * 300, "[1]"]:
        with pytest.raises(CalcError):
            evaluate(bad)


def test_calculator_multi_turn_rewards_and_observations() -> None:
    cfg = CalculatorConfig(process_reward=0.1, speed_reward=0.5, speed_baseline_calls=2)
    env = Calculator(cfg, _task("calculator", "Compute 123 * 456 + 7.", "56095"))
    env.reset()
    assert env.tools[0]["function"]["name"] == "calculator"
    step1 = env.step({"role": "assistant", "content": "", "tool_calls": [_call("123 * 456 + 7")]})
    assert not step1.done and step1.reward == 0.0
    assert step1.observation == [{"role": "tool", "tool_call_id": "c1", "content": "56095"}]
    assert step1.step_rewards == {"process": pytest.approx(0.1)}
    step2 = env.step({"role": "assistant", "content": "Answer: 56,095"})
    assert step2.done and step2.reward == 1.0
    assert step2.step_rewards == {"process": 0.0, "speed": pytest.approx(0.5)}  # 2 calls = the baseline
    assert step2.metrics == {"accuracy": 1.0, "tool_calls": 1.0, "truncated": 0.0}


def test_calculator_invalid_calls_are_penalised_and_reported_to_the_model() -> None:
    env = Calculator(CalculatorConfig(process_reward=0.1), _task("calculator", "q", "1"))
    env.reset()
    bad = [
        _call("1+1", name="search", call_id="a"),
        _call(None, call_id="b", raw="{not json"),
        _call("import os", call_id="c"),
        _call(None, call_id="d", raw=json.dumps({"expr": "1"})),
    ]
    result = env.step({"role": "assistant", "tool_calls": bad})
    assert result.step_rewards["process"] == pytest.approx(-0.4)
    assert [m["tool_call_id"] for m in result.observation] == ["a", "b", "c", "d"]
    assert all(m["content"].startswith("error:") for m in result.observation)


def test_calculator_process_reward_is_capped_and_turns_run_out() -> None:
    cfg = CalculatorConfig(max_turns=3, process_reward=0.1, process_reward_max_calls=2)
    env = Calculator(cfg, _task("calculator", "q", "2"))
    env.reset()
    rewards = []
    for i in range(3):
        result = env.step({"role": "assistant", "tool_calls": [_call("1+1", call_id=f"c{i}")]})
        rewards.append(result.step_rewards["process"])
    assert rewards == pytest.approx([0.1, 0.1, 0.0])
    assert result.done and result.reward == 0.0 and result.metrics["truncated"] == 1.0


def test_calculator_speed_reward_only_when_correct_and_decays() -> None:
    cfg = CalculatorConfig(speed_reward=1.0, speed_baseline_calls=2, max_turns=8)
    env = Calculator(cfg, _task("calculator", "q", "4"))
    env.reset()
    for i in range(3):
        env.step({"role": "assistant", "tool_calls": [_call("2+2", call_id=f"c{i}")]})
    slow = env.step({"role": "assistant", "content": "Answer: 4"})
    assert slow.step_rewards["speed"] == pytest.approx(0.5)  # 4 calls vs a baseline of 2
    fast = Calculator(cfg, _task("calculator", "q", "4"))
    fast.reset()
    assert fast.step({"role": "assistant", "content": "Answer: 4"}).step_rewards["speed"] == 1.0
    wrong = Calculator(cfg, _task("calculator", "q", "4"))
    wrong.reset()
    assert wrong.step({"role": "assistant", "content": "Answer: 5"}).step_rewards["speed"] == 0.0


def test_calculator_context_hook_elides_old_tool_outputs() -> None:
    env = Calculator(CalculatorConfig(keep_tool_outputs=1), _task("calculator", "q", "1"))
    history = env.reset() + [
        {"role": "assistant", "tool_calls": [_call("1", call_id="a")]},
        {"role": "tool", "tool_call_id": "a", "content": "1"},
        {"role": "assistant", "tool_calls": [_call("2", call_id="b")]},
        {"role": "tool", "tool_call_id": "b", "content": "2"},
    ]
    managed = env.context(history)
    assert [m.get("content") for m in managed if m["role"] == "tool"] == [ELIDED, "2"]
    assert len(managed) == len(history) and managed[:2] == history[:2]
    assert Calculator(CalculatorConfig(), _task("calculator", "q", "1")).context(history) == history
