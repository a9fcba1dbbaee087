"""`forge bench e2e`: end-to-end trained tokens/s of `forge launch`, and with `--peer trl` the same
figures for TRL's GRPOTrainer on the same model, task, batch and device.

`--env NAME` picks the environment (default calculator, a few calls per episode; `lookup_chain`:
16+ calls per episode, the context growing by one ~64-token record per call, for prefix reuse);
an env's own launch defaults come with it (ENV_OVERRIDES; yours still win). The TRL peer runs
calculator and tool-free white-box envs only, and refuses the rest before anything runs.

Trained tokens/s (both systems): the prompt + completion tokens of every sample trained in the
measured steps (flat-equivalent: a shared prefix counts once per sample, padding never counts),
divided by those steps' wall time. Forge: a sample is one model call, its tokens are
`train/flat_tokens` and a step's wall time is `time/step_wall_s` (log to log: waiting for
episodes, the train step, weight sync). TRL: a sample is one completion (with tool calls, the
whole multi-turn sequence), its tokens are the prompt and completion masks' sums, and a step's
wall time runs from one optimizer step's end to the next (generation, rewards, the train step).
Both exclude the first `--warmup` steps (compilation, CUDA graphs, allocator warm-up).
Caveat: when episodes call tools, Forge counts an episode's history once per model call and TRL
once per episode, so the same work counts more on Forge's side; the output's `calls_per_episode`
(Forge) and `tool_calls_per_sequence` (TRL) say whether that happened (a random model ~never does).
Computed tokens/s: what the forward pass really processed — Forge's prefix-merged trees
(`train/tree_tokens`), TRL's padded batch. Generated tokens/s: tokens the model sampled.

The Forge side runs `python -m forge.cli launch` with the overrides below plus yours (`--set
KEY=VALUE` or positional after `--`) and reads `<run_dir>/metrics.jsonl`. The TRL side resolves
the same Hydra config, so it uses the same model directory (`forge.ground.models.materialize`, same
seed), the same prompts (the env's task generator, same seed, same order), the env's own
verifier as reward (`Environment.step` on the final reply), the calculator tool (TRL's `tools=`
multi-turn loop, with Forge's Hermes chat template, so the prompt is rendered as Forge's gateway
renders it), prompts_per_step × group_size completions per optimizer step (num_generations =
group_size), the same max tokens, sampling, learning rate, AdamW settings, gradient
checkpointing and precision (bf16 on CUDA, fp32 on CPU; TRL holds the weights in bf16, its fastest,
where Forge's DeepSpeed keeps fp32 master weights), and the matching loss (Forge's
cispo → TRL's loss_type=cispo, grpo → grpo). TRL generates with `model.generate` (no vLLM;
`--trl-generation paged` uses transformers' continuous batching instead).

    forge bench e2e                                     # CPU, model=tiny, 3 steps
    forge bench e2e --device cuda --peer trl --json     # H100: qwen3_0p6b_random, 8 steps
    forge bench e2e --device cuda --set loop.steps=12 -- trainer.compile_layers=false  # eager layers
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PEER_PACKAGES = "trl==1.16.0 datasets==5.2.0 'dill<0.4.2' 'multiprocess<0.70.20'"
TARGET_RATIO = 3.0

# Every run: no held-out eval, no W&B, no live console, no checkpoint inside the measured steps
# (the one at the end comes after the last metrics line). The env is `--env` (default calculator).
COMMON = [
    "env.eval_prompts=0",
    "logger=none",
    "logger.console=false",
    "loop.max_wall_minutes=0",
]
DEVICE_OVERRIDES = {
    "cpu": ["engine.device=cpu", "trainer.device=cpu"],
    # trainer and built-in engine share one GPU (weight sync by CUDA IPC); scripts/device/e2e_launch.sh
    "cuda": [
        "engine.device=cuda",
        "trainer.device=cuda",
        "engine.num_gpus=0.5",
        "loop.trainer_num_gpus=0.5",
        # two steps' episodes in flight (Forge's asynchrony; the windowed FIFO bounds their lag):
        # the engine decodes up to 128 requests at once, TRL's generate the step's 64
        "engine.kv_cache_gb=10",
        "engine.max_running_requests=128",
        # four worker processes of 32 episodes: one asyncio loop spends ~17 ms of CPU per episode
        # (HTTP client, SDK, pool calls; scripts/rollout_probe.py), a hard cap for one process
        "loop.env_workers=4",
        "loop.worker_concurrency=32",
        "pool.max_in_flight=192",
        "trainer.micro_batch_tokens=32768",
        "trainer.gradient_checkpointing=false",
    ],
}
# what an env needs beyond its preset (any override of the same key wins): lookup_chain's
# 24 calls × ~140 tokens do not fit forge.yaml's 512-token engine context
ENV_OVERRIDES = {"lookup_chain": ["engine.context_length=4096"]}
TRL_TOOLS = {"calculator"}  # the tools the TRL peer has a binding for (`calculator` below)
DEFAULTS = {  # device: model, steps, prompts_per_step, group_size
    "cpu": ("tiny", 3, 2, 2),
    "cuda": ("qwen3_0p6b_random", 8, 8, 8),
}
TRL_LOSS = {"cispo": "cispo", "grpo": "grpo"}  # Forge algo → TRL loss_type with the same objective


# --------------------------------------------------------------------------- overrides and config
def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*groups: list[str]) -> list[str]:
    """Later groups win: an override replaces an earlier one of the same key (Hydra refuses two)."""
    out: dict[str, str] = {}
    for group in groups:
        for o in group:
            if "=" not in o:
                raise ValueError(f"override {o!r} is not KEY=VALUE")
            out.pop(_key(o), None)
            out[_key(o)] = o
    return list(out.values())


def model_override(name: str) -> str:
    import configs

    presets = {p.stem for p in (Path(configs.__file__).parent / "model").glob("*.yaml")}
    return f"model={name}" if name in presets else f"model.name={name}"


def resolve_config(overrides: list[str]):
    """The ForgeConfig `forge launch` would run with these overrides (hydra.* ones aside)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import configs
    from forge.config import register

    register()
    with initialize_config_dir(config_dir=str(Path(configs.__file__).parent), version_base=None):
        raw = compose("forge", overrides=[o for o in overrides if not _key(o).startswith("hydra.")])
    return OmegaConf.to_object(raw)


# --------------------------------------------------------------------------- summaries
def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize_forge(rows: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Steady-state figures from metrics.jsonl rows (steps after the first `warmup`)."""
    steady = [r for r in rows if r["step"] > warmup]
    if not steady:
        raise ValueError(f"no steps after the {warmup} warm-up steps ({len(rows)} logged)")
    wall = sum(r["time/step_wall_s"] for r in steady)
    flat = sum(r["train/flat_tokens"] for r in steady)
    tree = sum(r["train/tree_tokens"] for r in steady)
    generated = sum(r["rollout/generated_tokens"] for r in steady)

    def phase(key: str) -> float:
        return _mean([r[key] for r in steady if key in r])

    train = phase("train/step_time_s")
    sync = phase("time/weight_sync_s")
    step = wall / len(steady)
    return {
        "system": "forge",
        "steps": len(steady),
        "steps_total": len(rows),
        "warmup": warmup,
        "trained_tokens_per_s": flat / wall,
        "computed_tokens_per_s": tree / wall,
        "generated_tokens_per_s": generated / wall,
        "step_s": step,
        "trained_tokens_per_step": flat / len(steady),
        "phases": {
            "train_step_s": train,
            "prepare_s": phase("time/prepare_s"),
            "forward_backward_s": phase("time/forward_backward_s"),
            "optimizer_s": phase("time/optimizer_s"),
            "weight_sync_s": sync,
            # the rest of a step: waiting for episodes the engine is still generating, bookkeeping
            "rollout_wait_s": step - train - sync,
        },
        "token_ratio": tree and flat / tree,
        "calls_per_episode": phase("rollout/calls_per_episode"),
        "episodes_per_step": phase("rollout/episodes"),
        "reward_mean": phase("reward/mean"),
    }


def summarize_trl(steps: list[dict[str, float]], warmup: int) -> dict[str, Any]:
    """Steady-state figures from the TRL child's per-step records."""
    steady = steps[warmup:]
    if not steady:
        raise ValueError(f"no steps after the {warmup} warm-up steps ({len(steps)} recorded)")
    wall = sum(s["step_s"] for s in steady)
    trained = sum(s["prompt_tokens"] + s["completion_tokens"] for s in steady)
    step = wall / len(steady)
    gen = _mean([s["generate_s"] for s in steady])
    return {
        "system": "trl",
        "steps": len(steady),
        "steps_total": len(steps),
        "warmup": warmup,
        "trained_tokens_per_s": trained / wall,
        "computed_tokens_per_s": sum(s["padded_tokens"] for s in steady) / wall,
        "generated_tokens_per_s": sum(s["generated_tokens"] for s in steady) / wall,
        "step_s": step,
        "trained_tokens_per_step": trained / len(steady),
        "phases": {"generate_score_s": gen, "train_s": step - gen},
        "sequences_per_step": _mean([s["sequences"] for s in steady]),
        "tool_calls_per_sequence": _mean([s["tool_calls"] for s in steady]),
        "reward_mean": _mean([s["reward_mean"] for s in steady]),
    }


# --------------------------------------------------------------------------- the Forge side
def run_forge(overrides: list[str], out: Path, warmup: int, timeout: float) -> dict[str, Any]:
    run_dir = out / "forge_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    log = out / "forge.log"
    cmd = [sys.executable, "-m", "forge.cli", "launch", *overrides]
    cmd += [f"run_dir={run_dir}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    started = time.perf_counter()
    rc = _run(cmd, log, env, timeout)
    metrics = run_dir / "metrics.jsonl"
    if rc != 0 or not metrics.exists():
        raise RuntimeError(f"forge launch failed (rc={rc}); last lines of {log}:\n{_tail(log)}")
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    result = summarize_forge(rows, warmup)
    result["run_s"] = time.perf_counter() - started
    for heavy in ("checkpoints", "weights", "redis"):  # keep the logs, not gigabytes of state
        shutil.rmtree(run_dir / heavy, ignore_errors=True)
    return result


def _run(cmd: list[str], log: Path, env: dict[str, str], timeout: float) -> int | str:
    """Run `cmd` in its own process group, output to `log`. Past `timeout`, or on our own Ctrl-C:
    Ctrl-C to the group (forge launch then stops its children), SIGKILL 60 s later."""
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            return f"timeout after {timeout:.0f} s"
        except BaseException:
            _stop(proc)
            raise


def _stop(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGINT, 60), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- the TRL side
def trl_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("trl", "datasets"))


def trl_refusal(cfg) -> str | None:
    """Why the TRL peer cannot run cfg's env (one line), or None: it runs white-box envs whose
    tools, if any, are calculator's (TRL's `tools=` loop needs a Python binding for each)."""
    from agent_side.registry import get_env, load_env_modules, make_config
    from agent_side.tasks import make_tasks

    load_env_modules(list(cfg.env.modules))
    spec = get_env(cfg.env.name)
    if not spec.white_box:
        return f"env={cfg.env.name} is a black-box agent; the TRL peer runs white-box envs only"
    env_cfg = make_config(cfg.env.name, dict(cfg.env.settings))
    (task,) = make_tasks(cfg.env.name, 1, cfg.seed, 1, env_cfg)
    names = [t["function"]["name"] for t in spec.env_class(env_cfg, task).tools or []]
    if set(names) - TRL_TOOLS:
        return (
            f"env={cfg.env.name} offers tools {names} that TRL has no binding for; "
            "the TRL peer runs env=calculator or a tool-free env (run without --peer)"
        )
    return None


def trl_spec(cfg, device: str, steps: int, generation: str, grad_accum: int) -> dict[str, Any]:
    """Everything the TRL child needs, taken from the resolved Forge config."""
    from agent_side.registry import make_config
    from forge.ground.models import materialize

    if cfg.algo.name not in TRL_LOSS:
        raise ValueError(f"algo={cfg.algo.name} has no TRL counterpart; use algo=cispo or algo=grpo")
    env_cfg = make_config(cfg.env.name, dict(cfg.env.settings))
    per_step = cfg.loop.prompts_per_step * cfg.loop.group_size
    if per_step % grad_accum:
        raise ValueError(f"--trl-grad-accum {grad_accum} does not divide {per_step} completions per step")
    precision = cfg.trainer.precision
    bf16 = precision == "bf16" or (precision == "auto" and device == "cuda")
    return {
        "model_dir": materialize(cfg.model.name, cfg.seed),
        "env": cfg.env.name,
        "env_settings": dict(cfg.env.settings),
        "env_modules": list(cfg.env.modules),
        "seed": cfg.seed,
        "steps": steps,
        "prompts_per_step": cfg.loop.prompts_per_step,
        "group_size": cfg.loop.group_size,
        "grad_accum": grad_accum,
        "max_tokens": env_cfg.max_tokens,
        "max_turns": getattr(env_cfg, "max_turns", 1),
        "temperature": env_cfg.temperature,
        "top_p": env_cfg.top_p,
        "lr": cfg.trainer.lr,
        "betas": [cfg.trainer.beta1, cfg.trainer.beta2],
        "adam_eps": cfg.trainer.adam_eps,
        "weight_decay": cfg.trainer.weight_decay,
        "grad_clip": cfg.trainer.grad_clip,
        "gradient_checkpointing": cfg.trainer.gradient_checkpointing,
        "loss_type": TRL_LOSS[cfg.algo.name],
        "epsilon": cfg.algo.ppo_eps,
        "epsilon_high": cfg.algo.eps_high if cfg.algo.name == "cispo" else cfg.algo.ppo_eps,
        "device": device,
        "bf16": bf16,
        "generation": generation,
    }


def run_trl(spec: dict[str, Any], out: Path, warmup: int, timeout: float) -> dict[str, Any]:
    spec_path, result_path, log = out / "trl_spec.json", out / "trl_steps.json", out / "trl.log"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "result": str(result_path), "work": str(out / "trl_out")}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    cmd = [sys.executable, "-m", "forge.bench.e2e", "--trl-child", str(spec_path)]
    started = time.perf_counter()
    rc = _run(cmd, log, env, timeout)
    if rc != 0 or not result_path.exists():
        raise RuntimeError(f"the TRL run failed (rc={rc}); last lines of {log}:\n{_tail(log)}")
    child = json.loads(result_path.read_text())
    result = summarize_trl(child["steps"], warmup)
    result.update(
        run_s=time.perf_counter() - started,
        tools=child["tools"],
        trl_version=child["trl_version"],
        loss_type=spec["loss_type"],
        generation=spec["generation"],
    )
    shutil.rmtree(out / "trl_out", ignore_errors=True)
    return result


def trl_child(spec_path: str) -> int:
    """The TRL run itself (a subprocess, so the GPU is free of Forge): per-step records → JSON."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        import trl
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as exc:
        print(f"forge bench e2e --peer trl: cannot import TRL ({exc}); pip install {PEER_PACKAGES}")
        return 2
    import torch
    from transformers import AutoTokenizer, TrainerCallback

    from agent_side.registry import get_env, load_env_modules, make_config
    from agent_side.tasks import make_tasks

    load_env_modules(spec["env_modules"])
    env_cfg = make_config(spec["env"], spec["env_settings"])
    env_class = get_env(spec["env"]).env_class
    n_prompts = spec["steps"] * spec["prompts_per_step"]
    tasks = {t.id: t for t in make_tasks(spec["env"], n_prompts, spec["seed"], 1, env_cfg)}
    rows = [{"prompt": env_class(env_cfg, t).reset(), "task_id": tid} for tid, t in tasks.items()]
    probe = env_class(env_cfg, next(iter(tasks.values())))
    tool_specs = probe.tools or []

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    tools = []
    if tool_specs:
        names = [t["function"]["name"] for t in tool_specs]
        if names != ["calculator"]:
            raise ValueError(f"env {spec['env']!r} offers tools {names}: only `calculator` has a TRL binding")
        tools = [calculator]
        hermes_tool_template(tokenizer)

    def reward(completions, task_id, **_) -> list[float]:
        """The env's own verdict on the final reply (for calculator: `check_number` on the answer)."""
        out = []
        for messages, tid in zip(completions, task_id, strict=True):
            final = next((m for m in reversed(messages) if m.get("role") == "assistant"), {})
            env = env_class(env_cfg, tasks[tid])
            env.reset()
            out.append(float(env.step({"role": "assistant", "content": final.get("content") or ""}).reward))
        return out

    cuda = spec["device"] == "cuda"
    records: list[dict[str, float]] = []

    def sync() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    class Timed(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            start = sync()
            out = super()._generate_and_score_completions(inputs)
            done = sync()
            completion = out["completion_mask"]
            model_tokens = completion * out["tool_mask"] if "tool_mask" in out else completion
            records.append(
                {
                    "generate_s": done - start,
                    "prompt_tokens": float(out["prompt_mask"].sum()),
                    "completion_tokens": float(completion.sum()),
                    "generated_tokens": float(model_tokens.sum()),
                    "padded_tokens": float(out["prompt_ids"].numel() + out["completion_ids"].numel()),
                    "sequences": float(out["prompt_ids"].shape[0]),
                }
            )
            return out

    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            ends.append(sync())

        def on_step_end(self, args, state, control, **kw):
            ends.append(sync())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and records:  # this step's means (logging_steps=1; on_log follows on_step_end)
                for key, name in (("reward", "reward_mean"), ("tools/call_frequency", "tool_calls")):
                    if logs.get(key) is not None:
                        records[-1][name] = float(logs[key])

    micro = spec["prompts_per_step"] * spec["group_size"] // spec["grad_accum"]
    args = GRPOConfig(
        output_dir=spec["work"],
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=spec["grad_accum"],
        steps_per_generation=spec["grad_accum"],  # one generation batch = one optimizer step
        num_generations=spec["group_size"],
        max_completion_length=spec["max_tokens"],
        max_tool_calling_iterations=max(spec["max_turns"] - 1, 0) if tools else None,
        temperature=spec["temperature"],
        top_p=spec["top_p"],
        max_steps=spec["steps"],
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=spec["betas"][0],
        adam_beta2=spec["betas"][1],
        adam_epsilon=spec["adam_eps"],
        weight_decay=spec["weight_decay"],
        max_grad_norm=spec["grad_clip"],
        gradient_checkpointing=spec["gradient_checkpointing"],
        loss_type=spec["loss_type"],
        epsilon=spec["epsilon"],
        epsilon_high=spec["epsilon_high"],
        beta=0.0,  # no KL term / reference model (Forge has none)
        num_iterations=1,
        bf16=spec["bf16"],
        use_cpu=not cuda,
        model_init_kwargs={"dtype": torch.bfloat16 if spec["bf16"] else torch.float32},
        use_transformers_continuous_batching=spec["generation"] == "paged",
        shuffle_dataset=False,  # prompt order as Forge's task stream
        seed=spec["seed"],
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = Timed(
        model=spec["model_dir"],
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        tools=tools or None,
        callbacks=[StepClock()],
    )
    trainer.train()
    if len(ends) != len(records) + 1:
        raise RuntimeError(f"{len(records)} generation batches but {len(ends) - 1} optimizer steps")
    for i, r in enumerate(records):
        r["step_s"] = ends[i + 1] - ends[i]
        r.setdefault("reward_mean", float("nan"))
        r.setdefault("tool_calls", 0.0)
    result = {"steps": records, "tools": bool(tools), "trl_version": trl.__version__}
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


def hermes_tool_template(tokenizer) -> None:
    """Forge's gateway renders tool conversations with its Hermes template when the tokenizer's own
    template cannot (SmolLM2's): give TRL the same template, and the parser for its tool calls."""
    from trl import chat_template_utils as ctu

    from gateway.templates import HERMES_TEMPLATE

    if tokenizer.chat_template and "tools" in tokenizer.chat_template:
        return
    tokenizer.chat_template = HERMES_TEMPLATE
    if getattr(ctu, "_SUPPORTS_RESPONSE_TEMPLATE", True):
        tokenizer.response_template = ctu.qwen3_template
    else:
        tokenizer.response_schema = ctu.qwen3_schema


def calculator(expression: str):  # no return annotation: it would add a "return" key to the schema
    """Evaluate an arithmetic expression with + - * / // % ** and parentheses.

    Args:
        expression: e.g. (1234 * 56) - 789
    """
    from agent_side.envs.calc_tool import CalcError, evaluate, format_value

    try:
        return format_value(evaluate(expression))
    except CalcError as exc:
        return f"error: {exc}"


# --------------------------------------------------------------------------- entry point
def _fmt(result: dict[str, Any]) -> str:
    phases = "  ".join(f"{k} {v:.3f}" for k, v in result["phases"].items())
    return (
        f"{result['system']:>5}: {result['trained_tokens_per_s']:,.0f} trained tok/s  "
        f"{result['computed_tokens_per_s']:,.0f} computed tok/s  "
        f"{result['generated_tokens_per_s']:,.0f} generated tok/s  step {result['step_s']:.3f} s "
        f"({result['steps']} steps after {result['warmup']} warm-up)\n       phases: {phases}"
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["--trl-child"]:
        return trl_child(argv[1])
    p = argparse.ArgumentParser(prog="forge bench e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default=None, help="default: tiny (cpu), qwen3_0p6b_random (cuda)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps; default 3 (cpu), 8 (cuda)")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of every figure")
    p.add_argument("--prompts-per-step", type=int, default=None, help="default 2 (cpu), 8 (cuda)")
    p.add_argument("--group-size", type=int, default=None, help="default 2 (cpu), 8 (cuda)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--env", default="calculator", help="environment (default calculator; lookup_chain: 16+ calls)"
    )
    p.add_argument("--peer", choices=["trl"], default=None, help="also run TRL's GRPOTrainer")
    p.add_argument("--peer-only", action="store_true", help="run only the peer (no forge launch)")
    p.add_argument("--trl-generation", choices=["generate", "paged"], default="generate")
    p.add_argument("--trl-grad-accum", type=int, default=1, help="micro-batches per TRL step")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a Hydra override")
    p.add_argument("--out", default=None, help="keep logs, metrics, results.jsonl here (default: a temp dir)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per system")
    p.add_argument("--json", action="store_true", help="one JSON object per system, then the ratio")
    p.add_argument("--combine", nargs="+", metavar="JSONL", help="print these earlier --json results + ratio")
    p.add_argument("overrides", nargs="*", help="more Hydra overrides (after --)")
    args = p.parse_args(argv)
    if args.combine:
        rows = [json.loads(line) for f in args.combine for line in Path(f).read_text().splitlines()]
        results = [r for r in rows if r.get("system") in ("forge", "trl")]
        return report(results, args.json, "trl")

    if args.peer_only and not args.peer:
        p.error("--peer-only needs --peer")
    model, steps, prompts, group = DEFAULTS[args.device]
    overrides = merge_overrides(
        COMMON,
        DEVICE_OVERRIDES[args.device],
        [
            f"env={args.env}",
            model_override(args.model or model),
            f"seed={args.seed}",
            f"loop.steps={args.steps or steps}",
            f"loop.prompts_per_step={args.prompts_per_step or prompts}",
            f"loop.group_size={args.group_size or group}",
        ],
        args.set,
        args.overrides,
    )
    steps_value = {_key(o): o.split("=", 1)[1] for o in overrides}["loop.steps"]
    if not steps_value.isdigit():
        p.error(f"loop.steps={steps_value}: expected a number")
    steps = int(steps_value)
    if steps <= args.warmup:
        p.error(f"{steps} steps leave nothing after --warmup {args.warmup}")
    # no checkpoint inside the measured steps (an explicit loop.checkpoint_every still wins);
    # the env's own defaults, whichever way it was chosen (--env, --set env=…, -- env=…)
    env_name = {_key(o): o.split("=", 1)[1] for o in overrides}["env"]
    overrides = merge_overrides(
        [f"loop.checkpoint_every={steps}", *ENV_OVERRIDES.get(env_name, [])], overrides
    )
    try:  # a wrong key or value fails here, before any run
        cfg = resolve_config([*overrides, "run_dir=unused"])
    except Exception as exc:  # Hydra's and OmegaConf's errors name the key
        print(f"forge bench e2e: bad overrides: {exc}", file=sys.stderr)
        return 2
    if args.peer == "trl":
        refusal = trl_refusal(cfg)
        if refusal:
            print(f"forge bench e2e --peer trl: {refusal}", file=sys.stderr)
            return 2
        if not trl_available():
            print(
                f"forge bench e2e --peer trl needs TRL, which is not installed: pip install -e '.[peer]' "
                f"(or pip install {PEER_PACKAGES})",
                file=sys.stderr,
            )
            return 2

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="forge-bench-e2e-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").unlink(missing_ok=True)
    results: list[dict[str, Any]] = []
    common = {
        "model": cfg.model.name,
        "device": args.device,
        "env": cfg.env.name,
        "prompts_per_step": cfg.loop.prompts_per_step,
        "group_size": cfg.loop.group_size,
        "max_tokens": make_max_tokens(cfg),
        "algo": cfg.algo.name,
    }

    def done(result: dict[str, Any]) -> None:  # each system's line as soon as it is known
        results.append({**result, **common})
        with (out / "results.jsonl").open("a") as fh:
            fh.write(json.dumps(results[-1]) + "\n")

    try:
        if not args.peer_only:
            done(run_forge(overrides, out, args.warmup, args.timeout))
        if args.peer == "trl":
            spec = trl_spec(cfg, args.device, steps, args.trl_generation, args.trl_grad_accum)
            done(run_trl(spec, out, args.warmup, args.timeout))
    except (RuntimeError, ValueError) as exc:
        print(f"forge bench e2e: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)

    return report(results, args.json, args.peer)


def report(results: list[dict[str, Any]], as_json: bool, peer: str | None) -> int:
    """Print each system's figures, then forge / peer trained tokens/s when both ran."""
    systems = {r["system"]: r for r in results}
    if "forge" in systems and peer in systems:
        forge, other = systems["forge"], systems[peer]
        ratio = forge["trained_tokens_per_s"] / other["trained_tokens_per_s"]
        results = [
            *results,
            {
                "system": "ratio",
                "peer": peer,
                "trained_tokens_per_s": ratio,
                "step_s": other["step_s"] / forge["step_s"],
                "target": TARGET_RATIO,
                "met": ratio >= TARGET_RATIO,
            },
        ]
    for r in results:
        if as_json:
            print(json.dumps(r))
        elif r["system"] == "ratio":
            verdict = "met" if r["met"] else "not met"
            print(
                f"ratio: forge / {r['peer']} trained tok/s = {r['trained_tokens_per_s']:.2f}× "
                f"(target ≥ {TARGET_RATIO}×: {verdict})"
            )
        else:
            print(_fmt(r))
    if any(r["system"] == "trl" and not r.get("tools") for r in results):
        print("note: TRL ran single-turn (the env offers no tools)", file=sys.stderr)
    return 0


def make_max_tokens(cfg) -> int:
    from agent_side.registry import make_config

    return make_config(cfg.env.name, dict(cfg.env.settings)).max_tokens


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
