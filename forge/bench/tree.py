"""`forge bench tree`: prefix-tree merging vs flat packing on realistic agent batches.

For each calls-per-episode setting it builds groups of G episodes of K calls (a group shares one
prompt; call t's prompt = call t−1's prompt + completion + observation), as many groups as it
takes to give the merged batch at least --min-tree-tokens tokens (a training step's worth, so short
episodes are not timed on a batch too small to occupy the device), then times one
forward+backward of the CISPO loss over all micro-batches, merged (tree) and unmerged (flat),
with the same attention kernel (flex on CUDA, dense SDPA on CPU) and the Trainer's model setup
(trainer.model_setup; decoder layers eager unless --compile, the fused LM head's softmax passes
compiled on CUDA unless --eager-head, micro-batches split as the Trainer splits them). It prints flat_tokens,
tree_tokens, token_ratio, flat_ms, tree_ms, speedup, max_rel_grad_err, flat_peak_mb,
tree_peak_mb. When the flat batch exceeds --flat-cap tokens, flat_ms is measured on an evenly
strided subset of its micro-batches and scaled by their count (flat_measured_fraction < 1);
max_rel_grad_err then compares gradients on a sub-batch (the first --grad-episodes episodes).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from forge.ground.types import Episode, Sample, Task
from trainer.advantages import group_relative
from trainer.batch import MicroBatch, build_samples, make_microbatches
from trainer.config import AlgoConfig
from trainer.flops import body_params, model_flops
from trainer.model_setup import prepare_for_training
from trainer.step import forward_backward

COMPILE = False  # set by --compile: decoder layers under torch.compile
COMPILED_HEAD = False  # the LM head's softmax passes under torch.compile (CUDA, unless --eager-head)
FUSED_HEAD = True  # --checkpointed-head: the chunked head under checkpointing (trainer.logprobs)


def agent_episodes(
    rng: np.random.Generator,
    group_size: int,
    calls: int,
    tokens_per_call: int,
    prompt_tokens: int,
    vocab: int,
    group: str = "g",
) -> list[Episode]:
    """One group; each call adds tokens_per_call tokens: half completion, half observation."""
    completion, obs = tokens_per_call // 2, tokens_per_call - tokens_per_call // 2
    prompt = rng.integers(0, vocab, prompt_tokens).tolist()
    episodes = []
    for m in range(group_size):
        task = Task(id=f"{group}-e{m}", env="bench", group_id=group, group_size=group_size)
        context, samples = list(prompt), []
        for t in range(calls):
            out = rng.integers(0, vocab, completion).tolist()
            samples.append(Sample(task.id, task.id, t, list(context), out, [-2.0] * completion))
            context = context + out + rng.integers(0, vocab, obs).tolist()
        episodes.append(Episode(task=task, samples=samples, reward=float(m % 2)))
    return episodes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _run(model, mbs: list[MicroBatch], kernel: str, device: torch.device) -> tuple[float, float | None]:
    """(milliseconds, peak MB) of one forward+backward over `mbs`."""
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    start = time.perf_counter()
    forward_backward(model, mbs, AlgoConfig(), kernel, compiled_head=COMPILED_HEAD, fused_head=FUSED_HEAD)
    _sync(device)
    ms = (time.perf_counter() - start) * 1e3
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return ms, peak


def _grads(model, mbs: list[MicroBatch], kernel: str) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    forward_backward(model, mbs, AlgoConfig(), kernel, compiled_head=COMPILED_HEAD, fused_head=FUSED_HEAD)
    return {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}


def max_rel_grad_err(model, episodes: list[Episode], kernel: str, budget: int) -> float:
    samples, _ = build_samples(episodes, group_relative(episodes), "token")
    g_tree = _grads(model, make_microbatches(samples, budget, True), kernel)
    g_flat = _grads(model, make_microbatches(samples, budget, False), kernel)
    errs = [float((g_tree[n] - g_flat[n]).norm() / g_flat[n].norm()) for n in g_flat if g_flat[n].norm() > 0]
    return max(errs)


def groups_for(min_tree_tokens: int, group_size: int, calls: int, tokens_per_call: int, prompt: int) -> int:
    """Whole groups whose merged tokens reach `min_tree_tokens` (at least one)."""
    last_obs = tokens_per_call - tokens_per_call // 2  # the last call's observation is never trained
    per_group = prompt + group_size * (calls * tokens_per_call - last_obs)  # shared prompt, then chains
    return max(1, -(-min_tree_tokens // per_group))


def bench_batches(
    args, calls: int, vocab: int
) -> tuple[list[Episode], list[MicroBatch], list[MicroBatch], int]:
    """(episodes, tree micro-batches, flat micro-batches, budget) of one calls-per-episode setting:
    whole groups until the merged batch holds args.min_tree_tokens, packed to args.budget (raised to
    the next 1024 above the longest sample when one exceeds it)."""
    rng = np.random.default_rng(args.seed)
    groups = groups_for(
        args.min_tree_tokens, args.group_size, calls, args.tokens_per_call, args.prompt_tokens
    )
    episodes = [
        e
        for g in range(groups)
        for e in agent_episodes(
            rng, args.group_size, calls, args.tokens_per_call, args.prompt_tokens, vocab, f"g{g}"
        )
    ]
    samples, _ = build_samples(episodes, group_relative(episodes), "token")
    longest = max(len(s.tokens) for s in samples)
    budget = max(args.budget, -(-longest // 1024) * 1024)
    tree = make_microbatches(samples, budget, merge=True)
    flat = make_microbatches(samples, budget, merge=False)
    return episodes, tree, flat, budget


def bench_config(model, args, calls: int, kernel: str, device: torch.device, vocab: int) -> dict[str, Any]:
    episodes, tree, flat, budget = bench_batches(args, calls, vocab)
    groups = len(episodes) // args.group_size
    n_body = body_params(model)
    flop_ratio = model_flops(model.config, n_body, flat) / model_flops(model.config, n_body, tree)
    flat_tokens = sum(mb.packed.num_tokens for mb in flat)
    tree_tokens = sum(mb.packed.num_tokens for mb in tree)

    measured = flat
    if flat_tokens > args.flat_cap:
        keep = max(1, int(len(flat) * args.flat_cap / flat_tokens))
        stride = len(flat) / keep
        measured = [flat[int(i * stride)] for i in range(keep)]
    # warm-up (kernel compilation, allocator); compiled layers see every micro-batch shape once, so
    # no recompilation lands in the timed runs
    warm = slice(None) if COMPILE else slice(1)
    _run(model, tree[warm], kernel, device)
    _run(model, measured[warm], kernel, device)
    tree_ms = min(_run(model, tree, kernel, device)[0] for _ in range(args.repeat))
    tree_peak = _run(model, tree, kernel, device)[1]
    flat_runs = [_run(model, measured, kernel, device) for _ in range(args.repeat)]
    flat_ms = min(r[0] for r in flat_runs) * len(flat) / len(measured)
    flat_peak = flat_runs[0][1]

    grad_eps = episodes if len(measured) == len(flat) else episodes[: args.grad_episodes]
    if len(measured) != len(flat):  # shorten the sub-batch's episodes so flat fits in time
        grad_eps = [
            Episode(e.task, e.samples[: max(2, calls // 4)], e.reward, status=e.status) for e in grad_eps
        ]
    err = max_rel_grad_err(model, grad_eps, kernel, budget)
    return {
        "calls": calls,
        "tokens_per_call": args.tokens_per_call,
        "group_size": args.group_size,
        "groups": groups,
        "flat_tokens": flat_tokens,
        "tree_tokens": tree_tokens,
        "token_ratio": round(flat_tokens / tree_tokens, 3),
        "flat_ms": round(flat_ms, 1),
        "tree_ms": round(tree_ms, 1),
        "speedup": round(flat_ms / tree_ms, 3),
        # the work actually saved: long-context tokens are shared least, so flop_ratio < token_ratio
        "flop_ratio": round(flop_ratio, 3),
        "max_rel_grad_err": float(f"{err:.3g}"),
        "flat_peak_mb": None if flat_peak is None else round(flat_peak),
        "tree_peak_mb": None if tree_peak is None else round(tree_peak),
        "flat_measured_fraction": round(len(measured) / len(flat), 3),
        "microbatch_tokens": budget,
        "fused_head": FUSED_HEAD,
        "compiled_head": COMPILED_HEAD,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="forge bench tree", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default=None, help="default: tiny on cpu, qwen3_0p6b_random on cuda")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default: fp32 cpu, bf16 cuda")
    p.add_argument("--calls", default=None, help="comma list; default 1,4,8 (cpu) or 1,4,16,64 (cuda)")
    p.add_argument("--tokens-per-call", type=int, default=None, help="default 64 (cpu), 512 (cuda)")
    p.add_argument("--prompt-tokens", type=int, default=None, help="default: tokens-per-call")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument(
        "--min-tree-tokens",
        type=int,
        default=None,
        help="whole groups until the merged batch has this many tokens; default 1024 cpu, 32768 cuda",
    )
    p.add_argument(
        "--budget", type=int, default=None, help="micro-batch tokens; default 4096 cpu, 32768 cuda"
    )
    p.add_argument("--flat-cap", type=int, default=2_000_000, help="flat tokens timed before extrapolating")
    p.add_argument("--grad-episodes", type=int, default=2)
    p.add_argument("--no-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder layers")
    p.add_argument("--checkpointed-head", action="store_true", help="the unfused LM head (trainer.logprobs)")
    p.add_argument("--eager-head", action="store_true", help="the LM head's softmax not compiled (as on CPU)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    args.model = args.model or ("qwen3_0p6b_random" if cuda else "tiny")
    args.tokens_per_call = args.tokens_per_call or (512 if cuda else 64)
    args.prompt_tokens = args.prompt_tokens or args.tokens_per_call
    args.budget = args.budget or (32768 if cuda else 4096)
    if args.min_tree_tokens is None:
        args.min_tree_tokens = 32768 if cuda else 1024
    calls = [int(c) for c in (args.calls or ("1,4,16,64" if cuda else "1,4,8")).split(",")]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if cuda else "fp32")]

    from forge.ground.models import build_model

    device = torch.device(args.device)
    kernel = "flex" if cuda else "sdpa_dense"
    model = build_model(args.model, dtype=dtype, device=args.device, seed=args.seed)
    prepare_for_training(model, kernel, not args.no_checkpointing, args.compile)
    global COMPILE, COMPILED_HEAD, FUSED_HEAD
    COMPILE, FUSED_HEAD = args.compile, not args.checkpointed_head
    COMPILED_HEAD = cuda and not args.eager_head
    vocab = model.config.vocab_size
    rows = []
    for k in calls:
        row = bench_config(model, args, k, kernel, device, vocab)
        rows.append(row)
        print(json.dumps(row) if args.json else _fmt(row), flush=True)
    if not args.json:
        print(f"model={args.model} dtype={dtype} device={args.device} kernel={kernel} compile={args.compile}")
    return 0


def _fmt(row: dict[str, Any]) -> str:
    keys = (
        "calls",
        "groups",
        "flat_tokens",
        "tree_tokens",
        "token_ratio",
        "flat_ms",
        "tree_ms",
        "speedup",
        "max_rel_grad_err",
    )
    return "  ".join(f"{k}={row[k]}" for k in keys) + f"  peak_mb={row['flat_peak_mb']}/{row['tree_peak_mb']}"
