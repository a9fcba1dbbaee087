"""Unreachable or failing Redis: a clear error naming the URL within seconds, never a hang."""

import socket
import threading
import time

import pytest
import redis

from data_pool import EmbeddedRedis, PoolConfig, RedisUnavailable, connect
from tests.helpers.pool import make_tasks


def _connect_fails(url: str, **kw) -> tuple[str, float]:
    t0 = time.monotonic()
    with pytest.raises(RedisUnavailable) as err:
        connect(PoolConfig(redis_url=url, **kw))
    return str(err.value), time.monotonic() - t0


def test_refused_port_names_the_url_at_once():
    msg, took = _connect_fails("redis://127.0.0.1:1/0")
    assert "redis://127.0.0.1:1/0" in msg and took < 3


def test_server_that_never_answers_times_out_within_the_connect_timeout():
    with socket.socket() as silent:  # accepts connections (kernel backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        msg, took = _connect_fails(url, connect_timeout_s=1.0)
    assert url in msg and took < 4


def test_something_else_listening_is_not_taken_for_redis():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)

        def answer():
            conn, _ = srv.accept()
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

        threading.Thread(target=answer, daemon=True).start()
        msg, took = _connect_fails(f"redis://127.0.0.1:{srv.getsockname()[1]}/0")
    assert "does not answer like a Redis server" in msg and took < 4


def test_password_is_redacted_in_errors():
    msg, _ = _connect_fails("redis://alice:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in msg and "alice:***@127.0.0.1:1" in msg


def test_wrong_password_is_a_clear_error(tmp_path):
    with EmbeddedRedis(tmp_path) as server:
        redis.Redis.from_url(server.url).config_set("requirepass", "right")
        msg, _ = _connect_fails(server.url.replace("redis://", "redis://:wrong@"))
        assert "refused" in msg and ":***@" in msg
        ok = connect(PoolConfig(redis_url=server.url.replace("redis://", "redis://:right@")))
        assert ok.counts()["submitted"] == 0
        ok.close()


def test_malformed_url():
    msg, _ = _connect_fails("http://127.0.0.1:6379")
    assert "bad Redis URL" in msg


def test_redis_going_down_mid_run_is_a_clear_error(tmp_path):
    server = EmbeddedRedis(tmp_path).start()
    pool = connect(PoolConfig(redis_url=server.url))
    pool.submit(make_tasks(1))
    server.stop()
    t0 = time.monotonic()
    with pytest.raises(RedisUnavailable, match=server.url.replace("/0", "")):
        pool.acquire_task("w", timeout=0)
    with pytest.raises(RedisUnavailable):
        pool.counts()
    assert time.monotonic() - t0 < 5
    pool.close()
