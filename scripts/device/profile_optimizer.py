"""Where the optimizer phase of a DeepSpeed train step goes (GPU): profile `Trainer._optimizer_step`.

usage: python3 scripts/device/profile_optimizer.py [--zero-stage 2] [--compile]
Prints the phase times of a few steps, then the top ops of one profiled optimizer step by CUDA
and by CPU time, then where the GPU idles in one whole profiled train step (trace_gaps).
"""

import argparse

import numpy as np
import torch
from trace_gaps import report  # this script's folder is on sys.path

from forge.ground.models import build_model
from forge.ground.types import Episode, Sample, Task
from trainer.config import AlgoConfig, TrainerConfig
from trainer.engine import Trainer

p = argparse.ArgumentParser()
p.add_argument("--zero-stage", type=int, default=2)
p.add_argument("--compile", action="store_true")
p.add_argument("--samples", type=int, default=32)
args = p.parse_args()
cfg = TrainerConfig(
    model="qwen3_0p6b_random",
    device="cuda",
    zero_stage=args.zero_stage,
    micro_batch_tokens=16384,
    gradient_checkpointing=False,
    compile_layers=args.compile,
    lr=1e-6,
)
trainer = Trainer(cfg, AlgoConfig(), model=build_model(cfg.model, dtype=torch.float32, device="cpu"))
rng = np.random.default_rng(0)
vocab = trainer.model.config.vocab_size
episodes = []
for i in range(args.samples):
    task = Task(f"t{i}", "bench", group_id=f"g{i}", group_size=1)
    ids = rng.integers(0, vocab, 512).tolist()
    episodes.append(
        Episode(task, [Sample(task.id, "s", 0, ids[:256], ids[256:], [-12.0] * 256)], float(i % 2))
    )
for _ in range(3):
    m = trainer.train_step(episodes)
    print(
        {
            k: round(m[k], 4)
            for k in ("time_prepare_s", "time_forward_backward_s", "time_optimizer_s", "step_time_s")
        }
    )

# one more forward/backward, then profile the optimizer step alone
real_step = trainer._optimizer_step
captured = {}


def profiled(finite):
    torch.cuda.synchronize()
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as prof:
        out = real_step(finite)
        torch.cuda.synchronize()
    captured["prof"] = prof
    return out


trainer._optimizer_step = profiled
trainer.train_step(episodes)
prof = captured["prof"]
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60))
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=60))

# one whole train step (prepare, forward+backward through DeepSpeed, optimizer): where the GPU idles
trainer._optimizer_step = real_step
with torch.profiler.profile(
    activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
) as prof:
    trainer.train_step(episodes)
    torch.cuda.synchronize()
print("\n== one whole train_step")
report(prof, top=20)
