#!/usr/bin/env bash
# Issue 6 acceptance 4 (Forge side) on one GPU: forge launch with a Qwen3-0.6B-shaped random model
# on `calculator`, trainer and built-in engine sharing the GPU (weight sync by CUDA IPC). Carry
# .device-bundle and .forge-cache (the SmolLM2 tokenizer: the GPU machine has no network).
# E2E_EXTRA: more overrides, e.g. "engine.num_gpus=1 loop.trainer_num_gpus=1" on two GPUs.
source scripts/device/setup.sh
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
mkdir -p /tmp/forge-cache && cp -r .forge-cache/* /tmp/forge-cache/
RUN=${E2E_RUN:-$OUT/run}
timeout ${E2E_TIMEOUT:-500} python3 -m forge.cli launch model=qwen3_0p6b_random env=calculator \
  engine.device=cuda engine.num_gpus=0.5 engine.kv_cache_gb=8 engine.max_running_requests=64 \
  loop.trainer_num_gpus=0.5 loop.steps=${E2E_STEPS:-8} loop.prompts_per_step=8 loop.group_size=8 \
  loop.worker_concurrency=64 pool.max_in_flight=128 env.eval_prompts=0 logger=none logger.console=false \
  trainer.micro_batch_tokens=32768 trainer.gradient_checkpointing=false ${E2E_EXTRA:-} \
  run_dir=$RUN hydra.run.dir=$RUN > $RUN.log 2>&1
echo rc=$?
tail -20 $RUN.log | cut -c1-300
python3 - "$RUN" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
keys = ["step", "train/trained_tokens_per_s", "train/computed_tokens_per_s", "rollout/generated_tokens_per_s",
        "time/step_wall_s", "time/forward_backward_s", "time/optimizer_s", "time/weight_sync_s",
        "sync/mode_disk", "sync/ipc_engines", "train/token_ratio", "rollout/calls_per_episode", "pool/lag_versions_mean"]
for r in rows:
    print({k.split("/")[-1]: round(r[k], 3) if isinstance(r.get(k), float) else r.get(k) for k in keys})
PY
# worker logs (trainer and engine warnings, tracebacks) for diagnosis
if [ -f $RUN/ray_session ]; then
  mkdir -p $RUN/ray_logs && find "$(cat $RUN/ray_session)/logs" -maxdepth 1 \( -name 'worker-*.err' -o -name 'worker-*.out' \) -size +0 -exec cp {} $RUN/ray_logs/ \;
  grep -h -i "fell back\|error\|traceback" $RUN/ray_logs/* 2>/dev/null | sort | uniq -c | sort -rn | head -15 | cut -c1-300
fi
rm -rf $RUN/wandb $RUN/redis $RUN/checkpoints $RUN/weights
