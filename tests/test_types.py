import msgpack
import pytest

from forge.ground.types import (
    SCHEMA_VERSION,
    CodecError,
    Episode,
    EpisodeStatus,
    Sample,
    Task,
    decode,
    decode_episode,
    decode_sample,
    encode,
)


def _sample(turn=0, n=3):
    return Sample(
        task_id="t1",
        session_id="s1",
        turn=turn,
        prompt_ids=[1, 2, 3, 2**31 - 1],
        completion_ids=list(range(n)),
        logprobs=[-0.5] * n,
        weight_version=7,
        finish_reason="length",
        timings={"gen_s": 0.25},
    )


def test_roundtrip_all_kinds():
    task = Task(id="t1", env="arithmetic", payload={"a": 1, "q": "2+2"}, seq=5, group_id="g", group_size=4)
    ep = Episode(
        task=task,
        samples=[_sample(0), _sample(1, 0)],
        reward=1.0,
        step_rewards={"process": [0.1, 0.2]},
        status=EpisodeStatus.COMPLETED,
        metrics={"accuracy": 1.0},
    )
    assert decode(encode(task)) == task
    assert decode_sample(encode(_sample())) == _sample()
    assert decode_episode(encode(ep)) == ep


def test_wrong_version_is_named():
    raw = msgpack.packb({"kind": "sample", "v": SCHEMA_VERSION + 1, "data": {}})
    with pytest.raises(CodecError, match="schema version 2"):
        decode(raw)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\xc1garbage", "not a msgpack record"),
        (msgpack.packb([1, 2]), "not a Forge record"),
        (msgpack.packb({"kind": "bogus", "v": 1, "data": {}}), "unknown record kind"),
        (msgpack.packb({"kind": "task", "v": 1, "data": {"id": "x"}}), "missing field 'env'"),
        (msgpack.packb({"kind": "task", "v": 1, "data": {"id": 3, "env": "e"}}), "field 'id' has type int"),
    ],
)
def test_malformed_records_raise_codec_error(raw, message):
    with pytest.raises(CodecError, match=message):
        decode(raw)


def test_kind_mismatch_and_length_mismatch():
    with pytest.raises(CodecError, match="expected a episode record, got a sample"):
        decode_episode(encode(_sample()))
    rec = msgpack.unpackb(encode(_sample()))
    rec["data"]["logprobs"] = rec["data"]["logprobs"][:4]
    with pytest.raises(CodecError, match="1 logprobs for 3 completion tokens"):
        decode(msgpack.packb(rec))
    with pytest.raises(ValueError, match="2 logprobs for 3"):
        Sample("t", "s", 0, [1], [1, 2, 3], [0.0, 0.0])
