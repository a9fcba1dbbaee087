#!/usr/bin/env bash
# Where the GPU idles (issue 2): the trace_gaps reports of the plain compiled forward+backward, of
# one whole DeepSpeed train step, and of the 1-call tree and flat passes of `forge bench tree`
# (eager, activation checkpointing). Files back: step.txt, optimizer.txt, tree.txt, errors.log.
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout ${STEP_TIMEOUT:-150} python3 scripts/device/profile_step.py --compile > $OUT/step.txt 2>>$OUT/errors.log
timeout ${OPT_TIMEOUT:-200} python3 scripts/device/profile_optimizer.py --compile > $OUT/optimizer.txt 2>>$OUT/errors.log
timeout ${TREE_TIMEOUT:-200} python3 scripts/device/profile_tree.py --calls ${TREE_CALLS:-1} > $OUT/tree.txt 2>>$OUT/errors.log
for f in step optimizer tree; do echo "== $f"; grep -A 40 -- "-- GPU timeline" $OUT/$f.txt | head -60; done
grep -h "unprofiled wall" $OUT/tree.txt
