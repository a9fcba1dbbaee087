"""A ReAct-style agent written only against the `openai` SDK — no Forge import anywhere.

It alternates thought (the assistant's text), action (a tool call) and observation (the tool's
result) until the model answers without calling a tool, or `max_steps` model calls are used.
Tools: `calculator` (arithmetic) and `note` (write a scratch note; returns "ok").

Run it the way any agent program is run; the OpenAI client takes its endpoint from the standard
environment variables (OPENAI_BASE_URL, OPENAI_API_KEY; OPENAI_MODEL picks the model):

    echo "What is 12 * 34 + 5?" | python agent_side/examples/react_agent.py

Optional: REACT_MAX_STEPS (default 4), REACT_MAX_TOKENS (default 256), REACT_TEMPERATURE (1.0).
"""

from __future__ import annotations

import ast
import json
import operator
import os
import sys
from collections.abc import Mapping
from typing import Any

from openai import OpenAI

SYSTEM = (
    "You are a careful problem solver. Think step by step. Use the calculator tool for any "
    "arithmetic. When you are done, reply without a tool call and end with 'Answer: <number>'."
)
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression (+ - * / and parentheses).",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "note",
            "description": "Write down an intermediate result to remember it.",
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
            },
        },
    },
]
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _calc(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _calc(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_calc(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_calc(node.left), _calc(node.right))
    raise ValueError("unsupported expression")


def run_tool(name: str, arguments: str) -> str:
    try:
        args = json.loads(arguments or "{}")
        if name == "calculator":
            value = _calc(ast.parse(str(args["expression"]), mode="eval"))
            return str(int(value)) if float(value).is_integer() else f"{value:.10g}"
        if name == "note":
            return "ok"
        return f"error: unknown tool {name}"
    except Exception as exc:  # a tool error is an observation, not a crash
        return f"error: {exc}"


def solve(
    question: str,
    client: OpenAI,
    model: str,
    max_steps: int = 4,
    max_tokens: int = 256,
    temperature: float = 1.0,
) -> str:
    """Run the ReAct loop on `question`; the model's final text."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": question},
    ]
    last_text = ""
    for _ in range(max_steps):
        reply = (
            client.chat.completions.create(
                model=model, messages=messages, tools=TOOLS, max_tokens=max_tokens, temperature=temperature
            )
            .choices[0]
            .message
        )
        last_text = reply.content or ""
        if not reply.tool_calls:
            return last_text
        messages.append(reply.model_dump(exclude_none=True))
        for call in reply.tool_calls:
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call.id,
                    "content": run_tool(call.function.name, call.function.arguments),
                }
            )
    return last_text


def run(question: str, env: Mapping[str, str] | None = None) -> str:
    """Entry point for callers: reads the endpoint from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    client = OpenAI(
        base_url=env.get("OPENAI_BASE_URL"),
        api_key=env.get("OPENAI_API_KEY", "none"),
        max_retries=0,
        timeout=float(env.get("REACT_TIMEOUT", "300")),
    )
    try:
        return solve(
            question,
            client,
            model=env.get("OPENAI_MODEL", "default"),
            max_steps=int(env.get("REACT_MAX_STEPS", "4")),
            max_tokens=int(env.get("REACT_MAX_TOKENS", "256")),
            temperature=float(env.get("REACT_TEMPERATURE", "1.0")),
        )
    finally:
        client.close()


def main() -> int:
    question = " ".join(sys.argv[1:]) or sys.stdin.read()
    print(run(question.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
