"""`forge bench e2e` (issue 6 acceptance 4): the Forge side runs `forge launch` on CPU with the tiny
model; the TRL peer runs GRPOTrainer on the same model and task (skipped without TRL: pip install
-e '.[peer]'). The fast tests check the figures' definitions on hand-made rows."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from forge.bench import e2e as bench_e2e

HAS_TRL = all(importlib.util.find_spec(m) is not None for m in ("trl", "datasets"))
NO_TRL = "TRL is not installed (pip install -e '.[peer]'): the --peer trl side cannot run"
BENCH = [sys.executable, "-m", "forge.cli", "bench", "e2e", "--json"]
QUICK = [
    "--device",
    "cpu",
    "--prompts-per-step",
    "2",
    "--group-size",
    "2",
    "--set",
    "env.settings.max_tokens=16",
]


def bench(*args: str, timeout: float = 800) -> tuple[subprocess.CompletedProcess, list[dict]]:
    env = {**os.environ, "WANDB_MODE": "offline"}
    out = subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    return out, [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_forge_side_on_cpu(tmp_path):
    _, results = bench(*QUICK, "--steps", "3", "--warmup", "1", "--out", str(tmp_path))
    assert [r["system"] for r in results] == ["forge"]
    forge = results[0]
    assert forge["steps"] == 2 and forge["steps_total"] == 3 and forge["warmup"] == 1
    for key in ("trained_tokens_per_s", "computed_tokens_per_s", "generated_tokens_per_s", "step_s"):
        assert positive(forge[key]), (key, forge[key])
    for key in ("train_step_s", "forward_backward_s", "optimizer_s", "weight_sync_s"):
        assert positive(forge["phases"][key]), (key, forge["phases"])
    assert forge["model"] == "tiny" and forge["env"] == "calculator" and forge["max_tokens"] == 16
    # the figure is the metrics file's flat tokens over its wall time, warm-up step left out
    rows = [json.loads(line) for line in (tmp_path / "forge_run" / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in rows if r["step"] > 1]
    expect = sum(r["train/flat_tokens"] for r in steady) / sum(r["time/step_wall_s"] for r in steady)
    assert forge["trained_tokens_per_s"] == pytest.approx(expect)
    assert all(r["rollout/episodes"] == 4 for r in rows)
    assert forge["phases"]["train_step_s"] < forge["step_s"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRL, reason=NO_TRL)
def test_trl_peer_on_cpu(tmp_path):
    out, results = bench(
        *QUICK, "--peer", "trl", "--peer-only", "--steps", "2", "--warmup", "1", "--out", str(tmp_path)
    )
    assert [r["system"] for r in results] == ["trl"]
    trl = results[0]
    assert trl["steps"] == 1 and trl["steps_total"] == 2
    for key in ("trained_tokens_per_s", "generated_tokens_per_s", "step_s"):
        assert positive(trl[key]), (key, trl[key])
    assert positive(trl["phases"]["generate_score_s"]) and positive(trl["phases"]["train_s"])
    assert trl["tools"] is True, "calculator's tool must be given to TRL"
    assert trl["sequences_per_step"] == 4  # prompts_per_step × group_size completions
    # each sequence: the calculator prompt (system + tool schema + question) plus ≤ 16 completion tokens
    per_sequence = trl["trained_tokens_per_step"] / trl["sequences_per_step"]
    assert 100 < per_sequence < 1000
    steps = json.loads((tmp_path / "trl_steps.json").read_text())["steps"]
    assert all(0 < s["completion_tokens"] <= 4 * 16 for s in steps)
    assert trl["trained_tokens_per_s"] == pytest.approx(
        (steps[1]["prompt_tokens"] + steps[1]["completion_tokens"]) / steps[1]["step_s"]
    )


def test_peer_without_trl_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(bench_e2e, "trl_available", lambda: False)
    assert bench_e2e.main(["--peer", "trl"]) == 2
    err = capsys.readouterr().err
    assert "pip install" in err and "trl==1.16.0" in err


def test_forge_summary_is_flat_tokens_over_wall_time_after_warmup():
    def row(step, flat, wall, train):
        return {
            "step": step,
            "time/step_wall_s": wall,
            "train/flat_tokens": flat,
            "train/tree_tokens": flat / 2,
            "rollout/generated_tokens": 10,
            "train/step_time_s": train,
            "time/weight_sync_s": 0.5,
        }

    rows = [row(1, 1000, 100.0, 50.0), row(2, 300, 2.0, 1.0), row(3, 500, 3.0, 1.5)]
    s = bench_e2e.summarize_forge(rows, warmup=1)
    assert s["steps"] == 2 and s["trained_tokens_per_s"] == pytest.approx(800 / 5.0)
    assert s["computed_tokens_per_s"] == pytest.approx(400 / 5.0) and s["step_s"] == pytest.approx(2.5)
    assert s["phases"]["rollout_wait_s"] == pytest.approx(2.5 - 1.25 - 0.5)
    with pytest.raises(ValueError, match="warm-up"):
        bench_e2e.summarize_forge(rows, warmup=3)


def test_trl_summary_counts_prompt_and_completion_tokens():
    def step(prompt, completion, seconds):
        return {
            "step_s": seconds,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "generated_tokens": completion,
            "padded_tokens": prompt + completion + 7,
            "generate_s": seconds / 2,
            "sequences": 4,
            "tool_calls": 0.0,
            "reward_mean": 0.0,
        }

    s = bench_e2e.summarize_trl([step(999, 999, 99.0), step(400, 100, 4.0), step(400, 200, 6.0)], warmup=1)
    assert s["trained_tokens_per_s"] == pytest.approx(1100 / 10.0)
    assert s["generated_tokens_per_s"] == pytest.approx(300 / 10.0)
    assert s["phases"]["generate_score_s"] == pytest.approx(2.5) and s["phases"]["train_s"] == pytest.approx(
        2.5
    )


def test_overrides_later_win_and_model_names_resolve():
    merged = bench_e2e.merge_overrides(["loop.steps=3", "model=tiny"], ["+loop.steps=5"], ["x.y=1"])
    assert merged == ["model=tiny", "+loop.steps=5", "x.y=1"]
    assert bench_e2e.model_override("qwen3_0p6b_random") == "model=qwen3_0p6b_random"
    assert bench_e2e.model_override("/models/my-hf-dir") == "model.name=/models/my-hf-dir"
    with pytest.raises(ValueError, match="KEY=VALUE"):
        bench_e2e.merge_overrides(["loop.steps"])


def test_wrong_override_fails_before_any_run(tmp_path, capsys):
    assert bench_e2e.main(["--set", "loop.no_such_key=1", "--out", str(tmp_path)]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert not (tmp_path / "forge.log").exists()


@pytest.mark.skipif(not HAS_TRL, reason=NO_TRL)
def test_trl_reads_back_a_tool_call_in_forges_template():
    from transformers import AutoTokenizer
    from trl.chat_template_utils import parse_response, supports_tool_calling

    from forge.ground.models import materialize

    tok = AutoTokenizer.from_pretrained(materialize("tiny"))
    bench_e2e.hermes_tool_template(tok)
    assert supports_tool_calling(tok)
    messages = [{"role": "user", "content": "Compute 12 * 34."}]
    prefix = tok.apply_chat_template(
        messages, tools=[bench_e2e.calculator], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    reply = (
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "12 * 34"}}\n</tool_call><|im_end|>'
    )
    parsed = parse_response(tok, tok.encode(reply, add_special_tokens=False), prefix=prefix)
    call = parsed["tool_calls"][0]["function"]
    assert call["name"] == "calculator" and call["arguments"] == {"expression": "12 * 34"}
    assert bench_e2e.calculator(**call["arguments"]) == "408"
    assert bench_e2e.calculator("1 / 0").startswith("error")


def test_trl_sees_the_tool_schema_forges_calculator_offers():
    from transformers.utils import get_json_schema

    from agent_side.envs.calculator import CALCULATOR_TOOL

    assert get_json_schema(bench_e2e.calculator) == CALCULATOR_TOOL  # so both prompts render alike


def test_combine_reports_forge_over_trl(tmp_path, capsys):
    forge = {"system": "forge", "trained_tokens_per_s": 900.0, "step_s": 2.0}
    trl = {"system": "trl", "trained_tokens_per_s": 250.0, "step_s": 6.0, "tools": True}
    (tmp_path / "f.jsonl").write_text(json.dumps(forge) + "\n")
    (tmp_path / "t.jsonl").write_text(json.dumps(trl) + "\n")
    assert bench_e2e.main(["--combine", str(tmp_path / "f.jsonl"), str(tmp_path / "t.jsonl"), "--json"]) == 0
    ratio = [json.loads(line) for line in capsys.readouterr().out.splitlines()][-1]
    assert ratio["system"] == "ratio" and ratio["trained_tokens_per_s"] == pytest.approx(3.6)
    assert ratio["step_s"] == pytest.approx(3.0) and ratio["met"] is True


@pytest.mark.skipif(not HAS_TRL, reason=NO_TRL)
def test_trl_prompt_tokens_are_the_ones_forges_gateway_renders():
    from transformers import AutoTokenizer

    from agent_side.envs.calculator import CALCULATOR_TOOL, Calculator, CalculatorConfig
    from agent_side.tasks import make_tasks
    from forge.ground.models import materialize
    from gateway.messages import Message
    from gateway.templates import ChatRenderer

    task = make_tasks("calculator", 1, seed=0)[0]
    messages = Calculator(CalculatorConfig(), task).reset()
    tok = AutoTokenizer.from_pretrained(materialize("tiny"))
    renderer = ChatRenderer(tok)
    template = renderer.template_name(conv_tools=True)
    text = renderer.render([Message(**m) for m in messages], [CALCULATOR_TOOL], True, template)
    forge_ids = renderer.encode(text)

    bench_e2e.hermes_tool_template(tok)
    trl_ids = tok.apply_chat_template(
        messages, tools=[bench_e2e.calculator], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert template == "hermes" and trl_ids == forge_ids
