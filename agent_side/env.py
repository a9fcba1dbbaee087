"""The environment API. Two kinds of environment, both built per task from (config, task):

**White-box** (`Environment`): the framework drives the loop and sees every state.

    messages = env.reset()                       # the initial context s_0 (OpenAI chat messages)
    while True:
        reply = <one model call on `messages`, with env.tools and env.sampling()>
        result = env.step(reply)                 # observation o_t, reward, done
        if result.done: break
        messages = env.context(messages + [reply] + result.observation)   # s_{t+1} = f(s_t, a_t, o_t)

`context` is the environment's context-management operation f (ALGORITHMS.md §1): drop old tool
outputs, keep a summary, … It returns the next state; the default keeps everything.

Rewards: `StepResult.reward` is the outcome part (the episode's reward is the sum over steps;
usually only the final step sets it). `StepResult.step_rewards` holds this call's per-step
components by name ("process", "speed", …); the runner turns them into one list per component
aligned with the model calls (0.0 where a step did not set one) → `Episode.step_rewards`.
`StepResult.metrics` (e.g. {"accuracy": 1.0}) are merged into the episode metrics, later steps
overwriting earlier ones.

Methods may be plain or `async def`; plain ones run in a thread so a slow one cannot block the
worker's event loop, and every call is bounded by a timeout.

**Black-box** (`BlackBoxEnv`): the environment only says which agent program to run on a task
(a command or a Python callable, see `agent_side.blackbox`) and scores its final output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from forge.ground.types import Task

Message = dict[str, Any]


@dataclass
class EnvConfig:
    """Fields every environment config has. Subclasses add plain fields (Hydra-storable)."""

    max_turns: int = 8  # model calls per episode, at most
    max_tokens: int = 256  # per model call
    temperature: float = 1.0
    top_p: float = 1.0
    step_timeout_s: float = 30.0  # bound on each reset/step/context call (white-box)
    episode_timeout_s: float = 600.0  # bound on the whole episode
    source: str | None = None  # a JSONL or parquet task file instead of procedural generation


@dataclass
class StepResult:
    observation: list[Message] = field(default_factory=list)
    reward: float = 0.0
    done: bool = False
    step_rewards: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class TaskSource:
    """What every environment class provides to generate and check its tasks."""

    config_class: ClassVar[type[EnvConfig]] = EnvConfig
    required_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def generate(cls, rng: Any, config: EnvConfig) -> dict[str, Any]:
        """One task payload drawn from `rng` (a `random.Random`); JSON-serialisable."""
        raise NotImplementedError(f"{cls.__name__} has no procedural generator; give config.source")

    @classmethod
    def validate_payload(cls, payload: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in cls.required_keys if k not in payload]
        if missing:
            raise ValueError(f"{cls.__name__} task payload lacks {missing}: {payload!r:.200}")
        return payload


class Environment(TaskSource):
    """A white-box environment: one instance per episode."""

    def __init__(self, config: EnvConfig, task: Task) -> None:
        self.config = config
        self.task = task
        self.payload = task.payload

    # -- the loop
    def reset(self) -> list[Message]:
        raise NotImplementedError

    def step(self, reply: Message) -> StepResult:
        raise NotImplementedError

    def context(self, history: list[Message]) -> list[Message]:
        """The context-management hook f(history) → next state. Default: keep everything."""
        return history

    # -- what each model call is given
    @property
    def tools(self) -> list[dict[str, Any]] | None:
        """OpenAI tool specs offered to the model, or None."""
        return None

    def sampling(self) -> dict[str, Any]:
        c = self.config
        return {"max_tokens": c.max_tokens, "temperature": c.temperature, "top_p": c.top_p}


@dataclass
class BlackBoxResult:
    reward: float
    metrics: dict[str, float] = field(default_factory=dict)


class BlackBoxEnv(TaskSource):
    """A black-box environment: names the agent program for a task and scores what it printed."""

    def __init__(self, config: EnvConfig, task: Task) -> None:
        self.config = config
        self.task = task
        self.payload = task.payload

    def prompt(self) -> str:
        """The text handed to the agent program (its stdin)."""
        return str(self.payload.get("prompt", self.payload.get("question", "")))

    def agent(self) -> Any:
        """An `agent_side.blackbox.AgentSpec` for this task."""
        raise NotImplementedError

    def score(self, output: str) -> BlackBoxResult:
        raise NotImplementedError
