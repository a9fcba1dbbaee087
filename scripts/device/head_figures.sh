#!/usr/bin/env bash
# What session 8 left unmeasured (issue 2), in one device call:
#  1. the trainer bench on the default path (eager layers, compiled head, DeepSpeed ZeRO-2), with and
#     without activation checkpointing, then with --compile (acceptance 5's command);
#  2. --compile-mode reduce-overhead with torch's cudagraph and recompile logs (session 7: 1.46 s/step);
#  3. the tree bench at 4 and 16 calls with the episode-aware split (0c7b204) and one-node trie.
# Files back: trainer.jsonl, tree.jsonl, cudagraphs.log, errors.log.
# (Its reduce-overhead run is refused since trainer.model_setup.CUDA_GRAPH_MODES: a record of session 9.)
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
trainer() { timeout $1 python3 -m forge.cli bench trainer --device cuda --json "${@:2}" 2>>$OUT/errors.log | tee -a $OUT/trainer.jsonl; }
trainer 120 --no-checkpointing
trainer 120
trainer 200 --no-checkpointing --compile
TORCH_LOGS="perf_hints,recompiles,cudagraphs" timeout ${CG_TIMEOUT:-150} python3 -m forge.cli bench trainer \
  --device cuda --json --no-checkpointing --compile --compile-mode reduce-overhead --steps 3 > $OUT/cudagraphs.log 2>&1
grep -E "step_s|skipping cudagraphs|re-record|Recompiling|pending" $OUT/cudagraphs.log | cut -c1-300 | sort | uniq -c | sort -rn | head -20
for calls in ${TREE_CALLS:-4 16}; do
  timeout ${TREE_TIMEOUT:-150} python3 -m forge.cli bench tree --device cuda --json --calls $calls --repeat 3 2>>$OUT/errors.log | tee -a $OUT/tree.jsonl
done
tail -3 $OUT/errors.log
