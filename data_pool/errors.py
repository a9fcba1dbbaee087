"""Errors the data pool raises; all derive from `PoolError`."""

from __future__ import annotations

from forge.ground.types import CodecError


class PoolError(RuntimeError):
    """Base class of data-pool errors."""


class RedisUnavailable(PoolError):
    """Redis cannot be reached (the message names the URL, password redacted)."""


class RedisServerError(PoolError):
    """The embedded redis-server could not be found, started, or did not come up."""


class UnknownTaskError(PoolError, KeyError):
    """No task with this id was ever submitted."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class StaleTaskError(PoolError):
    """An operation on a task that is not in the state it needs: lease expired and the task
    was retried (wrong attempt), already finished/aborted, or a session of an earlier attempt."""


class ClaimLostError(PoolError):
    """ack/nack/touch of a batch that is no longer claimed by this consumer (it was recovered)."""


class DuplicateTaskError(PoolError, ValueError):
    """submit() of a task id or group id that already exists; nothing of that call was written."""


__all__ = [
    "ClaimLostError",
    "CodecError",
    "DuplicateTaskError",
    "PoolError",
    "RedisServerError",
    "RedisUnavailable",
    "StaleTaskError",
    "UnknownTaskError",
]
