"""The pool's Lua scripts (data_pool/lua/*.lua, each prefixed with common.lua) and the mapping of
their error replies to Python exceptions."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import redis
from redis.commands.core import Script

from data_pool.errors import ClaimLostError, DuplicateTaskError, PoolError, StaleTaskError, UnknownTaskError

_DIR = Path(__file__).with_name("lua")
NAMES = (
    "submit acquire heartbeat set_reward finish abort fail open_session append claim ack release recover "
    "touch reject record"
).split()

_ERRORS: dict[str, type[Exception]] = {
    "UNKNOWN": UnknownTaskError,
    "STALE": StaleTaskError,
    "CLAIMLOST": ClaimLostError,
    "DUPLICATE": DuplicateTaskError,
    "BADINPUT": ValueError,
}


@cache
def source(name: str) -> str:
    return (_DIR / "common.lua").read_text() + "\n" + (_DIR / f"{name}.lua").read_text()


class Scripts:
    """One registered Script per name, e.g. `scripts.claim(args=[...])`."""

    def __init__(self, client: redis.Redis) -> None:
        for name in NAMES:
            setattr(self, name, client.register_script(source(name)))

    def load(self, client: redis.Redis) -> None:
        """SCRIPT LOAD them all (for callers that use plain EVALSHA in a transaction)."""
        for name in NAMES:
            getattr(self, name).sha = client.script_load(source(name))

    def __getattr__(self, name: str) -> Script:  # for type checkers; real ones set in __init__
        raise AttributeError(name)


def translate(exc: redis.ResponseError) -> Exception:
    """Turn a script's error reply ("CODE message") into the matching pool exception."""
    msg = str(exc)
    code, _, rest = msg.partition(" ")
    cls = _ERRORS.get(code)
    if cls is None:
        return PoolError(f"Redis error: {msg}")
    rest = rest.split(" script: ")[0]  # Redis 7 may append the script location
    return cls(rest)
