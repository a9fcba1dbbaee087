"""The engine's fused layers on the CPU (inductor builds C++ there): one GEMM for q/k/v and one for
gate/up (projections.py), their elementwise regions compiled (fuse.py). A compiled engine computes
what an uncompiled one does, a weight update lands in the fused weights, and after the shape classes
the runner warms up (1 or 2 rows × 1 or 2 tokens) no serving shape triggers a compile (each one cost
seconds mid-serving on a GPU)."""

from __future__ import annotations

import concurrent.futures

import pytest
import torch

transformers = pytest.importorskip("transformers")

GREEDY = {"temperature": 0.0, "ignore_eos": True}


def _core(model_dir, compile: bool):
    from gateway.engines.native.core import EngineCore

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    core = EngineCore(
        model,
        None,
        max_running=8,
        context_length=256,
        use_cuda_graph=False,
        eos_token_ids=set(),
        compile=compile,
    )
    core.start()
    return core


def _generate(core, prompts: list[list[int]], n: int) -> list[tuple[list[int], list[float]]]:
    from gateway.engines.native.request import parse_generate

    futs = []
    for i, ids in enumerate(prompts):
        fut: concurrent.futures.Future = concurrent.futures.Future()
        body = {
            "input_ids": ids,
            "rid": f"f{id(core)}-{i}-{len(ids)}",
            "sampling_params": {**GREEDY, "max_new_tokens": n},
        }
        req, _ = parse_generate({**body, "return_logprob": True}, core.vocab_size, core.context_length, None)
        core.submit(req, fut.set_result)
        futs.append(fut)
    out = []
    for fut in futs:
        meta = fut.result(timeout=120)["meta_info"]
        lps = meta["output_token_logprobs"]
        out.append(([t for _, t, _ in lps], [lp for lp, _, _ in lps]))
    return out


@pytest.fixture(scope="module")
def cores(random_model_dir):
    plain, fused = _core(random_model_dir, False), _core(random_model_dir, True)
    yield plain, fused
    plain.stop()
    fused.stop()


def test_compiled_engine_matches_plain_and_compiles_only_warm_up_shapes(cores):
    from torch._dynamo.utils import counters

    plain, fused = cores
    assert any("qkv" in d for d in plain.runner.fused) and any("gate_up" in d for d in plain.runner.fused)
    assert any("RoPE" in d for d in fused.runner.fused) and any("MLP" in d for d in fused.runner.fused)
    frames = counters["stats"]["unique_graphs"]
    gen = torch.Generator().manual_seed(0)
    vocab = plain.vocab_size
    for rows, length in ((3, 1), (5, 7), (1, 9), (8, 2), (4, 33)):  # batched decode and prefill shapes
        prompts = [torch.randint(5, vocab, (length + i,), generator=gen).tolist() for i in range(rows)]
        a, b = _generate(plain, prompts, 6), _generate(fused, prompts, 6)
        for (ta, la), (tb, lb) in zip(a, b, strict=True):
            assert ta == tb
            torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), rtol=1e-4, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == frames, "a serving shape compiled again"


def test_projections_keep_names_and_take_updates_in_place(random_model_dir):
    from gateway.engines.native import kv as kvmod
    from gateway.engines.native import weights
    from gateway.engines.native.projections import fuse_projections

    model = transformers.AutoModelForCausalLM.from_pretrained(random_model_dir, dtype=torch.float32).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kvmod.bind(model, kvmod.PagedKV(model.config.num_hidden_layers, 4, 4, 2, 16, torch.float32, "cpu"))
    done = fuse_projections(model)
    layers = model.config.num_hidden_layers
    assert done == [
        f"{layers} qkv",
        f"{layers} KV write in RoPE",
        f"{layers} gate_up",
        f"{layers} residual in GEMM",
    ]
    after = model.state_dict()
    assert after.keys() == before.keys(), "fusing added or dropped a parameter name"
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    q_rows = attn.q_proj.weight.shape[0]
    new_k = torch.randn_like(attn.k_proj.weight)
    new_up = torch.randn_like(mlp.up_proj.weight)
    weights.apply(
        model, {"model.layers.0.self_attn.k_proj.weight": new_k, "model.layers.0.mlp.up_proj.weight": new_up}
    )
    assert torch.equal(attn.forge_qkv_weight[q_rows : q_rows + new_k.shape[0]], new_k)
    assert torch.equal(mlp.forge_gate_up_weight[mlp.forge_inter :], new_up)
    norm = torch.randn_like(attn.k_norm.weight)
    weights.apply(model, {"model.layers.0.self_attn.k_norm.weight": norm})
    assert torch.equal(attn.forge_k_norm, norm), "the fused forward reads the updated head norm"


def test_kv_write_and_residual_fusions_match_the_unfused_layers(random_model_dir, monkeypatch):
    """The KV written inside the RoPE region and the residual adds inside the o/down GEMMs compute
    what the separate index_copy_ / add kernels do (fp32: same tokens, log-probs within 1e-5)."""
    from gateway.engines.native import projections

    fused = _core(random_model_dir, False)
    assert any("KV write" in d for d in fused.runner.fused) and any(
        "residual" in d for d in fused.runner.fused
    )
    monkeypatch.setattr(projections, "DISABLED", {"kv_write", "residual"})
    plain = _core(random_model_dir, False)
    assert not any("KV write" in d or "residual" in d for d in plain.runner.fused)
    try:
        gen = torch.Generator().manual_seed(1)
        prompts = [torch.randint(5, plain.vocab_size, (n,), generator=gen).tolist() for n in (3, 11, 1, 20)]
        for (ta, la), (tb, lb) in zip(
            _generate(plain, prompts, 8), _generate(fused, prompts, 8), strict=True
        ):
            assert ta == tb
            torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), rtol=0, atol=1e-5)
    finally:
        plain.stop()
        fused.stop()
