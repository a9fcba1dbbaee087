"""Host time of a train step's batch preparation (advantages, TrainSamples, packed micro-batches).

usage: .venv/bin/python scripts/time_prepare.py [--samples 32] [--prompt 256] [--completion 256]
The batch of `forge bench trainer --device cuda` (32 independent samples of 256 + 256 tokens,
16,384-token micro-batches). On a GPU this time is idle GPU time in every step (trainer.engine
prepares the batch before the first kernel). Prints the median over --repeat runs, in ms.
"""

import argparse
import time

import numpy as np

from forge.ground.types import Episode, Sample, Task
from trainer.advantages import compute_advantages
from trainer.batch import build_samples, make_microbatches
from trainer.config import AlgoConfig

p = argparse.ArgumentParser()
p.add_argument("--samples", type=int, default=32)
p.add_argument("--prompt", type=int, default=256)
p.add_argument("--completion", type=int, default=256)
p.add_argument("--budget", type=int, default=16384)
p.add_argument("--repeat", type=int, default=200)
args = p.parse_args()
rng = np.random.default_rng(0)
episodes = []
for i in range(args.samples):
    task = Task(f"t{i}", "bench", group_id=f"g{i}", group_size=1)
    ids = rng.integers(0, 151936, args.prompt + args.completion).tolist()
    sample = Sample(task.id, "s", 0, ids[: args.prompt], ids[args.prompt :], [-12.0] * args.completion)
    episodes.append(Episode(task, [sample], float(i % 2)))
algo = AlgoConfig()


def prepare():
    samples, _ = build_samples(episodes, compute_advantages(episodes, algo), "token")
    return make_microbatches(samples, args.budget, True)


times = []
for _ in range(args.repeat):
    start = time.perf_counter()
    prepare()
    times.append(time.perf_counter() - start)
print(f"prepare: median {1e3 * float(np.median(times[10:])):.2f} ms over {args.repeat - 10} runs")
