"""The black-box runner: run an unmodified agent program against a session's base URL.

The agent is told where the model is the way every OpenAI / Anthropic client expects:
    OPENAI_BASE_URL    = {base_url}/v1        OPENAI_API_KEY    = <key>
    ANTHROPIC_BASE_URL = {base_url}           ANTHROPIC_API_KEY = <key>
    OPENAI_MODEL / ANTHROPIC_MODEL = <model name>
The task prompt arrives on stdin (and in FORGE_TASK_PROMPT); the agent's final answer is what it
prints on stdout (or what a callable returns). Three ways to give an agent (`AgentSpec`):
- `command`: any external program (`["node", "agent.js"]`, `["python", "my_agent.py"]`) — run in
  its own process group, killed with the group on timeout.
- `target`: "package.module:function" — a Python function `f(prompt) -> str` run in a child
  Python process with the variables above set in its environment (so a function that builds
  `openai.OpenAI()` with no arguments just works); killed on timeout.
- `function`: an in-process callable `f(prompt, env) -> str` (plain or async). The variables come
  in the `env` mapping because concurrent episodes share one process environment; a plain
  function runs in a thread that is abandoned, not killed, on timeout.
A non-zero exit, an exception, or a timeout raises `AgentError`; the worker aborts the episode.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent_side.calls import EnvTimeout, bounded

STDERR_TAIL = 2000


class AgentError(RuntimeError):
    """The agent program failed: non-zero exit, exception, or timeout."""


@dataclass
class AgentSpec:
    command: list[str] | None = None
    target: str | None = None
    function: Callable[[str, dict[str, str]], Any] | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra environment variables
    cwd: str | None = None

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.command, self.target, self.function)]
        if sum(given) != 1:
            raise ValueError("AgentSpec needs exactly one of command, target, function")
        if self.target is not None and ":" not in self.target:
            raise ValueError(f"target must be 'module:function', got {self.target!r}")


@dataclass
class AgentRun:
    output: str
    elapsed_s: float
    stderr: str = ""


def session_env(base_url: str, api_key: str, model: str, prompt: str = "") -> dict[str, str]:
    """The environment variables that point an OpenAI / Anthropic client at `base_url`."""
    base = base_url.rstrip("/")
    return {
        "OPENAI_BASE_URL": f"{base}/v1",
        "OPENAI_API_KEY": api_key,
        "OPENAI_MODEL": model,
        "ANTHROPIC_BASE_URL": base,
        "ANTHROPIC_API_KEY": api_key,
        "ANTHROPIC_MODEL": model,
        "FORGE_TASK_PROMPT": prompt,
    }


async def _run_process(argv: list[str], env: dict[str, str], stdin: str, timeout: float, cwd: str | None):
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
        cwd=cwd,
        start_new_session=True,  # its own process group, so a timeout kills its children too
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout)
    except (TimeoutError, asyncio.CancelledError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        raise
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def run_agent(
    spec: AgentSpec,
    prompt: str,
    base_url: str,
    *,
    api_key: str = "forge",
    model: str = "default",
    timeout: float = 600.0,
) -> AgentRun:
    """Run the agent on `prompt` with its LLM client pointed at `base_url`; its final output."""
    env = {**spec.env, **session_env(base_url, api_key, model, prompt)}
    start = time.monotonic()
    if spec.function is not None:
        try:
            result = await bounded(spec.function, prompt, env, timeout=timeout, what="agent function")
        except EnvTimeout as exc:
            raise AgentError(str(exc)) from None
        except Exception as exc:
            raise AgentError(f"agent function raised {type(exc).__name__}: {exc}") from exc
        return AgentRun(output="" if result is None else str(result), elapsed_s=time.monotonic() - start)

    if spec.command is not None:
        argv = list(spec.command)
    else:
        argv = [sys.executable, "-m", "agent_side.blackbox_child", str(spec.target)]
    try:
        code, out, err = await _run_process(argv, env, prompt, timeout, spec.cwd)
    except TimeoutError:
        raise AgentError(f"agent {argv[-1]!r} did not finish within {timeout:g}s") from None
    except OSError as exc:
        raise AgentError(f"agent {argv[0]!r} could not start: {exc}") from exc
    if code != 0:
        raise AgentError(f"agent {argv[-1]!r} exited with {code}: {err[-STDERR_TAIL:].strip()}")
    return AgentRun(output=out, elapsed_s=time.monotonic() - start, stderr=err[-STDERR_TAIL:])
