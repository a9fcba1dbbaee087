"""Bad input to the engine gets a 4xx JSON error (never a 500, never a hang); a down engine is a typed error."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forge.ground.engine_client import (
    EngineClient,
    EngineRequestError,
    EngineUnavailableError,
    SyncEngineClient,
)


def post(url: str, raw: bytes, path: str = "/generate") -> tuple[int, object]:
    req = urllib.request.Request(
        url + path, data=raw, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


BAD_GENERATE = [
    b"{not json",
    b"[1, 2]",
    b"{}",
    json.dumps({"input_ids": []}).encode(),
    json.dumps({"input_ids": [1, "a"]}).encode(),
    json.dumps({"input_ids": [1, 10**9]}).encode(),
    json.dumps({"input_ids": [-1]}).encode(),
    json.dumps({"input_ids": [[1, 2], [3]]}).encode(),
    json.dumps({"input_ids": [1] * 300}).encode(),  # over the context length (256)
    json.dumps({"input_ids": [1], "bogus_field": 1}).encode(),
    json.dumps({"input_ids": [1], "image_data": "x.png"}).encode(),
    json.dumps({"input_ids": [1], "stream": True}).encode(),
    json.dumps({"input_ids": [1], "sampling_params": {"seed": 1}}).encode(),
    json.dumps({"input_ids": [1], "sampling_params": {"max_new_tokens": -1}}).encode(),
    json.dumps({"input_ids": [1], "sampling_params": {"max_new_tokens": "5"}}).encode(),
    json.dumps({"input_ids": [1], "sampling_params": {"temperature": -0.5}}).encode(),
    json.dumps({"input_ids": [1], "sampling_params": {"top_p": 0}}).encode(),
    json.dumps({"input_ids": [1], "sampling_params": {"top_k": 0}}).encode(),
    json.dumps({"input_ids": [1], "sampling_params": {"min_p": 2}}).encode(),
    json.dumps({"input_ids": [1], "sampling_params": {"n": 2}}).encode(),
    json.dumps({"input_ids": [1], "sampling_params": {"regex": "a+"}}).encode(),
    json.dumps({"input_ids": [1], "sampling_params": {"stop": [""]}}).encode(),
    json.dumps({"input_ids": [1], "sampling_params": {"stop_token_ids": "2"}}).encode(),
    json.dumps({"input_ids": [1], "sampling_params": []}).encode(),
    json.dumps({"input_ids": [1], "rid": 5}).encode(),
    json.dumps({"input_ids": [1], "return_logprob": "yes"}).encode(),
    json.dumps({"input_ids": [1], "text": "both"}).encode(),
]


@pytest.mark.parametrize("raw", BAD_GENERATE, ids=lambda r: r.decode()[:40])
def test_bad_generate_is_400_json(engine, raw):
    status, body = post(engine.url, raw)
    assert status == 400, body
    assert isinstance(body, dict) and body["error"]["message"]


@pytest.mark.parametrize(
    "path,body",
    [
        ("/update_weights_from_disk", {}),
        ("/update_weights_from_disk", {"model_path": 3}),
        ("/update_weights_from_disk", {"model_path": "/nonexistent"}),
        ("/update_weights_from_distributed", {"names": ["a"], "dtypes": ["float32"], "shapes": [[1]]}),
        ("/update_weights_from_distributed", {"names": "a", "dtypes": [], "shapes": []}),
        ("/init_weights_update_group", {"master_address": "127.0.0.1"}),
        (
            "/init_weights_update_group",
            {"master_address": "x", "master_port": "1", "rank_offset": 1, "world_size": 2},
        ),
        ("/pause_generation", {"mode": "sideways"}),
        ("/abort_request", {"rid": 3}),
        ("/abort_request", {"rid": "x", "what": 1}),
        ("/destroy_weights_update_group", {"group_name": "none"}),
        ("/update_weights_from_tensor", {"serialized_named_tensors": ["eA=="], "load_format": "direct"}),
        ("/update_weights_from_tensor", {"serialized_named_tensors": ["eA=="]}),
        ("/update_weights_from_tensor", {"serialized_named_tensors": [], "load_format": "forge_cuda_ipc"}),
        (
            "/update_weights_from_tensor",
            {"serialized_named_tensors": ["!!"], "load_format": "forge_cuda_ipc"},
        ),
    ],
)
def test_bad_control_requests_are_400(engine, path, body):
    status, answer = post(engine.url, json.dumps(body).encode(), path)
    assert status == 400, answer
    assert isinstance(answer, dict)


def test_duplicate_rid_is_refused(engine):
    async def run():
        async with EngineClient(engine.url) as c:
            first = asyncio.create_task(
                c.generate([1, 2], {"max_new_tokens": 200, "ignore_eos": True}, rid="dup")
            )
            while engine.core.load()["running"] == 0:
                await asyncio.sleep(0.005)
            with pytest.raises(EngineRequestError) as err:
                await c.generate([1, 2], {"max_new_tokens": 2}, rid="dup")
            await c.abort("dup")
            await first
            return err.value

    assert asyncio.run(run()).status == 400


def test_client_refuses_unknown_sampling_names(engine):
    with pytest.raises(ValueError, match="sampling_seed"):
        SyncEngineClient(engine.url).generate([1], {"seed": 3})


def test_engine_down_is_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(EngineUnavailableError):
        SyncEngineClient(url).generate([1, 2], {"max_new_tokens": 2})
    assert SyncEngineClient(url).health() is False

    async def run():
        async with EngineClient(url) as c:
            assert await c.health() is False
            await c.generate([1, 2])

    with pytest.raises(EngineUnavailableError):
        asyncio.run(run())


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
sampling = st.dictionaries(
    st.sampled_from(
        [
            "max_new_tokens",
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "stop",
            "stop_token_ids",
            "sampling_seed",
            "ignore_eos",
            "n",
            "seed",
            "no_stop_trim",
        ]
    ),
    json_values,
    max_size=4,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "input_ids": st.lists(st.integers(-5, 60000), max_size=6) | json_values,
        "sampling_params": sampling | json_values,
        "rid": json_values,
        "return_logprob": json_values,
        "text": json_values,
        "stream": json_values,
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_fuzz_generate_never_5xx(engine, body):
    if isinstance(body.get("sampling_params"), dict):
        body["sampling_params"]["max_new_tokens"] = 2  # keep generation short
    raw = json.dumps(body, allow_nan=True).encode()
    status, answer = post(engine.url, raw)
    assert status < 500, (body, answer)
    assert isinstance(answer, dict)
