#!/usr/bin/env bash
# Why the 1-call tree pass idles the GPU (issue 2, acceptance 4), in one device call: the profile of
# the tree and flat passes with every synchronising Python site listed (profile_tree --sync-debug),
# then the 1-call tree bench with the default caching allocator and with expandable segments, then
# the trainer MFU bench. Files back: tree.txt, bench.jsonl, errors.log.
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout ${PROFILE_TIMEOUT:-220} python3 scripts/device/profile_tree.py --calls 1 --sync-debug --top 20 > $OUT/tree.txt 2>>$OUT/errors.log
grep -E "synchronising|^ +[0-9]+×|unprofiled|^== |by class|GPU timeline|host calls" $OUT/tree.txt
for alloc in "" "expandable_segments:True"; do
  echo "== tree bench, PYTORCH_CUDA_ALLOC_CONF=$alloc"
  PYTORCH_CUDA_ALLOC_CONF=$alloc timeout ${BENCH_TIMEOUT:-150} python3 -m forge.cli bench tree --device cuda --json --calls 1 --repeat 3 2>>$OUT/errors.log \
    | sed "s/^{/{\"alloc\": \"$alloc\", /" | tee -a $OUT/bench.jsonl
done
timeout ${BENCH_TIMEOUT:-150} python3 -m forge.cli bench trainer --device cuda --json --no-checkpointing --compile 2>>$OUT/errors.log | tee -a $OUT/bench.jsonl
tail -5 $OUT/errors.log
