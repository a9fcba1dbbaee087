#!/usr/bin/env bash
# Issue 2 acceptance 5: `forge bench trainer` (ZeRO-2 bf16, 0.6B, 16k tokens/step, compiled layers)
# under several kernel settings, one JSON row each (in $OUT/trainer.jsonl).
# usage: VARIANTS=$'--flex-options {...}\n--chunk 2048' bash scripts/device/trainer_variants.sh
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
BASE="bench trainer --device cuda --json --no-checkpointing --compile"
while IFS= read -r v; do
  echo "== variant: ${v:-(none)}" | tee -a $OUT/trainer.log
  eval "set -- $v"
  timeout ${VARIANT_TIMEOUT:-150} python3 -m forge.cli $BASE "$@" 2>>$OUT/trainer.log | tee -a $OUT/trainer.jsonl
done <<< "${VARIANTS:-}"
