"""Shared plumbing of the data-pool benchmarks: a pool to run against, output helpers."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from rich.console import Console
from rich.table import Table

from data_pool.config import PoolConfig
from data_pool.store import DataPool, connect

err = Console(stderr=True)


@contextmanager
def bench_pool(redis_url: str | None, prefix: str, **cfg) -> Iterator[DataPool]:
    """A flushed pool under `prefix`: on `redis_url`, or an embedded redis-server (AOF everysec,
    as in a run) in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="forge-bench-") as tmp:
        pool = connect(PoolConfig(redis_url=redis_url, run_dir=tmp, key_prefix=prefix, **cfg))
        try:
            pool.flush()
            yield pool
        finally:
            pool.flush()
            pool.close()


def reconfigure(pool: DataPool, **cfg) -> DataPool:
    """Another connection to the same server and prefix with other settings."""
    return connect(replace(pool.cfg, redis_url=pool.url, **cfg))


def emit(rows: list[dict], columns: list[tuple[str, str, str]], as_json: bool, title: str) -> None:
    """--json: one JSON object per line per configuration on stdout; else a rich table."""
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table(title=title)
    for _key, header, _fmt in columns:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*[_fmt_cell(row.get(key), fmt) for key, _h, fmt in columns])
    Console(width=max(Console().width, 200)).print(table)


def _fmt_cell(value: object, fmt: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float | int) and fmt:
        return format(value, fmt)
    return str(value)
