"""Generation through the live built-in engine (tiny random model, CPU) against transformers' own generate."""

from __future__ import annotations

import asyncio
import time

import torch

from forge.ground.engine_client import EngineClient, SyncEngineClient

PROMPTS = [[1, 2, 3, 4, 5], [100, 200, 300], [7] * 20, list(range(40, 73))]


def test_greedy_matches_generate(engine, greedy):
    client = SyncEngineClient(engine.url)
    for prompt in PROMPTS:
        res = client.generate(prompt, {"max_new_tokens": 16, "temperature": 0.0, "ignore_eos": True})
        assert res.output_ids == greedy(prompt, 16)
        assert res.finish_reason == "length"
        assert len(res.output_logprobs) == 16
        assert res.prompt_tokens == len(prompt) and res.completion_tokens == 16


def test_continuous_batching_joins_between_steps(engine, greedy):
    """Requests that arrive while another decodes give the same greedy tokens as alone."""
    long_prompt, n_long = PROMPTS[3], 160
    late = [(PROMPTS[0], 12), (PROMPTS[1], 20), (PROMPTS[2], 8)]
    sp = {"temperature": 0.0, "ignore_eos": True}

    async def run() -> tuple[list, list]:
        client = EngineClient(engine.url)
        finished: list[str] = []

        async def one(prompt, n, name, delay):
            await asyncio.sleep(delay)
            r = await client.generate(prompt, {**sp, "max_new_tokens": n}, rid=name)
            finished.append(name)
            return r

        first = asyncio.create_task(one(long_prompt, n_long, "long", 0.0))
        while engine.core.load()["running"] == 0:  # the long request is decoding
            await asyncio.sleep(0.005)
        steps_before = engine.core.steps
        others = [one(p, n, f"late{i}", 0.02 * i) for i, (p, n) in enumerate(late)]
        results = await asyncio.gather(first, *others)
        await client.aclose()
        assert engine.core.steps > steps_before
        return results, finished

    results, finished = asyncio.run(run())
    assert finished[-1] == "long", "the late, shorter requests should finish while the long one decodes"
    assert results[0].output_ids == greedy(long_prompt, n_long)
    for (prompt, n), res in zip(late, results[1:], strict=True):
        assert res.output_ids == greedy(prompt, n)


def test_logprobs_match_full_forward(engine, ref_model):
    client = SyncEngineClient(engine.url)
    prompt = PROMPTS[1]
    for sp in (
        {"temperature": 0.0},
        {"temperature": 0.9, "top_p": 0.8, "sampling_seed": 3},
        {"temperature": 1.3, "top_k": 20, "min_p": 0.01, "sampling_seed": 4},
    ):
        res = client.generate(prompt, {**sp, "max_new_tokens": 24, "ignore_eos": True})
        ids = torch.tensor([prompt + res.output_ids])
        with torch.no_grad():
            logits = ref_model(ids).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        expect = [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(res.output_ids)]
        assert torch.allclose(torch.tensor(res.output_logprobs), torch.tensor(expect), atol=2e-4, rtol=0)


def test_max_new_tokens_and_stop_token_ids(engine, greedy):
    client = SyncEngineClient(engine.url)
    prompt = PROMPTS[0]
    ref = greedy(prompt, 12)
    res = client.generate(prompt, {"max_new_tokens": 5, "temperature": 0.0, "ignore_eos": True})
    assert res.output_ids == ref[:5] and res.finish_reason == "length"
    assert res.raw["meta_info"]["finish_reason"] == {"type": "length", "length": 5}
    stop_at = ref[6]
    res = client.generate(prompt, {"max_new_tokens": 12, "temperature": 0.0, "stop_token_ids": [stop_at]})
    k = ref.index(stop_at)
    assert res.output_ids == ref[: k + 1], "the stop token is the last output token"
    assert res.finish_reason == "stop" and res.matched_stop == stop_at
    res = client.generate(prompt, {"max_new_tokens": 0})
    assert res.output_ids == [] and res.finish_reason == "length"


def test_stop_strings(engine, greedy, tokenizer):
    client = SyncEngineClient(engine.url)
    prompt = PROMPTS[2]
    ref = greedy(prompt, 16)
    full = tokenizer.decode(ref)
    text8 = tokenizer.decode(ref[:8])
    stop = text8[-3:] if len(text8.strip()) >= 3 else tokenizer.decode(ref[7:8])
    assert stop and stop in full
    res = client.generate(
        prompt, {"max_new_tokens": 16, "temperature": 0.0, "stop": [stop], "ignore_eos": True}
    )
    assert res.finish_reason == "stop" and res.matched_stop == stop
    # the output stops at the first token whose text completes the stop string
    first = next(i for i in range(1, 17) if stop in tokenizer.decode(ref[:i]))
    assert res.output_ids == ref[:first]
    assert stop not in res.text and full.startswith(res.text)
    kept = client.generate(
        prompt,
        {"max_new_tokens": 16, "temperature": 0.0, "stop": stop, "no_stop_trim": True, "ignore_eos": True},
    )
    assert kept.output_ids == res.output_ids and kept.text.endswith(stop)


def test_seeded_sampling_is_reproducible(engine):
    client = SyncEngineClient(engine.url)
    sp = {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 24, "ignore_eos": True}
    a = client.generate(PROMPTS[0], {**sp, "sampling_seed": 11})
    b = client.generate(PROMPTS[0], {**sp, "sampling_seed": 11})
    c = client.generate(PROMPTS[0], {**sp, "sampling_seed": 12})
    assert a.output_ids == b.output_ids and a.output_logprobs == b.output_logprobs
    assert a.output_ids != c.output_ids

    async def crowded():
        async with EngineClient(engine.url) as ac:
            noise = [ac.generate(p, {**sp, "sampling_seed": 100 + i}) for i, p in enumerate(PROMPTS)]
            return await asyncio.gather(ac.generate(PROMPTS[0], {**sp, "sampling_seed": 11}), *noise)

    assert asyncio.run(crowded())[0].output_ids == a.output_ids, "a seed draws the same tokens in any batch"


def test_sampling_follows_the_filters(engine, ref_model):
    """top_k=1 is greedy; min_p=1 keeps only the argmax; unseeded sampling varies."""
    client = SyncEngineClient(engine.url)
    greedy_ids = client.generate(PROMPTS[1], {"temperature": 0.0, "max_new_tokens": 10, "ignore_eos": True})
    for sp in ({"top_k": 1}, {"min_p": 1.0}, {"top_p": 1e-6}):
        res = client.generate(
            PROMPTS[1], {"temperature": 1.5, "max_new_tokens": 10, "ignore_eos": True, **sp}
        )
        assert res.output_ids == greedy_ids.output_ids, sp
    outs = {
        tuple(
            client.generate(
                PROMPTS[1], {"temperature": 1.0, "max_new_tokens": 8, "ignore_eos": True}
            ).output_ids
        )
        for _ in range(3)
    }
    assert len(outs) > 1


def test_abort_by_rid(engine):
    async def run():
        async with EngineClient(engine.url) as client:
            task = asyncio.create_task(
                client.generate(
                    PROMPTS[0], {"max_new_tokens": 240, "temperature": 0.0, "ignore_eos": True}, rid="victim"
                )
            )
            while engine.core.load()["running"] == 0:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            await client.abort("victim")
            return await asyncio.wait_for(task, 30)

    res = asyncio.run(run())
    assert res.finish_reason == "abort"
    assert 0 < len(res.output_ids) < 240 and len(res.output_logprobs) == len(res.output_ids)


def test_pause_and_continue(engine, greedy):
    client = SyncEngineClient(engine.url)

    async def run():
        async with EngineClient(engine.url) as ac:
            await ac.pause_generation("in_place")
            task = asyncio.create_task(
                ac.generate(PROMPTS[1], {"max_new_tokens": 10, "temperature": 0.0, "ignore_eos": True})
            )
            await asyncio.sleep(0.4)
            assert not task.done(), "a paused engine generates nothing"
            assert engine.core.load()["waiting"] == 1
            t = time.monotonic()
            await ac.continue_generation()
            res = await asyncio.wait_for(task, 30)
            return res, time.monotonic() - t

    res, _ = asyncio.run(run())
    assert res.output_ids == greedy(PROMPTS[1], 10)
    # mode "abort" (SGLang's default) aborts what runs, then stays paused until continue

    async def abort_mode():
        async with EngineClient(engine.url) as ac:
            task = asyncio.create_task(
                ac.generate(PROMPTS[0], {"max_new_tokens": 240, "temperature": 0.0, "ignore_eos": True})
            )
            while engine.core.load()["running"] == 0:
                await asyncio.sleep(0.005)
            await ac.pause_generation("abort")
            return await asyncio.wait_for(task, 30)

    aborted = asyncio.run(abort_mode())
    assert aborted.finish_reason == "abort" and aborted.completion_tokens < 240
    client.continue_generation()
    assert client.generate(PROMPTS[0], {"max_new_tokens": 3, "temperature": 0.0}).completion_tokens >= 1


def test_graph_shapes_on_cpu(model_dir, greedy):
    """The CUDA-graph path's padded shapes (batch and key-length buckets, padding rows writing into
    free slots), run eagerly: concurrent greedy outputs still equal model.generate's."""
    from gateway.engines.native import start_engine_in_thread

    with start_engine_in_thread(
        str(model_dir), device="cpu", max_running_requests=7, context_length=200, pad_to_buckets=True
    ) as eng:
        assert eng.core.runner.batch_buckets == [1, 2, 4, 7]
        jobs = [(p, n) for p, n in zip(PROMPTS + [[9, 8]] * 3, [70, 9, 33, 5, 41, 12, 66], strict=True)]

        async def run():
            async with EngineClient(eng.url) as c:
                sp = {"temperature": 0.0, "ignore_eos": True}
                return await asyncio.gather(*(c.generate(p, {**sp, "max_new_tokens": n}) for p, n in jobs))

        for (p, n), res in zip(jobs, asyncio.run(run()), strict=True):
            assert res.output_ids == greedy(p, n)


def test_client_disconnect_frees_the_slot(engine):
    async def run():
        async with EngineClient(engine.url) as c:
            task = asyncio.create_task(
                c.generate(PROMPTS[0], {"max_new_tokens": 240, "temperature": 0.0, "ignore_eos": True})
            )
            while engine.core.load()["running"] == 0:
                await asyncio.sleep(0.005)
            steps = engine.core.steps
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        deadline = time.monotonic() + 10
        while engine.core.load()["running"] and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        return engine.core.load()["running"], engine.core.steps - steps

    running, steps_after_cancel = asyncio.run(run())
    assert running == 0
    assert steps_after_cancel < 100, "the request was aborted, not run to its 240 tokens"


ADMIT_SP = {"temperature": 0.0, "ignore_eos": True}


def _admission_engine(model_dir, prefill_batch: int, prefill_delay_steps: int):
    from gateway.engines.native import start_engine_in_thread

    return start_engine_in_thread(
        str(model_dir),
        device="cpu",
        max_running_requests=8,
        context_length=256,
        prefill_batch=prefill_batch,
        prefill_delay_steps=prefill_delay_steps,
    )


async def _long_request_decoding(client: EngineClient, eng) -> asyncio.Task:
    long = asyncio.create_task(client.generate(PROMPTS[3], {**ADMIT_SP, "max_new_tokens": 200}))
    while eng.core.load()["running"] == 0:
        await asyncio.sleep(0.005)
    return long


def test_late_requests_share_one_prefill(model_dir, greedy):
    """While a request decodes, late arrivals are held until `prefill_batch` of them are queued
    (here 3, with no time limit), then prefilled together; each still decodes as if alone."""
    late = [(PROMPTS[0], 6), (PROMPTS[1], 6), (PROMPTS[2], 6)]
    with _admission_engine(model_dir, prefill_batch=3, prefill_delay_steps=10_000) as eng:

        async def run() -> list:
            client = EngineClient(eng.url)
            long = await _long_request_decoding(client, eng)
            prefills = eng.core.prefills
            tasks = []
            for i, (p, n) in enumerate(late):
                tasks.append(asyncio.create_task(client.generate(p, {**ADMIT_SP, "max_new_tokens": n})))
                if i < 2:  # the first two are still held back after a few decode steps
                    deadline = time.monotonic() + 60
                    while eng.core.load()["waiting"] < i + 1:  # it reached the engine's queue
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.005)
                    steps = eng.core.steps
                    while eng.core.steps < steps + 3:
                        await asyncio.sleep(0.005)
                    assert eng.core.load()["waiting"] == i + 1 and eng.core.prefills == prefills
            results = await asyncio.gather(*tasks)
            assert eng.core.prefills == prefills + 1 and eng.core.prefill_rows >= 4
            await long
            await client.aclose()
            return results

        results = asyncio.run(run())
    for (prompt, n), res in zip(late, results, strict=True):
        assert res.output_ids == greedy(prompt, n)


def test_a_lone_late_request_waits_at_most_the_delay(model_dir):
    with _admission_engine(model_dir, prefill_batch=8, prefill_delay_steps=4) as eng:

        async def run() -> None:
            client = EngineClient(eng.url)
            long = await _long_request_decoding(client, eng)
            queued = eng.core.steps
            lone = await client.generate(PROMPTS[0], {**ADMIT_SP, "max_new_tokens": 4})
            assert len(lone.output_ids) == 4
            assert not long.done(), "the lone request finished while the long one decodes"
            assert eng.core.steps - queued <= 4 + 4 + 2  # its delay, its own 4 tokens, and slack
            await long
            await client.aclose()

        asyncio.run(run())
