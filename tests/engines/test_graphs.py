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
