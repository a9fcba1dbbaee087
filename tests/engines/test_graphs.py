"""CUDA graphs of the decode step: captured for every batch bucket when the runner starts (with the
Triton kernels), so serving never captures; a decode at any batch size replays one of them. GPU only."""

from __future__ import annotations

import pytest
import torch

from gateway.engines.native.runner import ModelRunner, RowInputs, triton_available


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphs_are_captured_at_start_and_decode_only_replays(model_dir):
    if not triton_available():
        pytest.skip("triton is not installed")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
    runner = ModelRunner(model, 24, 256, True, num_pages=64, attention="triton")
    captured = set(runner._graphs)
    assert captured == {(b, 256, True) for b in runner.batch_buckets}
    for n in (1, 3, 17, 24):
        for row in range(n):
            runner.set_pages(row, [1 + row % 60])
        rows = RowInputs(tokens=[7] * n, positions=[3] * n, temperature=[0.0] * n, top_p=[1.0] * n,
                         top_k=[1 << 30] * n, min_p=[0.0] * n, seed=[0] * n)  # fmt: skip
        tokens, logprobs = runner.decode(rows)
        assert len(tokens) == n and all(lp <= 0 for lp in logprobs)
    assert set(runner._graphs) == captured, "a decode captured a graph while serving"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prefill_graphs_are_captured_at_start_and_equal_the_unpacked_prefill(model_dir):
    """The packed prefill's graph of every token bucket is captured at start; a prefill replays one
    and its first tokens and log-probs equal the eager unpacked prefill's over the same cached prefix."""
    if not triton_available():
        pytest.skip("triton is not installed")
    from transformers import AutoModelForCausalLM

    def runner(graph_tokens: int) -> ModelRunner:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()
        return ModelRunner(
            model, 8, 256, True, num_pages=64, attention="triton", prefill_graph_tokens=graph_tokens
        )

    graphed, eager = runner(4096), runner(0)
    assert set(graphed._prefill_graphs) == {(n, True) for n in graphed.prefill_buckets}
    assert graphed.prefill_buckets[-1] == 4096 and not eager._prefill_graphs
    captured = set(graphed._prefill_graphs)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 200, (n,), generator=gen).tolist() for n in (40, 23, 61)]
    cached = [16, 0, 32]
    results = {}
    for name, r in (("graph", graphed), ("eager", eager)):
        for row in range(3):
            r.set_pages(row, [1 + 5 * row + i for i in range(5)])
        rows = RowInputs(tokens=[], positions=[len(p) - 1 for p in prompts], temperature=[0.0] * 3,
                         top_p=[1.0] * 3, top_k=[1 << 30] * 3, min_p=[0.0] * 3, seed=[0] * 3)  # fmt: skip
        # the cached prefix first (as an earlier request would have), then the rest
        r.prefill(0, [p[:c] + [0] for p, c in zip(prompts, cached, strict=True)], [0, 0, 0], rows)
        results[name] = [r.prefill(0, prompts, cached, rows) for _ in range(2)]
    assert set(graphed._prefill_graphs) == captured and graphed.prefill_graph_replays == 3
    for (gt, glp), (et, elp) in zip(results["graph"], results["eager"], strict=True):
        assert gt == et
        assert max(abs(a - b) for a, b in zip(glp, elp, strict=True)) < 1e-4
