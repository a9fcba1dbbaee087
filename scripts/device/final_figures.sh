#!/usr/bin/env bash
# Issue 2, acceptance 4 and 5 in one call: trainer MFU (checkpointed vs fused head, tuned flex
# kernel options), then the tree bench (eager, as in RESULTS.md) for TREE_CALLS.
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
FLEX='{"bwd_BLOCK_M1":64,"bwd_BLOCK_N1":128,"bwd_BLOCK_M2":128,"bwd_BLOCK_N2":64,"bwd_num_stages":2,"bwd_num_warps":8,"fwd_BLOCK_M":128,"fwd_BLOCK_N":128,"fwd_num_stages":3,"fwd_num_warps":8}'
B="python3 -m forge.cli bench trainer --device cuda --json --no-checkpointing --compile"
timeout 130 $B --checkpointed-head 2>>$OUT/trainer.log | tee -a $OUT/trainer.jsonl
timeout 130 $B 2>>$OUT/trainer.log | tee -a $OUT/trainer.jsonl
timeout 130 $B --flex-options "$FLEX" 2>>$OUT/trainer.log | tee -a $OUT/trainer.jsonl
timeout ${TREE_TIMEOUT:-200} python3 -m forge.cli bench tree --device cuda --json --calls ${TREE_CALLS:-1,4} 2>>$OUT/tree.log | tee -a $OUT/tree.jsonl
