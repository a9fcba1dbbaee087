#!/usr/bin/env bash
# Issue 18 acceptance 5: `forge bench e2e --device cuda` on a long-horizon env (default lookup_chain:
# 16+ calls per episode, the context growing every call), an older commit's whole tree ("before")
# and the working tree ("after") in one call, each with its own defaults, the same bench arguments.
# usage: git archive <commit> forge trainer agent_side gateway data_pool configs pyproject.toml \
#          > .ab/before.tar   (4ca5d57: the slot-KV engine, the last commit before the paged one)
#        then (carry .device-bundle .forge-cache .whl .ab): bash scripts/device/e2e_before_after.sh
# Env knobs: ENV=lookup_chain  E2E_ARGS="--steps 3 --warmup 1 --prompts-per-step 4 --group-size 8"
#   BEFORE_TIMEOUT=280 AFTER_TIMEOUT=220 (s per system)  BEFORE_TAR=.ab/before.tar
# Output: $OUT/{before,after}/ (results.jsonl, forge.log, metrics.jsonl), per-step lines on stdout.
source scripts/device/setup.sh
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
rm -rf /tmp/before && mkdir -p /tmp/before && tar xf "${BEFORE_TAR:-.ab/before.tar}" -C /tmp/before || { echo "no before tree"; exit 1; }
ARGS="bench e2e --device cuda --env ${ENV:-lookup_chain} --json ${E2E_ARGS:---steps 3 --warmup 1 --prompts-per-step 4 --group-size 8}"
for w in before after; do
  tree=$([ $w = before ] && echo /tmp/before || echo "$PWD")
  limit=$([ $w = before ] && echo "${BEFORE_TIMEOUT:-280}" || echo "${AFTER_TIMEOUT:-220}")
  echo "== $w ($tree)"
  (cd "$tree" && PYTHONPATH=/tmp/site:$tree timeout $((limit + 10)) python3 -m forge.cli $ARGS \
    --out /tmp/e2e-$w --timeout "$limit" 2>&1 | grep -v -i warn | tail -6)
  mkdir -p "$OUT/$w"
  for f in results.jsonl forge.log forge_run/metrics.jsonl; do [ -f /tmp/e2e-$w/$f ] && cp /tmp/e2e-$w/$f "$OUT/$w/"; done
done
python3 - <<'PY'
import json, pathlib
keys = ("step_wall", "flat_tokens", "generated", "busy", "hit", "reward", "trained")
for w in ("before", "after"):
    m = pathlib.Path(f"/tmp/e2e-{w}/forge_run/metrics.jsonl")
    for line in (m.read_text().splitlines() if m.exists() else []):
        r = json.loads(line)
        print(w, {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items() if any(s in k for s in keys)})
PY
