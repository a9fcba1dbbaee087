import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from forge.ground.models import resolve_model, tiny_model_dir


def test_tiny_model_is_deterministic_and_has_a_chat_template():
    path = tiny_model_dir("qwen3", seed=0)
    assert resolve_model("tiny") == path
    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert "2+2?" in text and text.rstrip().endswith("assistant")
    a = AutoModelForCausalLM.from_pretrained(path)
    b = AutoModelForCausalLM.from_pretrained(tiny_model_dir("qwen3", seed=0))
    ids = torch.tensor([tok.encode("hello world")])
    torch.testing.assert_close(a(ids).logits, b(ids).logits)
    assert a.config.vocab_size == len(tok)
