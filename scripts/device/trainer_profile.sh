#!/usr/bin/env bash
# Issue 2 acceptance 5, where the time goes (one GPU): the MFU bench, then the step and optimizer profiles.
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)"
timeout 200 python3 -m forge.cli bench trainer --device cuda --json --no-checkpointing --compile ${BENCH_ARGS:-} 2>>$OUT/trainer.log | tee -a $OUT/trainer.jsonl
timeout 180 python3 scripts/device/profile_step.py --compile 2>>$OUT/profile_step.log | tee $OUT/profile_step.txt | head -70
timeout 180 python3 scripts/device/profile_optimizer.py --compile 2>>$OUT/profile_optimizer.log | tee $OUT/profile_optimizer.txt | head -70
