#!/usr/bin/env bash
# The tree bench with the LM head's softmax passes compiled (the default on CUDA) and eager
# (--eager-head), on one machine: 1 call, then 16 calls. Files back: bench.jsonl, errors.log.
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for calls in ${PAIR_CALLS:-1 16}; do
  for head in "" "--eager-head"; do
    timeout ${BENCH_TIMEOUT:-170} python3 -m forge.cli bench tree --device cuda --json --calls $calls --repeat 3 $head 2>>$OUT/errors.log | tee -a $OUT/bench.jsonl
  done
done
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/trainer/test_batch.py 2>&1 | tail -3
tail -3 $OUT/errors.log
