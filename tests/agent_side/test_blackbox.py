"""The black-box runner: commands, `module:function` targets and in-process callables get the
session's endpoint, a timeout, and their failures reported as AgentError."""

import asyncio
import os
import sys
import textwrap
import time

import pytest

from agent_side.blackbox import AgentError, AgentSpec, run_agent
from agent_side.calls import EnvTimeout, bounded

BASE = "http://127.0.0.1:9/sessions/abc"
PRINT_ENV = "import os,sys; print(os.environ['OPENAI_BASE_URL'], os.environ['ANTHROPIC_BASE_URL'], os.environ['OPENAI_API_KEY'], os.environ['OPENAI_MODEL'], os.environ['EXTRA'], sys.stdin.read())"


def run(spec: AgentSpec, prompt: str = "q", timeout: float = 20.0):
    return asyncio.run(run_agent(spec, prompt, BASE, api_key="k", model="m", timeout=timeout))


def test_command_gets_the_session_endpoint_and_prompt() -> None:
    result = run(AgentSpec(command=[sys.executable, "-c", PRINT_ENV], env={"EXTRA": "x"}), prompt="hello")
    assert result.output.split() == [f"{BASE}/v1", BASE, "k", "m", "x", "hello"]


def test_target_runs_in_a_child_process_with_the_environment(tmp_path) -> None:
    (tmp_path / "my_agent.py").write_text(
        textwrap.dedent(
            """
            import os
            def solve(prompt):
                return f"{prompt}|{os.environ['OPENAI_BASE_URL']}|{os.getpid()}"
            def crash(prompt):
                raise RuntimeError("boom")
            """
        )
    )
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}"}
    out = run(AgentSpec(target="my_agent:solve", env=env), prompt="p").output.split("|")
    assert out[:2] == ["p", f"{BASE}/v1"] and int(out[2]) != os.getpid()
    with pytest.raises(AgentError, match="boom"):
        run(AgentSpec(target="my_agent:crash", env=env))


def test_in_process_function_gets_env_mapping_not_os_environ() -> None:
    seen = {}

    def agent(prompt: str, env: dict) -> str:
        seen.update(env)
        return prompt.upper()

    async def async_agent(prompt: str, env: dict) -> int:
        await asyncio.sleep(0)
        return 7

    assert run(AgentSpec(function=agent), prompt="abc").output == "ABC"
    assert seen["OPENAI_BASE_URL"] == f"{BASE}/v1" and seen["ANTHROPIC_API_KEY"] == "k"
    assert os.environ.get("OPENAI_BASE_URL") != f"{BASE}/v1"
    assert run(AgentSpec(function=async_agent)).output == "7"


def test_failures_and_timeouts_raise_agent_error() -> None:
    with pytest.raises(AgentError, match="exited with 3"):
        run(AgentSpec(command=[sys.executable, "-c", "import sys; sys.stderr.write('bad'); sys.exit(3)"]))
    with pytest.raises(AgentError, match="could not start"):
        run(AgentSpec(command=["/nonexistent/agent"]))

    def raises(prompt, env):
        raise KeyError("x")

    with pytest.raises(AgentError, match="KeyError"):
        run(AgentSpec(function=raises))

    def hangs(prompt, env):
        time.sleep(5)

    start = time.monotonic()
    with pytest.raises(AgentError, match="within 0.3s"):
        run(AgentSpec(function=hangs), timeout=0.3)
    assert time.monotonic() - start < 2


def test_command_timeout_kills_the_whole_process_group(tmp_path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    start = time.monotonic()
    with pytest.raises(AgentError, match="did not finish within 1s"):
        run(AgentSpec(command=["sh", "-c", script]), timeout=1.0)
    assert time.monotonic() - start < 5
    child = int(pidfile.read_text())
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"grandchild {child} survived the timeout")


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        AgentSpec()
    with pytest.raises(ValueError):
        AgentSpec(command=["x"], target="a:b")
    with pytest.raises(ValueError):
        AgentSpec(target="no_colon")


def test_bounded_plain_and_async_calls() -> None:
    async def main():
        assert await bounded(lambda x: x + 1, 1, timeout=1, what="f") == 2

        async def slow():
            await asyncio.sleep(10)

        with pytest.raises(EnvTimeout, match="slow thing"):
            await bounded(slow, timeout=0.1, what="slow thing")
        with pytest.raises(ZeroDivisionError):
            await bounded(lambda: 1 / 0, timeout=1, what="f")
        # a hung plain call does not block the loop: other work keeps running meanwhile
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        with pytest.raises(EnvTimeout):
            await bounded(time.sleep, 2, timeout=0.3, what="sleep")
        task.cancel()
        assert ticks >= 10

    asyncio.run(main())


def test_the_example_agent_imports_nothing_from_forge() -> None:
    import ast
    from pathlib import Path

    import agent_side.examples.react_agent as react_agent

    tree = ast.parse(Path(react_agent.__file__).read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {
        "__future__",
        "ast",
        "json",
        "operator",
        "os",
        "sys",
        "collections",
        "typing",
        "openai",
    }
