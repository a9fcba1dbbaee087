"""The three types that cross tier boundaries: Task, Sample, Episode.

One definition, one wire format: msgpack maps tagged with a record kind and a schema version.
Token ids travel as little-endian int32 bytes and log-probs as float32 bytes (compact, and
10x faster to pack than lists of Python ints). Nothing is ever pickled.

`decode_*` raises `CodecError` naming the record kind and the offending field for malformed
input, a wrong kind, or a schema version this code does not read.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

SCHEMA_VERSION = 1


class CodecError(ValueError):
    """A record that cannot be decoded: malformed, wrong kind, or wrong schema version."""


class EpisodeStatus(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


@dataclass
class Task:
    """One unit of generation work: an environment instance, possibly one member of a group."""

    id: str
    env: str
    payload: dict[str, Any] = field(default_factory=dict)
    seq: int = -1  # FIFO sequence number, assigned by the data pool on submit
    group_id: str = ""  # members of one group share a prompt (GRPO/CISPO groups)
    group_size: int = 1
    attempt: int = 0


@dataclass
class Sample:
    """One model call (s_t, a_t): exactly the tokens the model saw and produced."""

    task_id: str
    session_id: str
    turn: int
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]  # behaviour log-probs, one per completion token
    weight_version: int = 0
    finish_reason: str = "stop"
    timings: dict[str, float] = field(default_factory=dict)  # e.g. {"queue_s": .., "gen_s": ..}

    def __post_init__(self) -> None:
        if len(self.logprobs) != len(self.completion_ids):
            raise ValueError(
                f"Sample(task_id={self.task_id!r}, turn={self.turn}): {len(self.logprobs)} logprobs "
                f"for {len(self.completion_ids)} completion tokens"
            )


@dataclass
class Episode:
    """A finished task: its samples in call order and its rewards."""

    task: Task
    samples: list[Sample]
    reward: float = 0.0  # outcome reward
    # optional per-step rewards by component, each aligned with `samples` (one value per call),
    # e.g. {"process": [...], "speed": [...]}; combined by the trainer's M2 advantage.
    step_rewards: dict[str, list[float]] = field(default_factory=dict)
    status: EpisodeStatus = EpisodeStatus.COMPLETED
    error: str = ""  # why it failed or was aborted
    metrics: dict[str, float] = field(default_factory=dict)  # env-reported, e.g. {"accuracy": 1.0}

    def __post_init__(self) -> None:
        self.status = EpisodeStatus(self.status)
        for name, values in self.step_rewards.items():
            if len(values) != len(self.samples):
                raise ValueError(
                    f"Episode({self.task.id!r}): step_rewards[{name!r}] has {len(values)} values "
                    f"for {len(self.samples)} samples"
                )


# ----------------------------------------------------------------------------- codec


def _ids_to_bytes(ids: list[int] | np.ndarray) -> bytes:
    arr = np.asarray(ids, dtype="<i4")
    return arr.tobytes()


def _floats_to_bytes(values: list[float] | np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def _field(rec: dict, kind: str, name: str, types: type | tuple[type, ...]) -> Any:
    if name not in rec:
        raise CodecError(f"{kind} record: missing field {name!r}")
    value = rec[name]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise CodecError(f"{kind} record: field {name!r} has type {type(value).__name__}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _bytes_array(rec: dict, kind: str, name: str, dtype: str) -> np.ndarray:
    raw = _field(rec, kind, name, bytes)
    if len(raw) % 4:
        raise CodecError(f"{kind} record: field {name!r} has {len(raw)} bytes, not a multiple of 4")
    return np.frombuffer(raw, dtype=dtype)


def _task_to_map(t: Task) -> dict:
    return {
        "id": t.id,
        "env": t.env,
        "payload": t.payload,
        "seq": t.seq,
        "group_id": t.group_id,
        "group_size": t.group_size,
        "attempt": t.attempt,
    }


def _task_from_map(rec: Any, kind: str = "task") -> Task:
    if not isinstance(rec, dict):
        raise CodecError(f"{kind} record: expected a map, got {type(rec).__name__}")
    return Task(
        id=_field(rec, kind, "id", str),
        env=_field(rec, kind, "env", str),
        payload=_field(rec, kind, "payload", dict),
        seq=_field(rec, kind, "seq", int),
        group_id=_field(rec, kind, "group_id", str),
        group_size=_field(rec, kind, "group_size", int),
        attempt=_field(rec, kind, "attempt", int),
    )


def _sample_to_map(s: Sample) -> dict:
    return {
        "task_id": s.task_id,
        "session_id": s.session_id,
        "turn": s.turn,
        "prompt_ids": _ids_to_bytes(s.prompt_ids),
        "completion_ids": _ids_to_bytes(s.completion_ids),
        "logprobs": _floats_to_bytes(s.logprobs),
        "weight_version": s.weight_version,
        "finish_reason": s.finish_reason,
        "timings": s.timings,
    }


def _sample_from_map(rec: Any, kind: str = "sample") -> Sample:
    if not isinstance(rec, dict):
        raise CodecError(f"{kind} record: expected a map, got {type(rec).__name__}")
    completion = _bytes_array(rec, kind, "completion_ids", "<i4")
    logprobs = _bytes_array(rec, kind, "logprobs", "<f4")
    if len(completion) != len(logprobs):
        raise CodecError(f"{kind} record: {len(logprobs)} logprobs for {len(completion)} completion tokens")
    timings = _field(rec, kind, "timings", dict)
    return Sample(
        task_id=_field(rec, kind, "task_id", str),
        session_id=_field(rec, kind, "session_id", str),
        turn=_field(rec, kind, "turn", int),
        prompt_ids=_bytes_array(rec, kind, "prompt_ids", "<i4").tolist(),
        completion_ids=completion.tolist(),
        logprobs=logprobs.tolist(),
        weight_version=_field(rec, kind, "weight_version", int),
        finish_reason=_field(rec, kind, "finish_reason", str),
        timings={str(k): float(v) for k, v in timings.items()},
    )


def _episode_to_map(e: Episode) -> dict:
    return {
        "task": _task_to_map(e.task),
        "samples": [_sample_to_map(s) for s in e.samples],
        "reward": float(e.reward),
        "step_rewards": {k: [float(x) for x in v] for k, v in e.step_rewards.items()},
        "status": str(e.status),
        "error": e.error,
        "metrics": {k: float(v) for k, v in e.metrics.items()},
    }


def _episode_from_map(rec: Any, kind: str = "episode") -> Episode:
    if not isinstance(rec, dict):
        raise CodecError(f"{kind} record: expected a map, got {type(rec).__name__}")
    samples = _field(rec, kind, "samples", list)
    status = _field(rec, kind, "status", str)
    if status not in EpisodeStatus._value2member_map_:
        raise CodecError(f"{kind} record: unknown status {status!r}")
    reward = float(_field(rec, kind, "reward", (int, float)))
    if not math.isfinite(reward):
        raise CodecError(f"{kind} record: reward is {reward}")
    try:
        return Episode(
            task=_task_from_map(_field(rec, kind, "task", dict), f"{kind}.task"),
            samples=[_sample_from_map(s, f"{kind}.samples[{i}]") for i, s in enumerate(samples)],
            reward=reward,
            step_rewards={
                str(k): [float(x) for x in v] for k, v in _field(rec, kind, "step_rewards", dict).items()
            },
            status=EpisodeStatus(status),
            error=_field(rec, kind, "error", str),
            metrics={str(k): float(v) for k, v in _field(rec, kind, "metrics", dict).items()},
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"{kind} record: {exc}") from exc


_ENCODERS: dict[type, tuple[str, Callable[[Any], dict[str, Any]]]] = {
    Task: ("task", _task_to_map),
    Sample: ("sample", _sample_to_map),
    Episode: ("episode", _episode_to_map),
}
_DECODERS: dict[str, Callable[[Any], Task | Sample | Episode]] = {
    "task": _task_from_map,
    "sample": _sample_from_map,
    "episode": _episode_from_map,
}


def encode(obj: Task | Sample | Episode) -> bytes:
    """Serialise a Task, Sample or Episode to a versioned msgpack record."""
    try:
        kind, to_map = _ENCODERS[type(obj)]
    except KeyError:
        raise TypeError(f"cannot encode {type(obj).__name__}; expected Task, Sample or Episode") from None
    return msgpack.packb({"kind": kind, "v": SCHEMA_VERSION, "data": to_map(obj)}, use_bin_type=True)


def decode(raw: bytes, expect: str | None = None) -> Task | Sample | Episode:
    """Decode a record; `expect` ("task" / "sample" / "episode") checks its kind."""
    try:
        rec = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise CodecError(f"not a msgpack record ({type(exc).__name__}: {exc})") from exc
    if not isinstance(rec, dict) or "kind" not in rec or "v" not in rec or "data" not in rec:
        raise CodecError("not a Forge record: expected a map with 'kind', 'v' and 'data'")
    kind, version = rec["kind"], rec["v"]
    if kind not in _DECODERS:
        raise CodecError(f"unknown record kind {kind!r}")
    if expect is not None and kind != expect:
        raise CodecError(f"expected a {expect} record, got a {kind} record")
    if version != SCHEMA_VERSION:
        raise CodecError(
            f"{kind} record has schema version {version!r}; this Forge reads version {SCHEMA_VERSION}"
        )
    return _DECODERS[kind](rec["data"])


def decode_task(raw: bytes) -> Task:
    return decode(raw, "task")  # type: ignore[return-value]


def decode_sample(raw: bytes) -> Sample:
    return decode(raw, "sample")  # type: ignore[return-value]


def decode_episode(raw: bytes) -> Episode:
    return decode(raw, "episode")  # type: ignore[return-value]
