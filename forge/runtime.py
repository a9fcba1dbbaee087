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


class Runtime(contextlib.ExitStack):
    def __init__(self, cfg: ForgeConfig, run_dir: Path) -> None:
        super().__init__()
        self.cfg, self.run_dir = cfg, run_dir

    # -------------------------------------------------------------- Ray + pool
    def start_ray(self) -> None:
        c = self.cfg.cluster
        if ray.is_initialized():
            return
        # actor logs (one line per HTTP request) go to the Ray session dir, not the console
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if c.address:
            ray.init(address=c.address, **kwargs)
        else:
            ray.init(num_cpus=c.num_cpus or os.cpu_count(), **kwargs)
        self.callback(ray.shutdown)
        with contextlib.suppress(Exception):  # where the actors' logs are
            session = ray._private.worker._global_node.get_session_dir_path()
            (self.run_dir / "ray_session").write_text(session + "\n")

    def start_pool(self):
        from data_pool import connect

        pool_cfg = dataclasses.replace(self.cfg.pool, run_dir=str(self.run_dir / "redis"))
        pool = connect(pool_cfg)
        self.callback(pool.close)
        return pool

    # -------------------------------------------------------------- engines
    def start_engines(self, model_dir: str) -> list[str]:
        e = self.cfg.engine
        if e.urls:
            from gateway.engines.client import SyncEngineClient

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

        actors = [
            EngineActor.options(
                num_gpus=e.num_gpus, runtime_env={"env_vars": {"OMP_NUM_THREADS": str(e.torch_threads)}}
            ).remote(
                model_dir,
                device=device,
                max_running_requests=e.max_running_requests,
                cuda_graph=e.cuda_graph,
                context_length=e.context_length,
                kv_cache_gb=e.kv_cache_gb,
                seed=self.cfg.seed,
            )
            for _ in range(e.num_engines)
        ]
        self.callback(lambda: _stop_all(actors))
        return ray.get([a.url.remote() for a in actors])

    # -------------------------------------------------------------- gateway
    def start_gateway(self, engine_urls: list[str], model_dir: str, pool) -> str:
        from gateway.actor import GatewayActor

        gw_cfg = dataclasses.replace(self.cfg.gateway, engine_urls=engine_urls, model=model_dir)
        actor = GatewayActor.remote(gw_cfg, pool)
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
        )
        self.callback(group.shutdown)
        return group

    # -------------------------------------------------------------- env workers
    def start_workers(self, pool, gateway_url: str) -> list[Any]:
        from agent_side.ray_worker import start_env_workers

        loop, env = self.cfg.loop, self.cfg.env
        actors = start_env_workers(
            n=loop.env_workers,
            redis_url=pool.url,
            gateway_url=gateway_url,
            pool_config=pool.cfg,
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
