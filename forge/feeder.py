"""The driver's small helpers: keeping the task queue stocked, per-step metrics, held-out accuracy."""

from __future__ import annotations

import asyncio
from typing import Any

from forge.config import ForgeConfig


class TaskFeeder:
    """Submits prompt groups so producers never starve: pending work ≥ two steps' worth.

    The next prompt index is derived from what the pool says was submitted, so a resumed run
    continues the task stream where it stopped (the pool is persistent; ids never collide).
    """

    def __init__(self, pool, cfg: ForgeConfig) -> None:
        self.pool, self.cfg = pool, cfg
        self.per_step = cfg.loop.prompts_per_step * cfg.loop.group_size
        self._tokenizer = None

    def top_up(self) -> int:
        from agent_side.tasks import make_tasks

        counts = self.pool.counts()
        waiting = counts["pending"] + counts["running"] + counts["done"]
        want = self.cfg.pool.max_in_flight + 2 * self.per_step - waiting
        groups = max(0, -(-want // self.cfg.loop.group_size))
        if not groups:
            return 0
        start = counts["submitted"] // self.cfg.loop.group_size
        env = self.cfg.env
        tasks = make_tasks(
            env.name, groups, self.cfg.seed, self.cfg.loop.group_size, dict(env.settings), start
        )
        self.pool.submit(tasks)
        return len(tasks)

    def sample_rows(self, batch, step: int, limit: int = 4) -> tuple[str, list[str], list[list[Any]]]:
        """A W&B table of a few trajectories: the last call's prompt and completion, decoded."""
        if step % max(1, self.cfg.logger.sample_table_every):
            return "samples", [], []
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from forge.ground.models import materialize

            self._tokenizer = AutoTokenizer.from_pretrained(materialize(self.cfg.model.name, self.cfg.seed))
        rows = []
        for ep in batch.episodes[:limit]:
            if not ep.samples:
                continue
            s = ep.samples[-1]
            rows.append(
                [
                    step,
                    ep.task.id,
                    ep.reward,
                    len(ep.samples),
                    self._tokenizer.decode(s.prompt_ids)[-600:],
                    self._tokenizer.decode(s.completion_ids),
                ]
            )
        return "samples", ["step", "task", "reward", "calls", "prompt (tail)", "completion"], rows


def batch_metrics(
    batch, train: dict[str, float], sync: dict[str, Any], counts: dict[str, int], wall_s: float
) -> dict:
    """One step's metrics, namespaced for W&B."""
    eps = batch.episodes
    rewards = [e.reward for e in eps]
    acc = [e.metrics["accuracy"] for e in eps if "accuracy" in e.metrics]
    generated = sum(len(s.completion_ids) for e in eps for s in e.samples)
    out: dict[str, Any] = {
        "reward/mean": sum(rewards) / max(len(rewards), 1),
        "reward/max": max(rewards, default=0.0),
        "rollout/episodes": len(eps),
        "rollout/calls_per_episode": sum(len(e.samples) for e in eps) / max(len(eps), 1),
        "rollout/generated_tokens": generated,
        "rollout/generated_tokens_per_s": generated / max(wall_s, 1e-9),
        "time/step_wall_s": wall_s,
        "time/weight_sync_s": float(sync.get("seconds", 0.0)),
    }
    if acc:
        out["accuracy/mean"] = sum(acc) / len(acc)
    # episodes cut off (at max_turns, or when the next call no longer fit the context): how many
    out["rollout/truncated"] = sum(e.metrics.get("truncated", 0.0) > 0 for e in eps)
    out["rollout/context_truncated"] = sum(e.metrics.get("context_truncated", 0.0) > 0 for e in eps)
    out.update(rollout_timings(eps))
    for k, v in train.items():
        key = k.replace("time_", "").removesuffix("_s") + "_s" if k.startswith("time_") else k
        out[("time/" if k.startswith("time_") else "train/") + key] = v
    for k, v in batch.metrics.items():
        out[f"pool/{k}"] = v
    out["pool/mean_lag_versions"] = batch.metrics.get("lag_versions_mean", 0.0)
    for k in ("pending", "running", "done", "failed", "dropped_stale", "retries"):
        out[f"pool/count_{k}"] = counts.get(k, 0)
    if sync:
        out["sync/mode_disk"] = float(sync.get("mode") == "disk")
        out["sync/engine_weight_version"] = sync.get("engine_weight_version", -1)
        out["sync/probe_output"] = " ".join(map(str, sync.get("probe_output", [])))
        if "probe_logprob" in sync:
            out["sync/probe_logprob"] = sync["probe_logprob"]
    return out


def rollout_timings(eps) -> dict[str, float]:
    """Where an episode's wall time goes: in the engine call (gateway → engine → gateway), in the
    gateway's rendering, or elsewhere (worker, env, pool, HTTP to the gateway)."""
    timed = [e for e in eps if "episode_s" in e.metrics]
    if not timed:
        return {}
    episode = sum(e.metrics["episode_s"] for e in timed)
    engine = sum(s.timings.get("engine_s", 0.0) for e in timed for s in e.samples)
    render = sum(s.timings.get("render_s", 0.0) for e in timed for s in e.samples)
    n = len(timed)
    return {
        "rollout/episode_s": episode / n,
        "rollout/engine_call_s": engine / n,
        "rollout/render_s": render / n,
        "rollout/engine_call_share": engine / episode if episode else 0.0,
    }


def evaluate_accuracy(cfg: ForgeConfig, gateway_url: str) -> float:
    """Accuracy on held-out prompts through the gateway's unrecorded /v1 API."""
    from agent_side.evaluate import evaluate
    from agent_side.tasks import make_eval_set

    tasks = make_eval_set(cfg.env.name, cfg.env.eval_prompts, cfg.seed, dict(cfg.env.settings))
    settings = {**dict(cfg.env.settings), "temperature": cfg.env.eval_temperature}
    report = asyncio.run(
        evaluate(tasks, gateway_url, config=settings, concurrency=cfg.loop.worker_concurrency)
    )
    return report.accuracy


def collect_batch(scheduler, n: int, stop, timeout_s: float, poll_s: float = 2.0) -> list:
    """Claim about n episodes as one or more scheduler batches, waking every `poll_s` to honour
    a stop request (then the partial batches are nacked and [] returned)."""
    import time

    parts, got = [], 0
    deadline = time.monotonic() + timeout_s
    while got < n:
        if stop.requested:
            for b in parts:
                scheduler.nack(b, "driver stopping")
            return []
        if time.monotonic() > deadline:
            for b in parts:
                scheduler.nack(b, "batch timeout")
            raise TimeoutError(f"fewer than {n} episodes finished within loop.batch_timeout_s={timeout_s}")
        b = scheduler.next_batch(n - got, timeout=poll_s)
        if b.episodes:
            parts.append(b)
            got += len(b.episodes)
    return parts


def merge_batches(parts: list):
    """One Batch view (episodes and claims concatenated, metrics combined) of several."""
    from data_pool import Batch

    total = sum(len(b.episodes) for b in parts)
    metrics: dict[str, float] = {}
    for b in parts:
        w = len(b.episodes) / total
        for k, v in b.metrics.items():
            if k.endswith("_mean"):
                metrics[k] = metrics.get(k, 0.0) + w * v
            elif k.endswith("_max") or k in ("head", "window"):
                metrics[k] = max(metrics.get(k, v), v)
            else:
                metrics[k] = metrics.get(k, 0.0) + v
    return Batch(
        id="+".join(b.id for b in parts),
        episodes=[e for b in parts for e in b.episodes],
        weight_version=min(b.weight_version for b in parts),
        claims=[c for b in parts for c in b.claims],
        metrics=metrics,
    )
