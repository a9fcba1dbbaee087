"""The gateway's core, independent of HTTP and of which API is spoken: a call's prompt (through the
session's ledger), its limits, the engine requests (one per choice), the parsed replies, and the
recorded samples.

    gw = Gateway(GatewayConfig(engine_urls=[url], model="tiny"), pool=pool)
    await gw.startup()
    result = await gw.chat(session, conversation, Sampling(max_tokens=64), tool_id_prefix="call_")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forge.ground.engine_client import (
    EngineProtocolError,
    EngineRequestError,
    EngineUnavailableError,
    GenerateResult,
)
from forge.ground.types import Sample
from gateway.config import GatewayConfig
from gateway.detok import token_pieces
from gateway.errors import APIError
from gateway.ledger import Ledger, PromptPlan
from gateway.messages import Conversation, Message, ToolCall
from gateway.parsing import CALL_OPEN, ParsedReply, parse_reply
from gateway.router import Router
from gateway.sessions import CallRecord, Session, SessionStore
from gateway.templates import ChatRenderer, TemplateError


@dataclass
class Sampling:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1


@dataclass
class Choice:
    index: int
    ids: list[int]
    logprobs: list[float]
    finish: str  # stop | length
    matched: int | str | None
    text: str  # the returned text: prefill + decoded completion, cut before a matched stop string
    prefill: str = ""
    eot: str = ""  # the end-of-turn token's text, when the completion ended with one
    pieces: list[str] | None = None  # text per completion token (cut like `text`), when asked for
    parsed: ParsedReply | None = None  # chat: reasoning / content / tool calls of `text`
    message: Message | None = None  # chat: the reply as the gateway knows it (ledger)
    weight_version: int = 0
    engine: str = ""  # the URL of the engine that generated it

    @property
    def ended(self) -> bool:
        return bool(self.eot)


@dataclass
class CallResult:
    id: str
    created: int
    model: str
    prompt_ids: list[int]
    choices: list[Choice]
    prefix_break: bool = False
    reused_tokens: int = 0
    cached_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.ids) for c in self.choices)


def _version(value: str | None) -> int:
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:
        try:
            return int(float(value))
        except ValueError:
            return 0


def load_tokenizer(cfg: GatewayConfig) -> Any:
    from transformers import AutoTokenizer

    from forge.ground.models import resolve_model, smollm2_tokenizer_dir

    source = cfg.tokenizer or cfg.model
    if source in ("tiny", "tiny_llama", "qwen3_0p6b_random"):
        return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    return AutoTokenizer.from_pretrained(resolve_model(source))


def validate_tools(tools: list[dict[str, Any]]) -> None:
    """Tool names unique; parameters an object JSON Schema that is itself valid."""
    from jsonschema import SchemaError, validators

    seen: set[str] = set()
    for i, tool in enumerate(tools):
        fn = tool["function"]
        name = fn["name"]
        if name in seen:
            raise APIError(400, f"Invalid 'tools': the function name {name!r} is used twice.", param="tools")
        seen.add(name)
        params = fn.get("parameters")
        if params is None:
            continue
        kind = params.get("type", "object")
        if kind != "object":
            raise APIError(
                400,
                f"Invalid schema for function '{name}': schema must be a JSON Schema of 'type: \"object\"', "
                f"got 'type: {json.dumps(kind)}'.",
                param=f"tools[{i}].function.parameters",
                code="invalid_function_parameters",
            )
        try:
            validators.validator_for(params).check_schema(params)
        except SchemaError as exc:
            raise APIError(
                400,
                f"Invalid schema for function '{name}': {exc.message}",
                param=f"tools[{i}].function.parameters",
                code="invalid_function_parameters",
            ) from None
        except Exception as exc:  # e.g. an unknown $schema dialect
            raise APIError(400, f"Invalid schema for function '{name}': {exc}", param="tools") from None


class Gateway:
    """The gateway's state: renderer, router, sessions, limits. Runs on one event loop."""

    def __init__(
        self, cfg: GatewayConfig, tokenizer: Any = None, pool: Any = None, record_new_tasks: bool = False
    ) -> None:
        """`record_new_tasks` (forge serve): a session for an unknown task id creates the task."""
        self.cfg = cfg.validate()
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg)
        self.renderer = ChatRenderer(self.tokenizer, cfg.chat_template, cfg.sanitize_control_tokens)
        self.router = Router(list(cfg.engine_urls), cfg.engine_retry_after_s)
        self.sessions = SessionStore(
            self.renderer, pool, cfg.ledger_max_anchors, cfg.session_idle_timeout_s, record_new_tasks
        )
        self.pool = pool
        self.model_name = cfg.served_model_name or Path(str(cfg.model)).name
        self.model_names = [self.model_name, *[a for a in cfg.model_aliases if a != self.model_name]]
        self.context_length: int | None = cfg.context_length
        self.vocab_size = len(self.tokenizer)
        self.in_flight = 0
        self.counters: dict[str, int] = {"calls": 0, "rejected_busy": 0, "engine_errors": 0, "timeouts": 0}
        self._stateless = Ledger(self.renderer, 2)
        self.stage_s: dict[str, float] = {}
        self._valid_tools: OrderedDict[str, None] = OrderedDict()
        self.stage_calls = 0
        self.created = int(time.time())

    # ------------------------------------------------------------------ setup and limits
    async def startup(self) -> None:
        if self.context_length is None:
            info = await self.router.model_info()
            if info and isinstance(info.get("context_length"), int):
                self.context_length = int(info["context_length"])

    def context(self) -> int:
        if self.context_length is not None:
            return self.context_length
        path = Path(str(self.cfg.tokenizer or self.cfg.model)) / "config.json"
        with contextlib.suppress(OSError, ValueError):
            return int(json.loads(path.read_text()).get("max_position_embeddings") or 4096)
        return 4096

    def check_model(self, name: str) -> None:
        if name not in self.model_names:
            raise APIError(
                404,
                f"The model `{name}` does not exist or you do not have access to it. "
                f"This gateway serves {', '.join(repr(n) for n in self.model_names)}.",
                param="model",
                code="model_not_found",
            )

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """One model call in flight; 429 with Retry-After beyond `max_concurrent_requests`."""
        if self.in_flight >= self.cfg.max_concurrent_requests:
            self.counters["rejected_busy"] += 1
            raise APIError(
                429,
                f"Too many requests in flight ({self.in_flight}); retry after {self.cfg.retry_after_s}s.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(self.cfg.retry_after_s)},
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def budget(self, prompt_len: int, max_tokens: int | None, default: int | None, style: str) -> int:
        """max_new_tokens for the engine; 400 when the prompt (+ max_tokens) exceeds the context."""
        ctx = self.context()
        if prompt_len >= ctx:
            if style == "anthropic":
                msg = f"prompt is too long: {prompt_len} tokens > {ctx - 1} maximum"
            else:
                msg = (
                    f"This model's maximum context length is {ctx} tokens. However, your messages resulted "
                    f"in {prompt_len} tokens. Please reduce the length of the messages."
                )
            raise APIError(400, msg, param="messages", code="context_length_exceeded")
        room = ctx - prompt_len
        if max_tokens is not None:
            if max_tokens > room:
                if style == "anthropic":
                    msg = (
                        f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) = {prompt_len + max_tokens} "
                        f"> {ctx}, the model's context length"
                    )
                else:
                    msg = (
                        f"This model's maximum context length is {ctx} tokens. However, you requested "
                        f"{prompt_len + max_tokens} tokens ({prompt_len} in the messages, {max_tokens} in the "
                        "completion). Please reduce the length of the messages or completion."
                    )
                raise APIError(400, msg, param="max_tokens", code="context_length_exceeded")
            return max_tokens
        return min(default, room) if default is not None else room

    # ------------------------------------------------------------------ engine calls
    def _engine_params(self, s: Sampling, max_new: int, i: int) -> dict[str, Any]:
        sp: dict[str, Any] = {"max_new_tokens": int(max_new)}
        temperature, top_p = s.temperature, s.top_p
        if top_p is not None and top_p <= 0:  # top_p 0 keeps only the most likely token
            temperature, top_p = 0.0, None
        if temperature is not None:
            sp["temperature"] = float(temperature)
        if top_p is not None:
            sp["top_p"] = float(top_p)
        if s.top_k is not None and s.top_k > 0:
            sp["top_k"] = int(s.top_k)
        if s.min_p:
            sp["min_p"] = float(s.min_p)
        if s.stop:
            sp["stop"] = list(s.stop)
        if s.seed is not None:
            sp["sampling_seed"] = (int(s.seed) + i) % (1 << 63)
        return sp

    async def _generate(
        self, session_id: str | None, prompt: list[int], s: Sampling, max_new: int
    ) -> list[tuple[GenerateResult, str]]:
        rid = secrets.token_hex(8)
        calls = [
            self.router.generate(session_id, prompt, self._engine_params(s, max_new, i), f"{rid}-{i}")
            for i in range(s.n)
        ]
        try:
            results = await asyncio.wait_for(asyncio.gather(*calls), self.cfg.request_timeout_s)
        except TimeoutError:
            self.counters["timeouts"] += 1
            raise APIError(504, f"The request timed out after {self.cfg.request_timeout_s:g}s.") from None
        except EngineUnavailableError as exc:
            self.counters["engine_errors"] += 1
            raise APIError(
                503, f"The inference engine is unavailable: {exc}", code="engine_unavailable"
            ) from None
        except EngineRequestError as exc:
            raise APIError(400, f"The inference engine refused the request: {exc.message}") from None
        except EngineProtocolError as exc:
            self.counters["engine_errors"] += 1
            raise APIError(502, f"The inference engine answered something unexpected: {exc}") from None
        for r, _ in results:
            if r.finish_reason == "abort":
                raise APIError(
                    503, f"The inference engine aborted the request: {r.abort_message or 'aborted'}"
                )
        self.counters["calls"] += 1
        return results

    def _choice(self, i: int, answer: tuple[GenerateResult, str], prefill: str, want_pieces: bool) -> Choice:
        r, engine = answer
        ids = r.output_ids
        eot = ""
        if (
            r.finish_reason == "stop"
            and isinstance(r.matched_stop, int)
            and ids
            and ids[-1] == r.matched_stop
        ):
            eot = self.renderer.token_text(ids[-1])
        pieces = token_pieces(self.renderer, ids) if want_pieces else None
        text = "".join(pieces) if pieces is not None else self.renderer.decode(ids)
        if r.finish_reason == "stop" and isinstance(r.matched_stop, str) and r.matched_stop:
            cut = text.find(r.matched_stop)
            if cut >= 0:
                text = text[:cut]
                if pieces is not None:
                    pieces = _cut_pieces(pieces, cut)
        finish = "length" if r.finish_reason == "length" else "stop"
        return Choice(
            index=i,
            ids=ids,
            logprobs=r.output_logprobs,
            finish=finish,
            matched=r.matched_stop,
            text=prefill + text,
            prefill=prefill,
            eot=eot,
            pieces=pieces,
            weight_version=_version(r.weight_version),
            engine=engine,
        )

    # ------------------------------------------------------------------ chat
    def check_tools(self, tools: list[dict[str, Any]]) -> None:
        """`validate_tools`, remembered: agents send the same tools with every call, and checking a
        JSON Schema costs ~2 ms per tool."""
        key = json.dumps(tools, sort_keys=True, ensure_ascii=False, default=str)
        if key in self._valid_tools:
            self._valid_tools.move_to_end(key)
            return
        validate_tools(tools)
        self._valid_tools[key] = None
        if len(self._valid_tools) > 1024:
            self._valid_tools.popitem(last=False)

    def prefill_for(self, conv: Conversation) -> str:
        choice = conv.tool_choice
        if choice.mode in ("auto", "none"):
            return ""
        if not conv.tools:
            raise APIError(
                400,
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                param="tool_choice",
            )
        if self.cfg.tool_parser != "hermes":
            raise APIError(
                400, "This gateway cannot force tool calls (tool_parser is 'none').", param="tool_choice"
            )
        if choice.mode == "required":
            return CALL_OPEN + "\n"
        names = [t["function"]["name"] for t in conv.tools]
        if choice.name not in names:
            raise APIError(
                400,
                f"Invalid value for 'tool_choice': tool {choice.name!r} is not among the tools ({names}).",
                param="tool_choice",
            )
        return (
            CALL_OPEN + "\n" + '{"name": ' + json.dumps(choice.name, ensure_ascii=False) + ', "arguments": '
        )

    def plan(self, session: Session | None, conv: Conversation, prefill: str) -> PromptPlan:
        ledger = session.ledger if session is not None else self._stateless
        try:
            return ledger.plan_chat(conv, prefill, fresh_only=session is None)
        except TemplateError as exc:
            raise APIError(400, str(exc), param="messages") from None

    async def chat(
        self,
        session: Session | None,
        conv: Conversation,
        s: Sampling,
        *,
        tool_id_prefix: str,
        want_pieces: bool,
        style: str,
    ) -> CallResult:
        if session is not None:
            await self.sessions.flush(session)
            await self.sessions.keep(session)
        t0 = time.perf_counter()
        if conv.tools:
            self.check_tools(conv.tools)
        prefill = self.prefill_for(conv)
        plan = self.plan(session, conv, prefill)
        max_new = self.budget(len(plan.ids), s.max_tokens, self.cfg.default_max_tokens, style)
        t1 = time.perf_counter()
        results = await self._generate(session.id if session else None, plan.ids, s, max_new)
        t2 = time.perf_counter()
        parse_tools = (
            self.cfg.tool_parser == "hermes" and bool(conv.tools) and conv.tool_choice.mode != "none"
        )
        choices = []
        for i, r in enumerate(results):
            c = self._choice(i, r, prefill, want_pieces)
            c.parsed = parse_reply(c.text, self.cfg.reasoning_parser, parse_tools)
            calls = tuple(
                ToolCall(f"{tool_id_prefix}{secrets.token_hex(12)}", tc.name, tc.arguments)
                for tc in c.parsed.tool_calls
            )
            c.message = Message("assistant", c.parsed.content, c.parsed.reasoning, calls)
            choices.append(c)
        result = CallResult(
            id=secrets.token_hex(12),
            created=int(time.time()),
            model=self.model_name,
            prompt_ids=plan.ids,
            choices=choices,
            reused_tokens=plan.reused,
            cached_tokens=int(results[0][0].raw.get("meta_info", {}).get("cached_tokens") or 0),
        )
        t3 = time.perf_counter()
        if session is not None:
            self._record(session, plan, result, _timings(t1 - t0, t2 - t1, results))
            session.ledger.record_chat(
                plan,
                conv.messages,
                [(c.message, c.ids, c.ended, c.eot or self.renderer.eos_token) for c in choices if c.message],
            )
            session.ledger.finish_call(plan.ids, [c.ids for c in choices])
            if len(choices) == 1:  # after the answer is written: the next turn's render, half done
                asyncio.get_running_loop().call_soon(session.ledger.warm, conv)
        self._account(t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3)
        return result

    def _account(self, prepare: float, engine: float, parse: float, record: float) -> None:
        """Cumulative seconds per stage of a call (GET /stats shows the means)."""
        for name, dt in (("prepare", prepare), ("engine", engine), ("parse", parse), ("record", record)):
            self.stage_s[name] = self.stage_s.get(name, 0.0) + dt
        self.stage_calls += 1

    def stage_means_ms(self) -> dict[str, float]:
        n = max(1, self.stage_calls)
        return {k: round(v * 1e3 / n, 3) for k, v in self.stage_s.items()}

    def _record(
        self, session: Session, plan: PromptPlan, result: CallResult, timings: dict[str, float]
    ) -> None:
        brk = session.ledger.is_break(plan.ids)
        samples = [
            Sample(
                task_id=session.task_id,
                session_id=session.id,
                turn=session.turns + j,
                prompt_ids=list(plan.ids),
                completion_ids=list(c.ids),
                logprobs=list(c.logprobs),
                weight_version=c.weight_version,
                finish_reason=c.finish,
                timings=dict(timings),
            )
            for j, c in enumerate(result.choices)
        ]
        self.sessions.record_behind(session, samples)
        for s, c in zip(samples, result.choices, strict=True):
            session.records.append(CallRecord(s.turn, brk, plan.reused, plan.how, plan.why_fresh, c.engine))
        session.turns += len(samples)
        session.prefix_breaks += int(brk)
        result.prefix_break = brk

    # ------------------------------------------------------------------ raw completions
    async def complete(
        self, session: Session | None, prompt: str | list[int], s: Sampling, *, want_pieces: bool
    ) -> CallResult:
        if session is not None:
            await self.sessions.flush(session)
            await self.sessions.keep(session)
        t0 = time.perf_counter()
        if isinstance(prompt, str):
            if session is not None:
                plan = session.ledger.plan_raw(prompt)
            else:
                plan = PromptPlan(self.renderer.encode_raw(prompt), 0, "raw", "raw")
        else:
            bad = [t for t in prompt if not 0 <= t < self.vocab_size]
            if bad:
                raise APIError(
                    400,
                    f"Invalid 'prompt': token ids must be in [0, {self.vocab_size}), got {bad[0]}.",
                    param="prompt",
                )
            plan = PromptPlan(list(prompt), 0, "raw", "raw")
        if not plan.ids:
            raise APIError(400, "Invalid 'prompt': the prompt is empty.", param="prompt")
        max_new = self.budget(len(plan.ids), s.max_tokens if s.max_tokens is not None else 16, None, "openai")
        t1 = time.perf_counter()
        results = await self._generate(session.id if session else None, plan.ids, s, max_new)
        t2 = time.perf_counter()
        choices = [self._choice(i, r, "", want_pieces) for i, r in enumerate(results)]
        result = CallResult(
            secrets.token_hex(12),
            int(time.time()),
            self.model_name,
            plan.ids,
            choices,
            reused_tokens=plan.reused,
        )
        t3 = time.perf_counter()
        if session is not None:
            self._record(session, plan, result, _timings(t1 - t0, t2 - t1, results))
            if isinstance(prompt, str):
                replies = []
                for c in choices:
                    ids = c.ids[:-1] if c.ended else c.ids
                    exact = not isinstance(c.matched, str) and self.renderer.decode(ids) == c.text
                    replies.append((c.text, ids, exact))
                session.ledger.record_raw(plan, prompt, replies)
            session.ledger.finish_call(plan.ids, [c.ids for c in choices])
        self._account(t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3)
        return result

    async def aclose(self) -> None:
        await self.sessions.aclose()
        await self.router.aclose()


def _timings(render_s: float, engine_s: float, results: list[tuple[GenerateResult, str]]) -> dict[str, float]:
    """A sample's timings: rendering and the engine call as the gateway saw them, and the engine's
    own end-to-end time (SGLang's `meta_info.e2e_latency`, when it reports one; the slowest of n)."""
    out = {"render_s": render_s, "engine_s": engine_s}
    e2e = [r.raw.get("meta_info", {}).get("e2e_latency") for r, _ in results]
    if e2e and all(isinstance(x, int | float) for x in e2e):
        out["engine_e2e_s"] = float(max(e2e))  # type: ignore[type-var]
    return out


def _cut_pieces(pieces: list[str], cut: int) -> list[str]:
    out: list[str] = []
    pos = 0
    for p in pieces:
        keep = max(0, min(len(p), cut - pos))
        out.append(p[:keep])
        pos += len(p)
    return out
