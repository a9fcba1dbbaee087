"""Run one episode against an OpenAI-compatible base URL: the white-box loop or a black-box agent.

`run_episode(env, base_url)` returns an `EpisodeOutcome` (outcome reward, per-step rewards aligned
with the model calls, metrics, number of calls). Whatever goes wrong inside the environment or
the agent raises `EpisodeError` with a one-line reason; the worker aborts the episode with it.
The base URL may be a gateway session (recorded, trained on) or the unscoped gateway (evaluation).

A white-box episode whose next call no longer fits the model's context (the gateway's 400
`context_length_exceeded`: nothing generated, nothing recorded) ends there as truncated, as at
`max_turns`: the calls so far are its trajectory, its metrics say `truncated` and
`context_truncated` 1. When already the first call does not fit, `ContextExceeded` is raised.
"""

from __future__ import annotations

import asyncio
import functools
import math
import numbers
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from agent_side.blackbox import AgentError, AgentSpec, run_agent
from agent_side.calls import EnvTimeout, bounded
from agent_side.env import BlackBoxEnv, BlackBoxResult, Environment, Message, StepResult

RATE_LIMIT_RETRIES = 20


class EpisodeError(RuntimeError):
    """The episode cannot produce a valid trajectory; `str(exc)` is the reason recorded."""


class ContextExceeded(EpisodeError):
    """The episode's first model call does not fit the model's context: no trajectory at all, and a
    retry would render the same prompt, so the task fails at once (later calls truncate instead)."""


@dataclass
class EpisodeOutcome:
    reward: float
    step_rewards: dict[str, list[float]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    calls: int = 0  # model calls made (white-box); -1 when unknown (black-box)
    elapsed_s: float = 0.0


def _real(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise EpisodeError(f"{what} is {type(value).__name__} {value!r:.80}, not a number")
    out = float(value)
    if not math.isfinite(out):
        raise EpisodeError(f"{what} is {out}")
    return out


def _check_step(result: Any, turn: int) -> StepResult:
    if not isinstance(result, StepResult):
        raise EpisodeError(f"step {turn} returned {type(result).__name__}, not a StepResult")
    _real(result.reward, f"step {turn} reward")
    if not isinstance(result.observation, list) or not all(isinstance(m, dict) for m in result.observation):
        raise EpisodeError(f"step {turn} observation is not a list of messages")
    for name in ("step_rewards", "metrics"):
        if not isinstance(getattr(result, name), dict):
            raise EpisodeError(f"step {turn} {name} is not a mapping")
    for name, value in result.step_rewards.items():
        _real(value, f"step {turn} step_rewards[{name!r}]")
    for name, value in result.metrics.items():
        _real(value, f"step {turn} metrics[{name!r}]")
    return result


def _messages(value: Any, what: str) -> list[Message]:
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise EpisodeError(f"{what} must return a non-empty list of message dicts, got {value!r:.120}")
    return value


async def _env_call(env: Environment, method: str, *args: Any) -> Any:
    fn = getattr(env, method)
    try:
        return await bounded(
            fn, *args, timeout=env.config.step_timeout_s, what=f"{type(env).__name__}.{method}"
        )
    except EnvTimeout as exc:
        raise EpisodeError(str(exc)) from None
    except EpisodeError:
        raise
    except Exception as exc:
        raise EpisodeError(f"{type(env).__name__}.{method} raised {type(exc).__name__}: {exc}") from exc


async def run_whitebox(
    env: Environment, client: openai.AsyncOpenAI, model: str = "default"
) -> EpisodeOutcome:
    """Drive `env` through model calls on `client` until it is done or `max_turns` calls are made."""
    start = time.monotonic()
    state = _messages(await _env_call(env, "reset"), "reset")
    tools = env.tools
    sampling = env.sampling()
    reward = 0.0
    per_step: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    for turn in range(env.config.max_turns):
        kwargs = {"model": model, "messages": state, **({"tools": tools} if tools else {}), **sampling}
        try:
            completion = await _create(client, kwargs, turn)
        except ContextExceeded:
            if not per_step:
                raise
            metrics.update(truncated=1.0, context_truncated=1.0)  # the context is full: truncated
            break
        if not completion.choices:
            raise EpisodeError(f"model call {turn} returned no choices")
        reply = completion.choices[0].message.model_dump(exclude_none=True)
        result = _check_step(await _env_call(env, "step", reply), turn)
        reward += float(result.reward)
        per_step.append({k: float(v) for k, v in result.step_rewards.items()})
        metrics.update({k: float(v) for k, v in result.metrics.items()})
        if result.done:
            break
        state = _messages(await _env_call(env, "context", state + [reply] + result.observation), "context")
    else:
        metrics.setdefault("truncated", 1.0)
    names = sorted({name for step in per_step for name in step})
    step_rewards = {name: [step.get(name, 0.0) for step in per_step] for name in names}
    return EpisodeOutcome(reward, step_rewards, metrics, len(per_step), time.monotonic() - start)


async def _create(client: openai.AsyncOpenAI, kwargs: dict[str, Any], turn: int) -> Any:
    """One model call. A 429 (the gateway is at its concurrency limit; nothing was generated or
    recorded) is retried after its Retry-After; a prompt (+ max_tokens) that does not fit the
    context raises ContextExceeded; any other failure ends the episode (EpisodeError)."""
    for attempt in range(RATE_LIMIT_RETRIES + 1):
        try:
            return await client.chat.completions.create(**kwargs)
        except openai.RateLimitError as exc:
            if attempt == RATE_LIMIT_RETRIES:
                raise EpisodeError(f"model call {turn} still rate-limited after {attempt + 1} tries") from exc
            try:
                delay = float(exc.response.headers.get("retry-after", "1"))
            except ValueError:
                delay = 1.0
            await asyncio.sleep(min(max(delay, 0.05), 30.0))
        except openai.BadRequestError as exc:
            if exc.code == "context_length_exceeded":
                raise ContextExceeded(f"model call {turn} does not fit the model's context: {exc}") from exc
            raise EpisodeError(f"model call {turn} failed: {type(exc).__name__}: {exc}") from exc
        except openai.APIError as exc:
            raise EpisodeError(f"model call {turn} failed: {type(exc).__name__}: {exc}") from exc
    raise AssertionError("unreachable")


async def run_blackbox(
    env: BlackBoxEnv, base_url: str, api_key: str = "forge", model: str = "default"
) -> EpisodeOutcome:
    """Run the env's agent program against `base_url` and score its output with the env's verifier."""
    start = time.monotonic()
    try:
        spec = env.agent()
        if not isinstance(spec, AgentSpec):
            raise EpisodeError(
                f"{type(env).__name__}.agent() returned {type(spec).__name__}, not an AgentSpec"
            )
        run = await run_agent(
            spec, env.prompt(), base_url, api_key=api_key, model=model, timeout=env.config.episode_timeout_s
        )
    except AgentError as exc:
        raise EpisodeError(str(exc)) from None
    scored = await _score(env, run.output)
    return EpisodeOutcome(
        _real(scored.reward, "black-box reward"),
        {},
        {k: _real(v, f"metrics[{k!r}]") for k, v in scored.metrics.items()},
        -1,
        time.monotonic() - start,
    )


async def _score(env: BlackBoxEnv, output: str) -> BlackBoxResult:
    try:
        scored = await bounded(env.score, output, timeout=env.config.step_timeout_s, what="score")
    except EnvTimeout as exc:
        raise EpisodeError(str(exc)) from None
    except Exception as exc:
        raise EpisodeError(f"{type(env).__name__}.score raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(scored, BlackBoxResult):
        raise EpisodeError(
            f"{type(env).__name__}.score returned {type(scored).__name__}, not a BlackBoxResult"
        )
    return scored


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def episode_http_client(timeout: float = 600.0) -> httpx.AsyncClient:
    """An HTTP client for one episode's calls (they are sequential: one connection).

    One per episode, not one per worker: httpcore's pool scans every connection for every queued
    request, which with a hundred episodes sharing a pool cost more CPU than the episodes
    themselves. And a shared SSL context: building one per client (httpx's default) costs 20-45 ms
    of CPU, which at tens of episodes per second saturates a worker's event loop."""
    return httpx.AsyncClient(timeout=timeout, verify=_ssl_context())


def openai_client(
    base_url: str,
    api_key: str = "forge",
    timeout: float = 600.0,
    http_client: httpx.AsyncClient | None = None,
) -> openai.AsyncOpenAI:
    """An SDK client for a gateway base URL (`{base_url}/v1/...`); no retries: a failed call is a
    failed episode, never a silently duplicated sample. Over `http_client` when given (its owner
    closes it), else over a new `episode_http_client`."""
    return openai.AsyncOpenAI(
        base_url=f"{base_url.rstrip('/')}/v1",
        api_key=api_key,
        max_retries=0,
        timeout=timeout,
        http_client=http_client or episode_http_client(timeout),
    )


async def run_episode(
    env: Environment | BlackBoxEnv,
    base_url: str,
    api_key: str = "forge",
    model: str = "default",
    http_client: httpx.AsyncClient | None = None,
) -> EpisodeOutcome:
    """One episode of `env` against `base_url` (white-box or black-box). A given `http_client`
    carries the white-box model calls and is left open."""
    if isinstance(env, BlackBoxEnv):
        return await run_blackbox(env, base_url, api_key, model)
    client = openai_client(base_url, api_key, env.config.episode_timeout_s, http_client)
    try:
        return await run_whitebox(env, client, model)
    finally:
        if http_client is None:
            await client.close()
