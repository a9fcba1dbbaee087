"""`forge export SOURCE --out FILE`: what a data pool recorded, one row per model call, as JSONL or
Parquet (for SFT, offline RL, or reading).

    forge export runs/serve --out recorded.jsonl          # forge serve's --run-dir
    forge export runs/20261122-071342 --out run.parquet   # a forge launch run directory
    forge export redis://:pw@10.0.0.2:6379/0 --out pool.jsonl --model smollm2_135m

SOURCE is a Redis URL or a run directory. A run directory's pool is read where it is: the running
redis-server when the run (or `forge serve`) is still up, at the address in its `serve.json` /
`addresses.json`; else the pool's saved state (the AOF in RUN/redis/ or, for `forge serve`, in the
run dir itself) is loaded into a temporary redis-server that stops after the export. Nothing is
written to the pool.

Rows (in task id, then call order): task_id, session_id, turn, attempt, status (the task's),
env, prompt_ids, completion_ids, logprobs, weight_version, finish_reason, reward (the task's
outcome reward; null until one is set), step_rewards (this call's value per component), metrics
(the task's), and prompt_text / completion_text: the token ids decoded with the model's tokenizer,
exactly as the model saw and wrote them (chat template included). Every task that holds samples is
exported, finished or not; a training run deletes a task's samples once it is trained
(`pool.retain_samples=true` keeps them). Parquet needs pyarrow (`pip install 'forge-rl[parquet]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
CHUNK = 64  # tasks read per round trip


class ExportError(RuntimeError):
    """A one-line reason the export cannot run."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="forge export", description=__doc__.splitlines()[0])
    p.add_argument("source", help="a Redis URL (redis://, rediss://, unix://) or a run directory")
    p.add_argument("--out", required=True, help="output file: .jsonl or .parquet")
    p.add_argument("--format", choices=["jsonl", "parquet"], default=None, help="default: from --out")
    p.add_argument("--model", default=None, help="tokenizer for the text columns (default: the run's)")
    p.add_argument("--no-text", action="store_true", help="token ids only, no decoded text")
    p.add_argument("--key-prefix", default="forge", help="the pool's key prefix")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------ the source
def _alive(pid_file: Path) -> int:
    """The pid in pid_file when that process is a live redis-server, else 0."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
        comm = Path(f"/proc/{pid}/comm")
        if comm.exists() and "redis" not in comm.read_text():
            return 0
        return pid
    except (OSError, ValueError):
        return 0


def _run_info(run_dir: Path) -> dict[str, Any]:
    """What the run directory says about its pool address and model."""
    info: dict[str, Any] = {}
    for name in ("addresses.json", "serve.json"):
        path = run_dir / name
        if path.exists():
            try:
                info.update(json.loads(path.read_text()))
            except ValueError as exc:
                raise ExportError(f"{path} is not JSON: {exc}") from None
    hydra = run_dir / ".hydra" / "config.yaml"
    if "model" not in info and hydra.exists():
        from omegaconf import OmegaConf

        name = OmegaConf.load(hydra).get("model", {}).get("name")
        if isinstance(name, str):
            info["model"] = name
    return info


def open_pool(source: str, key_prefix: str, stack: ExitStack) -> tuple[Any, str | None]:
    """(pool, the model named by the source or None); closed (and a temporary server stopped)
    with `stack`."""
    from data_pool import PoolConfig, PoolError, connect

    def _connect(cfg: PoolConfig) -> Any:
        try:
            pool = connect(cfg)
        except PoolError as exc:
            raise ExportError(str(exc)) from None
        stack.callback(pool.close)
        return pool

    if "://" in source:
        return _connect(PoolConfig(redis_url=source, key_prefix=key_prefix)), None
    run_dir = Path(source)
    if not run_dir.is_dir():
        raise ExportError(f"{source} is neither a Redis URL nor a directory")
    pool_dir = run_dir / "redis" if (run_dir / "redis").is_dir() else run_dir
    if not any((pool_dir / n).exists() for n in ("appendonlydir", "appendonly.aof")):
        raise ExportError(f"no data pool in {run_dir}: no Redis AOF in {pool_dir}")
    info = _run_info(run_dir)
    pid = _alive(pool_dir / "redis.pid")
    if pid:  # the run is up: read its server (a second one on the same AOF would corrupt it)
        if not info.get("redis"):
            raise ExportError(
                f"the pool of {run_dir} is running (redis-server pid {pid}) but its address is not "
                "recorded: pass its redis:// URL instead"
            )
        return _connect(PoolConfig(redis_url=f"redis://{info['redis']}/0", key_prefix=key_prefix)), info.get(
            "model"
        )
    return _connect(PoolConfig(run_dir=str(pool_dir), key_prefix=key_prefix)), info.get("model")


def load_tokenizer(model: str) -> Any:
    from gateway import GatewayConfig
    from gateway.service import load_tokenizer as gateway_tokenizer

    try:
        return gateway_tokenizer(GatewayConfig(model=model))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load the tokenizer of model {model!r}: {exc}") from None


# ------------------------------------------------------------------------------------ the rows
def rows(pool: Any, ids: list[str], tokenizer: Any, skipped: list[str], advance: Any) -> Iterator[dict]:
    """One dict per recorded call of the tasks `ids`; tasks whose records cannot be decoded are
    named in `skipped`."""
    from forge.ground.types import CodecError

    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        episodes = pool.load_episodes(chunk)
        rewards = pool.rewards(chunk)
        statuses = _statuses(pool, chunk)
        for tid in chunk:
            ep = episodes[tid]
            status = statuses.get(tid)
            if status is None:  # samples without a task record
                ep = CodecError(f"task {tid}: samples without a task record")
            if isinstance(ep, CodecError):
                skipped.append(f"{tid}: {ep}")
                advance()
                continue
            for i, s in enumerate(ep.samples):
                row = {
                    "task_id": tid,
                    "session_id": s.session_id,
                    "turn": s.turn,
                    "attempt": ep.task.attempt,
                    "status": status,
                    "env": ep.task.env,
                    "prompt_ids": list(s.prompt_ids),
                    "completion_ids": list(s.completion_ids),
                    "logprobs": [float(x) for x in s.logprobs],
                    "weight_version": s.weight_version,
                    "finish_reason": s.finish_reason,
                    "reward": rewards[tid],
                    "step_rewards": {
                        k: float(v[i]) for k, v in ep.step_rewards.items() if len(v) == len(ep.samples)
                    },
                    "metrics": {k: float(v) for k, v in ep.metrics.items()},
                }
                if tokenizer is not None:
                    row["prompt_text"] = tokenizer.decode(s.prompt_ids, skip_special_tokens=False)
                    row["completion_text"] = tokenizer.decode(s.completion_ids, skip_special_tokens=False)
                yield row
            advance()


def _statuses(pool: Any, ids: list[str]) -> dict[str, str]:
    """Each task's status; a task without a record is left out."""
    from data_pool import UnknownTaskError

    try:
        return {t: str(s) for t, s in pool.statuses(ids).items()}
    except UnknownTaskError:
        out = {}
        for t in ids:
            try:
                out[t] = str(pool.task_status(t).status)
            except UnknownTaskError:
                pass
        return out


def write_jsonl(path: Path, it: Iterator[dict]) -> int:
    n = 0
    with path.open("w") as fh:
        for row in it:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def parquet_schema(text: bool) -> Any:
    import pyarrow as pa

    fields = [
        ("task_id", pa.string()),
        ("session_id", pa.string()),
        ("turn", pa.int32()),
        ("attempt", pa.int32()),
        ("status", pa.string()),
        ("env", pa.string()),
        ("prompt_ids", pa.list_(pa.int32())),
        ("completion_ids", pa.list_(pa.int32())),
        ("logprobs", pa.list_(pa.float32())),
        ("weight_version", pa.int64()),
        ("finish_reason", pa.string()),
        ("reward", pa.float64()),
        ("step_rewards", pa.map_(pa.string(), pa.float64())),
        ("metrics", pa.map_(pa.string(), pa.float64())),
    ]
    if text:
        fields += [("prompt_text", pa.string()), ("completion_text", pa.string())]
    return pa.schema(fields)


def write_parquet(path: Path, it: Iterator[dict], text: bool) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema(text)
    n, batch = 0, []
    with pq.ParquetWriter(path, schema) as writer:
        for row in it:
            row["step_rewards"] = list(row["step_rewards"].items())
            row["metrics"] = list(row["metrics"].items())
            batch.append(row)
            if len(batch) >= 1024:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                n, batch = n + len(batch), []
        if batch or n == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            n += len(batch)
    return n


def _format(args: argparse.Namespace) -> str:
    fmt = args.format or FORMATS.get(Path(args.out).suffix.lower())
    if fmt is None:
        raise ExportError(f"--out {args.out}: name it .jsonl or .parquet, or pass --format")
    if fmt == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ExportError(
                "Parquet needs pyarrow, which is not installed: pip install 'forge-rl[parquet]' "
                "(or write .jsonl)"
            ) from None
    return fmt


def export(args: argparse.Namespace) -> tuple[int, int, list[str]]:
    """(rows written, tasks read, tasks skipped with why)."""
    from rich.console import Console
    from rich.progress import Progress

    fmt = _format(args)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ExportError(f"--out {args.out}: directory {out.parent} does not exist")
    with ExitStack() as stack:
        pool, run_model = open_pool(args.source, args.key_prefix, stack)
        model = args.model or run_model
        if not args.no_text and model is None:
            raise ExportError(
                f"{args.source} does not say which model recorded it: pass --model NAME_OR_DIR "
                "(its tokenizer decodes the text columns) or --no-text"
            )
        tokenizer = None if args.no_text else load_tokenizer(str(model))
        ids = pool.recorded_task_ids()
        skipped: list[str] = []
        tmp = out.with_name(f".{out.name}.part")
        progress = Progress(console=Console(stderr=True), disable=args.quiet, transient=True)
        with progress:
            bar = progress.add_task("exporting", total=len(ids))
            it = rows(pool, ids, tokenizer, skipped, lambda: progress.advance(bar))
            try:
                if fmt == "jsonl":
                    n = write_jsonl(tmp, it)
                else:
                    n = write_parquet(tmp, it, tokenizer is not None)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        tmp.replace(out)  # whole or not at all
    return n, len(ids), skipped


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        n, tasks, skipped = export(args)
    except ExportError as exc:
        print(f"forge export: {exc}", file=sys.stderr)
        return 2
    for why in skipped:
        print(f"forge export: skipped task {why}", file=sys.stderr)
    print(f"forge export: {n} rows of {tasks - len(skipped)} tasks -> {args.out}")
    return 1 if skipped else 0
