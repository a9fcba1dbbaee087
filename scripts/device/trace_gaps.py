"""Where the GPU sat idle in a torch.profiler trace, and what the host was doing then.

usage (from a profile script): `from trace_gaps import report; report(prof)` after a
`torch.profiler.profile(activities=[CPU, CUDA])` block. Prints the GPU's busy and idle time over
the profiled window, the longest idle gaps between consecutive kernels with the host ops that
launched the kernel ending each gap, idle time summed by that launching op, and the host's
synchronisations (the usual cause: the GPU drains, then waits for the host to queue more).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict

import numpy as np

GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
# runtime calls that can make the host wait for the GPU: explicit syncs, copies from pageable
# memory, and the caching allocator's cudaMalloc/cudaFree (cudaFree synchronises the device)
SYNCS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
    "cudaFree",
    "cudaMalloc",
)


def _events(prof) -> list[dict]:
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            return json.load(f)["traceEvents"]
    finally:
        os.unlink(path)


class _HostOps:
    """Host ops of the trace, for "which ops were running at time ts" (outermost first)."""

    def __init__(self, ops: list[dict]) -> None:
        self.ops = ops
        self.start = np.array([e["ts"] for e in ops], dtype=np.float64)
        self.end = self.start + np.array([e.get("dur", 0) for e in ops], dtype=np.float64)

    def at(self, ts: float) -> list[str]:
        idx = np.flatnonzero((self.start <= ts) & (ts <= self.end))
        idx = sorted(idx, key=lambda i: (self.start[i], -self.end[i]))
        return [self.ops[i]["name"] for i in idx]


def report(prof, top: int = 15, min_gap_us: float = 20.0) -> None:
    try:
        events = _events(prof)
    except Exception as e:  # a report, never the reason a profile run fails
        print(f"trace_gaps: no trace ({type(e).__name__}: {e})")
        return
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATS and "dur" in e), key=lambda e: e["ts"])
    if not gpu:
        print("trace_gaps: no GPU events in the trace")
        return
    ops = _HostOps([e for e in events if e.get("cat") in ("cpu_op", "user_annotation") and "dur" in e])
    runtime = [e for e in events if e.get("cat") == "cuda_runtime" and "dur" in e]
    launches = {e["args"]["correlation"]: e for e in runtime if "correlation" in e.get("args", {})}
    start, end = gpu[0]["ts"], max(e["ts"] + e["dur"] for e in gpu)
    busy, reach, gaps, last = 0.0, start, [], gpu[0]
    for e in gpu:  # union of busy intervals (kernels on several streams may overlap)
        if e["ts"] > reach:
            gaps.append((e["ts"] - reach, reach, e, last))
        busy += max(0.0, e["ts"] + e["dur"] - max(e["ts"], reach))
        if e["ts"] + e["dur"] >= reach:
            last = e
        reach = max(reach, e["ts"] + e["dur"])
    idle = (end - start) - busy
    print(
        f"\n-- GPU timeline: {(end - start) / 1e3:.1f} ms from first to last kernel, busy {busy / 1e3:.1f} ms, "
        f"idle {idle / 1e3:.1f} ms in {len(gaps)} gaps (gaps ≥ {min_gap_us:.0f} µs: "
        f"{sum(g[0] for g in gaps if g[0] >= min_gap_us) / 1e3:.1f} ms)"
    )
    by_launcher: dict[str, float] = defaultdict(float)
    rows = []
    longest = sorted((g for g in gaps if g[0] >= min_gap_us), key=lambda g: -g[0])[:400]
    for gap, at, nxt, prev in longest:
        launch = launches.get(nxt.get("args", {}).get("correlation"))
        chain = ops.at(launch["ts"]) if launch else []
        key = " > ".join(chain[-2:]) if chain else nxt["name"][:40]
        by_launcher[key] += gap
        rows.append((gap, at, nxt, prev, chain, ops.at(at + gap / 2)))
    for gap, at, nxt, prev, chain, during in sorted(rows, key=lambda r: -r[0])[:top]:
        print(
            f"   {gap / 1e3:7.2f} ms idle at +{(at - start) / 1e3:7.1f} ms, after {prev['name'][:40]!r} "
            f"before {nxt['name'][:40]!r}\n"
            f"        next launched in: {' > '.join(c[:40] for c in chain[-4:]) or '?'}\n"
            f"        host mid-gap in:  {' > '.join(c[:40] for c in during[-4:]) or '?'}"
        )
    print(
        f"   idle time of the {len(longest)} longest gaps by the host op that launched the kernel after it:"
    )
    for key, total in sorted(by_launcher.items(), key=lambda kv: -kv[1])[:top]:
        print(f"   {total / 1e3:7.2f} ms  {key[:110]}")
    syncs = [e for e in runtime if any(e["name"].startswith(s) for s in SYNCS)]
    counts = defaultdict(int)
    for e in syncs:
        counts[e["name"]] += 1
    print(
        f"   host calls that can wait on the GPU: {len(syncs)} ({', '.join(f'{n} {k}' for k, n in counts.items())}), "
        f"{sum(e['dur'] for e in syncs) / 1e3:.1f} ms in them; longest:"
    )
    for e in sorted(syncs, key=lambda e: -e["dur"])[:8]:
        chain = ops.at(e["ts"])
        print(
            f"   {e['dur'] / 1e3:7.2f} ms {e['name']} at +{(e['ts'] - start) / 1e3:7.1f} ms in: "
            f"{' > '.join(c[:40] for c in chain[-4:]) or '?'}"
        )
