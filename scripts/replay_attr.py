# wip (2026-12-07): where the multiturn bench's prefill goes, on the CPU (tiny model, the GPU run's 9,360 pages).
# computed = new tokens of each call + session_lost (tokens of a session's previous calls, computed
# before, evicted since) + retract_lost. usage: [EP=128] [KEEP=1.0] .venv/bin/python scripts/replay_attr.py
import collections
import json
import os
import subprocess
import sys

from gateway.engines.native import core as coremod
from gateway.engines.native import start_engine_in_thread

att = collections.Counter()
seen = {}  # session key -> tokens computed so far
orig = coremod.EngineCore._prefill


def _prefill(self, batch):
    for r in batch:
        if r.max_new_tokens <= len(r.output_ids):
            continue
        seq = r.tokens()
        cached = len(r.path) * self.page_size
        retracted = getattr(r, "_seen", False)
        r._seen = True
        key = tuple(seq[:400]) if len(seq) >= 400 else None
        prev = seen.get(key, 0) if key else 0
        lost = max(0, min(prev, len(seq)) - cached)
        att["computed"] += len(seq) - cached
        att["retract_lost" if retracted else "session_lost"] += lost
        att["retractions_readmitted" if retracted else "admissions"] += 1
        if lost and not retracted:
            att["sessions_with_loss"] += 1
    return orig(self, batch)


coremod.EngineCore._prefill = _prefill
coremod.KEEP_RECENT_S = float(os.environ.get("KEEP", coremod.KEEP_RECENT_S))
orig_release = coremod.EngineCore._release


def _release(self, req):
    seq = (req.input_ids + req.output_ids)[: req.position]
    if len(seq) >= 400:
        k = tuple(seq[:400])
        seen[k] = max(seen.get(k, 0), len(seq))
    return orig_release(self, req)


coremod.EngineCore._release = _release
with start_engine_in_thread(
    "tiny",
    device="cpu",
    pad_to_buckets=True,
    kv_cache_gb=float(os.environ.get("KV", "0.07142")),
    max_running_requests=128,
    context_length=4096,
    max_prefill_tokens=16384,
) as eng:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "forge.cli",
            "bench",
            "engine",
            "--workload",
            "multiturn",
            "--url",
            eng.url,
            "--json",
            "--model",
            "tiny",
            "--calls",
            "16",
            "--tool-tokens",
            "128",
            "--completion-tokens",
            "128",
            "--prompt-tokens",
            "128",
            "--group",
            "8",
            "--episodes",
            os.environ.get("EP", "128"),
        ],
        capture_output=True,
        text=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    st = eng.core.stats()
    print(
        os.environ.get("RULE"),
        {
            k: r.get(k)
            for k in (
                "gen_tok_s",
                "computed_over_unique",
                "cache_hit_rate",
                "wall_s",
                "prefill_tokens_computed",
            )
        },
        {k: st[k] for k in ("prefills", "prefill_tokens", "retractions", "peak_pages_used", "pages_total")},
        dict(att),
        flush=True,
    )
