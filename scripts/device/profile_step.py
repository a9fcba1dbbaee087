"""Profile one forward+backward of the CISPO loss on a packed micro-batch (GPU), by op and by phase.

usage: python3 scripts/device/profile_step.py [--tokens 16384] [--compile] [--ckpt]
"""

import argparse
import time

import numpy as np
import torch
from trace_gaps import report  # this script's folder is on sys.path

from forge.ground.models import build_model
from trainer.advantages import group_relative
from trainer.batch import build_samples, make_microbatches
from trainer.config import AlgoConfig
from trainer.model_setup import prepare_for_training
from trainer.step import forward_backward
from trainer.synthetic import agent_batch

p = argparse.ArgumentParser()
p.add_argument("--samples", type=int, default=32)
p.add_argument("--compile", action="store_true")
p.add_argument("--ckpt", action="store_true")
p.add_argument("--chunk", type=int, default=1024)
p.add_argument("--unfused", action="store_true", help="the checkpointed LM head")
args = p.parse_args()
model = build_model("qwen3_0p6b_random", dtype=torch.bfloat16, device="cuda")
prepare_for_training(model, "flex", args.ckpt, args.compile)
eps = agent_batch(np.random.default_rng(0), args.samples, 1, 1, 256, 256, 150000)
for e in eps:
    for s in e.samples:
        s.completion_ids = s.completion_ids + [1] * (256 - len(s.completion_ids))
        s.logprobs = [-12.0] * 256
samples, _ = build_samples(eps, group_relative(eps), "token")
mbs = make_microbatches(samples, 16384, True)
print("tokens", sum(m.packed.num_tokens for m in mbs), "mbs", len(mbs))


def step():
    model.zero_grad(set_to_none=True)
    forward_backward(
        model,
        mbs,
        AlgoConfig(),
        "flex",
        chunk=args.chunk,
        compiled_head=args.compile,
        fused_head=not args.unfused,
    )
    torch.cuda.synchronize()


for _ in range(3):
    step()
ts = []
for _ in range(5):
    t = time.perf_counter()
    step()
    ts.append(time.perf_counter() - t)
print("fwd+bwd median ms", 1e3 * float(np.median(ts)))
with torch.profiler.profile(
    activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
) as prof:
    step()
report(prof)
ka = prof.key_averages()
print(ka.table(sort_by="self_cuda_time_total", row_limit=22, max_name_column_width=60))
print(ka.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
