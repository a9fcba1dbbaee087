"""The built-in engine's utilisation counters (`/get_model_info` → `forge_stats`), read while it works."""

from __future__ import annotations

import threading
import time

from forge.ground.engine_client import SyncEngineClient


def test_busy_time_between_two_reads_never_exceeds_the_time_between_them(engine):
    """A step under way at a read is counted up to that read, so no interval is charged with busy time
    from before it (which read `engine/busy_fraction` > 1 in `forge launch` metrics)."""
    client = SyncEngineClient(engine.url)
    sp = {"max_new_tokens": 120, "temperature": 0.0, "ignore_eos": True}
    workers = [threading.Thread(target=client.generate, args=([5 + i] * (40 + 30 * i), sp)) for i in range(4)]
    for w in workers:
        w.start()
    reads = []
    while any(w.is_alive() for w in workers):
        stats = client.get_model_info()["forge_stats"]
        reads.append((stats["busy_s"], stats["uptime_s"], stats["decode_steps"]))
        time.sleep(0.001)
    for w in workers:
        w.join()
    assert len(reads) > 20 and reads[-1][2] > reads[0][2]  # read often, while it stepped
    for (b0, u0, _), (b1, u1, _) in zip(reads, reads[1:], strict=False):
        assert 0.0 <= b1 - b0 <= u1 - u0 + 1e-9
