"""`forge bench engine --workload multiturn` on CPU: the JSON's fields and its token accounting."""

from __future__ import annotations

import json

import pytest

from forge.bench import engine as bench_engine
from forge.bench.engine import Multiturn, kv_report, percentile, stats_delta

K, T, C, P, G, N = 3, 8, 8, 12, 2, 4
FIELDS = {
    "gen_tok_s",
    "wall_s",
    "calls",
    "output_tokens",
    "prompt_tokens_received",
    "unique_tokens",
    "cached_tokens",
    "prefill_tokens_computed",
    "computed_over_unique",
    "computed_over_received",
    "cache_hit_rate",
    "latency_p50_s",
    "latency_p99_s",
    "kv",
    "forge_stats_before",
    "forge_stats_after",
    "forge_stats_delta",
}


@pytest.fixture(scope="module")
def report() -> dict:
    import contextlib
    import io

    out = io.StringIO()
    argv = ["--workload", "multiturn", "--model", "tiny", "--json", "--label", "t"]
    argv += ["--calls", str(K), "--tool-tokens", str(T), "--completion-tokens", str(C)]
    argv += ["--prompt-tokens", str(P), "--group", str(G), "--episodes", str(N), "--progress-s", "0"]
    with contextlib.redirect_stdout(out):
        assert bench_engine.main(argv) == 0
    (line,) = out.getvalue().strip().splitlines()  # one JSON object, one line
    return json.loads(line)


def test_the_report_has_every_field(report: dict) -> None:
    assert FIELDS <= set(report)
    assert report["workload"] == "multiturn" and report["label"] == "t"
    assert report["calls"] == N * K and report["short_calls"] == 0
    assert report["output_tokens"] == N * K * C
    assert report["gen_tok_s"] > 0 and report["wall_s"] > 0
    assert 0 < report["latency_p50_s"] <= report["latency_p99_s"]
    assert report["kv"]["context_length"] >= P + K * C + (K - 1) * T
    # cumulative counters moved by the run (both engines report these)
    assert report["forge_stats_delta"]["prefill_rows"] >= N * K
    assert report["forge_stats_delta"]["decode_steps"] > 0


def test_prompt_tokens_received_follow_the_episode_formula(report: dict) -> None:
    # call i (0-based) sends P + i (C + T) tokens
    per_episode = sum(P + i * (C + T) for i in range(K))
    assert report["prompt_tokens_received"] == N * per_episode
    assert report["prompt_tokens_reported"] == report["prompt_tokens_received"]


def test_unique_tokens_count_each_group_prompt_once(report: dict) -> None:
    assert report["unique_tokens"] == (N // G) * P + N * (K * C + (K - 1) * T)
    assert report["ideal_prefill_tokens"] == (N // G) * P + N * (K - 1) * T


def test_prefill_computed_is_received_less_cached(report: dict) -> None:
    received, cached = report["prompt_tokens_received"], report["cached_tokens"]
    assert 0 <= cached <= received
    assert report["prefill_tokens_computed"] == received - cached
    assert report["cache_hit_rate"] == pytest.approx(cached / received)
    assert report["computed_over_received"] == pytest.approx((received - cached) / received)
    assert report["computed_over_unique"] == pytest.approx((received - cached) / report["unique_tokens"])


def test_the_workload_is_seeded() -> None:
    a = Multiturn(K, T, C, P, G, N, seed=0, vocab=1000)
    b = Multiturn(K, T, C, P, G, N, seed=0, vocab=1000)
    assert a.initial_prompt(1) == b.initial_prompt(1) != a.initial_prompt(0)
    assert a.tool(3, 1) == b.tool(3, 1) != a.tool(3, 0)
    assert len(a.tool(0, 0)) == T and all(10 <= t < 1000 for t in a.initial_prompt(0))
    assert a.sampling_seed(1, 0) == b.sampling_seed(1, 0) != a.sampling_seed(2, 0)
    assert a.expected()["prompt_tokens_received"] == N * sum(P + i * (C + T) for i in range(K))


def test_the_episode_count_must_be_a_multiple_of_the_group() -> None:
    with pytest.raises(SystemExit):
        bench_engine.parse_multiturn_args(["--episodes", "5", "--group", "2"])


def test_stats_and_kv_helpers() -> None:
    before = {"busy_s": 1.0, "prefills": 3, "peak_pages_used": 5, "pages_total": 100, "page_size": 16}
    after = {
        "busy_s": 2.5,
        "prefills": 7,
        "peak_pages_used": 40,
        "pages_total": 100,
        "page_size": 16,
        "kv_cache_bytes": 1000,
    }
    assert stats_delta(before, after) == {"busy_s": 1.5, "prefills": 4}
    kv = kv_report(after, {"context_length": 64, "max_running_requests": 8})
    assert kv["peak_kv_tokens"] == 640 and kv["peak_kv_bytes"] == 400 and kv["context_length"] == 64
    assert kv_report({"busy_s": 1.0}, {}) == {}  # the old engine: no KV figures
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0 and percentile([1.0, 2.0], 0.99) == 2.0
