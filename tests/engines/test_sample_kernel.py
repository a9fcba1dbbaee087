"""The fused Triton sampler (sample_kernel.py) against `sampling.sample`: the same tokens and
log-probs for greedy and sampled rows, fp32 and bf16 logits, vocabularies that end mid-block, ties,
removed (-inf) tokens never drawn, draws that follow the softmax. Run under triton's interpreter on
the CPU (a child process, tests/helpers/interp.py), compiled on a GPU by the gpu-marked test."""

from __future__ import annotations

import json

import pytest
import torch

from gateway.engines.native import sample_kernel
from gateway.engines.native.sampling import RowParams, sample
from tests.helpers.interp import run_interp_child


def _case(batch: int, vocab: int, seed: int, dtype: torch.dtype, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, vocab, generator=g) * 3).to(dtype)
    temps = torch.tensor([0.0, 0.5, 1.0, 1.7])[torch.arange(batch) % 4]
    seeds = torch.randint(0, 2**40, (batch,), generator=g)
    positions = torch.randint(0, 5000, (batch,), generator=g)
    return [t.to(device) for t in (logits, temps, seeds, positions)]


def _reference(logits, temps, seeds, positions):
    b = logits.shape[0]
    params = RowParams(
        temperature=temps,
        top_p=torch.full((b,), 2.0, device=logits.device),
        min_p=torch.zeros(b, device=logits.device),
        top_k=torch.full((b,), 1 << 30, dtype=torch.int64, device=logits.device),
        seed=seeds,
        position=positions + 1,
        any_sampled=bool((temps > 1e-5).any()),
        any_filter=False,
    )
    return sample(logits.float(), params)


def _compare(mod, logits, temps, seeds, positions, block) -> dict:
    out = mod.sample_fused(logits, temps, seeds, positions, position_offset=1, block=block)
    ref_tok, ref_lp = _reference(logits, temps, seeds, positions)
    tok = out[0].long()
    return dict(
        mismatches=int((tok != ref_tok).sum()),
        rows=int(tok.numel()),
        greedy_ok=bool((tok[temps <= 1e-5] == logits.float().argmax(-1)[temps <= 1e-5]).all()),
        max_dlogprob=float((out[1] - ref_lp.double()).abs().max()),
        exact_token_float=bool((out[0] == tok.double()).all()),
    )


CASES = {
    # id: (batch, vocab, block, dtype)
    "fp32-mid-block": (32, 1000, 256, "fp32"),
    "bf16-one-block": (16, 300, 512, "bf16"),
    "fp32-many-blocks": (8, 5003, 512, "fp32"),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _interp_main() -> None:
    assert type(sample_kernel._sample_kernel).__name__ == "InterpretedFunction"
    res = {}
    for i, (cid, (b, v, block, dt)) in enumerate(CASES.items()):
        res[cid] = _compare(sample_kernel, *_case(b, v, i, DTYPES[dt]), block)
    # whole chunks of removed (-inf) tokens (the row splits into 4 chunks of 256): never drawn
    logits, temps, seeds, positions = _case(16, 1000, 11, torch.float32)
    logits[:, :256] = float("-inf")
    logits[:, 512:768] = float("-inf")
    res["removed-chunks"] = _compare(sample_kernel, logits, temps, seeds, positions, 256)
    # ties: every logit equal -> argmax is the first index; the max repeated across a block boundary
    flat = torch.zeros(2, 600)
    flat[1, 100] = flat[1, 300] = 5.0
    out = sample_kernel.sample_fused(
        flat, torch.zeros(2), torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), block=256
    )
    res["ties"] = out[0].tolist()
    # a removed (-inf) token is never drawn; frequencies follow the softmax
    n = 3000
    probs = torch.tensor([0.5, 0.0, 0.2, 0.25, 0.05])
    logits = probs.log().expand(n, -1).contiguous()
    out = sample_kernel.sample_fused(
        logits, torch.ones(n), torch.arange(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64), block=16
    )
    res["freq"] = (torch.bincount(out[0].long(), minlength=5).double() / n).tolist()
    print("RESULTS " + json.dumps(res))


@pytest.fixture(scope="module")
def interp_results() -> dict:
    return run_interp_child(__file__, "_interp_main")


@pytest.mark.parametrize("case_id", [*CASES, "removed-chunks"])
def test_kernel_matches_the_torch_sampler(interp_results, case_id):
    r = interp_results[case_id]
    assert r["mismatches"] == 0 and r["greedy_ok"] and r["exact_token_float"], r
    assert r["max_dlogprob"] < 1e-4, r


def test_ties_pick_the_first_maximum(interp_results):
    assert interp_results["ties"] == [0, 100]


def test_removed_tokens_are_never_drawn_and_draws_follow_the_softmax(interp_results):
    freq = interp_results["freq"]
    assert freq[1] == 0.0, freq
    for got, want in zip(freq, [0.5, 0.0, 0.2, 0.25, 0.05], strict=True):
        assert abs(got - want) < 0.03, freq


def test_rejects_bad_arguments():
    if sample_kernel.triton is None:
        pytest.skip("triton is not installed")
    logits, temps, seeds, positions = _case(4, 64, 0, torch.float32)
    with pytest.raises(ValueError, match="contiguous last dim"):
        sample_kernel.sample_fused(logits.t(), temps, seeds, positions)
    with pytest.raises(ValueError, match="seed"):
        sample_kernel.sample_fused(logits, temps, seeds.int(), positions)
    with pytest.raises(ValueError, match="out"):
        sample_kernel.sample_fused(logits, temps, seeds, positions, out=torch.empty(2, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case_id", list(CASES))
def test_kernel_compiled_on_cuda(case_id):
    if sample_kernel.triton is None:
        pytest.skip("triton is not installed")
    b, v, block, dt = CASES[case_id]
    r = _compare(sample_kernel, *_case(b, v, 7, DTYPES[dt], "cuda"), block)
    assert r["mismatches"] == 0 and r["greedy_ok"], r
    assert r["max_dlogprob"] < 1e-4, r
