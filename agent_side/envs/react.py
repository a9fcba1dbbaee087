"""`react`: the example black-box agent (`agent_side/examples/react_agent.py`, openai SDK only)
solving calculator problems. Forge only starts it with its client pointed at the session and
grades what it prints (1 for the correct final number, `verifiers.check_number`).

`mode` picks how the program runs (all three are the same unmodified agent):
    "function" — `react_agent.run(prompt, env)` in-process, in a thread (the default: no process
                 start-up per episode, which matters at 32 episodes in flight on a small machine)
    "command"  — `python agent_side/examples/react_agent.py` as an external program
    "target"   — `agent_side.examples.react_agent:run` in a child Python process
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from agent_side.blackbox import AgentSpec
from agent_side.env import BlackBoxEnv, BlackBoxResult, EnvConfig
from agent_side.envs.calculator import make_problem
from agent_side.registry import register_env
from agent_side.verifiers import check_number

AGENT_FILE = Path(__file__).resolve().parent.parent / "examples" / "react_agent.py"


@dataclass
class ReactConfig(EnvConfig):
    max_turns: int = 4  # the agent's REACT_MAX_STEPS
    mode: str = "function"
    digits: int = 2
    operands: int = 3


@register_env("react")
class ReactAgentEnv(BlackBoxEnv):
    config_class: ClassVar[type[EnvConfig]] = ReactConfig
    required_keys: ClassVar[tuple[str, ...]] = ("question", "answer")
    config: ReactConfig

    @classmethod
    def generate(cls, rng: random.Random, config: EnvConfig) -> dict[str, Any]:
        assert isinstance(config, ReactConfig)
        expr, value = make_problem(rng, config.digits, config.operands)
        return {"question": f"What is {expr}?", "answer": str(value)}

    def agent(self) -> AgentSpec:
        c = self.config
        env = {
            "REACT_MAX_STEPS": str(c.max_turns),
            "REACT_MAX_TOKENS": str(c.max_tokens),
            "REACT_TEMPERATURE": str(c.temperature),
            "REACT_TIMEOUT": str(c.episode_timeout_s),
        }
        if c.mode == "command":
            return AgentSpec(command=[sys.executable, str(AGENT_FILE)], env=env)
        if c.mode == "target":
            return AgentSpec(target="agent_side.examples.react_agent:run", env=env)
        if c.mode == "function":
            from agent_side.examples.react_agent import run

            return AgentSpec(function=run, env=env)
        raise ValueError(f"react mode must be command, target or function; got {c.mode!r}")

    def score(self, output: str) -> BlackBoxResult:
        verdict = check_number(output, self.payload["answer"])
        return BlackBoxResult(reward=float(verdict.correct), metrics={"accuracy": float(verdict.correct)})
