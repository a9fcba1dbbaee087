"""`forge launch` end to end (issue 6 acceptance 2 and 3): tiny model, real Ray, Redis, engine,
gateway, env workers and DeepSpeed trainer, as a user runs it (a subprocess)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

FORGE = [sys.executable, "-m", "forge.cli", "launch"]
COMMON = [
    "model=tiny",
    "loop.prompts_per_step=2",
    "loop.group_size=2",
    "loop.checkpoint_every=2",
    "env.eval_prompts=2",
    "logger.console=false",
    "trainer.lr=1e-2",
    "env=custom",
    "env.name=vowels",
    "+env.settings.max_tokens=16",
    f"env.modules=[{Path(__file__).with_name('vowel_env.py')}]",
]


def launch(run_dir: Path, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    cmd = [*FORGE, *COMMON, f"run_dir={run_dir}", f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def leftovers(run_dir: Path) -> list[str]:
    """Processes of this run still alive: its redis-server (its dir is in run_dir) and Ray's."""
    marks = [str(run_dir)] + [s.strip() for s in (run_dir / "ray_session").read_text().splitlines()]
    alive = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(m and m in cmd for m in marks):
            alive.append(cmd[:160])
    return alive


@pytest.mark.slow
def test_launch_trains_syncs_checkpoints_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    first = launch(run_dir, "loop.steps=3", "algo.kl_coef=0.04")
    assert first.returncode == 0, first.stderr[-4000:]
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # KL to the frozen initial policy: 0 before the first update, then > 0
    assert abs(rows[0]["train/kl"]) < 1e-5 and rows[2]["train/kl"] > 1e-6
    assert all(r["rollout/episodes"] == 4 and r["train/trained_tokens"] > 0 for r in rows)
    versions = [r["sync/engine_weight_version"] for r in rows]
    assert versions == [1, 2, 3], "the engine must serve each new weight version"
    probe = [(r["sync/probe_output"], r["sync/probe_logprob"]) for r in rows]
    assert probe[0] != probe[-1], f"engine outputs did not change: {probe}"
    assert all(0 < r["engine/busy_fraction"] <= 1 and r["engine/mean_decode_batch"] >= 1 for r in rows)
    assert all(0 < r["rollout/engine_call_share"] <= 1 and r["rollout/episode_s"] > 0 for r in rows)
    assert (run_dir / "checkpoints" / "step3").is_dir()
    assert json.loads((run_dir / "state.json").read_text())["step"] == 3

    second = launch(run_dir, "loop.steps=5", "resume=true", "algo.kl_coef=0.04")
    assert second.returncode == 0, second.stderr[-4000:]
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[3]["train/kl"] > 1e-6, "after a resume the reference is still the initial policy"
    assert [r["sync/engine_weight_version"] for r in rows[3:]] == [4, 5]
    trained = [r["pool/count_failed"] for r in rows]
    assert trained[-1] == 0
    assert leftovers(run_dir) == []


def test_wrong_config_key_fails_at_start_naming_it(tmp_path):
    out = launch(tmp_path / "bad", "trainer.zero_stag=2", timeout=120)
    assert out.returncode != 0
    assert "zero_stag" in out.stderr and "TrainerConfig" in out.stderr


def test_wrong_env_setting_fails_at_start_naming_it(tmp_path):
    out = launch(tmp_path / "bad", "+env.settings.difficulti=3", timeout=120)
    assert out.returncode != 0
    assert "difficulti" in out.stderr


def test_unknown_kl_estimator_fails_at_start_naming_it(tmp_path):
    out = launch(tmp_path / "bad", "algo.kl_coef=0.04", "algo.kl_estimator=k4", timeout=120)
    assert out.returncode != 0
    assert "algo.kl_estimator='k4'" in out.stderr


def test_cuda_graph_compile_mode_fails_at_start_naming_it(tmp_path):
    out = launch(tmp_path / "bad", "trainer.compile_mode=reduce-overhead", timeout=120)
    assert out.returncode != 0
    assert "trainer.compile_mode='reduce-overhead'" in out.stderr


@pytest.mark.slow
def test_ctrl_c_drains_checkpoints_and_leaves_nothing_running(tmp_path):
    import signal
    import time

    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    cmd = [*FORGE, *COMMON, f"run_dir={run_dir}", f"hydra.run.dir={run_dir}", "loop.steps=1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 400
        while not (run_dir / "metrics.jsonl").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["step"] >= 1 and (run_dir / "checkpoints" / state["checkpoint"]).is_dir()
    assert leftovers(run_dir) == []


@pytest.mark.slow
def test_multirun_sweeps_one_run_per_job(tmp_path):
    """`forge launch -m … algo=cispo,grpo` (Hydra's basic launcher): each job is a whole run in its
    own directory, with its own config, one trained step, and nothing left running."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    cmd = [*FORGE, "-m", "model=tiny", "loop.steps=1", "loop.prompts_per_step=2", "loop.group_size=2"]
    cmd += ["env.eval_prompts=0", "logger=none", "logger.console=false", "loop.max_wall_minutes=0"]
    cmd += [f"hydra.sweep.dir={sweep}", "algo=cispo,grpo"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    for job, algo in (("0", "cispo"), ("1", "grpo")):
        run_dir = sweep / job
        assert json.loads((run_dir / "summary.json").read_text())["steps"] == 1
        assert f"algo={algo}" in (run_dir / ".hydra" / "overrides.yaml").read_text()
        assert [r["step"] for r in metrics(run_dir)] == [1]
        assert leftovers(run_dir) == []
