"""Where the gateway's time per call goes: `forge bench gateway`'s latency run with the gateway
process under cProfile (enabled after warm-up), then its stage means and hottest functions.

    .venv/bin/python scripts/profile_gateway.py [REQUESTS=300] [TOP=40]

Run as the child `python scripts/profile_gateway.py --child ARGS...`, it is the gateway itself:
SIGUSR1 starts profiling, SIGUSR2 writes the profile to $GW_PROFILE.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import re
import runpy
import signal
import subprocess
import sys
import tempfile
import time


def child(argv: list[str]) -> None:
    prof = cProfile.Profile()
    signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
    signal.signal(signal.SIGUSR2, lambda *_: (prof.disable(), prof.dump_stats(os.environ["GW_PROFILE"])))
    sys.argv = ["gateway", *argv]
    runpy.run_module("gateway", run_name="__main__")


def main(requests: int, top: int) -> None:
    import httpx

    from forge.bench import gateway as bench

    out = tempfile.mktemp(suffix=".prof")
    real_popen, gateway_proc = subprocess.Popen, []

    def popen(cmd: list[str], *a, **k):  # the bench's gateway command, run through this file
        if cmd[1:3] == ["-m", "gateway"]:
            cmd = [cmd[0], __file__, "--child", *cmd[3:]]
            k["env"] = {**(k.get("env") or os.environ), "GW_PROFILE": out}
            gateway_proc.append(real_popen(cmd, *a, **k))
            return gateway_proc[-1]
        return real_popen(cmd, *a, **k)

    bench.subprocess.Popen = popen  # type: ignore[attr-defined]
    with bench.stack(bench.parse_args([])) as s:
        bench.measure_latency(s, bench.parse_args(["--requests", "20"]))  # warm-up, not profiled
        gateway_proc[0].send_signal(signal.SIGUSR1)
        result = bench.measure_latency(s, bench.parse_args(["--requests", str(requests)]))
        gateway_proc[0].send_signal(signal.SIGUSR2)
        print(json.dumps(result))
        print("stage means (ms):", httpx.get(s["gateway"] + "/stats").json()["stage_mean_ms"])
        for _ in range(50):
            if os.path.exists(out) and os.path.getsize(out) > 0:
                break
            time.sleep(0.1)
        time.sleep(0.5)
    text = io.StringIO()
    stats = pstats.Stats(out, stream=text)
    calls = result["pairs"]
    print(f"profiled {calls} measured calls (+ their GET /sessions, the bench's prompt lookup)")
    for order in ("tottime", "cumulative"):
        stats.sort_stats(order).print_stats(top)
    print(re.sub(r"\S*/site-packages/", "", text.getvalue()))
    os.unlink(out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 300, int(sys.argv[2]) if len(sys.argv) > 2 else 40)
