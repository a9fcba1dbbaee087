"""The launcher: server processes (health-checked, stopped), attach by URL, SGLang argv, Ray actors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forge.ground.engine_client import EngineUnavailableError, SyncEngineClient
from gateway.engines import sglang_launcher as sl

FIELDS = json.loads((Path(sl.__file__).with_name("sglang_fields.json")).read_text())


def test_sglang_command_uses_sglangs_flags():
    cmd = sl.sglang_command(
        "/models/x",
        30001,
        mem_fraction_static=0.8,
        max_running_requests=128,
        context_length=8192,
        weight_version="0",
        random_seed=1,
    )
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    flags = [a for a in cmd if a.startswith("--")]
    assert set(flags) <= set(FIELDS["server_flags"]), set(flags) - set(FIELDS["server_flags"])
    assert cmd[cmd.index("--port") + 1] == "30001"


def test_sglang_is_not_installed_here():
    assert sl.sglang_available() is False
    with pytest.raises(RuntimeError, match="not installed"):
        sl.launch_sglang("/models/x", 1)


def test_server_process_launch_attach_stop(model_dir):
    port = sl.free_port()
    cmd = sl.native_command(
        str(model_dir), port, extra_args=["--max-running-requests", "2", "--context-length", "64"]
    )
    server = sl.ServerProcess(cmd, port, startup_timeout_s=120)
    try:
        assert sl.attach([server.url + "/"]) == [server.url]
        res = SyncEngineClient(server.url).generate([1, 2, 3], {"max_new_tokens": 3, "temperature": 0.0})
        assert res.completion_tokens == 3
        assert server.alive()
    finally:
        server.stop()
    assert server.proc.returncode is not None
    with pytest.raises(EngineUnavailableError):
        sl.attach([server.url], timeout_s=1.0)


def test_server_process_that_dies_is_reported():
    port = sl.free_port()
    with pytest.raises(EngineUnavailableError, match="exited"):
        sl.ServerProcess(sl.native_command("/no/such/model", port), port, startup_timeout_s=60)


@pytest.mark.slow
def test_engine_actor_in_ray(model_dir):
    import ray

    from gateway.engines.native.actor import EngineActor

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        actor = EngineActor.remote(str(model_dir), device="cpu", max_running_requests=2, context_length=64)
        url = ray.get(actor.url.remote(), timeout=180)
        assert ray.get(actor.health.remote())
        res = SyncEngineClient(url).generate([4, 5, 6], {"max_new_tokens": 4, "temperature": 0.0})
        assert res.completion_tokens == 4
        ray.get(actor.stop.remote())
        assert not SyncEngineClient(url).health(timeout=2.0)
    finally:
        ray.shutdown()
