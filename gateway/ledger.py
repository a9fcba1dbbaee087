"""The token ledger: one session's exact token states, and how a new request extends them.

After every model call the ledger keeps *anchors*: the request as sent (its messages and prompt
ids) and, per choice, the conversation extended by the reply the gateway returned, with the exact
ids prompt + completion (thinking included, whatever the client later sends back). A new request
whose messages start with an anchor's messages (`messages.same_prefix`: reasoning the client
dropped still matches) reuses the anchor's ids and renders only what follows:

1. render the request with the chat template, history covered by the anchor taken from the
   anchor itself (reasoning stripped: those tokens come from the ledger), and the anchor's own
   conversation without a generation prompt; the first must start with the second (a template
   that renders history differently once more messages follow fails here);
2. locate the end of the reply in that text: the last end-of-turn string (the token that ended the
   completion, e.g. `<|im_end|>`), which must be followed only by whitespace. If the completion
   ended with it, the new text starts right after it; if it was cut off (length, stop string), the
   new text starts with the end-of-turn string itself, closing the turn the model left open;
3. encode that new text as it tokenises after the end-of-turn token, checking that the join is
   stable (`ChatRenderer.encode_after`); prompt = anchor ids + new ids.

Anything else — no anchor matches, the rendering is not a prefix, the join is unstable — renders
the whole conversation afresh. A call whose prompt does not start with the previous call's prompt
+ completion is a *prefix break* (counted per sample), whether it was rendered afresh or extended
an older anchor (a branch).

Raw completions (/v1/completions) get the same treatment on text: a prompt that starts with an
earlier prompt + the returned text reuses those ids (minus a final end-of-turn token the text does
not show) and encodes only the rest.
"""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateway.messages import Conversation, Message, same_prefix
from gateway.templates import ChatRenderer, tools_fingerprint


@dataclass
class Anchor:
    kind: str  # "prompt": a request as sent; "reply": a request + one reply; "raw": completions text
    key: str  # tools / template / options fingerprint: only requests that agree can extend it
    messages: tuple[Message, ...]
    ids: array  # exact token ids up to the boundary (int32: a quarter of a list's memory)
    ended: bool = True  # reply: the completion ended with the end-of-turn token `eot`
    eot: str = ""
    text: str = ""  # raw: prompt text + completion text
    prefill: str = ""  # prompt: the text after the generation prompt (tool_choice) it was sent with
    # reply anchors: (own text, where the new text starts, continuation base) or why not extendable
    _join: tuple[str, int, tuple[str, list[int]] | None] | str | None = field(default=None, repr=False)


@dataclass
class PromptPlan:
    """The prompt of one call: its ids, how many came from the ledger, and what to record later."""

    ids: list[int]
    reused: int
    template: str
    key: str
    prefill: str = ""  # text put after the generation prompt (tool_choice), part of the prompt
    how: str = "fresh"  # fresh | extended | retry
    why_fresh: str = ""  # when fresh but an anchor existed: why it could not be extended


def _strip(messages: tuple[Message, ...] | list[Message]) -> list[Message]:
    return [m.without_reasoning() if m.role == "assistant" else m for m in messages]


class Ledger:
    """One session's token states. Not thread-safe: used from the gateway's event loop only."""

    def __init__(self, renderer: ChatRenderer, max_anchors: int = 16) -> None:
        self.r = renderer
        self.anchors: deque[Anchor] = deque(maxlen=max(2, max_anchors))
        self.previous: list[list[int]] = []  # prompt + completion of each choice of the last call
        self.calls = 0

    # ------------------------------------------------------------------ chat
    def plan_chat(self, conv: Conversation, prefill: str = "", fresh_only: bool = False) -> PromptPlan:
        messages = conv.messages
        template = self.r.template_name(self.r.uses_tools(messages, conv.tools))
        key = tools_fingerprint(conv.tools, template, conv.template_kwargs)
        why = ""
        if not fresh_only:
            for anchor in reversed(self.anchors):
                if anchor.key != key or anchor.kind == "raw":
                    continue
                if anchor.kind == "prompt":
                    same = anchor.prefill == prefill and len(anchor.messages) == len(messages)
                    if same and same_prefix(anchor.messages, messages):
                        return PromptPlan(
                            anchor.ids.tolist(), len(anchor.ids), template, key, prefill, "retry"
                        )
                    continue
                if len(anchor.messages) < len(messages) and same_prefix(anchor.messages, messages):
                    ids, why = self._extend(anchor, messages, conv, template, prefill)
                    if ids is not None:
                        return PromptPlan(ids, len(anchor.ids), template, key, prefill, "extended")
                    break
        text = self.r.render(messages, conv.tools, True, template, conv.template_kwargs) + prefill
        return PromptPlan(self.r.encode(text), 0, template, key, prefill, "fresh", why)

    def _join_of(
        self, anchor: Anchor, conv: Conversation, template: str
    ) -> tuple[str, int, tuple[str, list[int]] | None] | str:
        """What extending a reply anchor needs, the same for every request that can extend it (the
        anchor's key fixes tools, template and options): the anchor's own conversation rendered
        without a generation prompt, where the new text starts in it, and the tokenisation of the
        text before that point. Or, as a string, why the anchor cannot be extended."""
        if anchor._join is None:
            text_a = self.r.render(_strip(anchor.messages), conv.tools, False, template, conv.template_kwargs)
            # the reply's end-of-turn must be the last thing the template wrote for the conversation
            # so far, up to whitespace (e.g. ChatML's "<|im_end|>\n"); otherwise the one found
            # belongs to an earlier message and the reply itself would be rendered again
            p = text_a.rfind(anchor.eot) if anchor.eot else -1
            if p < 0 or text_a[p + len(anchor.eot) :].strip():
                anchor._join = "the chat template writes no end-of-turn token after the reply"
            else:
                cut = p + len(anchor.eot) if anchor.ended else p
                anchor._join = (text_a, cut, self.r.continuation_base(text_a[:cut]))
        return anchor._join

    def warm(self, conv: Conversation) -> None:
        """Prepare the newest reply anchor now (what the next call that extends it needs), off
        that call's critical path: the gateway runs this after answering. A template that refuses
        leaves it unprepared, so the next call meets the error as before."""
        anchor = self.anchors[-1] if self.anchors else None
        if anchor is None or anchor.kind != "reply" or anchor._join is not None:
            return
        template = self.r.template_name(self.r.uses_tools(anchor.messages, conv.tools))
        if tools_fingerprint(conv.tools, template, conv.template_kwargs) != anchor.key:
            return
        try:
            self._join_of(anchor, conv, template)
        except Exception:  # noqa: BLE001 - see the docstring
            anchor._join = None

    def _extend(
        self, anchor: Anchor, messages: list[Message], conv: Conversation, template: str, prefill: str
    ) -> tuple[list[int] | None, str]:
        join = self._join_of(anchor, conv, template)
        if isinstance(join, str):
            return None, join
        text_a, cut, base = join
        k = len(anchor.messages)
        full_msgs = _strip(anchor.messages) + list(messages[k:])
        text_full = self.r.render(full_msgs, conv.tools, True, template, conv.template_kwargs) + prefill
        if not text_full.startswith(text_a):
            return None, "the chat template renders the earlier conversation differently now"
        delta = self.r.encode_after(base, text_full[cut:])
        if delta is None:
            return None, "the new messages do not tokenise stably after the reply"
        return anchor.ids.tolist() + delta, ""

    def record_chat(
        self,
        plan: PromptPlan,
        messages: list[Message],
        replies: list[tuple[Message, list[int], bool, str]],
    ) -> None:
        """Keep the request's and each reply's token state: replies are (reply message,
        completion ids, ended with an end-of-turn token, that token's text)."""
        prompt = array("i", plan.ids)
        self.anchors.append(Anchor("prompt", plan.key, tuple(messages), prompt, prefill=plan.prefill))
        for reply, completion, ended, eot in replies:
            self.anchors.append(
                Anchor("reply", plan.key, (*messages, reply), prompt + array("i", completion), ended, eot)
            )

    # ------------------------------------------------------------------ raw completions
    def plan_raw(self, prompt: str) -> PromptPlan:
        for anchor in reversed(self.anchors):
            if anchor.kind != "raw" or not prompt.startswith(anchor.text) or len(prompt) == len(anchor.text):
                continue
            rest = prompt[len(anchor.text) :]
            tail = anchor.text[-64:]
            ids_tail = self.r.encode_raw(tail)
            ids_all = self.r.encode_raw(tail + rest)
            if ids_all[: len(ids_tail)] == ids_tail:
                return PromptPlan(
                    anchor.ids.tolist() + ids_all[len(ids_tail) :],
                    len(anchor.ids),
                    "raw",
                    "raw",
                    how="extended",
                )
            break
        return PromptPlan(self.r.encode_raw(prompt), 0, "raw", "raw")

    def record_raw(self, plan: PromptPlan, prompt: str, replies: list[tuple[str, list[int], bool]]) -> None:
        """replies: (returned text, completion ids without a final end-of-turn token, whether those
        ids decode exactly to the text)."""
        for text, ids, exact in replies:
            if exact:
                self.anchors.append(Anchor("raw", "raw", (), array("i", plan.ids + ids), text=prompt + text))

    # ------------------------------------------------------------------ accounting
    def is_break(self, prompt_ids: list[int]) -> bool:
        """Whether this call's prompt fails to extend every choice of the previous call."""
        if not self.previous:
            return False
        for seq in self.previous:
            if len(prompt_ids) >= len(seq) and prompt_ids[: len(seq)] == seq:
                return False
        return True

    def finish_call(self, prompt_ids: list[int], completions: list[list[int]]) -> None:
        self.previous = [prompt_ids + c for c in completions]
        self.calls += 1

    def stats(self) -> dict[str, Any]:
        return {"anchors": len(self.anchors), "calls": self.calls}
