"""Built-in environments; importing this package registers them."""

from agent_side.envs.arithmetic import Arithmetic
from agent_side.envs.calculator import Calculator
from agent_side.envs.lookup_chain import LookupChain
from agent_side.envs.react import ReactAgentEnv

__all__ = ["Arithmetic", "Calculator", "LookupChain", "ReactAgentEnv"]
