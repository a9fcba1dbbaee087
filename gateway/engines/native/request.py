"""Parsing and validating `/generate` bodies (SGLang's GenerateReqInput) into engine requests.

Field names are SGLang's (`gateway/engines/sglang_fields.json` holds the generated list): a
name SGLang does not know is refused (400), and so is a SGLang feature this engine does not
implement when it is given a non-default value (multimodal input, LoRA, grammars, penalties,
n > 1, batch input, streaming...). Bad values → `BadRequest`, which the server answers 400.
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

FIELDS_FILE = Path(__file__).resolve().parent.parent / "sglang_fields.json"
TOP_K_ALL = 1 << 30

# GenerateReqInput fields the engine implements.
SUPPORTED_TOP = {
    "rid",
    "text",
    "input_ids",
    "sampling_params",
    "return_logprob",
    "logprob_start_len",
    "return_text_in_logprobs",
}
# Accepted and ignored (they only affect logging, routing or caching policy in SGLang).
IGNORED_TOP = {
    "session_id",
    "log_metrics",
    "priority",
    "routing_key",
    "conversation_id",
    "custom_labels",
    "extra_key",
    "no_logs",
    "routed_dp_rank",
    "data_parallel_rank",
    "received_time",
    "external_trace_header",
    "cache_salt",
}
SUPPORTED_SAMPLING = {
    "max_new_tokens",
    "stop",
    "stop_token_ids",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "ignore_eos",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "no_stop_trim",
    "sampling_seed",
    "stream_interval",
    "custom_params",
}
# SamplingParams fields accepted only at their neutral value.
NEUTRAL_SAMPLING: dict[str, Any] = {
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repetition_penalty": 1.0,
    "min_new_tokens": 0,
    "n": 1,
}


class BadRequest(ValueError):
    """A request the engine refuses; answered 400 with the message."""


@cache
def sglang_fields() -> dict[str, Any]:
    return json.loads(FIELDS_FILE.read_text())


def _neutral(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == [] or value == {} or value == ""


@dataclass
class Req:
    """One generation request and its progress."""

    rid: str
    input_ids: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int
    stop_strs: list[str]
    stop_token_ids: set[int]
    ignore_eos: bool
    skip_special_tokens: bool
    spaces_between_special_tokens: bool
    no_stop_trim: bool
    return_logprob: bool
    return_text_in_logprobs: bool
    created: float = field(default_factory=time.monotonic)
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    finish_reason: dict[str, Any] | None = None
    slot: int = -1
    queued_step: int = 0  # the engine's decode-step count when it was queued
    # KV bookkeeping (the scheduler's): the pages of its page table, the prefix-cache nodes it
    # holds (the leading pages it shares), the cache epoch it was admitted in, and how many of its
    # prompt tokens the first admission found cached (meta_info.cached_tokens)
    pages: list[int] = field(default_factory=list)
    path: list[Any] = field(default_factory=list)
    epoch: int = -1
    cached_tokens: int = -1
    # while it waits: its last prefix match (PrefixCache.rematch) and its tokens so far, kept
    # between scheduler steps (the prompt + output concatenation, rebuilt when the output grew)
    matched: list[Any] = field(default_factory=list)
    _tokens: list[int] = field(default_factory=list)

    @property
    def position(self) -> int:
        """Position of the next token to be fed (= tokens so far - 1) ... of the last token."""
        return len(self.input_ids) + len(self.output_ids) - 1

    def tokens(self) -> list[int]:
        """Prompt + output so far (cached: do not modify the list)."""
        if len(self._tokens) != len(self.input_ids) + len(self.output_ids):
            self._tokens = self.input_ids + self.output_ids
        return self._tokens

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer, got {value!r}")
    return value


def _float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be a boolean, got {value!r}")
    return value


def _check_fields(obj: dict[str, Any], known: list[str], supported: set[str], where: str) -> None:
    for key, value in obj.items():
        if key not in known:
            raise BadRequest(f"unknown field `{key}` in {where}")
        if key not in supported and not _neutral(value):
            raise BadRequest(f"`{key}` in {where} is not supported by the built-in engine")


def parse_sampling(sp: Any, vocab_size: int) -> dict[str, Any]:
    """Validate SGLang sampling params; returns normalised values (defaults as SGLang's)."""
    if sp is None:
        sp = {}
    if not isinstance(sp, dict):
        raise BadRequest("sampling_params must be an object (batch requests are not supported)")
    known = sglang_fields()["dataclasses"]["SamplingParams"]
    for key, neutral in NEUTRAL_SAMPLING.items():
        if key in sp and sp[key] is not None and sp[key] != neutral:
            raise BadRequest(f"sampling_params.{key}={sp[key]!r} is not supported by the built-in engine")
    _check_fields(sp, known, SUPPORTED_SAMPLING | set(NEUTRAL_SAMPLING), "sampling_params")
    out: dict[str, Any] = {}
    mnt = sp.get("max_new_tokens", 128)
    out["max_new_tokens"] = None if mnt is None else _int(mnt, "max_new_tokens")
    if out["max_new_tokens"] is not None and out["max_new_tokens"] < 0:
        raise BadRequest("max_new_tokens must be >= 0")
    temp = sp.get("temperature")
    out["temperature"] = 1.0 if temp is None else _float(temp, "temperature")
    if out["temperature"] < 0:
        raise BadRequest("temperature must be >= 0")
    top_p = sp.get("top_p")
    out["top_p"] = 1.0 if top_p is None else _float(top_p, "top_p")
    if not 0.0 < out["top_p"] <= 1.0:
        raise BadRequest("top_p must be in (0, 1]")
    top_k = sp.get("top_k")
    top_k = TOP_K_ALL if top_k is None else _int(top_k, "top_k")
    if top_k == -1:
        top_k = TOP_K_ALL
    if top_k < 1:
        raise BadRequest("top_k must be -1 (all) or >= 1")
    out["top_k"] = min(top_k, vocab_size)
    min_p = sp.get("min_p")
    out["min_p"] = 0.0 if min_p is None else _float(min_p, "min_p")
    if not 0.0 <= out["min_p"] <= 1.0:
        raise BadRequest("min_p must be in [0, 1]")
    seed = sp.get("sampling_seed")
    out["seed"] = random.getrandbits(32) if seed is None else _int(seed, "sampling_seed") & 0xFFFFFFFF
    stop = sp.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("stop must be a non-empty string or a list of non-empty strings")
    out["stop_strs"] = stop
    ids = sp.get("stop_token_ids") or []
    if not isinstance(ids, list):
        raise BadRequest("stop_token_ids must be a list of token ids")
    out["stop_token_ids"] = {_int(t, "stop_token_ids[]") for t in ids}
    for name, default in (
        ("ignore_eos", False),
        ("skip_special_tokens", True),
        ("spaces_between_special_tokens", True),
        ("no_stop_trim", False),
    ):
        value = sp.get(name)
        out[name] = default if value is None else _bool(value, name)
    return out


def parse_generate(
    body: Any, vocab_size: int, context_length: int, tokenizer: Any | None
) -> tuple[Req, dict[str, Any]]:
    """A `/generate` JSON body → (Req, flags). Raises BadRequest for anything invalid."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    known = sglang_fields()["dataclasses"]["GenerateReqInput"]
    _check_fields(body, known, SUPPORTED_TOP | IGNORED_TOP, "the request")
    if body.get("stream"):
        raise BadRequest("stream=true is not supported by the built-in engine")
    input_ids = body.get("input_ids")
    text = body.get("text")
    if (input_ids is None) == (text is None):
        raise BadRequest("give exactly one of input_ids and text")
    if text is not None:
        if not isinstance(text, str):
            raise BadRequest("text must be a string (batch requests are not supported)")
        if tokenizer is None:
            raise BadRequest("this engine has no tokenizer: send input_ids")
        input_ids = tokenizer(text)["input_ids"]
    if not isinstance(input_ids, list) or not input_ids:
        raise BadRequest("input_ids must be a non-empty list of token ids")
    if isinstance(input_ids[0], list):
        raise BadRequest("batch requests (a list of lists) are not supported: send one request per prompt")
    for t in input_ids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
            raise BadRequest(f"input_ids must be integers in [0, {vocab_size}), got {t!r}")
    if len(input_ids) >= context_length:
        raise BadRequest(
            f"the input ({len(input_ids)} tokens) is longer than the model's context length ({context_length} tokens)"
        )
    sp = parse_sampling(body.get("sampling_params"), vocab_size)
    if sp["stop_strs"] and tokenizer is None:
        raise BadRequest("stop strings need a tokenizer, and this engine has none: use stop_token_ids")
    room = context_length - len(input_ids)
    max_new = room if sp["max_new_tokens"] is None else min(sp["max_new_tokens"], room)
    rid = body.get("rid")
    if rid is None:
        rid = uuid.uuid4().hex
    elif not isinstance(rid, str) or not rid:
        raise BadRequest("rid must be a non-empty string (batch requests are not supported)")
    return_logprob = body.get("return_logprob")
    start = body.get("logprob_start_len")
    if start is not None and _int(start, "logprob_start_len") != -1:
        raise BadRequest("only logprob_start_len=-1 (output tokens only) is supported")
    req = Req(
        rid=rid,
        input_ids=list(input_ids),
        max_new_tokens=max_new,
        temperature=sp["temperature"],
        top_p=sp["top_p"],
        top_k=sp["top_k"],
        min_p=sp["min_p"],
        seed=sp["seed"],
        stop_strs=sp["stop_strs"],
        stop_token_ids=sp["stop_token_ids"],
        ignore_eos=sp["ignore_eos"],
        skip_special_tokens=sp["skip_special_tokens"],
        spaces_between_special_tokens=sp["spaces_between_special_tokens"],
        no_stop_trim=sp["no_stop_trim"],
        return_logprob=False if return_logprob is None else _bool(return_logprob, "return_logprob"),
        return_text_in_logprobs=bool(body.get("return_text_in_logprobs") or False),
    )
    return req, {"requested_max_new_tokens": sp["max_new_tokens"]}
