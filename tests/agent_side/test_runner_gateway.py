"""One episode at a time against a live gateway + built-in engine, with the official SDKs:
the white-box loop (multi-turn tool calls, per-step rewards, the context hook), the black-box
agent in all three run modes, an Anthropic-SDK agent, and held-out evaluation."""

import asyncio

import httpx
import pytest

from agent_side.blackbox import AgentSpec
from agent_side.env import BlackBoxEnv, BlackBoxResult, EnvConfig
from agent_side.envs.calculator import ELIDED, Calculator, CalculatorConfig
from agent_side.envs.react import ReactAgentEnv, ReactConfig
from agent_side.evaluate import evaluate
from agent_side.runner import ContextExceeded, EpisodeError, run_episode
from forge.ground.types import Task

# must match tests/agent_side/conftest.py (the scripted models' script); checked by `test_case_matches`
CALC_EXPR, CALC_ANSWER = "123 * 456 + 7", "56095"


def test_case_matches(calc_case) -> None:
    assert calc_case == (CALC_EXPR, CALC_ANSWER) and str(123 * 456 + 7) == CALC_ANSWER


def _session(gateway_url: str, task_id: str = "t") -> tuple[str, str]:
    body = httpx.post(f"{gateway_url}/sessions", json={"task_id": task_id}, timeout=30).json()
    return body["session_id"], body["base_url"]


def _recorded(gateway_url: str, session_id: str) -> list[dict]:
    return httpx.get(f"{gateway_url}/sessions/{session_id}", timeout=30).json()["samples"]


def _calc_task(answer: str = CALC_ANSWER) -> Task:
    return Task(id="c", env="calculator", payload={"question": f"Compute {CALC_EXPR}.", "answer": answer})


def test_calculator_tool_calls_over_the_gateway(make_gateway, tool_engine, tool_model_dir) -> None:
    from transformers import AutoTokenizer

    gw = make_gateway(tool_engine, tool_model_dir)  # no pool: the gateway keeps samples in memory
    sid, base_url = _session(gw.url)
    cfg = CalculatorConfig(
        max_turns=3, max_tokens=64, temperature=0.0, process_reward=0.1, process_reward_max_calls=2
    )
    outcome = asyncio.run(run_episode(Calculator(cfg, _calc_task()), base_url))

    # the model called the tool on every turn: 3 valid calls, the third past the process-reward cap
    assert outcome.calls == 3 and outcome.reward == 0.0
    assert outcome.step_rewards == {"process": pytest.approx([0.1, 0.1, 0.0])}
    assert outcome.metrics["truncated"] == 1.0
    samples = _recorded(gw.url, sid)
    assert len(samples) == 3
    tok = AutoTokenizer.from_pretrained(tool_model_dir)
    last_prompt = tok.decode(samples[-1]["prompt_ids"])
    assert last_prompt.count(CALC_ANSWER) == 2  # both earlier tool results reached the model
    assert all(s["prefix_break"] is False for s in samples[1:])  # the ledger extended each time


def test_context_hook_shapes_what_the_model_sees(make_gateway, tool_engine, tool_model_dir) -> None:
    from transformers import AutoTokenizer

    gw = make_gateway(tool_engine, tool_model_dir)
    sid, base_url = _session(gw.url)
    cfg = CalculatorConfig(max_turns=3, max_tokens=64, temperature=0.0, keep_tool_outputs=1)
    asyncio.run(run_episode(Calculator(cfg, _calc_task()), base_url))
    last_prompt = AutoTokenizer.from_pretrained(tool_model_dir).decode(
        _recorded(gw.url, sid)[-1]["prompt_ids"]
    )
    assert last_prompt.count(ELIDED) == 1 and last_prompt.count(CALC_ANSWER) == 1


def test_calculator_answer_gets_outcome_and_speed_reward(
    make_gateway, answer_engine, answer_model_dir
) -> None:
    gw = make_gateway(answer_engine, answer_model_dir)
    _, base_url = _session(gw.url)
    cfg = CalculatorConfig(max_tokens=64, temperature=0.0, speed_reward=0.5, speed_baseline_calls=2)
    outcome = asyncio.run(run_episode(Calculator(cfg, _calc_task()), base_url))
    assert (outcome.calls, outcome.reward) == (1, 1.0)
    assert outcome.step_rewards == {"process": [0.0], "speed": [0.5]}
    _, base_url = _session(gw.url, "t2")
    wrong = asyncio.run(run_episode(Calculator(cfg, _calc_task(answer="1")), base_url))
    assert wrong.reward == 0.0 and wrong.step_rewards["speed"] == [0.0]


@pytest.mark.parametrize("mode", ["function", "target", "command"])
def test_react_agent_black_box_in_every_mode(
    make_gateway, answer_engine, answer_model_dir, mode: str
) -> None:
    gw = make_gateway(answer_engine, answer_model_dir)
    sid, base_url = _session(gw.url)
    env = ReactAgentEnv(
        ReactConfig(mode=mode, max_tokens=64, temperature=0.0, episode_timeout_s=60),
        Task(id="r", env="react", payload={"question": f"What is {CALC_EXPR}?", "answer": CALC_ANSWER}),
    )
    outcome = asyncio.run(run_episode(env, base_url))
    assert outcome.reward == 1.0 and outcome.metrics == {"accuracy": 1.0}
    assert len(_recorded(gw.url, sid)) == 1  # the agent's one model call went through the session


class AnthropicAgentEnv(BlackBoxEnv):
    """A black-box agent speaking the Anthropic Messages API through the `anthropic` SDK."""

    config_class = EnvConfig

    def agent(self) -> AgentSpec:
        def agent(prompt: str, env: dict) -> str:
            import anthropic

            client = anthropic.Anthropic(base_url=env["ANTHROPIC_BASE_URL"], api_key=env["ANTHROPIC_API_KEY"])
            msg = client.messages.create(
                model=env["ANTHROPIC_MODEL"],
                max_tokens=64,
                extra_body={"temperature": 0.0},  # this SDK version has no temperature argument
                messages=[{"role": "user", "content": prompt}],
            )
            return "".join(block.text for block in msg.content if block.type == "text")

        return AgentSpec(function=agent)

    def score(self, output: str) -> BlackBoxResult:
        return BlackBoxResult(reward=float(CALC_ANSWER in output))


def test_anthropic_sdk_agent_through_the_session(make_gateway, answer_engine, answer_model_dir) -> None:
    gw = make_gateway(answer_engine, answer_model_dir)
    sid, base_url = _session(gw.url)
    outcome = asyncio.run(run_episode(AnthropicAgentEnv(EnvConfig(), Task(id="a", env="x")), base_url))
    assert outcome.reward == 1.0 and len(_recorded(gw.url, sid)) == 1


def test_model_call_errors_become_episode_errors(make_gateway, answer_engine, answer_model_dir) -> None:
    gw = make_gateway(answer_engine, answer_model_dir)
    with pytest.raises(EpisodeError, match="model call 0 failed"):  # a session that does not exist: 404
        asyncio.run(run_episode(Calculator(CalculatorConfig(), _calc_task()), f"{gw.url}/sessions/nope"))
    _, base_url = _session(gw.url)
    too_long = CalculatorConfig(max_tokens=10**6)  # beyond the context: the gateway answers 400
    with pytest.raises(ContextExceeded, match="model call 0 does not fit the model's context"):
        asyncio.run(run_episode(Calculator(too_long, _calc_task()), base_url))


def test_evaluate_on_the_unrecorded_endpoint(make_gateway, answer_engine, answer_model_dir, pool) -> None:
    gw = make_gateway(answer_engine, answer_model_dir, pool)
    tasks = [
        Task(
            id=f"e{i}",
            env="calculator",
            payload={"question": "q", "answer": CALC_ANSWER if i % 3 == 0 else str(i)},
        )
        for i in range(9)
    ]
    tasks.append(Task(id="bad", env="calculator", payload={"question": "q"}))  # no answer: the env raises
    tasks.append(Task(id="unknown", env="no_such_env"))
    report = asyncio.run(
        evaluate(tasks, gw.url, config={"max_tokens": 64, "temperature": 0.0}, concurrency=4)
    )
    assert report.n == 11 and report.errors == 2
    assert sorted(r.split(":")[0] for r in report.reasons) == ["bad", "unknown"]
    assert report.accuracy == pytest.approx(3 / 11) and report.mean_reward == pytest.approx(3 / 11)
    assert report.per_task["e0"] == 1.0 and report.per_task["e1"] == 0.0
    assert pool.counts()["submitted"] == 0  # evaluation never reaches the pool


def test_rate_limited_calls_wait_and_retry(make_gateway, answer_engine, answer_model_dir) -> None:
    gw = make_gateway(answer_engine, answer_model_dir, max_concurrent_requests=1)
    cfg = CalculatorConfig(max_tokens=64, temperature=0.0)

    async def main() -> list:
        urls = [_session(gw.url, f"t{i}")[1] for i in range(6)]
        return await asyncio.gather(*(run_episode(Calculator(cfg, _calc_task()), u) for u in urls))

    outcomes = asyncio.run(main())
    assert [o.reward for o in outcomes] == [1.0] * 6
    assert httpx.get(f"{gw.url}/stats").json()["counters"].get("rejected_busy", 0) > 0
