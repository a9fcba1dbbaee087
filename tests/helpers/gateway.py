"""Test support: a real tiny transformer whose weights are set so that it writes a chosen script.

A random tiny model writes random tokens, so the gateway's tool-call and reasoning paths cannot be
driven end to end with it. `scripted_model_dir(script)` builds a one-layer Llama (a real
`LlamaForCausalLM`, served by the real engine) that, after the generation prompt, writes `script`
token by token and then its end-of-turn token — whatever the conversation before it — by
construction, not training:

- embeddings are one-hot in a "current token" block (tokens outside the script share one
  "other" slot), plus a constant bias unit;
- attention head h attends, through RoPE alone, to the token h+1 positions back (q and k are
  constant vectors whose rotary phases differ by h+1 steps; with rope_theta=30 the score at
  that offset beats every other offset in the context by a margin that is checked) and copies
  that token's one-hot into a "previous token" block: the model sees an n-gram window;
- the MLP has one gated unit per n-gram of (trigger + script + end): it fires only when the whole
  window matches and writes the next token's output slot;
- the LM head reads the output slots; with no unit firing, the end-of-turn token wins.

The tokenizer is SmolLM2's with `<think>`, `</think>`, `<tool_call>`, `</tool_call>` added as
(non-special) tokens, as Qwen/Hermes-style models have them. Cached on disk by spec.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from forge.ground.types import Task

# A tool-calling reply and a final answer, both with reasoning (used by the gateway tests).
TOOL_SCRIPT = (
    "<think>\nI should add the numbers.\n</think>\n\n"
    '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
)
ANSWER_SCRIPT = "<think>\nThe tool said five.\n</think>\n\nThe answer is 5."
ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


@dataclass(frozen=True)
class Scripts:
    """What a test directory's scripted models write (tests/conftest.py builds them): the
    tool-calling reply, the answering reply, and the engines' context length."""

    tool: str
    answer: str
    context: int


HERMES_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
TRIGGER = "<|im_start|>assistant\n"
ROPE_THETA = 30.0
HEAD_DIM = 64


def hermes_tokenizer() -> Any:
    """SmolLM2's tokenizer with the Hermes/Qwen markers as added (non-special) tokens."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from forge.ground.models import smollm2_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in HERMES_TOKENS])
    return tok


def _rules(seq: list[int], start: int, order: int) -> dict[tuple[int, ...], int]:
    rules: dict[tuple[int, ...], int] = {}
    for p in range(start, len(seq) - 1):
        ctx = tuple(seq[max(0, p - order + 1) : p + 1])
        if len(ctx) < order:
            raise ValueError("the trigger is shorter than the n-gram order")
        nxt = seq[p + 1]
        if rules.get(ctx, nxt) != nxt:
            raise ValueError(f"context {ctx} is followed by two different tokens: raise `order`")
        rules[ctx] = nxt
    return rules


def offset_margin(context: int, offset: int) -> float:
    """How much the attention score at `offset` beats every other offset in [0, context)."""
    freqs = [ROPE_THETA ** (-2 * f / HEAD_DIM) for f in range(HEAD_DIM // 2)]

    def score(delta: int) -> float:
        return sum(math.cos((delta - offset) * w) for w in freqs)

    best = score(offset)
    return best - max(score(d) for d in range(context) if d != offset)


def build_scripted_model(tokenizer: Any, script_ids: list[int], order: int = 3, context: int = 1024) -> Any:
    """The model (in memory) for `script_ids` after TRIGGER; see the module docstring."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    eos = int(tokenizer.eos_token_id)
    trigger = tokenizer(TRIGGER, add_special_tokens=False).input_ids
    seq = [*trigger, *script_ids, eos]
    rules = _rules(seq, len(trigger) - 1, order)
    tokens = sorted(set(seq))
    slot = {t: i for i, t in enumerate(tokens)}
    n_in = len(tokens) + 1  # + "other"
    other = n_in - 1
    if n_in > HEAD_DIM:
        raise ValueError(f"the script uses {len(tokens)} distinct tokens; at most {HEAD_DIM - 1} fit")
    outs = sorted(set(rules.values()))
    out_slot = {t: i for i, t in enumerate(outs)}
    heads = order - 1
    bias = n_in * order
    out0 = bias + 1
    hidden = out0 + len(outs)
    hidden += (-hidden) % 2
    margin = min(offset_margin(context, h + 1) for h in range(heads))
    if margin < 1.0:
        raise ValueError(
            f"previous-token attention is not sharp over {context} positions (margin {margin:.2f})"
        )

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=max(1, len(rules)),
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=context,
        rope_theta=ROPE_THETA,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    sd = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for k in sd:
        if k.endswith("norm.weight"):
            sd[k].fill_(1.0)

    emb = sd["model.embed_tokens.weight"]
    emb[:, other] = 1.0
    for t, i in slot.items():
        emb[t, other] = 0.0
        emb[t, i] = 1.0
    emb[:, bias] = 1.0
    u_in = math.sqrt(hidden / 2)  # every embedding has two unit entries: their value after RMSNorm

    # attention: head h looks h+1 tokens back and copies that token's one-hot into block h+1
    attn = "model.layers.0.self_attn."
    half = HEAD_DIM // 2
    scale_qk = math.sqrt(60.0 * math.sqrt(HEAD_DIM) / margin) / u_in  # margin·logit scale ≈ 60
    for h in range(heads):
        d = h + 1
        for f in range(half):
            w = ROPE_THETA ** (-2 * f / HEAD_DIM)
            sd[attn + "q_proj.weight"][h * HEAD_DIM + f, bias] = scale_qk * math.cos(d * w)
            sd[attn + "q_proj.weight"][h * HEAD_DIM + half + f, bias] = -scale_qk * math.sin(d * w)
            sd[attn + "k_proj.weight"][h * HEAD_DIM + f, bias] = scale_qk
        for i in range(n_in):
            sd[attn + "v_proj.weight"][h * HEAD_DIM + i, i] = 1.0 / u_in
            sd[attn + "o_proj.weight"][n_in * d + i, h * HEAD_DIM + i] = 1.0

    # MLP: one unit per n-gram; after attention the residual has `order` + 1 unit entries
    u_mlp = math.sqrt(hidden / (order + 1))
    mlp = "model.layers.0.mlp."
    alpha, beta = 40.0, 10.0
    for n, (ctx, nxt) in enumerate(sorted(rules.items())):
        for back, tok in enumerate(reversed(ctx)):  # back 0 = current token
            sd[mlp + "gate_proj.weight"][n, n_in * back + slot[tok]] = alpha / u_mlp
        sd[mlp + "gate_proj.weight"][n, bias] = -alpha * (order - 0.5) / u_mlp
        sd[mlp + "up_proj.weight"][n, bias] = 1.0 / u_mlp
        sd[mlp + "down_proj.weight"][out0 + out_slot[nxt], n] = beta / (alpha * 0.5)

    head = sd["lm_head.weight"]
    gamma = 4.0
    for t, i in out_slot.items():
        head[t, out0 + i] = gamma
    head[eos, bias] = 3 * gamma
    model.load_state_dict(sd)
    return model


def scripted_model_dir(script: str, order: int = 3, context: int = 1024) -> Path:
    """A directory (model + tokenizer) of `build_scripted_model` for `script`, cached by spec."""
    import torch

    from forge.ground.models import _locked, cache_dir

    spec = json.dumps({"script": script, "order": order, "context": context, "v": 1}, sort_keys=True)
    out = cache_dir() / "models" / f"scripted-{hashlib.sha1(spec.encode()).hexdigest()[:12]}"
    with _locked(out.name):
        if (out / "config.json").exists():
            return out
        tok = hermes_tokenizer()
        ids = tok(script, add_special_tokens=False).input_ids
        model = build_scripted_model(tok, ids, order, context)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
        try:
            model.to(torch.float32).save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# ------------------------------------------------------------------ session helpers for tests
def start_task(pool: Any, task_id: str | None = None) -> str:
    """Submit and lease one task (as an env worker would); returns its id."""
    tid = task_id or f"t-{uuid.uuid4().hex[:8]}"
    pool.submit([Task(id=tid, env="test")])
    got = pool.acquire_task("test-worker", timeout=5)
    assert got is not None and got.id == tid
    return tid


def open_session(gateway_url: str, pool: Any, task_id: str | None = None, **headers: str) -> dict[str, Any]:
    tid = start_task(pool, task_id)
    resp = httpx.post(f"{gateway_url}/sessions", json={"task_id": tid}, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def session_info(gateway_url: str, session_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{gateway_url}/sessions/{session_id}", timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def assert_prefix_consistent(samples: list[dict[str, Any]]) -> None:
    """Acceptance 1: without a prefix break, prompt[t+1] starts with prompt[t] + completion[t], and
    every completion token has a log-prob."""
    for s in samples:
        assert len(s["logprobs"]) == len(s["completion_ids"]) > 0
    for a, b in zip(samples, samples[1:], strict=False):
        assert b["prefix_break"] is False, b
        head = a["prompt_ids"] + a["completion_ids"]
        assert b["prompt_ids"][: len(head)] == head
