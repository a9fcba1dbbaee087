"""`GatewayActor`: the gateway in a Ray actor (num_cpus=0: it mostly waits on HTTP).

    actor = GatewayActor.remote(GatewayConfig(engine_urls=urls, model=model_dir), pool)
    url = ray.get(actor.url.remote())      # reachable from other nodes when host is 0.0.0.0
    ray.get(actor.stats.remote()); ray.get(actor.stop.remote())

`pool`: a `data_pool.DataPool` (it pickles as its URL and reconnects in the actor), a
`PoolConfig` or dict of one whose `redis_url` is set, or None (samples kept in memory). A
PoolConfig without a redis_url would start a second, empty embedded Redis, so it is refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ray

from gateway.config import GatewayConfig


def _connect(pool: Any) -> Any:
    if pool is None or hasattr(pool, "append_samples"):
        return pool
    from data_pool import PoolConfig, connect

    if isinstance(pool, dict):
        fields = {f.name for f in dataclasses.fields(PoolConfig)}
        pool = PoolConfig(**{k: v for k, v in pool.items() if k in fields})
    if not isinstance(pool, PoolConfig):
        raise TypeError(f"pool must be a DataPool, a PoolConfig or None, not {type(pool).__name__}")
    if pool.redis_url is None:
        raise ValueError(
            "GatewayActor got a PoolConfig without redis_url: pass the DataPool itself (it pickles as its "
            "URL) or dataclasses.replace(pool.cfg, redis_url=pool.url)"
        )
    return connect(pool)


class _GatewayActor:
    def __init__(self, config: GatewayConfig | dict[str, Any], pool: Any = None) -> None:
        import logging

        from gateway.server import start_gateway_in_thread

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        cfg = config if isinstance(config, GatewayConfig) else GatewayConfig(**dict(config))
        self.handle = start_gateway_in_thread(cfg, pool=_connect(pool))
        if cfg.host in ("0.0.0.0", "::"):
            port = self.handle.url.rsplit(":", 1)[1]
            self._url = f"http://{ray.util.get_node_ip_address()}:{port}"
        else:
            self._url = self.handle.url

    def url(self) -> str:
        return self._url

    def stats(self) -> dict[str, Any]:
        gw = self.handle.gateway
        return {
            "in_flight": gw.in_flight,
            "sessions": len(gw.sessions.sessions),
            "counters": dict(gw.counters),
            "engines": gw.router.load(),
        }

    def stop(self) -> None:
        self.handle.stop()


GatewayActor = ray.remote(num_cpus=0)(_GatewayActor)
