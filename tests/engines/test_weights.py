"""Weight updates: from a safetensors directory and from a real gloo group (engine in its own process)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from forge.ground import weight_sync
from forge.ground.engine_client import EngineRequestError, SyncEngineClient
from forge.ground.net import free_port

PROMPT = [5, 6, 7, 8]
GREEDY = {"max_new_tokens": 12, "temperature": 0.0, "ignore_eos": True}


def _perturbed(model_dir: Path, scale: float, seed: int) -> AutoModelForCausalLM:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def _greedy(model, prompt, n):
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0
        )
    return out[0, len(prompt) :].tolist()


def test_update_weights_from_disk(model_dir, tmp_path):
    from gateway.engines.native import start_engine_in_thread

    new = _perturbed(model_dir, 0.1, seed=1)
    new.save_pretrained(tmp_path / "step1", safe_serialization=True)
    with start_engine_in_thread(
        str(model_dir), device="cpu", max_running_requests=4, context_length=128
    ) as eng:
        client = SyncEngineClient(eng.url)
        before = client.generate(PROMPT, GREEDY)
        assert before.weight_version == "0"
        out = client.update_weights_from_disk(str(tmp_path / "step1"))
        assert out["success"] is True
        after = client.generate(PROMPT, GREEDY)
        assert after.weight_version == "1", "an update without a version bumps it"
        assert after.output_ids != before.output_ids
        assert after.output_ids == _greedy(new, PROMPT, 12)
        assert client.get_model_info()["weight_version"] == "1"
        client.update_weights_from_disk(str(model_dir), weight_version="step-0")
        back = client.generate(PROMPT, GREEDY)
        assert back.output_ids == before.output_ids and back.weight_version == "step-0"
        with pytest.raises(EngineRequestError) as err:
            client.update_weights_from_disk(str(tmp_path / "missing"))
        assert err.value.status == 400
        assert client.generate(PROMPT, GREEDY).output_ids == before.output_ids, (
            "a failed update changes nothing"
        )


@pytest.fixture
def engine_process(model_dir):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "gateway.engines.native",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        "--max-running-requests",
        "4",
        "--context-length",
        "128",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = SyncEngineClient(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while not client.health(timeout=1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"engine did not start: {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.2)
    yield client
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_update_weights_from_gloo_group(model_dir, engine_process):
    client = engine_process
    before = client.generate(PROMPT, GREEDY)
    group = weight_sync.connect_engines([client.base_url], "127.0.0.1", free_port(), backend="gloo")
    new = _perturbed(model_dir, 0.1, seed=2)
    # small buckets: several /update_weights_from_distributed calls, each with concurrent broadcasts
    out = weight_sync.push_weights(
        [client.base_url], group, new.state_dict().items(), "7", bucket_bytes=200_000
    )
    assert out["buckets"] > 1
    after = client.generate(PROMPT, GREEDY)
    assert after.weight_version == "7"
    assert after.output_ids != before.output_ids
    assert after.output_ids == _greedy(new, PROMPT, 12)
    # a bf16 broadcast of the original weights is received and cast to the engine's dtype
    orig = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sd = {k: v.to(torch.bfloat16) for k, v in orig.state_dict().items()}
    weight_sync.push_weights([client.base_url], group, sd.items(), "8")
    assert client.generate(PROMPT, GREEDY).weight_version == "8"
    # an unknown name is refused (after the broadcast is consumed, so the group stays usable)
    with pytest.raises(RuntimeError, match="unknown parameter"):
        weight_sync.push_weights([client.base_url], group, [("no.such.weight", torch.zeros(3))], "9")
    weight_sync.push_weights([client.base_url], group, orig.state_dict().items(), "10")
    assert client.generate(PROMPT, GREEDY).output_ids == before.output_ids
    assert client.destroy_weights_update_group()["success"] is True
    weight_sync.destroy_group(group)


def test_stale_group_on_engine_is_replaced(model_dir, engine_process):
    """A group left on the engine by an earlier attempt (e.g. a trainer that crashed or fell back
    to disk) must not make the next connect wait out its rendezvous."""
    client = engine_process
    stale = weight_sync.connect_engines([client.base_url], "127.0.0.1", free_port(), backend="gloo")
    weight_sync.destroy_group(stale)  # the trainer side is gone; the engine still holds its rank
    start = time.monotonic()
    group = weight_sync.connect_engines(
        [client.base_url], "127.0.0.1", free_port(), backend="gloo", timeout_s=60
    )
    assert time.monotonic() - start < 20
    new = _perturbed(model_dir, 0.1, seed=4)
    weight_sync.push_weights([client.base_url], group, new.state_dict().items(), "11")
    assert client.generate(PROMPT, GREEDY).output_ids == _greedy(new, PROMPT, 12)
    weight_sync.leave_engines([client.base_url])
    weight_sync.destroy_group(group)


def test_engine_refusing_to_join_fails_fast():
    """An engine that answers 400 to /init_weights_update_group: connect raises at once, not
    after the rendezvous timeout."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"success": False, "message": "no"}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    start = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="failed to join"):
            weight_sync.connect_engines([url], "127.0.0.1", free_port(), backend="gloo", timeout_s=60)
        assert time.monotonic() - start < 10
    finally:
        server.shutdown()
