"""Client for the engine protocol: SGLang's native HTTP API, spoken to SGLang or the built-in engine.

Every request body uses the field names of SGLang's own request dataclasses
(`python/sglang/srt/managers/io_struct.py`: `GenerateReqInput`, `UpdateWeightFromDiskReqInput`,
`InitWeightsUpdateGroupReqInput`, `UpdateWeightsFromDistributedReqInput`, `AbortReq`,
`PauseGenerationReqInput`, `ContinueGenerationReqInput`; sampling parameters as in
`python/sglang/srt/sampling/sampling_params.py`). `tests/engines/test_contract.py` checks every
request this client sends against a field list generated from SGLang's source
(`gateway/engines/sglang_fields.json`).

Errors are typed: `EngineUnavailableError` when the engine cannot be reached or answers 5xx /
503 (the gateway turns it into a 503), `EngineRequestError` for a 4xx (bad input: the engine's
message is kept), `EngineProtocolError` for an answer that does not parse.

Each route is written once (`EngineRoutes`: it builds an `EngineRequest`); `EngineClient` sends
it asynchronously (`forge.ground.engine_http.LeanHTTP` for http://, aiohttp for https://),
`SyncEngineClient` blocking with the standard library, for scripts, the trainer and tests that
are not async.

Sampling parameters use SGLang's names, e.g. ``{"max_new_tokens": 64, "temperature": 0.7,
"top_p": 0.9, "top_k": 50, "min_p": 0.0, "stop": ["\\n\\n"], "stop_token_ids": [2],
"sampling_seed": 1, "ignore_eos": False}``. Note the seed is ``sampling_seed`` (SGLang has no
``seed`` field). Unknown names are refused here with a ValueError before anything is sent.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from forge.ground.engine_http import LeanHTTP

# SGLang's `SamplingParams` API fields (sampling_params.py; the internal fields stop_strs,
# stop_regex_strs, stop_str_max_len, ... are not part of the HTTP API and are left out).
SAMPLING_PARAM_FIELDS: frozenset[str] = frozenset(
    {
        "max_new_tokens",
        "stop",
        "stop_token_ids",
        "stop_regex",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "frequency_penalty",
        "presence_penalty",
        "repetition_penalty",
        "min_new_tokens",
        "n",
        "json_schema",
        "regex",
        "ebnf",
        "structural_tag",
        "ignore_eos",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "no_stop_trim",
        "stream_interval",
        "logit_bias",
        "sampling_seed",
        "custom_params",
    }
)

DEFAULT_GROUP_NAME = "weight_update_group"


class EngineError(Exception):
    """Base class of the client's errors."""


class EngineUnavailableError(EngineError):
    """The engine cannot be reached, timed out, or answered 5xx: the gateway answers 503."""


class EngineRequestError(EngineError):
    """The engine refused the request (4xx). `status` and the engine's `message` are kept."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"engine answered {status}: {message}")
        self.status = status
        self.message = message
        self.body = body


class EngineProtocolError(EngineError):
    """The engine answered something that is not the protocol's shape."""


@dataclass
class GenerateResult:
    """One finished `/generate` call, flattened from SGLang's `{text, output_ids, meta_info}`.

    finish_reason: "stop" | "length" | "abort" (SGLang's `meta_info.finish_reason.type`);
    matched_stop: the stop token id or stop string that ended it (SGLang's `matched`), if any;
    output_logprobs: one log-prob per output token (from `meta_info.output_token_logprobs`,
    entries `[logprob, token_id, text]`); empty when `return_logprob=False`;
    cached_tokens: prompt tokens the engine reused from its prefix cache (`meta_info.cached_tokens`;
    0 when the engine does not say).
    """

    rid: str
    output_ids: list[int]
    output_logprobs: list[float]
    finish_reason: str
    matched_stop: int | str | None
    weight_version: str | None
    prompt_tokens: int
    completion_tokens: int
    text: str = ""
    abort_message: str | None = None
    cached_tokens: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def check_sampling_params(sampling_params: dict[str, Any]) -> dict[str, Any]:
    """Refuse sampling-parameter names SGLang does not accept (e.g. `seed` for `sampling_seed`)."""
    if not isinstance(sampling_params, dict):
        raise ValueError("sampling_params must be a dict of SGLang sampling-parameter names")
    unknown = sorted(set(sampling_params) - SAMPLING_PARAM_FIELDS)
    if unknown:
        raise ValueError(
            f"unknown sampling parameter(s) {unknown}; SGLang accepts {sorted(SAMPLING_PARAM_FIELDS)}"
        )
    return sampling_params


def generate_body(
    input_ids: list[int],
    sampling_params: dict[str, Any] | None,
    rid: str | None,
    return_logprob: bool,
) -> dict[str, Any]:
    """The `/generate` JSON body (GenerateReqInput fields only)."""
    body: dict[str, Any] = {
        "input_ids": [int(t) for t in input_ids],
        "sampling_params": dict(check_sampling_params(dict(sampling_params or {}))),
        "return_logprob": bool(return_logprob),
    }
    if rid is not None:
        body["rid"] = str(rid)
    return body


def parse_generate(data: Any, return_logprob: bool) -> GenerateResult:
    """Turn SGLang's `/generate` answer into a GenerateResult (raises EngineProtocolError)."""
    try:
        meta = data["meta_info"]
        output_ids = [int(t) for t in data["output_ids"]]
        reason = meta.get("finish_reason")
        if isinstance(reason, dict):
            kind = str(reason.get("type"))
            matched = reason.get("matched")
            abort_message = reason.get("message") if kind == "abort" else None
        else:  # older servers answered a bare string
            kind, matched, abort_message = str(reason), None, None
        logprobs: list[float] = []
        if return_logprob:
            entries = meta.get("output_token_logprobs") or []
            logprobs = [float(e[0]) for e in entries]
            if len(logprobs) != len(output_ids):
                raise EngineProtocolError(
                    f"{len(logprobs)} output log-probs for {len(output_ids)} output tokens"
                )
        version = meta.get("weight_version")
        cached = meta.get("cached_tokens")
        if cached is None:
            cached = 0
        elif isinstance(cached, bool) or not isinstance(cached, int) or cached < 0:
            raise EngineProtocolError(f"cached_tokens must be a non-negative integer, got {cached!r}")
        return GenerateResult(
            rid=str(meta.get("id", "")),
            output_ids=output_ids,
            output_logprobs=logprobs,
            finish_reason=kind,
            matched_stop=matched,
            weight_version=None if version is None else str(version),
            prompt_tokens=int(meta.get("prompt_tokens", 0)),
            completion_tokens=int(meta.get("completion_tokens", len(output_ids))),
            text=str(data.get("text") or ""),
            abort_message=abort_message,
            cached_tokens=cached,
            raw=data,
        )
    except EngineProtocolError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise EngineProtocolError(f"malformed /generate answer: {exc!r}") from exc


def _error_message(body: Any, text: str) -> str:
    if isinstance(body, dict):
        err = body.get("error", body.get("message"))
        if isinstance(err, dict):
            return str(err.get("message", err))
        if err is not None:
            return str(err)
    return text[:500]


def _raise_for_status(status: int, text: str) -> Any:
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if status >= 500:
        raise EngineUnavailableError(f"engine answered {status}: {_error_message(body, text)}")
    if status >= 400:
        raise EngineRequestError(status, _error_message(body, text), body)
    return body


@dataclass(frozen=True)
class EngineRequest:
    """One call of the engine protocol, built once for both clients: `parse` turns the decoded
    JSON answer into what the route method returns."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    timeout: float | None = None
    parse: Callable[[Any], Any] = lambda data: data


def _weight_version(body: dict[str, Any], weight_version: str | None) -> dict[str, Any]:
    if weight_version is not None:
        body["weight_version"] = str(weight_version)
    return body


class EngineRoutes:
    """The protocol's routes, each written once: a method builds its `EngineRequest` and hands it
    to `self._send`, which `EngineClient` performs asynchronously (the method returns an
    awaitable) and `SyncEngineClient` blocking."""

    def _send(self, req: EngineRequest) -> Any:
        raise NotImplementedError

    def generate(
        self,
        input_ids: list[int],
        sampling_params: dict[str, Any] | None = None,
        rid: str | None = None,
        return_logprob: bool = True,
    ) -> Any:
        """POST /generate with token ids; returns a GenerateResult: output ids, one log-prob per
        output token, etc."""
        body = generate_body(input_ids, sampling_params, rid, return_logprob)
        return self._send(
            EngineRequest("POST", "/generate", body, parse=lambda data: parse_generate(data, return_logprob))
        )

    def abort(self, rid: str | None = None, abort_all: bool = False) -> Any:
        """POST /abort_request: abort one request by rid (or all). Its generate call returns
        with finish_reason "abort" and the tokens made so far. Returns None."""
        body: dict[str, Any] = {"rid": rid or "", "abort_all": bool(abort_all)}
        return self._send(EngineRequest("POST", "/abort_request", body, parse=lambda _: None))

    def update_weights_from_disk(
        self,
        model_path: str,
        weight_version: str | None = None,
        abort_all_requests: bool = False,
        flush_cache: bool = True,
    ) -> Any:
        """POST /update_weights_from_disk: load a safetensors directory in place."""
        body: dict[str, Any] = {
            "model_path": str(model_path),
            "abort_all_requests": abort_all_requests,
            "flush_cache": flush_cache,
        }
        return self._send(
            EngineRequest("POST", "/update_weights_from_disk", _weight_version(body, weight_version))
        )

    def init_weights_update_group(
        self,
        master_address: str,
        master_port: int,
        rank_offset: int,
        world_size: int,
        group_name: str = DEFAULT_GROUP_NAME,
        backend: str = "nccl",
    ) -> Any:
        """POST /init_weights_update_group: the engine joins a torch.distributed group in which the
        trainer is rank 0 and this engine rank `rank_offset`. Returns once the group is formed, so
        the trainer must join concurrently (see forge.ground.weight_sync)."""
        body = {
            "master_address": master_address,
            "master_port": int(master_port),
            "rank_offset": int(rank_offset),
            "world_size": int(world_size),
            "group_name": group_name,
            "backend": backend,
        }
        return self._send(EngineRequest("POST", "/init_weights_update_group", body))

    def destroy_weights_update_group(self, group_name: str = DEFAULT_GROUP_NAME) -> Any:
        """POST /destroy_weights_update_group."""
        return self._send(EngineRequest("POST", "/destroy_weights_update_group", {"group_name": group_name}))

    def update_weights_from_distributed(
        self,
        names: list[str],
        dtypes: list[str],
        shapes: list[list[int]],
        group_name: str = DEFAULT_GROUP_NAME,
        weight_version: str | None = None,
        flush_cache: bool = True,
        abort_all_requests: bool = False,
    ) -> Any:
        """POST /update_weights_from_distributed: the engine receives one broadcast (src rank 0) per
        name, in order, with the given dtypes ("bfloat16", "float32", ...) and shapes. Returns when
        all are received and loaded; the trainer broadcasts concurrently (forge.ground.weight_sync)."""
        body: dict[str, Any] = {
            "names": list(names),
            "dtypes": [str(d).removeprefix("torch.") for d in dtypes],
            "shapes": [[int(x) for x in s] for s in shapes],
            "group_name": group_name,
            "flush_cache": flush_cache,
            "abort_all_requests": abort_all_requests,
        }
        return self._send(
            EngineRequest("POST", "/update_weights_from_distributed", _weight_version(body, weight_version))
        )

    def update_weights_from_tensor(
        self,
        serialized_named_tensors: list[str],
        load_format: str,
        weight_version: str | None = None,
        flush_cache: bool = True,
        abort_all_requests: bool = False,
    ) -> Any:
        """POST /update_weights_from_tensor: one serialized bucket per entry. The built-in engine
        takes load_format="forge_cuda_ipc" (base64 msgpack with a CUDA IPC handle, see
        forge.ground.cuda_ipc); it never accepts SGLang's pickled formats."""
        body: dict[str, Any] = {
            "serialized_named_tensors": list(serialized_named_tensors),
            "load_format": load_format,
            "flush_cache": flush_cache,
            "abort_all_requests": abort_all_requests,
        }
        return self._send(
            EngineRequest("POST", "/update_weights_from_tensor", _weight_version(body, weight_version))
        )

    def pause_generation(self, mode: str = "in_place") -> Any:
        """POST /pause_generation. mode: "in_place" (keep requests and KV, stop stepping),
        "retract" (same here), or "abort" (SGLang's default: abort everything in flight)."""
        return self._send(EngineRequest("POST", "/pause_generation", {"mode": mode}))

    def continue_generation(self) -> Any:
        """POST /continue_generation."""
        return self._send(EngineRequest("POST", "/continue_generation", {}))

    def flush_cache(self) -> Any:
        """POST /flush_cache (prefix cache; SGLang refuses while requests run). Returns None."""
        return self._send(EngineRequest("POST", "/flush_cache", parse=lambda _: None))

    def get_model_info(self) -> Any:
        """GET /get_model_info: model_path, weight_version, is_generation, ..."""
        return self._send(EngineRequest("GET", "/get_model_info"))


def _health_request(timeout: float) -> EngineRequest:
    return EngineRequest("GET", "/health", timeout=timeout, parse=lambda _: True)


class EngineClient(EngineRoutes):
    """Async client of one engine (SGLang or built-in) at `base_url`, e.g. http://127.0.0.1:30000.

    Every route method (EngineRoutes) returns an awaitable. Plain-http engines are spoken to
    through `LeanHTTP` (keep-alive streams, the gateway's hot path); https ones through aiohttp.
    Connections belong to the event loop that made them: a client used from another loop starts
    afresh. Call `aclose()` when done (or use `async with`). `timeout` bounds each call in seconds
    (None: no limit; generation can be long).
    """

    def __init__(self, base_url: str, timeout: float | None = None, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.api_key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._lean: LeanHTTP | None = None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _transport(self) -> LeanHTTP | aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._lean, self._session, self._loop = None, None, loop
        if self.base_url.startswith("http://"):
            if self._lean is None:
                self._lean = LeanHTTP(self.base_url, self._headers)
            return self._lean
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                headers=self._headers or None,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def aclose(self) -> None:
        if self._lean is not None:
            await self._lean.aclose()
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._lean, self._session = None, None

    async def _send(self, req: EngineRequest) -> Any:
        return req.parse(await self._request(req.method, req.path, req.body, req.timeout))

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        transport = self._transport()
        try:
            if isinstance(transport, LeanHTTP):
                payload = None if body is None else json.dumps(body).encode()
                status, raw = await transport.request(
                    method, path, payload, timeout if timeout is not None else self.timeout
                )
                return _raise_for_status(status, raw.decode("utf-8", "replace"))
            kwargs: dict[str, Any] = {}
            if body is not None:
                kwargs["json"] = body
            if timeout is not None:
                kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
            async with transport.request(method, self.base_url + path, **kwargs) as resp:
                text = await resp.text()
                return _raise_for_status(resp.status, text)
        except (TimeoutError, OSError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise EngineUnavailableError(f"engine at {self.base_url} unreachable: {exc!r}") from exc

    async def health(self, timeout: float = 5.0) -> bool:
        """GET /health: True when the engine answers 200, False when it is down or not ready."""
        try:
            return bool(await self._send(_health_request(timeout)))
        except (EngineUnavailableError, EngineRequestError):
            return False

    async def wait_healthy(self, timeout: float = 120.0, interval: float = 0.2) -> None:
        """Poll /health until it answers 200; EngineUnavailableError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not await self.health(timeout=min(5.0, timeout)):
            if time.monotonic() > deadline:
                raise EngineUnavailableError(f"engine at {self.base_url} not healthy after {timeout}s")
            await asyncio.sleep(interval)


class SyncEngineClient(EngineRoutes):
    """Blocking form of EngineClient (standard library only): the same routes, sent by urllib."""

    def __init__(self, base_url: str, timeout: float | None = 600.0, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.api_key = api_key

    def _send(self, req: EngineRequest) -> Any:
        return req.parse(self._request(req.method, req.path, req.body, req.timeout))

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return _raise_for_status(resp.status, resp.read().decode())
        except urllib.error.HTTPError as exc:
            return _raise_for_status(exc.code, exc.read().decode(errors="replace"))
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            raise EngineUnavailableError(f"engine at {self.base_url} unreachable: {exc!r}") from exc

    def health(self, timeout: float = 5.0) -> bool:
        """GET /health: True when the engine answers 200, False when it is down or not ready."""
        try:
            return bool(self._send(_health_request(timeout)))
        except (EngineUnavailableError, EngineRequestError):
            return False

    def wait_healthy(self, timeout: float = 120.0, interval: float = 0.2) -> None:
        """Poll /health until it answers 200; EngineUnavailableError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.health(timeout=min(5.0, timeout)):
            if time.monotonic() > deadline:
                raise EngineUnavailableError(f"engine at {self.base_url} not healthy after {timeout}s")
            time.sleep(interval)
