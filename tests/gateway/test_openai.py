"""The OpenAI API through the official SDK, against a live gateway, the built-in engine and the pool."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest

from tests.helpers.gateway import ADD_TOOL, assert_prefix_consistent, open_session, session_info


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="forge", max_retries=0, timeout=60)


def test_multi_turn_tools_when_the_client_drops_reasoning(tool_gateway: Any, pool: Any) -> None:
    sess = open_session(tool_gateway.url, pool)
    c = client(sess["base_url"])
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is 2+3? Use the tool."}]
    for turn in range(3):
        out = c.chat.completions.create(model="default", messages=messages, tools=[ADD_TOOL], temperature=0)
        choice = out.choices[0]
        assert choice.finish_reason == "tool_calls"
        msg = choice.message
        assert msg.content is None
        assert msg.model_extra["reasoning_content"] == "I should add the numbers."
        (tc,) = msg.tool_calls
        assert tc.type == "function" and tc.function.name == "add" and tc.id.startswith("call_")
        assert json.loads(tc.function.arguments) == {"a": 2, "b": 3}
        assert out.usage.completion_tokens == 37 and out.usage.completion_tokens_details.reasoning_tokens > 0
        # what many agents do: send back content + tool_calls only, no reasoning
        messages.append({"role": "assistant", "content": None, "tool_calls": [tc.model_dump()]})
        messages.append({"role": "tool", "tool_call_id": tc.id, "content": str(turn + 5)})

    info = session_info(tool_gateway.url, sess["session_id"])
    samples = info["samples"]
    assert [s["turn"] for s in samples] == [0, 1, 2] and info["prefix_breaks"] == 0
    assert [s["prompt_source"] for s in samples] == ["fresh", "extended", "extended"]
    assert_prefix_consistent(samples)
    # the dropped thinking is in later prompts, exactly as generated
    first = samples[0]["prompt_ids"] + samples[0]["completion_ids"]
    assert samples[2]["prompt_ids"][: len(first)] == first
    # the pool holds the same records
    recorded = pool.samples(info["task_id"], sess["session_id"])
    assert [(s.prompt_ids, s.completion_ids) for s in recorded] == [
        (s["prompt_ids"], s["completion_ids"]) for s in samples
    ]


def test_stream_carries_the_same_reply(tool_gateway: Any) -> None:
    c = client(tool_gateway.url)
    kwargs: dict[str, Any] = dict(
        model="default", messages=[{"role": "user", "content": "2+3?"}], tools=[ADD_TOOL]
    )
    whole = c.chat.completions.create(**kwargs, temperature=0).choices[0]
    chunks = list(
        c.chat.completions.create(
            **kwargs, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    reasoning = "".join(
        ch.choices[0].delta.model_extra.get("reasoning_content") or "" for ch in chunks if ch.choices
    )
    assert reasoning == whole.message.model_extra["reasoning_content"]
    calls: dict[int, dict[str, str]] = {}
    for ch in chunks:
        for d in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            entry = calls.setdefault(d.index, {"name": "", "arguments": ""})
            entry["name"] += d.function.name or ""
            entry["arguments"] += d.function.arguments or ""
    assert calls == {0: {"name": "add", "arguments": whole.message.tool_calls[0].function.arguments}}
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 37


def test_random_model_session_streaming_and_logprobs(random_gateway: Any, pool: Any) -> None:
    sess = open_session(random_gateway.url, pool)
    c = client(sess["base_url"])
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "hi"},
    ]
    returned: list[list[float]] = []
    for turn in range(4):
        if turn % 2:
            text, lps = "", []
            for ch in c.chat.completions.create(
                model="default", messages=messages, max_tokens=12, logprobs=True, stream=True
            ):
                if ch.choices and ch.choices[0].delta.content:
                    text += ch.choices[0].delta.content
                if ch.choices and ch.choices[0].logprobs:
                    lps += [e.logprob for e in ch.choices[0].logprobs.content]
        else:
            out = c.chat.completions.create(model="default", messages=messages, max_tokens=12, logprobs=True)
            text, lps = out.choices[0].message.content, [e.logprob for e in out.choices[0].logprobs.content]
        returned.append(lps)
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": f"turn {turn}"}]
    samples = session_info(random_gateway.url, sess["session_id"])["samples"]
    assert len(samples) == 4
    assert_prefix_consistent(samples)
    for s, lps in zip(samples, returned, strict=True):
        n = len(s["completion_ids"]) - (
            1 if s["finish_reason"] == "stop" else 0
        )  # no entry for the end token
        assert lps == pytest.approx(s["logprobs"][:n])
        assert all(lp < 0 for lp in s["logprobs"])  # a random model is never certain


def test_n_seed_and_temperature_zero(random_gateway: Any, pool: Any) -> None:
    sess = open_session(random_gateway.url, pool)
    c = client(sess["base_url"])
    msgs = [{"role": "user", "content": "count"}]
    a = c.chat.completions.create(model="default", messages=msgs, n=3, seed=7, max_tokens=8)
    b = c.chat.completions.create(model="default", messages=msgs, n=3, seed=7, max_tokens=8)
    assert [ch.index for ch in a.choices] == [0, 1, 2]
    assert [ch.message.content for ch in a.choices] == [ch.message.content for ch in b.choices]
    assert len({ch.message.content for ch in a.choices}) > 1  # the choices use different seeds
    greedy = c.chat.completions.create(model="default", messages=msgs, n=2, temperature=0, max_tokens=8)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    info = session_info(random_gateway.url, sess["session_id"])
    assert [s["turn"] for s in info["samples"]] == list(range(8))  # one sample per choice


def test_stop_sequence_cuts_the_text_but_the_ledger_keeps_the_tokens(tool_gateway: Any, pool: Any) -> None:
    sess = open_session(tool_gateway.url, pool)
    c = client(sess["base_url"])
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "2+3?"}]
    out = c.chat.completions.create(
        model="default", messages=msgs, tools=[ADD_TOOL], stop=["numbers"], temperature=0
    )
    choice = out.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert choice.message.model_extra["reasoning_content"] == "I should add the "
    msgs += [{"role": "assistant", "content": choice.message.content}, {"role": "user", "content": "go on"}]
    c.chat.completions.create(model="default", messages=msgs, tools=[ADD_TOOL], max_tokens=3)
    samples = session_info(tool_gateway.url, sess["session_id"])["samples"]
    assert samples[1]["finish_reason"] == "length" and len(samples[1]["completion_ids"]) == 3
    assert_prefix_consistent(samples)


def test_forced_tool_choice_is_a_prompt_prefill(
    random_gateway: Any, pool: Any, random_model_dir: Any
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(random_model_dir)
    sess = open_session(random_gateway.url, pool)
    c = client(sess["base_url"])
    msgs = [{"role": "user", "content": "add"}]
    c.chat.completions.create(
        model="default", messages=msgs, tools=[ADD_TOOL], tool_choice="required", max_tokens=4
    )
    named = {"type": "function", "function": {"name": "add"}}
    c.chat.completions.create(
        model="default", messages=msgs, tools=[ADD_TOOL], tool_choice=named, max_tokens=4
    )
    s1, s2 = session_info(random_gateway.url, sess["session_id"])["samples"]
    assert tok.decode(s1["prompt_ids"]).endswith("<|im_start|>assistant\n<tool_call>\n")
    assert tok.decode(s2["prompt_ids"]).endswith(
        '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": '
    )


def test_completions_endpoint_and_its_ledger(random_gateway: Any, pool: Any) -> None:
    sess = open_session(random_gateway.url, pool)
    c = client(sess["base_url"])
    first = c.completions.create(model="default", prompt="Once upon a time", max_tokens=6, logprobs=0, seed=1)
    ch = first.choices[0]
    assert first.object == "text_completion" and ch.finish_reason in ("length", "stop")
    assert len(ch.logprobs.token_logprobs) == first.usage.completion_tokens
    prompt2 = "Once upon a time" + ch.text + " and then"
    text = "".join(
        x.choices[0].text
        for x in c.completions.create(model="default", prompt=prompt2, max_tokens=5, stream=True)
        if x.choices
    )
    assert isinstance(text, str)
    s1, s2 = session_info(random_gateway.url, sess["session_id"])["samples"]
    if s1["finish_reason"] == "length":  # the text shows every token: the next prompt extends it exactly
        assert_prefix_consistent([s1, s2])
        assert s2["prompt_source"] == "extended"


def test_completions_batch_of_prompts(random_gateway: Any) -> None:
    c = client(random_gateway.url)
    out = c.completions.create(model="default", prompt=["Hello", "Goodbye"], n=2, max_tokens=3, seed=3)
    assert [ch.index for ch in out.choices] == [0, 1, 2, 3]
    assert 4 <= out.usage.completion_tokens <= 12
    ids = c.completions.create(model="default", prompt=[[72, 105], [66, 121, 101]], max_tokens=2)
    assert [ch.index for ch in ids.choices] == [0, 1] and ids.usage.prompt_tokens == 5


def test_models(random_gateway: Any, random_model_dir: Any) -> None:
    c = client(random_gateway.url)
    ids = [m.id for m in c.models.list()]
    assert ids == [random_model_dir.name, "default"]
    assert c.models.retrieve("default").id == "default"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-9")


def test_concurrent_sessions(random_gateway: Any, pool: Any) -> None:
    sessions = [open_session(random_gateway.url, pool) for _ in range(8)]

    async def episode(sess: dict[str, Any], k: int) -> None:
        c = openai.AsyncOpenAI(base_url=f"{sess['base_url']}/v1", api_key="forge", max_retries=0, timeout=120)
        msgs: list[dict[str, Any]] = [{"role": "user", "content": f"episode {k}"}]
        for turn in range(3):
            out = await c.chat.completions.create(
                model="default", messages=msgs, max_tokens=6, stream=bool(turn % 2)
            )
            if turn % 2:
                text = "".join([ch.choices[0].delta.content or "" async for ch in out if ch.choices])
            else:
                text = out.choices[0].message.content
            msgs += [{"role": "assistant", "content": text}, {"role": "user", "content": f"more {turn}"}]
        await c.close()

    async def main() -> None:
        await asyncio.gather(*(episode(s, k) for k, s in enumerate(sessions)))

    asyncio.run(main())
    for sess in sessions:
        info = session_info(random_gateway.url, sess["session_id"])
        assert len(info["samples"]) == 3
        assert_prefix_consistent(info["samples"])
        assert pool.task_status(info["task_id"]).n_samples == 3
