#!/usr/bin/env bash
# Issue 2 acceptance 4 in one device call: the 1-call tree bench on an older commit (.ab/old.tar, see
# compare_commits.sh) and on the working tree, the 1-call tree/flat profile, the 4- and 16-call rows,
# then 64 calls with a smaller timed share of the flat batch. Files back: bench.jsonl, tree.txt, errors.log.
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ -f .ab/old.tar ]; then
  BENCHES="bench tree --device cuda --json --calls 1 --repeat 3" OUT=$OUT bash scripts/device/compare_commits.sh >/dev/null
  cat $OUT/compare.jsonl >> $OUT/bench.jsonl; cat $OUT/compare.jsonl
fi
timeout ${PROFILE_TIMEOUT:-200} python3 scripts/device/profile_tree.py --calls 1 --top 12 > $OUT/tree.txt 2>>$OUT/errors.log
grep -E "unprofiled|^== |by class|GPU timeline" $OUT/tree.txt
timeout ${TABLE_TIMEOUT:-200} python3 -m forge.cli bench tree --device cuda --json --calls ${TABLE_CALLS:-4,16} --repeat 3 2>>$OUT/errors.log | tee -a $OUT/bench.jsonl
timeout ${T64_TIMEOUT:-200} python3 -m forge.cli bench tree --device cuda --json --calls 64 --flat-cap ${FLAT_CAP:-600000} 2>>$OUT/errors.log | tee -a $OUT/bench.jsonl
tail -3 $OUT/errors.log
