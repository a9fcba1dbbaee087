"""CUDA IPC weight sync (colocated trainer and engine): the payload codec on CPU, the real path on a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from forge.ground import cuda_ipc, weight_sync
from forge.ground.engine_client import SyncEngineClient
from forge.ground.net import free_port


def _meta(**over) -> dict:
    meta = {
        "v": cuda_ipc.VERSION,
        "names": ["a", "b"],
        "dtypes": ["bfloat16", "float32"],
        "shapes": [[2, 3], [4]],
        "offsets": [0, 256],
        "nbytes": 512,
        "device_uuid": "GPU-x",
        "handle": b"\x01\x02",
        "storage_size_bytes": 512,
        "storage_offset_bytes": 0,
        "ref_counter_handle": b"r",
        "ref_counter_offset": 0,
        "event_handle": None,
        "event_sync_required": False,
    }
    meta.update(over)
    return meta


def test_payload_round_trips_as_msgpack_not_pickle():
    text = cuda_ipc.encode(_meta())
    assert isinstance(text, str)
    assert cuda_ipc.decode(text) == _meta()


@pytest.mark.parametrize(
    "bad,match",
    [
        (3, "base64 string"),
        ("!!not base64", "base64 msgpack"),
        (cuda_ipc.encode(_meta(v=99)), "unsupported"),
        (cuda_ipc.encode({k: v for k, v in _meta().items() if k != "handle"}), "lacks"),
        (cuda_ipc.encode(_meta(offsets=[0])), "same length"),
    ],
)
def test_malformed_payloads_are_refused(bad, match):
    with pytest.raises(cuda_ipc.IPCError, match=match):
        cuda_ipc.decode(bad)


def test_pack_refuses_cpu_tensors():
    with pytest.raises(ValueError, match="CUDA"):
        cuda_ipc.pack_bucket([("w", torch.zeros(3))])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_colocated_engine_takes_weights_by_cuda_ipc(model_dir):
    """A real engine process on this GPU receives perturbed weights through IPC buckets and then
    decodes exactly what the perturbed model decodes."""
    from transformers import AutoModelForCausalLM

    port = free_port()
    cmd = [sys.executable, "-m", "gateway.engines.native", "--model", str(model_dir), "--port", str(port)]
    cmd += [
        "--device",
        "cuda",
        "--dtype",
        "float32",
        "--max-running-requests",
        "4",
        "--context-length",
        "128",
    ]
    proc = subprocess.Popen(
        cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    client = SyncEngineClient(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 180
        while not client.health(timeout=1.0):
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stdout.read() if proc.stdout else ""
            )
            time.sleep(0.3)
        assert client.get_model_info()["device_uuid"] == cuda_ipc.device_uuid()
        greedy = {"max_new_tokens": 12, "temperature": 0.0, "ignore_eos": True}
        before = client.generate([5, 6, 7, 8], greedy)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()
        gen = torch.Generator(device="cuda").manual_seed(3)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen, device="cuda", dtype=p.dtype) * 0.1)
        out = weight_sync.push_weights(
            [], None, model.state_dict().items(), "5", bucket_bytes=300_000, ipc_urls=[client.base_url]
        )
        assert out["buckets"] > 1 and out["ipc_engines"] == 1
        after = client.generate([5, 6, 7, 8], greedy)
        assert after.weight_version == "5" and after.output_ids != before.output_ids
        with torch.no_grad():
            ref = model.generate(
                torch.tensor([[5, 6, 7, 8]], device="cuda"),
                do_sample=False,
                max_new_tokens=12,
                min_new_tokens=12,
            )[0, 4:].tolist()
        assert after.output_ids == ref
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
