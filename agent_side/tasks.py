"""Task generation for the launch driver, task files, and the held-out evaluation set.

    make_tasks("arithmetic", n=64, seed=0, group_size=8)   # 64 prompts × 8 = 512 Tasks
    make_eval_set("arithmetic", n=200)                      # held-out prompts, one Task each

Prompt i of a seed is drawn from its own `random.Random(f"{env}:{seed}:{i}")`, so a stream can be
produced in chunks (`start=`) and is reproducible across processes. Train and eval prompts are
disjoint by construction: a prompt belongs to the eval split iff a hash of its question text
falls in the held-out 1/`EVAL_MODULUS` bucket; training skips those prompts, evaluation takes
only them. Task files (`config.source`, JSONL or parquet; one payload object per row) are
split the same way.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent_side.env import EnvConfig
from agent_side.registry import get_env, make_config
from forge.ground.types import Task

EVAL_MODULUS = 10
_MAX_DRAWS_PER_PROMPT = 1000


def is_eval_prompt(payload: dict[str, Any]) -> bool:
    """Whether `payload` belongs to the held-out split (by a stable hash of its question)."""
    key = str(payload.get("question", payload.get("prompt", json.dumps(payload, sort_keys=True))))
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % EVAL_MODULUS == 0


def load_task_file(path: str | Path) -> list[dict[str, Any]]:
    """Payload dicts from a JSONL (one JSON object per line) or parquet file."""
    path = Path(path)
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow)") from exc
        rows = pq.read_table(path).to_pylist()
    else:
        rows = []
        with path.open() as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {i} is {type(row).__name__}, expected an object")
    return rows


def _payloads(
    env_name: str, config: EnvConfig, seed: int, split: str, start: int = 0
) -> Iterator[dict[str, Any]]:
    """An endless stream of payloads of one split (train / eval), deterministic in `seed`, from
    prompt index `start` on (reached directly: every index has its own random stream)."""
    spec = get_env(env_name)
    want_eval = split == "eval"
    index = start
    if config.source:
        rows = [r for r in load_task_file(config.source) if is_eval_prompt(r) == want_eval]
        if not rows:
            raise ValueError(f"{config.source} has no {split} rows")
        while True:  # epoch e visits the rows in its own shuffled order
            epoch, offset = divmod(index, len(rows))
            order = list(range(len(rows)))
            random.Random(f"{env_name}:{seed}:{split}:order:{epoch}").shuffle(order)
            for i in order[offset:]:
                yield spec.env_class.validate_payload(dict(rows[i]))
                index += 1
    while True:
        rng = random.Random(f"{env_name}:{seed}:{split}:{index}")
        for _ in range(_MAX_DRAWS_PER_PROMPT):
            payload = spec.env_class.generate(rng, config)
            if is_eval_prompt(payload) == want_eval:
                break
        else:
            raise ValueError(f"{env_name}: could not draw a {split} prompt in {_MAX_DRAWS_PER_PROMPT} tries")
        yield spec.env_class.validate_payload(payload)
        index += 1


def make_tasks(
    env_name: str,
    n: int,
    seed: int = 0,
    group_size: int = 1,
    config: EnvConfig | dict[str, Any] | None = None,
    start: int = 0,
) -> list[Task]:
    """`n` training prompts (prompt indices start … start+n−1), each repeated `group_size` times as
    one group; ids are deterministic: "{env}-s{seed}-p{index}-g{member}"."""
    if n < 0 or group_size < 1 or start < 0:
        raise ValueError(f"need n >= 0, group_size >= 1, start >= 0; got {n}, {group_size}, {start}")
    cfg = make_config(env_name, config)
    stream = _payloads(env_name, cfg, seed, "train", start)
    tasks = []
    for i in range(start, start + n):
        payload = next(stream)
        group = f"{env_name}-s{seed}-p{i}"
        for j in range(group_size):
            tasks.append(
                Task(
                    id=f"{group}-g{j}",
                    env=env_name,
                    payload=dict(payload),
                    group_id=group,
                    group_size=group_size,
                )
            )
    return tasks


def make_eval_set(
    env_name: str, n: int, seed: int = 0, config: EnvConfig | dict[str, Any] | None = None
) -> list[Task]:
    """`n` held-out prompts (never produced by `make_tasks`), one Task each, ids "{env}-eval-s{seed}-{i}"."""
    cfg = make_config(env_name, config)
    stream = _payloads(env_name, cfg, seed, "eval")
    return [
        Task(
            id=f"{env_name}-eval-s{seed}-{i}",
            env=env_name,
            payload=next(stream),
            group_id=f"{env_name}-eval-s{seed}-{i}",
        )
        for i in range(n)
    ]
