"""Fixtures for the agent-side tests: the built-in engine over a tiny random model and over
scripted models (built in tests/conftest.py from `scripted_replies` here), real gateways
recording into the real data pool (`pool` / `make_pool` from tests/conftest.py), and Ray."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers.gateway import Scripts

CONTEXT = 2048
CALC_EXPR = "123 * 456 + 7"
CALC_ANSWER = "56095"
# the calculator model calls the tool on every turn; the answer model always answers CALC_ANSWER
TOOL_CALL_SCRIPT = (
    "<tool_call>\n"
    + json.dumps({"name": "calculator", "arguments": {"expression": CALC_EXPR}})
    + "\n</tool_call>"
)
ANSWER_SCRIPT = f"I used the numbers given.\nAnswer: {CALC_ANSWER}"


@pytest.fixture(scope="session")
def calc_case() -> tuple[str, str]:
    """(expression, answer) that the scripted models call the calculator with / answer."""
    return CALC_EXPR, CALC_ANSWER


@pytest.fixture(scope="session")
def scripted_replies() -> Scripts:
    return Scripts(TOOL_CALL_SCRIPT, ANSWER_SCRIPT, CONTEXT)


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


class Consumer:
    """The trainer's side, played by the real windowed-FIFO scheduler on a thread: claims ready
    batches and acks them (so tasks become `completed` and in-flight slots free up), keeping every
    claimed Episode for the test to inspect."""

    def __init__(self, pool: Any, batch: int = 4) -> None:
        from data_pool import Scheduler

        self.scheduler = Scheduler(pool, "test-trainer")
        self.batch = batch
        self.episodes: list[Any] = []
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self.scheduler.next_batch(self.batch, timeout=0.2)
                if batch.episodes:
                    self.episodes.extend(batch.episodes)
                    self.scheduler.ack(batch)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.error is not None:
            error, self.error = self.error, None
            raise error


@pytest.fixture
def make_consumer() -> Iterator[Callable[..., Consumer]]:
    consumers: list[Consumer] = []

    def make(pool: Any, batch: int = 4) -> Consumer:
        consumers.append(Consumer(pool, batch))
        return consumers[-1]

    yield make
    for c in consumers:
        c.stop()


@pytest.fixture
def wait_terminal() -> Callable[..., dict[str, Any]]:
    return _wait_terminal


def _wait_terminal(pool: Any, task_ids: list[str], timeout: float) -> dict[str, Any]:
    """Wait until every task is completed / failed / dropped; returns their TaskInfo."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = pool.statuses(task_ids)
        if all(s.terminal for s in statuses.values()):
            return {t: pool.task_status(t) for t in task_ids}
        if time.monotonic() > deadline:
            pending = {t: str(s) for t, s in statuses.items() if not s.terminal}
            raise AssertionError(
                f"{len(pending)} tasks not terminal after {timeout}s: {dict(list(pending.items())[:5])}"
            )
        time.sleep(0.1)
