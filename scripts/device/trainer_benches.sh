#!/usr/bin/env bash
# Issue 2 acceptance 4-5 on one GPU: `forge bench tree` and `forge bench trainer` variants.
# Writes JSON lines and logs under $OUT; prints the tables last.
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
for v in "" "--no-checkpointing" "--no-checkpointing --compile"; do
  timeout 240 python3 -m forge.cli bench trainer --device cuda --json $v 2>>$OUT/trainer.log | tee -a $OUT/trainer.jsonl
done
timeout 330 python3 -m forge.cli bench tree --device cuda --json --calls ${TREE_CALLS:-1,4,16,64} 2>>$OUT/tree.log | tee -a $OUT/tree.jsonl
tail -5 $OUT/trainer.log $OUT/tree.log
