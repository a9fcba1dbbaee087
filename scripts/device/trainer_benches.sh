#!/usr/bin/env bash
# `forge bench trainer` on one GPU (ZeRO-2 bf16, Qwen3-0.6B-shaped, 16,384 tokens per step), one JSON
# row per argument list in $OUT/trainer.jsonl. The default rows: no checkpointing (compiled layers,
# the default on CUDA: the figure in docs/BENCHMARKS.md), with activation checkpointing, eager layers.
# usage: bash scripts/device/trainer_benches.sh
#        VARIANTS=$'--no-checkpointing --chunk 2048\n--no-checkpointing --zero-options \'{"overlap_comm":true}\'' \
#          bash scripts/device/trainer_benches.sh      (newline-separated argument lists, shell-quoted)
# VARIANT_TIMEOUT (170 s per row).
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)"
DEFAULT=$'--no-checkpointing\n\n--no-checkpointing --no-compile'
while IFS= read -r v; do
  echo "== forge bench trainer --device cuda --json ${v:-(checkpointing)}" | tee -a $OUT/trainer.log
  eval "set -- $v"
  timeout ${VARIANT_TIMEOUT:-170} python3 -m forge.cli bench trainer --device cuda --json "$@" 2>>$OUT/trainer.log | tee -a $OUT/trainer.jsonl
done <<< "${VARIANTS-$DEFAULT}"
tail -3 $OUT/trainer.log
