"""The gateway's one message model, which both APIs are converted into and out of.

OpenAI chat messages and Anthropic messages (system, text / thinking / tool_use / tool_result
blocks) become a list of `Message`; tools become OpenAI-style function dicts, the shape Hugging
Face chat templates read. A reply the gateway gave is kept as a `Message` (its reasoning
included) so that a later request can be matched against it (`same_message`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text of the arguments object

    def parsed_arguments(self) -> Any:
        try:
            return json.loads(self.arguments)
        except ValueError:
            return self.arguments


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # system | user | assistant | tool
    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""  # tool messages: the call answered
    name: str = ""

    def without_reasoning(self) -> Message:
        return replace(self, reasoning="") if self.reasoning else self


@dataclass
class ToolChoice:
    """none: tools are shown, none is called; auto: the model decides; required: some tool must be
    called; function: `name` must be called. required/function are enforced by prefilling the
    assistant turn with the start of a Hermes tool call (the prefill is prompt, not completion)."""

    mode: str = "auto"
    name: str = ""


@dataclass
class Conversation:
    """A parsed chat request: messages, tools (OpenAI function dicts) and template options."""

    messages: list[Message]
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    template_kwargs: dict[str, Any] = field(default_factory=dict)


def same_message(ours: Message, theirs: Message) -> bool:
    """Whether `theirs` (as a client sent it) is `ours` (as the gateway knows it).

    Reasoning the client dropped still matches (interleaved thinking: the gateway keeps it); tool
    calls match by name and parsed arguments (clients re-serialise JSON; ids are not compared)."""
    if ours is theirs:
        return True
    if ours.role != theirs.role or ours.content != theirs.content:
        return False
    if ours.tool_call_id != theirs.tool_call_id or ours.name != theirs.name:
        return False
    if theirs.reasoning and theirs.reasoning != ours.reasoning:
        return False
    if len(ours.tool_calls) != len(theirs.tool_calls):
        return False
    for a, b in zip(ours.tool_calls, theirs.tool_calls, strict=True):
        if a.name != b.name:
            return False
        if a.arguments != b.arguments and a.parsed_arguments() != b.parsed_arguments():
            return False
    return True


def same_prefix(ours: tuple[Message, ...] | list[Message], theirs: list[Message]) -> bool:
    """Whether `theirs` starts with `ours` (message by message, `same_message`)."""
    if len(theirs) < len(ours):
        return False
    return all(same_message(a, b) for a, b in zip(ours, theirs, strict=False))


def template_dict(m: Message) -> dict[str, Any]:
    """A message as Hugging Face chat templates read it (arguments as an object, when JSON)."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.reasoning:
        out["reasoning_content"] = m.reasoning
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": tc.id,
                "type": "function",
                "function": {"name": tc.name, "arguments": tc.parsed_arguments()},
            }
            for tc in m.tool_calls
        ]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.name:
        out["name"] = m.name
    return out
