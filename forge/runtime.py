"""Starting and stopping the tiers of a run as Ray actors; each start registers its own stop.

`Runtime` is a context manager: whatever was started is stopped when the block exits, by
error, Ctrl-C or normally, in reverse order (workers, trainer, gateway, engines, pool, Ray).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import ray

from forge.config import ForgeConfig

log = logging.getLogger("forge")


def _device(cfg: ForgeConfig) -> str:
    if cfg.engine.device != "auto":
        return cfg.engine.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# every Ray worker process of a run pins gloo to its node's address (see forge.netif)
WORKER_SETUP_HOOK = "forge.netif.setup_worker"
PLACEMENT_SHARE = 0.001  # of a host's resource per placed actor: it pins, it does not limit


class Runtime(contextlib.ExitStack):
    def __init__(self, cfg: ForgeConfig, run_dir: Path) -> None:
        super().__init__()
        self.cfg, self.run_dir = cfg, run_dir
        self.multi_node = False
        self.bind_host = "127.0.0.1"  # what engines and the gateway bind (0.0.0.0 across nodes)

    # -------------------------------------------------------------- Ray + pool
    def start_ray(self) -> None:
        c = self.cfg.cluster
        if ray.is_initialized():  # e.g. a sweep job that a Ray launcher runs inside a Ray worker
            self._check_placement()
            self._choose_addresses()
            return
        # actor logs (one line per HTTP request) go to the Ray session dir, not the console
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "runtime_env": {"worker_process_setup_hook": WORKER_SETUP_HOOK},
        }
        if c.address:
            ray.init(address=c.address, **kwargs)
        else:
            ray.init(num_cpus=c.num_cpus or os.cpu_count(), **kwargs)
        self.callback(ray.shutdown)
        with contextlib.suppress(Exception):  # where the actors' logs are
            session = ray._private.worker._global_node.get_session_dir_path()
            (self.run_dir / "ray_session").write_text(session + "\n")
        self._check_placement()
        self._choose_addresses()

    def _check_placement(self) -> None:
        """Every host named in `placement` must be offered by some node (else an actor would wait
        for it forever)."""
        p = self.cfg.placement
        offered = set(ray.cluster_resources())
        named = [(f"placement.{t}", h) for t in ("engines", "trainer", "env_workers") for h in getattr(p, t)]
        named += [("placement.gateway", p.gateway)] if p.gateway else []
        for key, host in named:
            if host not in offered:
                hosts = sorted(
                    r for r in offered if not r.startswith(("CPU", "GPU", "memory", "object_store"))
                )
                raise ValueError(
                    f"{key}: no node of the Ray cluster offers resource {host!r} (offered: {', '.join(hosts)}); "
                    "name a host with `ray start --resources='{\"NAME\": 1}'` or use node:<ip>"
                )

    def _choose_addresses(self) -> None:
        """On a cluster of more than one node nothing may bind or dial loopback: engines and the
        gateway bind 0.0.0.0 and are reached at their node's address, the gateway needs an API key
        (generated for this run when gateway.api_keys is empty), an embedded Redis binds this node's
        address with a password."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.multi_node = len(nodes) > 1
        bind = self.cfg.placement.bind
        if bind == "all" or (bind == "auto" and self.multi_node):
            self.bind_host = "0.0.0.0"
        if self.bind_host == "0.0.0.0" and not self.cfg.gateway.api_keys:
            import secrets

            self.cfg.gateway.api_keys = [secrets.token_urlsafe(24)]
            log.info("gateway binds off loopback and gateway.api_keys is empty: generated a key for this run")
        log.info("Ray: %d node(s); engines and gateway bind %s", len(nodes), self.bind_host)

    def placed(self, tier: str, count: int) -> list[dict[str, Any]]:
        """Ray actor options that pin each of `count` instances of `tier` to its host."""
        return [
            {"resources": {host: PLACEMENT_SHARE}} if host else {}
            for host in self.cfg.placement.instances(tier, count)
        ]

    def start_pool(self):
        from data_pool import connect

        pool_cfg = dataclasses.replace(self.cfg.pool, run_dir=str(self.run_dir / "redis"))
        if pool_cfg.redis_url is None and self.bind_host != "127.0.0.1":
            # the head's address (this driver's node), with a generated password: never loopback
            pool_cfg = dataclasses.replace(pool_cfg, embedded_host=ray.util.get_node_ip_address())
        pool = connect(pool_cfg)
        self.callback(pool.close)
        return pool

    # -------------------------------------------------------------- engines
    def start_engines(self, model_dir: str) -> list[str]:
        e = self.cfg.engine
        if e.urls:
            from forge.ground.engine_client import SyncEngineClient

            for url in e.urls:
                SyncEngineClient(url, timeout=30).health()
            return list(e.urls)
        device = _device(self.cfg)
        if e.kind == "sglang":
            from gateway.engines.sglang_launcher import launch_sglang

            servers = launch_sglang(model_dir, e.num_engines)
            self.callback(lambda: [ray.get(s.stop.remote()) for s in servers])
            return ray.get([s.url.remote() for s in servers])
        from gateway.engines.native.actor import EngineActor

        placed = self.placed("engines", e.num_engines)
        actors = [
            EngineActor.options(
                num_gpus=e.num_gpus,
                runtime_env={"env_vars": {"OMP_NUM_THREADS": str(e.torch_threads)}},
                **placed[i],
            ).remote(
                model_dir,
                host=self.bind_host,
                device=device,
                max_running_requests=e.max_running_requests,
                cuda_graph=e.cuda_graph,
                context_length=e.context_length,
                kv_cache_gb=e.kv_cache_gb,
                page_size=e.page_size,
                prefix_cache=e.prefix_cache,
                attention=e.attention,
                compile=e.compile,
                seed=self.cfg.seed,
            )
            for i in range(e.num_engines)
        ]
        self.callback(lambda: _stop_all(actors))
        return ray.get([a.url.remote() for a in actors])

    # -------------------------------------------------------------- gateway
    def start_gateway(self, engine_urls: list[str], model_dir: str, pool) -> str:
        from gateway.actor import GatewayActor

        gw_cfg = dataclasses.replace(
            self.cfg.gateway, engine_urls=engine_urls, model=model_dir, host=self.bind_host
        )
        actor = GatewayActor.options(**self.placed("gateway", 1)[0]).remote(gw_cfg, pool)
        self.callback(lambda: _stop_all([actor]))
        return ray.get(actor.url.remote())

    # -------------------------------------------------------------- trainer
    def start_trainer(self, model_dir: str):
        from trainer.actor import TrainerGroup

        loop = self.cfg.loop
        tcfg = dataclasses.replace(self.cfg.trainer, model=model_dir, seed=self.cfg.seed)
        group = TrainerGroup(
            tcfg,
            self.cfg.algo,
            world_size=loop.trainer_world_size,
            num_gpus=loop.trainer_num_gpus,
            torch_threads=loop.trainer_torch_threads,
            rank_options=self.placed("trainer", loop.trainer_world_size),
        )
        self.callback(group.shutdown)
        return group

    # -------------------------------------------------------------- env workers
    def start_workers(self, pool, gateway_url: str) -> list[Any]:
        from agent_side.ray_worker import start_env_workers

        loop, env = self.cfg.loop, self.cfg.env
        by_host: dict[str | None, int] = {}
        for host in self.cfg.placement.instances("env_workers", loop.env_workers):
            by_host[host] = by_host.get(host, 0) + 1
        actors = []
        for host, n in by_host.items():  # worker ids: env-worker-0… or env-worker-HOST-0…
            actors += start_env_workers(
                n=n,
                redis_url=pool.url,
                gateway_url=gateway_url,
                pool_config=pool.cfg,
                name_prefix=f"env-worker-{host}" if host else "env-worker",
                ray_options={"resources": {host: PLACEMENT_SHARE}} if host else None,
                concurrency=loop.worker_concurrency,
                env_configs={env.name: dict(env.settings)},
                env_modules=list(env.modules),
                api_key=api_key(self.cfg),
            )
        runs = [a.run.remote() for a in actors]

        def stop() -> None:
            with contextlib.suppress(Exception):
                ray.get([a.stop.remote() for a in actors], timeout=30)
                ray.get(runs, timeout=60)
            _stop_all(actors)

        self.callback(stop)
        return actors


def api_key(cfg: ForgeConfig) -> str:
    """The key agents send to the gateway (required when it binds a non-loopback address)."""
    return cfg.gateway.api_keys[0] if cfg.gateway.api_keys else "forge"


def _stop_all(actors: list[Any]) -> None:
    for a in actors:
        with contextlib.suppress(Exception):
            ray.get(a.stop.remote(), timeout=30)
        with contextlib.suppress(Exception):
            ray.kill(a)
