"""`forge bench tree` on CPU: its fields, whole groups up to --min-tree-tokens, exact gradients."""

from __future__ import annotations

import json
from typing import Any

import pytest

from forge.bench.tree import groups_for, main


def test_groups_fill_the_merged_batch() -> None:
    assert groups_for(1024, 8, 1, 64, 64) == 4  # 64 + 8 * 32 = 320 merged tokens per group
    assert groups_for(1024, 8, 4, 64, 64) == 1  # 64 + 8 * (256 - 32)
    assert groups_for(1, 8, 64, 512, 512) == 1


def test_bench_tree_prints_one_row_per_setting(capsys: Any) -> None:
    argv = ["--calls", "1,3", "--tokens-per-call", "16", "--min-tree-tokens", "200", "--json"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["calls"] for r in rows] == [1, 3]
    for r in rows:
        assert r["flat_tokens"] > r["tree_tokens"] >= 200 and r["token_ratio"] > 1
        assert r["flat_ms"] > 0 and r["tree_ms"] > 0
        assert r["speedup"] == pytest.approx(r["flat_ms"] / r["tree_ms"], abs=2e-3)  # from unrounded ms
        assert r["max_rel_grad_err"] <= 1e-5  # fp32 CPU: the merged batch's gradients are the flat ones
    assert rows[0]["groups"] == 3 and rows[1]["groups"] == 1  # 16 + 8 * 8 = 80, 16 + 8 * 40 = 336
