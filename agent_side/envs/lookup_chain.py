"""`lookup_chain`: a long-horizon multi-turn tool-use task (16+ model calls per episode by
construction, the context growing every call), for prefix reuse end to end (`forge bench e2e
--env lookup_chain`) beside `calculator`'s few calls.

The task: a chain of records, each reachable only through the `lookup` tool by its random key.
The prompt shows the START record; every record names the key of the next one, and the last one
says ``next: END``. The agent follows the chain one lookup per call and answers with the value of
the last record (``Answer: <value>``). A chain of c − 1 records takes a perfect agent c model calls
(c − 1 lookups + the answer), c drawn per task from [`min_calls`, `max_calls`]; the next key is
only ever in the previous record, so no call can be skipped.

Every call gets an observation of about `observation_tokens` tokens (SmolLM2 tokenizer), whatever
the model says, so the context grows by one record per call even for a random model:
- a `lookup` of a known key → its record (a tool message), which becomes the current record;
- a bad tool call (unknown tool or key, arguments that are not `{"key": ...}`) → an error and the
  current record again (a tool message);
- plain text that is not the correct answer → a note and the current record again (a user message).

The episode ends on the correct answer (reward 1) or after `max_turns` calls (reward 0). The
verifier is `verifiers.check_number` against the last record's value; values are distinct and
the last one is in no other record, so it cannot be guessed before the chain is walked.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from typing import Any, ClassVar

from agent_side.env import EnvConfig, Environment, Message, StepResult
from agent_side.registry import register_env
from agent_side.verifiers import check_number

SYSTEM_PROMPT = (
    "You are walking a chain of records. Each record is reachable only with the `lookup` tool, by "
    "its key, and names the key of the next record. Look up one record per step, following the "
    "'next' keys, until you reach the record whose next is END. Then reply with that record's "
    "value on the last line in the form 'Answer: <number>'."
)

LOOKUP_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Return the record stored under a key.",
        "parameters": {
            "type": "object",
            "properties": {"key": {"type": "string", "description": "a record key, e.g. Q7M2CX"}},
            "required": ["key"],
        },
    },
}

START = "START"
END = "END (this is the last record)"
_KEY_CHARS = string.ascii_uppercase + string.digits
# filler for the records' notes: common words, about one SmolLM2 token each
_WORDS = (
    "river lamp stone garden window paper bridge cloud forest market silver harbor valley candle "
    "mirror engine letter basket ladder orange pencil rocket saddle tunnel violin wagon anchor "
    "barrel castle desert falcon glove hammer island jacket kettle lemon meadow needle ocean "
    "palace quiet rabbit shadow timber velvet winter yellow bottle circle dragon feather ginger "
    "hollow iron jungle kitten lantern marble nickel orchard pepper quilt ribbon salmon thunder "
    "copper dinner eagle fabric garlic helmet ivory jelly kernel linen mango table olive parrot "
    "radar sugar tiger tomato walnut zebra album beacon cactus sand echo fossil glacier hazel "
    "snow jade bear lotus maple nectar coal pearl quartz crow hill rose brown vapor willow"
).split()
# rendered record lines other than the notes, in tokens (measured: tests/agent_side/test_lookup_chain.py)
_FIXED_TOKENS = 25


@dataclass
class LookupChainConfig(EnvConfig):
    max_turns: int = 24  # model calls per episode, at most (≥ max_calls, so every chain can be finished)
    max_tokens: int = 64
    min_calls: int = 16  # model calls a perfect agent needs (lookups + the answer), per task from
    max_calls: int = 20  # [min_calls, max_calls]
    observation_tokens: int = 64  # each record (every observation) in SmolLM2 tokens, about
    key_length: int = 6  # characters of a record key (A-Z, 0-9)

    def __post_init__(self) -> None:  # checked when the config is made: at start, in config.validate
        if self.min_calls < 2:
            raise ValueError(f"min_calls={self.min_calls}: must be ≥ 2 (one lookup and the answer)")
        if not self.min_calls <= self.max_calls <= 1000:
            raise ValueError(f"max_calls={self.max_calls}: must be ≥ min_calls={self.min_calls} and ≤ 1000")
        if self.max_turns < self.max_calls:
            raise ValueError(
                f"max_turns={self.max_turns}: must be ≥ max_calls={self.max_calls}, "
                "or the longest chains cannot be finished"
            )
        if not 32 <= self.observation_tokens <= 2048:
            raise ValueError(f"observation_tokens={self.observation_tokens}: must be in [32, 2048]")
        if not 4 <= self.key_length <= 16:
            raise ValueError(f"key_length={self.key_length}: must be in [4, 16]")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens}: must be ≥ 1")


def make_chain(rng: random.Random, calls: int, observation_tokens: int, key_length: int) -> dict[str, Any]:
    """A task payload: the START record's next key and `calls` − 1 records after it."""
    n = calls - 1
    keys: list[str] = []
    while len(keys) < n:
        # a letter first: no digit run in a key reads as a number to the verifier
        key = rng.choice(string.ascii_uppercase) + "".join(
            rng.choice(_KEY_CHARS) for _ in range(key_length - 1)
        )
        if key not in keys and key != START:
            keys.append(key)
    values = rng.sample(range(1000, 10000), n)
    words = max(observation_tokens - _FIXED_TOKENS, 0)
    notes = [" ".join(rng.choice(_WORDS) for _ in range(words)) for _ in range(n + 1)]
    records = [
        {"key": k, "value": v, "notes": notes[i + 1]}
        for i, (k, v) in enumerate(zip(keys, values, strict=True))
    ]
    return {
        "question": render_start(keys[0], notes[0]),
        "start_next": keys[0],
        "start_notes": notes[0],
        "records": records,
        "answer": str(values[-1]),
    }


def render_start(next_key: str, notes: str) -> str:
    return f"record {START}\nvalue: none\nnext: {next_key}\nnotes: {notes}"


def render_record(records: list[dict[str, Any]], i: int) -> str:
    r = records[i]
    nxt = records[i + 1]["key"] if i + 1 < len(records) else END
    return f"record {r['key']}\nvalue: {r['value']}\nnext: {nxt}\nnotes: {r['notes']}"


@register_env("lookup_chain")
class LookupChain(Environment):
    config_class: ClassVar[type[EnvConfig]] = LookupChainConfig
    required_keys: ClassVar[tuple[str, ...]] = ("question", "answer", "start_next", "start_notes", "records")
    config: LookupChainConfig

    @classmethod
    def generate(cls, rng: random.Random, config: EnvConfig) -> dict[str, Any]:
        assert isinstance(config, LookupChainConfig)
        calls = rng.randint(config.min_calls, config.max_calls)
        return make_chain(rng, calls, config.observation_tokens, config.key_length)

    def reset(self) -> list[Message]:
        self.records: list[dict[str, Any]] = list(self.payload["records"])
        self.index = {str(r["key"]): i for i, r in enumerate(self.records)}
        self.position = -1  # the current record: -1 is START, else an index into `records`
        self.furthest = -1
        self.calls = 0
        self.lookups = 0
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": str(self.payload["question"])},
        ]

    @property
    def tools(self) -> list[dict[str, Any]]:
        return [LOOKUP_TOOL]

    def current(self) -> str:
        if self.position < 0:
            return render_start(self.payload["start_next"], self.payload["start_notes"])
        return render_record(self.records, self.position)

    def _lookup(self, call: dict[str, Any]) -> str:
        fn = call.get("function") or {}
        if fn.get("name") != "lookup":
            return f"error: unknown tool {fn.get('name')!r}. Your current record:\n{self.current()}"
        try:
            key = json.loads(fn.get("arguments") or "")["key"]
        except (json.JSONDecodeError, TypeError, KeyError):
            return (
                f"error: arguments must be a JSON object with a 'key'. Your current record:\n{self.current()}"
            )
        key = str(key).strip().upper()
        if key == START:
            self.position = -1
            return self.current()
        if key not in self.index:
            return f"error: no record has key {key[:32]!r}. Your current record:\n{self.current()}"
        self.position = self.index[key]
        self.furthest = max(self.furthest, self.position)
        self.lookups += 1
        return self.current()

    def _metrics(self, correct: bool, truncated: bool) -> dict[str, float]:
        return {
            "accuracy": float(correct),
            "truncated": float(truncated),
            "lookups": float(self.lookups),
            "chain_progress": (self.furthest + 1) / len(self.records),  # share of the chain reached
        }

    def step(self, reply: Message) -> StepResult:
        self.calls += 1
        tool_calls = reply.get("tool_calls") or []
        if tool_calls:
            observation = [
                {"role": "tool", "tool_call_id": call.get("id") or f"call_{i}", "content": self._lookup(call)}
                for i, call in enumerate(tool_calls)
            ]
        else:
            verdict = check_number(reply.get("content") or "", self.payload["answer"])
            if verdict.correct:
                return StepResult([], 1.0, True, {}, self._metrics(True, False))
            note = "That is not the answer." if verdict.well_formatted else "No lookup was made."
            observation = [{"role": "user", "content": f"{note} Your current record:\n{self.current()}"}]
        done = self.calls >= self.config.max_turns
        return StepResult(observation, 0.0, done, {}, self._metrics(False, True) if done else {})
