"""The benchmarks run and print what they promise (figures are checked by shape, never timed)."""

import json

from forge.bench import pool as bench_pool
from forge.bench import scheduler as bench_scheduler


def _rows(capsys) -> list[dict]:
    out = capsys.readouterr()
    _rows.err = out.err
    return [json.loads(line) for line in out.out.splitlines() if line.strip()]


def test_bench_scheduler_json(capsys):
    assert (
        bench_scheduler.main(
            ["--json", "--episodes", "60", "--slots", "8", "--batch", "4", "--windows", "0.5"]
        )
        == 0
    )
    rows = _rows(capsys)
    assert [(r["mode"], r["window"]) for r in rows] == [("strict", 1), ("windowed", 4), ("greedy", None)]
    for r in rows:
        assert {
            "mode",
            "window",
            "throughput",
            "idle_fraction",
            "mean_lag",
            "max_lag",
            "length_bias",
        } <= r.keys()
        assert r["episodes"] >= 60 and r["throughput"] > 0 and 0 <= r["idle_fraction"] <= 1
        if r["window"] is not None:  # the guarantee the in-flight bound gives
            assert r["max_lag"] <= r["lag_bound"] == 8 + r["window"] - 1
            assert r["max_out_of_order"] <= r["window"] - 1
    assert rows[0]["max_out_of_order"] == 0


def test_bench_pool_json(capsys):
    assert (
        bench_pool.main(
            ["--json", "--samples", "64", "--turns", "4", "--pipeline", "16", "--read-batch", "4"]
        )
        == 0
    )
    (row,) = _rows(capsys)
    assert {"write_per_s", "read_per_s", "raw_per_s", "ratio", "raw_source"} <= row.keys()
    assert row["ratio"] == row["write_per_s"] / row["raw_per_s"]
    assert row["samples"] == 64 and row["sample_bytes"] > 4 * (2048 + 512 + 512)


def test_bench_pool_without_redis_benchmark_uses_redis_py(capsys, monkeypatch):
    monkeypatch.setattr(bench_pool, "find_redis_benchmark", lambda: None)
    assert (
        bench_pool.main(["--json", "--samples", "32", "--turns", "4", "--pipeline", "8", "--read-batch", "4"])
        == 0
    )
    (row,) = _rows(capsys)
    assert row["raw_source"].startswith("redis-py pipeline") and row["raw_per_s"] == row["raw_redispy_per_s"]
    assert "redis-benchmark not found" in _rows.err
