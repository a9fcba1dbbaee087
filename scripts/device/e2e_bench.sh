#!/usr/bin/env bash
# Issue 6 acceptance 4 on one GPU: `forge bench e2e --device cuda --peer trl` — forge launch with a
# Qwen3-0.6B-shaped random model on `calculator` (trainer and built-in engine sharing the GPU), then
# TRL's GRPOTrainer on the same model, task, batch and GPU; trained tokens/s of both and the ratio.
# Carry .device-bundle, .forge-cache (SmolLM2's tokenizer: no network there), .whl (the openai SDK
# and its needs) and .whl-trl (trl, datasets, dill, multiprocess; the image has TRL's other needs:
# accelerate, pandas, pyarrow, fsspec, xxhash, huggingface_hub, transformers).
#   E2E_ONLY=forge | trl   one system per call, when both do not fit one 10-minute command; then
#                          `forge bench e2e --combine e2e_forge.jsonl e2e_trl.jsonl` prints the ratio
#   E2E_STEPS (8), E2E_TIMEOUT (560 s, the whole bench), E2E_SYSTEM_TIMEOUT (330 s, each system)
#   E2E_ARGS               more bench arguments, e.g. "--trl-generation paged" or "-- trainer.compile_layers=true"
# Each system's line is written when it finishes, so one that ran out of time loses only itself.
source scripts/device/setup.sh
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
[ -d .whl-trl ] && python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl-trl/*.whl
mkdir -p /tmp/forge-cache && cp -r .forge-cache/* /tmp/forge-cache/
python3 - <<'PY'
import importlib.metadata as md
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
names = ["torch", "transformers", "accelerate", "trl", "datasets", "pyarrow", "pandas", "fsspec", "dill", "multiprocess"]
print({n: version(n) for n in names})
PY
case ${E2E_ONLY:-both} in
  forge) SYSTEMS=() ;;
  trl) SYSTEMS=(--peer trl --peer-only) ;;
  *) SYSTEMS=(--peer trl) ;;
esac
WORK=/tmp/e2e-bench
RESULT=$OUT/e2e_${E2E_ONLY:-both}.jsonl
timeout ${E2E_TIMEOUT:-560} python3 -m forge.cli bench e2e --device cuda --json --steps ${E2E_STEPS:-8} \
  --out $WORK --timeout ${E2E_SYSTEM_TIMEOUT:-330} "${SYSTEMS[@]}" ${E2E_ARGS:-}
echo rc=$?
[ -f $WORK/results.jsonl ] && cp $WORK/results.jsonl $RESULT
for f in forge.log trl.log; do
  [ -f $WORK/$f ] && { echo "== $f"; grep -v -i "warn" $WORK/$f | tail -12 | cut -c1-300; cp $WORK/$f $OUT/; }
done
[ -f $WORK/forge_run/metrics.jsonl ] && cp $WORK/forge_run/metrics.jsonl $OUT/forge_metrics.jsonl
[ -f $WORK/trl_steps.json ] && cp $WORK/trl_steps.json $OUT/
# Ray worker logs (trainer ranks, engines, gateway, env workers): a stalled run is diagnosed from these
if [ -f $WORK/forge_run/ray_session ]; then
  mkdir -p $OUT/ray_logs && find "$(cat $WORK/forge_run/ray_session)/logs" -maxdepth 1 -name 'worker-*.err' -size +0 \
    -exec sh -c 'tail -c 20000 "$1" > "$2/$(basename "$1" | cut -c1-24).err"' _ {} $OUT/ray_logs \;
  grep -h -i "error\|traceback\|fell back" $OUT/ray_logs/* 2>/dev/null | sort | uniq -c | sort -rn | head -10 | cut -c1-300
fi
python3 - "$WORK" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
m = work / "forge_run" / "metrics.jsonl"
keys = ["step", "train/flat_tokens", "time/step_wall_s", "train/step_time_s", "time/forward_backward_s",
        "time/weight_sync_s", "rollout/generated_tokens"]
for line in (m.read_text().splitlines() if m.exists() else []):
    r = json.loads(line)
    print("forge", {k.split("/")[-1]: round(r[k], 3) if isinstance(r.get(k), float) else r.get(k) for k in keys})
t = work / "trl_steps.json"
for i, s in enumerate(json.loads(t.read_text())["steps"] if t.exists() else [], 1):
    print("trl  ", i, {k: round(v, 3) for k, v in s.items()})
PY
