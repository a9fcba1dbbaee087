"""Forge: a distributed, agent-native RL training system for LLMs."""

__version__ = "0.1.0"
