"""Engines for the gateway: SGLang servers launched per GPU from Ray actors, or attached by URL.

- `sglang_available()`: whether `sglang` is importable here (it cannot be on Forge's own
  machines; see the README).
- `sglang_command(model_path, port, ...)`: the `python -m sglang.launch_server` argv (flags
  checked against SGLang's ServerArgs by the contract test).
- `ServerProcess`: runs one server command as a child process, waits for `GET /health`, stops
  it (process group kill). `ServerActor` is the same as a Ray actor (num_cpus=0); give it
  `num_gpus=1` with `.options(...)` so Ray pins it to a GPU (CUDA_VISIBLE_DEVICES is Ray's).
- `launch_sglang(model_path, num_gpus)`: one ServerActor per GPU; returns their URLs and actors.
- `attach(urls)`: health-check servers started elsewhere; returns the URLs.

Every server, SGLang or built-in, is then spoken to with `forge.ground.engine_client.EngineClient`.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from forge.ground.engine_client import EngineUnavailableError, SyncEngineClient
from forge.ground.net import free_port


def sglang_available() -> bool:
    return importlib.util.find_spec("sglang") is not None


def sglang_command(
    model_path: str,
    port: int,
    host: str = "127.0.0.1",
    mem_fraction_static: float | None = None,
    max_running_requests: int | None = None,
    context_length: int | None = None,
    weight_version: str | None = None,
    random_seed: int | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """`python -m sglang.launch_server ...` for one server with tensor parallelism 1."""
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_path)]
    cmd += ["--host", host, "--port", str(port), "--tp-size", "1"]
    for flag, value in (
        ("--mem-fraction-static", mem_fraction_static),
        ("--max-running-requests", max_running_requests),
        ("--context-length", context_length),
        ("--weight-version", weight_version),
        ("--random-seed", random_seed),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + list(extra_args)


def native_command(
    model: str, port: int, host: str = "127.0.0.1", extra_args: Sequence[str] = ()
) -> list[str]:
    """The built-in engine as a server process (same protocol, same launcher)."""
    cmd = [sys.executable, "-m", "gateway.engines.native", "--model", str(model), "--host", host]
    return cmd + ["--port", str(port), *extra_args]


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        try:
            import ray

            return ray.util.get_node_ip_address()
        except Exception:  # noqa: BLE001 - not in Ray: fall back to this machine's name
            return socket.gethostbyname(socket.gethostname())
    return host


class ServerProcess:
    """One engine server as a child process (its own process group), health-checked."""

    def __init__(
        self,
        cmd: Sequence[str],
        port: int,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 900.0,
        log_path: str | None = None,
    ) -> None:
        self.cmd = list(cmd)
        self.url = f"http://{_url_host(host)}:{port}"
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.cmd,
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_healthy(startup_timeout_s)

    def _wait_healthy(self, timeout_s: float) -> None:
        client = SyncEngineClient(self.url)
        deadline = time.monotonic() + timeout_s
        while not client.health(timeout=2.0):
            code = self.proc.poll()
            if code is not None:
                raise EngineUnavailableError(
                    f"server exited with code {code} before it was healthy: {self.cmd}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EngineUnavailableError(f"server not healthy after {timeout_s}s: {self.cmd}")
            time.sleep(0.5)

    def get_url(self) -> str:
        return self.url

    def alive(self) -> bool:
        return self.proc.poll() is None and SyncEngineClient(self.url).health(timeout=5.0)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout_s)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout_s)
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.proc.returncode


def _server_actor() -> Any:
    import ray

    return ray.remote(num_cpus=0)(ServerProcess)


def launch_sglang(
    model_path: str,
    num_gpus: int,
    host: str = "0.0.0.0",
    base_port: int | None = None,
    **kwargs: Any,
) -> tuple[list[str], list[Any]]:
    """One SGLang server per GPU, each in a Ray actor holding that GPU. Returns (urls, actors)."""
    if not sglang_available():
        raise RuntimeError("sglang is not installed here: use the built-in engine, or attach(urls)")
    import ray

    actor_cls = _server_actor()
    actors, urls = [], []
    for i in range(num_gpus):
        port = base_port + i if base_port else free_port()
        actor = actor_cls.options(num_gpus=1).remote(
            sglang_command(model_path, port, host, **kwargs), port, host
        )
        actors.append(actor)
    urls = ray.get([a.get_url.remote() for a in actors])
    return urls, actors


def attach(urls: Sequence[str], timeout_s: float = 60.0) -> list[str]:
    """Check that every URL answers /health (waiting up to timeout_s); returns them normalised."""
    out = []
    for url in urls:
        client = SyncEngineClient(url)
        client.wait_healthy(timeout=timeout_s)
        out.append(client.base_url)
    return out


ServerActor = _server_actor  # ServerActor() → the Ray actor class (built lazily: ray imports slowly)
