#!/usr/bin/env bash
# The same benches on an older commit and on the working tree, in one call (one machine: the
# spread between machines, up to 5 ms per trainer step, stays out of the comparison).
# usage: git archive <commit> forge trainer agent_side gateway data_pool > .ab/old.tar
#        (carry .ab), then: bash scripts/device/compare_commits.sh
# BENCHES: newline-separated `forge` argument lists (default: the trainer MFU bench, then the
# 1-call tree bench); each runs old, new, then old and new again when REPEAT=2.
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
rm -rf /tmp/old && mkdir -p /tmp/old && tar xf .ab/old.tar -C /tmp/old
DEFAULT=$'bench trainer --device cuda --json --no-checkpointing --compile\nbench tree --device cuda --json --calls 1 --repeat 3'
while IFS= read -r b; do
  for round in $(seq ${REPEAT:-1}); do
    for tree in /tmp/old $PWD; do
      name=$([ "$tree" = "$PWD" ] && echo new || echo old)
      echo "== $name: forge $b" | tee -a $OUT/compare.log
      (cd $tree && PYTHONPATH=/tmp/site:$tree timeout ${BENCH_TIMEOUT:-200} python3 -m forge.cli $b 2>>$OUT/compare.log) \
        | sed "s/^{/{\"tree\": \"$name\", /" | tee -a $OUT/compare.jsonl
    done
  done
done <<< "${BENCHES:-$DEFAULT}"
