#!/usr/bin/env bash
# Issue 2 on one GPU, after trainer.compile_layers became the default on CUDA (96e1972) and each
# micro-batch marks a new CUDA-graph-tree iteration (4899715):
#  1. the trainer bench with no flags but --no-checkpointing (acceptance 5), then with checkpointing;
#  2. --compile-mode reduce-overhead (session 7: 1.46 s per step) with torch's recompile and perf logs;
#  3. the tree bench at 64 calls with the episode-aware split (0c7b204), flat extrapolated.
# Files back: trainer.jsonl, tree.jsonl, reduce_overhead.log, errors.log.
# (Its reduce-overhead run is refused since trainer.model_setup.CUDA_GRAPH_MODES: a record of session 9.)
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
trainer() { timeout $1 python3 -m forge.cli bench trainer --device cuda --json "${@:2}" 2>>$OUT/errors.log | tee -a $OUT/trainer.jsonl; }
trainer 120 --no-checkpointing
trainer 120
TORCH_LOGS="perf_hints,recompiles" timeout ${CG_TIMEOUT:-130} python3 -m forge.cli bench trainer --device cuda --json \
  --no-checkpointing --compile-mode reduce-overhead > $OUT/reduce_overhead.log 2>&1
grep -E "step_s|pending|Recompiling|skipping" $OUT/reduce_overhead.log | cut -c1-400 | sort | uniq -c | sort -rn | head -12
timeout ${TREE_TIMEOUT:-250} python3 -m forge.cli bench tree --device cuda --json --calls 64 --flat-cap 600000 \
  2>>$OUT/errors.log | tee -a $OUT/tree.jsonl
tail -3 $OUT/errors.log
