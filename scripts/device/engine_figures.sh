#!/usr/bin/env bash
# The built-in engine's figures (issue 18) on one GPU, in stages that fit one 600 s call each:
#   check     paged decode kernel vs its torch reference (paged_attn_check.py --quick)
#   tune      the decode kernel's launch configs under CUDA graphs (decode_tune.py; whole table in $OUT)
#   profile   decode step at batch 16/64/128, 128-token prompts: new engine compiled, new
#             uncompiled, and the old tree's engine (.ab/old.tar, with its profile_engine.py)
#   selfcheck greedy == model.generate and log-probs vs a full forward, on the device
#   long      decode step at 2048-token contexts beside the KV-bandwidth floor
#   prefill   prefill of B rows x C cached + T new tokens vs its matmul time (profile_prefill.py)
#   multiturn old vs new engine on the multiturn workload (engine_multiturn.sh; its env knobs)
# usage: STAGES="check profile selfcheck" bash scripts/device/engine_figures.sh
#        (carry .device-bundle and .ab; NEW_ARGS="--no-compile" drops compile in profile/long)
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
OLD_TAR=${OLD_TAR:-$PWD/.ab/old.tar}
old_tree() {
  [ -d /tmp/old/gateway ] || { mkdir -p /tmp/old && tar xf "$OLD_TAR" -C /tmp/old; }
}
for stage in ${STAGES:-check profile selfcheck}; do
  echo "=== $stage ($(date +%T))"
  case $stage in
    check) timeout 150 python3 scripts/device/paged_attn_check.py --quick --json "$OUT/paged_attn.json" 2>&1 | tail -25 ;;
    tune) timeout 200 python3 scripts/device/decode_tune.py > "$OUT/decode_tune.txt" 2>&1; tail -4 "$OUT/decode_tune.txt" ;;
    profile)
      echo "--- new, compiled"
      timeout 200 python3 scripts/device/profile_engine.py --batches 16,64,128 --no-profile $NEW_ARGS 2>&1 | grep -v Warning | tail -8
      echo "--- new, --no-compile"
      timeout 150 python3 scripts/device/profile_engine.py --batches 16,64,128 --no-profile --no-compile 2>&1 | tail -6
      echo "--- old tree"
      old_tree
      (cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old timeout 150 python3 scripts/device/profile_engine.py \
        --batches 16,64,128 > "$OUT/profile_old.log" 2>&1); grep "^batch" "$OUT/profile_old.log" || tail -5 "$OUT/profile_old.log" ;;
    selfcheck) timeout 200 python3 -m gateway.engines.gpu_selfcheck --json > "$OUT/selfcheck.json" 2>"$OUT/selfcheck.log"
      echo "rc $?"; tail -c 1500 "$OUT/selfcheck.json"; tail -5 "$OUT/selfcheck.log" ;;
    long) timeout 250 python3 scripts/device/profile_engine.py --prompt-len 2048 --batches 16,64 --kv-cache-gb 30 \
      --no-profile $NEW_ARGS 2>&1 | grep -v Warning | tail -6 ;;
    prefill) timeout 120 python3 scripts/device/profile_prefill.py --repeat 3 > "$OUT/prefill.log" 2>&1
      echo "rc $?"; grep "^prefill\|Error" "$OUT/prefill.log"
      grep -A 20 "Self CUDA %" "$OUT/prefill.log" | tail -20 ;;
    multiturn) bash scripts/device/engine_multiturn.sh ;;
    *) echo "unknown stage $stage" ;;
  esac
done
