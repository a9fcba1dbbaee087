"""The paged KV cache and prefix reuse: the page tree on its own, then the engine end to end (fp32, CPU).

Exactness: with reuse on, greedy tokens and log-probs equal the no-reuse path; a weight update
between two calls of a session never serves KV computed under the old weights; a small pool
queues requests (and retracts running ones) instead of running out of memory.
"""

from __future__ import annotations

import concurrent.futures
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from forge.ground.engine_client import SyncEngineClient
from gateway.engines.native import start_engine_in_thread
from gateway.engines.native.prefix_cache import PagePool, PrefixCache

GREEDY = {"temperature": 0.0, "ignore_eos": True}
P = 4  # small pages, so short prompts span several


# ---- the tree alone -------------------------------------------------------------------------
def test_match_insert_share_and_evict():
    pool = PagePool(9)  # 8 usable pages
    cache = PrefixCache(pool, P)
    a = list(range(10))  # 2 full pages + 2 tokens
    pages = cache.alloc(3)
    path: list = []
    cache.insert(a, pages, path, cache.epoch)
    assert len(path) == 2 and cache.nodes == 2 and cache.unreferenced == 0
    assert [n.page for n in cache.match(a + [99])] == pages[:2]
    assert cache.match(a, limit=7) == path[:1], "a limit counts whole pages only"
    assert cache.available() == 5
    cache.unlock(path)
    pool.free(pages[2:])
    assert cache.unreferenced == 2 and cache.available() == 8
    # a sibling that computed the same first page switches to the cached copy, its own goes back
    other = cache.alloc(2)
    p2: list = []
    cache.insert(a[:4] + [7, 7, 7, 7], other, p2, cache.epoch)
    assert other[0] == pages[0] and cache.nodes == 3
    assert pool.free_count == 8 - 3
    cache.unlock(p2)
    # everything is unreferenced: asking for all 8 pages evicts leaves first, parents after
    got = cache.alloc(8)
    assert len(got) == 8 and cache.nodes == 0 and cache.match(a) == []


def test_rematch_equals_match_after_evict_insert_and_flush():
    """A waiting request re-matches from its last match; the result is always a fresh match's."""
    pool = PagePool(9)
    cache = PrefixCache(pool, P)
    toks = list(range(20))  # 5 pages
    pages = cache.alloc(3)
    path: list = []
    cache.insert(toks[:12], pages, path, cache.epoch)
    cache.unlock(path)
    last = cache.rematch(toks, [], limit=19)
    assert last == cache.match(toks, limit=19) and len(last) == 3
    more = cache.alloc(5)  # another request computes the whole sequence: two more pages cached
    p2 = list(last)
    cache.lock(p2)
    cache.insert(toks, [n.page for n in p2] + more[3:], p2, cache.epoch)
    cache.unlock(p2)
    last = cache.rematch(toks, last, limit=19)
    assert last == cache.match(toks, limit=19) and len(last) == 4, "extended past the earlier match"
    cache.evict(2)  # the 5th page (past the limit) and the 4th
    last = cache.rematch(toks, last, limit=19)
    assert last == cache.match(toks, limit=19) and len(last) == 3, "evicted nodes dropped"
    assert cache.rematch(toks, last, limit=7) == cache.match(toks, limit=7), "a tighter limit"
    cache.flush()
    assert cache.rematch(toks, last) == [] == cache.match(toks)


def test_flush_detaches_and_frees_on_release():
    pool = PagePool(5)
    cache = PrefixCache(pool, P)
    toks = list(range(8))
    pages = cache.alloc(2)
    path: list = []
    epoch = cache.epoch
    cache.insert(toks, pages, path, epoch)
    assert cache.flush() == 0, "pages still read by a running request are not freed yet"
    assert cache.match(toks) == [] and cache.nodes == 0
    late: list = []
    cache.insert(toks + list(range(8, 12)), pages + cache.alloc(1), late, epoch)
    assert late == [] and cache.nodes == 0, "a request admitted before the flush inserts nothing"
    cache.unlock(path)
    assert pool.free_count == 4 - 1, "released: the flushed pages are free again"


def _ended_call(cache: PrefixCache, tokens: list[int]) -> None:
    """A call that computed `tokens` (whole pages) and ended: its KV is cached, unreferenced."""
    path: list = []
    cache.insert(tokens, cache.alloc(len(tokens) // P), path, cache.epoch)
    cache.unlock(path)


def test_eviction_takes_one_idle_session_whole_before_the_next_one():
    cache = PrefixCache(PagePool(7), P)  # 6 usable pages: two sessions of 3
    a, b = list(range(12)), list(range(100, 112))
    _ended_call(cache, a)
    _ended_call(cache, b)
    cache.alloc(3)  # a is the least recently used: all of it goes, b stays whole
    assert cache.match(a) == [] and len(cache.match(b)) == 3


def test_available_idle_leaves_just_released_sessions_alone(monkeypatch):
    import gateway.engines.native.prefix_cache as pc

    now = [1000.0]
    monkeypatch.setattr(pc.time, "monotonic", lambda: now[0])
    cache = PrefixCache(PagePool(9), P)  # 8 usable pages
    _ended_call(cache, list(range(12)))  # 3 pages, released at t=1000
    now[0] = 1005.0
    _ended_call(cache, list(range(100, 108)))  # 2 pages, released at t=1005
    now[0] = 1005.5
    assert cache.available() == 8
    assert cache.available_idle(1.0) == 3 + 3, "free pages + the session idle for 5.5 s"
    assert cache.available_idle(10.0) == 3, "only the free pages"
    now[0] = 1010.0
    assert cache.available_idle(1.0) == 8


# ---- the engine -----------------------------------------------------------------------------
def _engine(model_dir, **kw):
    base = {"device": "cpu", "max_running_requests": 8, "context_length": 256, "page_size": P}
    return start_engine_in_thread(str(model_dir), **{**base, **kw})


def _session(client: SyncEngineClient, first: list[int], calls: int, tool: int, new: int, seed: int):
    """A multi-turn session: each call's prompt = the previous prompt + completion + `tool` tokens."""
    rng = random.Random(seed)
    prompt, out = list(first), []
    for _ in range(calls):
        res = client.generate(prompt, {**GREEDY, "max_new_tokens": new})
        out.append(res)
        prompt = prompt + res.output_ids + [rng.randrange(3, 200) for _ in range(tool)]
    return out


def _close(a, b, tol=1e-5):
    assert [r.output_ids for r in a] == [r.output_ids for r in b]
    for x, y in zip(a, b, strict=True):
        assert max(abs(p - q) for p, q in zip(x.output_logprobs, y.output_logprobs, strict=True)) <= tol


def test_session_and_siblings_reuse_exactly(model_dir):
    first = [random.Random(1).randrange(3, 200) for _ in range(13)]
    with _engine(model_dir) as on, _engine(model_dir, prefix_cache=False) as off:
        c_on, c_off = SyncEngineClient(on.url), SyncEngineClient(off.url)
        got = _session(c_on, first, calls=4, tool=5, new=7, seed=2)
        ref = _session(c_off, first, calls=4, tool=5, new=7, seed=2)
        _close(got, ref)
        assert got[0].cached_tokens == 0
        for res in got[1:]:  # everything but the last partial page of the previous context is reused
            assert res.cached_tokens >= res.prompt_tokens - 5 - 7 - P
        assert all(r.cached_tokens == 0 for r in ref)
        # a group: 6 siblings of one prompt submitted together share its pages
        prompt = first + [9] * 11
        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            group = list(ex.map(lambda _: c_on.generate(prompt, {**GREEDY, "max_new_tokens": 5}), range(6)))
        alone = c_off.generate(prompt, {**GREEDY, "max_new_tokens": 5})
        _close(group, [alone] * 6)
        assert sum(r.cached_tokens > 0 for r in group) >= 5
        stats = c_on.get_model_info()["forge_stats"]
        assert stats["cached_tokens"] > 0 and stats["prefill_tokens"] < stats["prompt_tokens"]
        assert stats["pages_used"] == 0 and stats["pages_cached"] > 0


def test_greedy_with_reuse_matches_generate(model_dir, greedy):
    with _engine(model_dir, pad_to_buckets=True) as eng:
        c = SyncEngineClient(eng.url)
        prompt = [random.Random(3).randrange(3, 200) for _ in range(9)]
        one = c.generate(prompt, {**GREEDY, "max_new_tokens": 10})
        longer = prompt + one.output_ids + [17, 18, 19]
        two = c.generate(longer, {**GREEDY, "max_new_tokens": 10})
        assert two.cached_tokens > 0
        assert two.output_ids == greedy(longer, 10)


def _perturbed(model_dir, scale: float, seed: int):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


@pytest.mark.parametrize("how", ["disk", "version_only"])
def test_weight_update_never_serves_old_kv(model_dir, tmp_path, how):
    """Call 1 of a session, a weight update, call 2: call 2 must equal a cold engine on the new
    weights. Reused old-weight KV changes its log-probs (this fails if the flush is removed)."""
    new = _perturbed(model_dir, 0.05, seed=4)
    new.save_pretrained(tmp_path / "new", safe_serialization=True)
    prompt = [random.Random(5).randrange(3, 200) for _ in range(21)]
    with _engine(model_dir) as eng, _engine(tmp_path / "new", prefix_cache=False) as cold:
        c = SyncEngineClient(eng.url)
        one = c.generate(prompt, {**GREEDY, "max_new_tokens": 6})
        nxt = prompt + one.output_ids + [11, 12, 13]
        if how == "disk":
            c.update_weights_from_disk(str(tmp_path / "new"))
        else:  # weights already in place (as after an NCCL/IPC update); only the version moves
            eng.core.call(
                lambda: [
                    p.data.copy_(q)
                    for p, q in zip(eng.core.model.parameters(), new.parameters(), strict=True)
                ]
            ).result()
            c._request("POST", "/update_weight_version", {"new_version": "7", "abort_all_requests": False})
        two = c.generate(nxt, {**GREEDY, "max_new_tokens": 6})
        assert two.cached_tokens == 0
        ref = SyncEngineClient(cold.url).generate(nxt, {**GREEDY, "max_new_tokens": 6})
        _close([two], [ref])
        # and within the new version reuse resumes
        three = c.generate(nxt + two.output_ids + [4], {**GREEDY, "max_new_tokens": 3})
        assert three.cached_tokens > 0


def test_small_pool_queues_and_retracts_without_running_out(model_dir, greedy):
    """A pool of 40 pages (160 tokens) for 12 requests of 20 + 40 tokens: they queue, running ones
    are retracted when pages run out, and every answer is still the greedy one."""
    from gateway.engines.native.launch import kv_bytes_per_token

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    gb = 40 * P * kv_bytes_per_token(model) / 2**30
    rng = random.Random(6)
    prompts = [[rng.randrange(3, 200) for _ in range(20)] for _ in range(12)]
    with _engine(model_dir, kv_cache_gb=gb, context_length=128, prefix_cache=False) as eng:
        c = SyncEngineClient(eng.url)
        assert c.get_model_info()["forge_stats"]["pages_total"] == 40 - 1
        with concurrent.futures.ThreadPoolExecutor(12) as ex:
            outs = list(ex.map(lambda p: c.generate(p, {**GREEDY, "max_new_tokens": 40}), prompts))
        for p, o in zip(prompts, outs, strict=True):
            assert o.finish_reason == "length" and o.output_ids == greedy(p, 40)
        stats = c.get_model_info()["forge_stats"]
        assert stats["peak_pages_used"] <= stats["pages_total"]
        assert stats["retractions"] > 0, "12 × 15 pages cannot all run in 39: some were retracted"
        assert stats["pages_used"] == 0
    # a pool that cannot hold one full-context sequence is refused at start, naming the knob
    with pytest.raises(ValueError, match="kv-cache-gb"):
        _engine(model_dir, kv_cache_gb=gb, context_length=256)


def test_bucketed_prefill_with_reuse_matches_plain_prefill(model_dir):
    """The CUDA-graph prefill's shapes run eagerly (pad_to_buckets): the rows' new tokens packed
    into one token axis padded to a bucket (padding tokens write the scratch page), over cached
    prefixes. Concurrent sessions give the tokens and log-probs of unpacked prefills without reuse."""
    firsts = [[random.Random(10 + i).randrange(3, 200) for _ in range(9 + 7 * i)] for i in range(5)]
    with _engine(model_dir, pad_to_buckets=True) as pad, _engine(model_dir, prefix_cache=False) as plain:
        runner = pad.core.runner
        assert runner.prefill_graph_tokens > 0 and plain.core.runner.prefill_graph_tokens == 0
        assert runner._prefill_bucket(3 + 17) == 32 and runner._prefill_bucket(10**6) is None
        c_pad, c_plain = SyncEngineClient(pad.url), SyncEngineClient(plain.url)
        with concurrent.futures.ThreadPoolExecutor(5) as ex:
            got = list(ex.map(lambda i: _session(c_pad, firsts[i], 3, 6, 5, seed=i), range(5)))
        ref = [_session(c_plain, firsts[i], 3, 6, 5, seed=i) for i in range(5)]
        for a, b in zip(got, ref, strict=True):
            _close(a, b)
        assert sum(r.cached_tokens for s in got for r in s) > 0
        assert pad.core.prefill_rows > pad.core.prefills, "no prefill held several rows"
        kv = runner.kv  # padding rows and tokens wrote the scratch page: finite, so masked keys stay harmless
        assert torch.isfinite(kv.k).all() and torch.isfinite(kv.v).all()
