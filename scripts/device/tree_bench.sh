#!/usr/bin/env bash
# Issue 2 acceptance 4 on one GPU: `forge bench tree` (0.6B-shaped, bf16, 512 tokens/call, group 8).
source scripts/device/setup.sh
timeout ${TREE_TIMEOUT:-540} python3 -m forge.cli bench tree --device cuda --json --calls ${TREE_CALLS:-1,4,16,64} ${TREE_ARGS:---repeat 3} 2>>$OUT/tree.log | tee -a $OUT/tree.jsonl
tail -5 $OUT/tree.log
