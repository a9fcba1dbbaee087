"""fuse.py's compiled norms / MLP product / RoPE on the CPU (inductor builds C++ there): the fused
model computes what the plain one does, and after the shape classes the runner warms up (1 or 2
rows × 1 or 2 tokens) no other shape triggers a compile (each one cost seconds mid-serving on a GPU)."""

from __future__ import annotations

import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def models(random_model_dir):
    from gateway.engines.native import fuse

    plain = transformers.AutoModelForCausalLM.from_pretrained(random_model_dir, dtype=torch.float32).eval()
    fused = transformers.AutoModelForCausalLM.from_pretrained(random_model_dir, dtype=torch.float32).eval()
    attn = next(m for m in fused.modules() if hasattr(m, "k_proj"))
    module = sys.modules[type(attn).__module__]
    rope = module.apply_rotary_pos_emb  # fuse patches it module-wide: put it back for later tests
    done = fuse.fuse(fused)
    yield plain, fused, done
    module.apply_rotary_pos_emb = rope


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


def test_fused_model_matches_plain_and_compiles_only_warm_up_shapes(models):
    from torch._dynamo.utils import counters

    from gateway.engines.native.runner import WARM_UP_SHAPES

    plain, fused, done = models
    assert any("RMSNorm" in d for d in done) and any("MLP" in d for d in done), done
    gen = torch.Generator().manual_seed(0)
    vocab = plain.config.vocab_size
    for b, t in WARM_UP_SHAPES:
        ids = torch.randint(0, vocab, (b, t), generator=gen)
        torch.testing.assert_close(_logits(fused, ids), _logits(plain, ids), rtol=1e-4, atol=1e-4)
    frames = counters["stats"]["unique_graphs"]
    for b, t in ((3, 1), (5, 7), (1, 9), (8, 1), (4, 33)):  # decode and prefill shapes of serving
        ids = torch.randint(0, vocab, (b, t), generator=gen)
        torch.testing.assert_close(_logits(fused, ids), _logits(plain, ids), rtol=1e-4, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == frames, "a serving shape compiled again"
