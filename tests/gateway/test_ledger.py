"""The token ledger with a real tokenizer and chat template (engine output stood in by token ids).

Engine-free on purpose: the completion ids here are what a model could have written; the live
tests (test_openai.py, test_anthropic.py) run the same paths through the real engine.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ledger import Ledger
from gateway.messages import Conversation, Message, ToolCall
from gateway.parsing import parse_reply
from gateway.templates import ChatRenderer
from tests.helpers.gateway import ADD_TOOL, hermes_tokenizer

EOS = "<|im_end|>"


@pytest.fixture(scope="module")
def r() -> ChatRenderer:
    return ChatRenderer(hermes_tokenizer())


def reply_of(r: ChatRenderer, text: str, tool_prefix: str = "call_") -> Message:
    p = parse_reply(text)
    calls = tuple(ToolCall(f"{tool_prefix}{i}", c.name, c.arguments) for i, c in enumerate(p.tool_calls))
    return Message("assistant", p.content, p.reasoning, calls)


def call(ledger: Ledger, r: ChatRenderer, conv: Conversation, text: str, ended: bool = True):
    """One model call: plan the prompt, 'generate' `text` (+ end-of-turn), record it."""
    plan = ledger.plan_chat(conv)
    completion = r.encode(text) + ([r.eos_token_id] if ended else [])
    reply = reply_of(r, text)
    brk = ledger.is_break(plan.ids)
    ledger.record_chat(plan, conv.messages, [(reply, completion, ended, EOS)])
    ledger.finish_call(plan.ids, [completion])
    return plan, completion, reply, brk


THINK_CALL = (
    '<think>\nadd them\n</think>\n\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
)


def test_extension_keeps_thinking_the_client_dropped(r: ChatRenderer) -> None:
    ledger = Ledger(r)
    msgs = [Message("user", "2+3?")]
    plan1, comp1, reply, _ = call(ledger, r, Conversation(msgs, [ADD_TOOL]), THINK_CALL)
    # the client sends the reply back without reasoning, with its own JSON spacing and call id
    sent = Message("assistant", "", tool_calls=(ToolCall("other-id", "add", '{"b":3,"a":2}'),))
    msgs2 = [*msgs, sent, Message("tool", "5", tool_call_id="other-id")]
    plan2, *_, brk = call(ledger, r, Conversation(msgs2, [ADD_TOOL]), "The answer is 5.")
    assert plan2.how == "extended" and not brk
    assert plan2.ids[: len(plan1.ids) + len(comp1)] == plan1.ids + comp1
    assert plan2.reused == len(plan1.ids) + len(comp1)
    new = r.decode(plan2.ids[plan2.reused :], skip_special_tokens=False)
    assert (
        new == "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    assert "add them" in r.decode(plan2.ids)  # the thinking is still in the prompt


def test_a_changed_reply_is_rendered_afresh_and_counted(r: ChatRenderer) -> None:
    ledger = Ledger(r)
    msgs = [Message("user", "hi")]
    call(ledger, r, Conversation(msgs), "Hello! How can I help?")
    edited = [*msgs, Message("assistant", "Hello!"), Message("user", "more")]
    plan, *_, brk = call(ledger, r, Conversation(edited), "Sure.")
    assert plan.how == "fresh" and brk
    assert plan.ids == r.encode(r.render(edited, None, True, "native"))


def test_a_cut_off_reply_is_closed_with_the_end_of_turn_token(r: ChatRenderer) -> None:
    ledger = Ledger(r)
    msgs = [Message("user", "think hard")]
    plan1, comp1, reply, _ = call(ledger, r, Conversation(msgs), "<think>\nstep one, step", ended=False)
    msgs2 = [*msgs, Message("assistant", reply.content), Message("user", "go on")]
    plan2, *_, brk = call(ledger, r, Conversation(msgs2), "ok")
    assert plan2.how == "extended" and not brk
    assert plan2.ids[: plan2.reused] == plan1.ids + comp1
    assert r.decode(plan2.ids[plan2.reused :], skip_special_tokens=False).startswith(
        "<|im_end|>\n<|im_start|>user\ngo on"
    )


def test_retry_and_branch_reuse_tokens_but_count_as_breaks(r: ChatRenderer) -> None:
    ledger = Ledger(r)
    msgs = [Message("user", "a")]
    plan1, comp1, reply1, _ = call(ledger, r, Conversation(msgs), "<think>\nx\n</think>\n\nfirst")
    plan_retry, *_, brk = call(ledger, r, Conversation(msgs), "second")
    assert plan_retry.how == "retry" and plan_retry.ids == plan1.ids and brk
    # continue from the FIRST reply (a branch): extended from its anchor, thinking kept, but a break
    branch = [*msgs, Message("assistant", "first"), Message("user", "b")]
    plan_b, *_, brk_b = call(ledger, r, Conversation(branch), "third")
    assert plan_b.how == "extended" and brk_b
    assert plan_b.ids[: plan_b.reused] == plan1.ids + comp1


def test_other_tools_mean_a_fresh_render(r: ChatRenderer) -> None:
    ledger = Ledger(r)
    msgs = [Message("user", "a")]
    call(ledger, r, Conversation(msgs, [ADD_TOOL]), "x")
    plan, *_ = call(ledger, r, Conversation([*msgs, Message("assistant", "x"), Message("user", "b")]), "y")
    assert plan.how == "fresh"


def test_raw_completions_extend_on_text(r: ChatRenderer) -> None:
    ledger = Ledger(r)
    plan1 = ledger.plan_raw("Once upon a time")
    comp = r.encode_raw(" there was")
    ledger.record_raw(plan1, "Once upon a time", [(" there was", comp, True)])
    plan2 = ledger.plan_raw("Once upon a time there was a king.")
    assert plan2.how == "extended" and plan2.ids[: plan2.reused] == plan1.ids + comp
    assert r.decode(plan2.ids) == "Once upon a time there was a king."


# Any conversation: when the model's tokens for its reply are the template's own tokens for it,
# extending the ledger must give exactly the tokens of rendering the whole conversation afresh.
PIECES = [*"abc xyz<>{}|\"'\n\t", "é", "日本", "<|im_end|>", "<tool_call>", "</think>"]
words = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)
reply_text = st.builds(lambda w: "R" + w, words)  # starts with a letter: no merge with the "\n" before it


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user1=words, reply=reply_text, user2=words, system=st.one_of(st.none(), words), tools=st.booleans())
def test_extension_equals_fresh_render_when_reply_tokens_are_canonical(
    r: ChatRenderer, user1: str, reply: str, user2: str, system: str | None, tools: bool
) -> None:
    tool_list = [ADD_TOOL] if tools else []
    msgs = ([Message("system", system)] if system is not None else []) + [Message("user", user1)]
    ledger = Ledger(r)
    plan1 = ledger.plan_chat(Conversation(msgs, tool_list))
    template = plan1.template
    answer = Message("assistant", reply)
    before = r.render(msgs, tool_list, True, template)
    after = r.render([*msgs, answer], tool_list, False, template)
    assert after.startswith(before)
    completion = r.encode(after[len(before) : after.rindex(EOS)]) + [r.eos_token_id]
    ledger.record_chat(plan1, msgs, [(answer, completion, True, EOS)])
    msgs2 = [*msgs, answer, Message("user", user2)]
    plan2 = ledger.plan_chat(Conversation(msgs2, tool_list))
    fresh = r.encode(r.render(msgs2, tool_list, True, template))
    assert plan2.how == "extended", plan2.why_fresh
    if plan1.ids + completion == fresh[: len(plan1.ids) + len(completion)]:
        assert plan2.ids == fresh
    else:  # the fresh render tokenises the earlier part differently: the ledger keeps the old ids
        assert plan2.ids[: plan2.reused] == plan1.ids + completion


def test_warming_the_reply_anchor_changes_no_plan(r: ChatRenderer) -> None:
    """Ledger.warm (run by the gateway after answering) renders what the next extension needs; the
    plans are the same as with the lazy render, with tools and without."""
    for tools, first in (([ADD_TOOL], THINK_CALL), (None, "Hello! How can I help?")):
        lazy, warm = Ledger(r), Ledger(r)
        msgs = [Message("user", "2+3?")]
        call(lazy, r, Conversation(msgs, tools), first)
        _, _, reply, _ = call(warm, r, Conversation(msgs, tools), first)
        assert warm.anchors[-1]._join is None
        warm.warm(Conversation(msgs, tools))
        assert warm.anchors[-1]._join is not None
        nxt = [*msgs, reply, Message("user", "and 3+4?")]
        p_lazy = lazy.plan_chat(Conversation(nxt, tools))
        p_warm = warm.plan_chat(Conversation(nxt, tools))
        assert p_warm.how == p_lazy.how == "extended"
        assert p_warm.ids == p_lazy.ids
        other = Ledger(r)  # other tools: another fingerprint, nothing rendered for it
        call(other, r, Conversation(msgs, tools), first)
        other.warm(Conversation(msgs, [{**ADD_TOOL, "function": {**ADD_TOOL["function"], "name": "plus"}}]))
        assert other.anchors[-1]._join is None
