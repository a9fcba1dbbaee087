#!/usr/bin/env bash
# The old engine (an older commit's tree) and the new one (the working tree) on the multiturn
# workload, in one call: each as a server process of its own, benched by the NEW tree's
# `forge bench engine --workload multiturn --url ...` (so both are measured the same way).
# usage: git archive <commit> forge trainer agent_side gateway data_pool > .ab/old.tar
#        (carry .ab), then: bash scripts/device/engine_multiturn.sh
# Output: $OUT/engine_multiturn.jsonl (one JSON object per run, "label" old|new), server and bench
# logs in $OUT, and a short old-vs-new table at the end of stdout.
# Env knobs (defaults = the acceptance workload: 16 calls x (128 tool + 128 completion), group 8):
#   TREES="old new"  EPISODES=128  KV_GB=16  MAX_RUNNING=128  MODEL=qwen3_0p6b_random
#   CALLS=16 TOOL=128 COMPLETION=128 PROMPT=128 GROUP=8  CONTEXT (default: one whole episode)
#   BENCH_ARGS (extra bench flags, e.g. "--concurrency 64 --warmup-episodes 8")
#   SERVER_ARGS (extra server flags; given to both trees, so only flags the old one knows)
#   NEW_SERVER_ARGS (extra server flags for the new tree only, e.g. --disable-compile)
#   ADMISSION=1: then a second run with ADMISSION_EPISODES=256 on ADMISSION_TREES="new"
#   ("256 episodes of up to 4k tokens" through a KV_GB cache)
#   BENCH_TIMEOUT=300 (s per bench), START_TIMEOUT=240 (s for /health)
#   OLD_TAR=.ab/old.tar, DEVICE=cuda (DEVICE=cpu MODEL=tiny ... tries the script on a laptop)
# One call may run 600 s at most: old + new at 128 episodes fit; with ADMISSION=1 run TREES=old in
# one call and TREES=new ADMISSION=1 in the next on the same warm machine.
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
NEW=$PWD
TREES=${TREES-old new}  # TREES="" with ADMISSION=1: the admission run alone
EPISODES=${EPISODES:-128} KV_GB=${KV_GB:-16} MAX_RUNNING=${MAX_RUNNING:-128}
MODEL=${MODEL:-qwen3_0p6b_random}
CALLS=${CALLS:-16} TOOL=${TOOL:-128} COMPLETION=${COMPLETION:-128} PROMPT=${PROMPT:-128} GROUP=${GROUP:-8}
CONTEXT=${CONTEXT:-$((PROMPT + CALLS * COMPLETION + (CALLS - 1) * TOOL))}
RUNS=""
for t in $TREES; do RUNS+="$t:$EPISODES "; done
if [ "${ADMISSION:-0}" = 1 ]; then
  for t in ${ADMISSION_TREES:-new}; do RUNS+="$t:${ADMISSION_EPISODES:-256} "; done
fi
if [[ "$RUNS" == *old:* ]]; then
  rm -rf /tmp/old && mkdir -p /tmp/old && tar xf "${OLD_TAR:-.ab/old.tar}" -C /tmp/old || { echo "no old tree"; exit 1; }
fi
echo "runs: $RUNS| model $MODEL, kv ${KV_GB} GiB, context $CONTEXT, max running $MAX_RUNNING"
JSONL=$OUT/engine_multiturn.jsonl
PORT=31100
SERVER=""
stop_server() {
  [ -n "$SERVER" ] || return 0
  kill "$SERVER" 2>/dev/null
  for _ in $(seq 30); do kill -0 "$SERVER" 2>/dev/null || break; sleep 1; done
  kill -9 "$SERVER" 2>/dev/null
  wait "$SERVER" 2>/dev/null
  SERVER=""
}
trap stop_server EXIT

healthy() {
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$1/health', timeout=2)" 2>/dev/null
}

for run in $RUNS; do
  name=${run%%:*} episodes=${run##*:}
  tree=$([ "$name" = old ] && echo /tmp/old || echo "$NEW")
  tag=${name}_${episodes}
  PORT=$((PORT + 1))
  echo "== $name ($tree), $episodes episodes, port $PORT"
  t0=$(date +%s)
  (cd "$tree" && PYTHONPATH=/tmp/site:$tree exec python3 -m gateway.engines.native --model "$MODEL" \
    --device "${DEVICE:-cuda}" --port $PORT --kv-cache-gb "$KV_GB" --context-length "$CONTEXT" \
    --max-running-requests "$MAX_RUNNING" $SERVER_ARGS $([ "$name" = old ] || echo "$NEW_SERVER_ARGS")) >"$OUT/server_$tag.log" 2>&1 &
  SERVER=$!
  up=0
  for _ in $(seq $((${START_TIMEOUT:-240} * 2))); do
    if healthy $PORT; then up=1; break; fi
    kill -0 "$SERVER" 2>/dev/null || break
    sleep 0.5
  done
  if [ $up = 0 ]; then
    echo "server $name did not come up; tail of its log:"; tail -20 "$OUT/server_$tag.log"
    echo "{\"label\": \"$name\", \"episodes\": $episodes, \"error\": \"server did not start\"}" >>"$JSONL"
    stop_server; continue
  fi
  echo "   up in $(($(date +%s) - t0)) s"
  PYTHONPATH=/tmp/site:$NEW timeout ${BENCH_TIMEOUT:-300} python3 -m forge.cli bench engine \
    --workload multiturn --url http://127.0.0.1:$PORT --json --label "$name" --model "$MODEL" \
    --calls "$CALLS" --tool-tokens "$TOOL" --completion-tokens "$COMPLETION" --prompt-tokens "$PROMPT" \
    --group "$GROUP" --episodes "$episodes" $BENCH_ARGS 2>"$OUT/bench_$tag.log" >"$OUT/bench_$tag.json"
  rc=$?
  if [ $rc = 0 ] && [ -s "$OUT/bench_$tag.json" ]; then
    cat "$OUT/bench_$tag.json" >>"$JSONL"
  else
    echo "bench $name exited $rc; tail of its log:"; tail -8 "$OUT/bench_$tag.log"
    echo "{\"label\": \"$name\", \"episodes\": $episodes, \"error\": \"bench exited $rc\"}" >>"$JSONL"
  fi
  tail -2 "$OUT/bench_$tag.log"
  stop_server
  echo "   done in $(($(date +%s) - t0)) s"
done

python3 - "$JSONL" <<'EOF'
import json, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
cols = ("run", "tok/s", "wall s", "comp/uniq", "comp/recv", "hit", "p50 s", "p99 s", "peak pages", "dec batch", "short")
print(("\n{:<10}" + " {:>10}" * (len(cols) - 1)).format(*cols))
best = {}
for r in rows:
    run = f"{r.get('label')}/{r.get('episodes')}"
    if "error" in r:
        print(f"{run:<10} {r['error']}")
        continue
    kv = r.get("kv", {})
    peak = f"{kv['peak_pages_used']}/{kv['pages_total']}" if "peak_pages_used" in kv and "pages_total" in kv else "-"
    vals = (
        f"{r['gen_tok_s']:.0f}", f"{r['wall_s']:.1f}", f"{r['computed_over_unique']:.2f}",
        f"{r['computed_over_received']:.3f}", f"{r['cache_hit_rate']:.3f}", f"{r['latency_p50_s']:.2f}",
        f"{r['latency_p99_s']:.2f}", peak, f"{r.get('mean_decode_batch', float('nan')):.1f}", str(r["short_calls"]),
    )
    print(("{:<10}" + " {:>10}" * len(vals)).format(run, *vals))
    best[(r.get("label"), r.get("episodes"))] = r
for (label, n), r in best.items():
    old = best.get(("old", n))
    if label == "new" and old:
        print(f"new/old at {n} episodes: {r['gen_tok_s'] / old['gen_tok_s']:.2f}x tok/s, "
              f"prefill computed {r['prefill_tokens_computed'] / max(1, old['prefill_tokens_computed']):.3f}x")
EOF
