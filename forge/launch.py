"""`forge launch`: the whole RL loop. Reads top to bottom as the algorithm.

    pool ← Redis;  engines ← model;  gateway ← engines + pool;  trainer ← DeepSpeed ranks
    env workers pull tasks, run agents through the gateway, write episodes to the pool
    loop:  batch ← windowed-FIFO scheduler
           metrics ← trainer.train_step(batch)            (advantages → prefix trees → CISPO)
           weights → every engine (version v+1);  log;  every k steps: checkpoint, then ack

A batch is acknowledged in the pool only once a checkpoint holds the step that trained it, so a
crash or Ctrl-C loses nothing and trains nothing twice: `forge launch resume=true run_dir=…`
reloads that checkpoint and the scheduler hands back every batch not yet covered by one.
Ctrl-C drains (finishes the step in progress), checkpoints and stops every child.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from forge.config import ForgeConfig, validate
from trainer.actor import TrainerRankLost

log = logging.getLogger("forge")


@dataclass
class RunState:
    """What a checkpoint needs besides the weights (saved as run_dir/state.json)."""

    step: int = 0
    weight_version: int = 0
    checkpoint: str = ""
    accuracy_before: float | None = None

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        path = run_dir / "state.json"
        if not path.exists():
            raise FileNotFoundError(
                f"resume=true but {path} does not exist: no checkpoint in run_dir={run_dir}"
            )
        return cls(**json.loads(path.read_text()))

    def save(self, run_dir: Path) -> None:
        tmp = run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(run_dir / "state.json")


class StopFlag:
    """First Ctrl-C: finish the step, checkpoint, stop. Second: stop now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, self._previous)
            raise KeyboardInterrupt
        self.requested = True
        print("\nforge: stopping after this step (Ctrl-C again to stop now)", file=sys.stderr)

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self._previous)


def run(cfg: ForgeConfig) -> dict[str, Any]:
    from data_pool import Scheduler
    from forge.feeder import TaskFeeder, batch_metrics, collect_batch, evaluate_accuracy, merge_batches
    from forge.ground.models import materialize
    from forge.monitor import RunMonitor
    from forge.runtime import Runtime

    validate(cfg)
    run_dir = Path(cfg.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    state = RunState.load(run_dir) if cfg.resume else RunState()
    stop = StopFlag()
    monitor = RunMonitor(cfg.logger.mode, cfg.logger.project, run_dir, cfg, cfg.logger.console)
    summary: dict[str, Any] = {}
    try:
        with Runtime(cfg, run_dir) as rt:
            monitor.phase("starting")
            rt.start_ray()
            pool = rt.start_pool()
            model_dir = materialize(cfg.model.name, cfg.seed)
            engine_urls = rt.start_engines(model_dir)
            gateway_url = rt.start_gateway(engine_urls, model_dir, pool)
            trainer = rt.start_trainer(model_dir)
            record_addresses(run_dir, engine_urls, gateway_url, pool.url, trainer.master_addr)
            weights_dir = str(run_dir / "weights")
            if cfg.resume:
                trainer.load_checkpoint(str(run_dir / "checkpoints"), state.checkpoint)
                trainer.sync_weights(engine_urls, state.weight_version, cfg.loop.weight_sync, weights_dir)
            scheduler = Scheduler(pool, consumer_id="trainer")  # recovers un-acked batches of a dead run
            pool.set_weight_version(state.weight_version)
            feeder = TaskFeeder(pool, cfg)
            feeder.top_up()
            if state.step == 0 and cfg.env.eval_prompts:
                monitor.phase("eval (before)")
                state.accuracy_before = evaluate_accuracy(cfg, gateway_url)
                monitor.print(f"held-out accuracy before training: {state.accuracy_before:.3f}")
            rt.start_workers(pool, gateway_url)

            unacked: list[Any] = []
            meter = EngineMeter(engine_urls)
            episodes_per_step = cfg.loop.prompts_per_step * cfg.loop.group_size
            last = started = time.perf_counter()
            budget_s = cfg.loop.max_wall_minutes * 60 or float("inf")
            while (
                state.step < cfg.loop.steps
                and not stop.requested
                and time.perf_counter() - started < budget_s
            ):
                monitor.phase("waiting for episodes")
                feeder.top_up()
                parts = collect_batch(scheduler, episodes_per_step, stop, cfg.loop.batch_timeout_s)
                if not parts:  # stop requested while waiting
                    break
                batch = merge_batches(parts)
                monitor.phase("training")
                metrics = trainer.train_step(batch.episodes)
                record_trained(run_dir, state.step + 1, batch)
                unacked.extend(parts)
                sync: dict[str, Any] = {}
                if metrics["step_applied"]:
                    monitor.phase("weight sync")
                    state.weight_version += 1
                    sync = trainer.sync_weights(
                        engine_urls, state.weight_version, cfg.loop.weight_sync, weights_dir
                    )
                    scheduler.set_weight_version(state.weight_version)
                    sync.update(probe_engine(engine_urls[0]))
                state.step += 1
                now = time.perf_counter()
                monitor.log(
                    state.step,
                    {**batch_metrics(batch, metrics, sync, pool.counts(), now - last), **meter.delta()},
                )
                monitor.table(state.step, *feeder.sample_rows(batch, state.step))
                last = now
                for b in unacked:
                    scheduler.touch(b)
                if state.step % cfg.loop.checkpoint_every == 0:
                    unacked = checkpoint(trainer, scheduler, unacked, state, run_dir, monitor)
            unacked = checkpoint(trainer, scheduler, unacked, state, run_dir, monitor)
            summary = {"steps": state.step, "weight_version": state.weight_version}
            if cfg.env.eval_prompts and not stop.requested:
                monitor.phase("eval (after)")
                summary.update(
                    accuracy_before=state.accuracy_before, accuracy_after=evaluate_accuracy(cfg, gateway_url)
                )
                monitor.print(
                    f"held-out accuracy: {summary['accuracy_before']:.3f} → {summary['accuracy_after']:.3f}"
                )
            monitor.phase("stopping")
    except TrainerRankLost as exc:
        raise TrainerRankLost(
            f"{exc}. The run stops (a rank cannot be replaced mid-run); the last checkpoint is step "
            f"{state.checkpoint or 'none'}: continue with `forge launch resume=true run_dir={run_dir}` "
            "(and loop.trainer_world_size / placement.trainer for the hosts that remain)"
        ) from exc
    finally:
        stop.restore()
        if summary:
            monitor.summary(summary)
        monitor.close()
    return summary


def record_addresses(run_dir: Path, engines: list[str], gateway: str, redis_url: str, trainer: str) -> None:
    """The addresses every tier dials, for the record (run_dir/addresses.json; no password)."""
    from urllib.parse import urlsplit

    redis_at = urlsplit(redis_url)
    row = {
        "engines": engines,
        "gateway": gateway,
        "redis": f"{redis_at.hostname}:{redis_at.port}",
        "trainer_master": trainer,
    }
    (run_dir / "addresses.json").write_text(json.dumps(row, indent=1) + "\n")


def record_trained(run_dir: Path, step: int, batch: Any) -> None:
    """Append which tasks (id, attempt) and samples step `step` trains to run_dir/trained.jsonl. A
    resumed run retrains the steps after its checkpoint: for each step the last line counts."""
    row = {
        "step": step,
        "tasks": [[e.task.id, e.task.attempt] for e in batch.episodes],
        "samples": [f"{s.session_id}/{s.turn}" for e in batch.episodes for s in e.samples],
    }
    with (run_dir / "trained.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def probe_engine(url: str) -> dict[str, Any]:
    """Greedy tokens for a fixed prompt from an engine after a sync: which weights does it serve?"""
    from forge.ground.engine_client import SyncEngineClient

    out = SyncEngineClient(url, timeout=60).generate([1, 2, 3, 4], {"max_new_tokens": 4, "temperature": 0.0})
    return {
        "engine_weight_version": int(out.weight_version or 0),
        "probe_output": list(out.output_ids),
        # moves with any weight change, also when the greedy tokens stay the same
        "probe_logprob": sum(out.output_logprobs) / max(len(out.output_logprobs), 1),
    }


class EngineMeter:
    """Engine utilisation between two reads, from the built-in engines' `forge_stats` counters
    (SGLang servers have none: then nothing is reported)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.last = self._read()

    def _read(self) -> list[dict[str, float]]:
        from forge.ground.engine_client import EngineError, SyncEngineClient

        stats = []
        for url in self.urls:
            try:
                stats.append(SyncEngineClient(url, timeout=10).get_model_info().get("forge_stats") or {})
            except EngineError:
                stats.append({})
        return stats

    def delta(self) -> dict[str, float]:
        now = self._read()
        keys = (
            "busy_s",
            "uptime_s",
            "decode_steps",
            "decode_rows",
            "prefills",
            "prefill_rows",
            "prefill_s",
            "prompt_tokens",
            "cached_tokens",
            "prefill_tokens",
        )
        d = dict.fromkeys(keys, 0.0)
        pages_used = pages_total = 0.0
        for a, b in zip(self.last, now, strict=True):
            if a and b:
                for k in keys:
                    d[k] += b.get(k, 0.0) - a.get(k, 0.0)
                pages_used += b.get("pages_used", 0.0)
                pages_total += b.get("pages_total", 0.0)
        self.last = now
        if not d["uptime_s"]:
            return {}
        return {
            "engine/busy_fraction": d["busy_s"] / d["uptime_s"],
            "engine/prefill_share": d["prefill_s"] / d["busy_s"] if d["busy_s"] else 0.0,
            "engine/mean_decode_batch": d["decode_rows"] / d["decode_steps"] if d["decode_steps"] else 0.0,
            "engine/mean_prefill_batch": d["prefill_rows"] / d["prefills"] if d["prefills"] else 0.0,
            "engine/decode_step_ms": (
                1000 * (d["busy_s"] - d["prefill_s"]) / d["decode_steps"] if d["decode_steps"] else 0.0
            ),
            # prefix reuse: prompt tokens found in the KV cache, and tokens computed per token received
            "engine/cache_hit_rate": d["cached_tokens"] / d["prompt_tokens"] if d["prompt_tokens"] else 0.0,
            "engine/prefill_ratio": d["prefill_tokens"] / d["prompt_tokens"] if d["prompt_tokens"] else 0.0,
            "engine/kv_pages_used_fraction": pages_used / pages_total if pages_total else 0.0,
        }


def checkpoint(trainer, scheduler, unacked: list, state: RunState, run_dir: Path, monitor) -> list:
    """Save weights + optimizer + RunState, then acknowledge every batch the checkpoint covers."""
    monitor.phase("checkpoint")
    state.checkpoint = trainer.save_checkpoint(str(run_dir / "checkpoints"), f"step{state.step}")
    state.save(run_dir)
    for batch in unacked:
        scheduler.ack(batch)
    return []


def main(argv: list[str]) -> int:
    """Hydra entry: `forge launch [overrides…]`, `forge launch -m key=a,b` for sweeps."""
    import hydra
    from omegaconf import OmegaConf

    import configs
    from forge.config import register

    register()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    config_dir = str(Path(configs.__file__).parent)
    results: list[dict[str, Any]] = []

    @hydra.main(version_base=None, config_path=config_dir, config_name="forge")
    def _app(raw) -> None:
        for noisy in ("httpx", "httpx2", "aiohttp.access"):  # one line per request otherwise
            logging.getLogger(noisy).setLevel(logging.WARNING)
        cfg: ForgeConfig = OmegaConf.to_object(raw)
        results.append(run(cfg))

    sys.argv = ["forge launch", *argv]
    _app()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
