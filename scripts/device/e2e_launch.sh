#!/usr/bin/env bash
# Issue 6 acceptance 4 (Forge side) on one GPU: forge launch with a Qwen3-0.6B-shaped random model
# on `calculator`, trainer and built-in engine sharing the GPU. Carry .device-bundle and .forge-cache
# (the SmolLM2 tokenizer: the GPU machine has no network).
source scripts/device/setup.sh
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
mkdir -p /tmp/forge-cache && cp -r .forge-cache/* /tmp/forge-cache/
timeout ${E2E_TIMEOUT:-500} python3 -m forge.cli launch model=qwen3_0p6b_random env=calculator \
  engine.device=cuda engine.num_gpus=0.5 engine.kv_cache_gb=8 engine.max_running_requests=64 \
  loop.trainer_num_gpus=0.5 loop.steps=${E2E_STEPS:-8} loop.prompts_per_step=8 loop.group_size=8 \
  loop.worker_concurrency=64 pool.max_in_flight=128 env.eval_prompts=0 logger=none logger.console=false \
  trainer.micro_batch_tokens=32768 trainer.gradient_checkpointing=false \
  run_dir=$OUT/run hydra.run.dir=$OUT/run > $OUT/e2e.log 2>&1
echo rc=$?
tail -20 $OUT/e2e.log | cut -c1-300
python3 - <<'PY'
import json, os
rows = [json.loads(l) for l in open(os.environ["OUT"] + "/run/metrics.jsonl")]
keys = ["step", "train/trained_tokens_per_s", "train/computed_tokens_per_s", "rollout/generated_tokens_per_s",
        "time/step_wall_s", "time/forward_backward_s", "time/optimizer_s", "time/weight_sync_s",
        "train/token_ratio", "rollout/calls_per_episode", "pool/lag_versions_mean"]
for r in rows:
    print({k.split("/")[-1]: round(r[k], 3) if isinstance(r.get(k), float) else r.get(k) for k in keys})
PY
rm -rf $OUT/run/wandb $OUT/run/redis $OUT/run/checkpoints $OUT/run/weights
