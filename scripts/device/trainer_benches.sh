#!/usr/bin/env bash
# Issue 2 acceptance 5 on one GPU: `forge bench trainer` variants (ZeRO-2 bf16, 0.6B, 16k tokens/step).
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)"
run_one() { timeout ${2:-170} python3 -m forge.cli bench trainer --device cuda --json $1 2>>$OUT/trainer.log | tee -a $OUT/trainer.jsonl; }
run_one "--no-checkpointing"
run_one ""
run_one "--no-checkpointing --compile" 220
tail -3 $OUT/trainer.log
