"""The one typed config of a Forge run: dataclasses registered in Hydra's ConfigStore.

`configs/` holds the presets of each group (model, env, algo, engine, pool, scheduler, logger,
cluster) as YAML; the schema below types them, so a wrong key or a wrong type fails at start
and names the key: `forge launch trainer.zero_stag=2` → "Key 'zero_stag' not in 'TrainerConfig'".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from data_pool.config import PoolConfig
from gateway.config import GatewayConfig
from trainer.config import AlgoConfig, TrainerConfig


@dataclass
class ModelConfig:
    name: str = "smollm2_135m"  # smollm2_135m | tiny | tiny_llama | qwen3_0p6b_random | a local HF dir


@dataclass
class EnvConfig:
    name: str = "arithmetic"  # a registered environment (agent_side.registry)
    settings: dict[str, Any] = field(default_factory=dict)  # fields of that env's config dataclass
    eval_prompts: int = 64  # held-out prompts for accuracy before/after (0 = none)
    eval_temperature: float = 0.0
    modules: list[str] = field(default_factory=list)  # modules that register extra environments


@dataclass
class EngineConfig:
    kind: str = "native"  # native (built-in, SGLang protocol) | sglang
    num_engines: int = 1
    urls: list[str] = field(default_factory=list)  # attach to running servers instead of starting
    device: str = "auto"  # auto | cpu | cuda
    num_gpus: float = 0.0  # per engine actor (0: share the GPU with the trainer)
    max_running_requests: int = 64
    cuda_graph: bool = True
    context_length: int | None = None  # tokens per request (None: the model's, at most 4096)
    kv_cache_gb: float | None = None  # the KV page pool; None: 2 GiB on CPU, half the free GPU memory
    page_size: int = 16  # token positions per KV page (a power of two)
    prefix_cache: bool = True  # reuse cached prompt prefixes across calls (flushed on each weight update)
    attention: str = "auto"  # decode attention: auto (triton on CUDA, else sdpa) | triton | sdpa
    compile: bool = True  # CUDA: torch.compile the decode step's norms, RoPE, activation, sampler
    torch_threads: int = 1  # CPU: threads for each engine (the trainer keeps the rest)


@dataclass
class LoopConfig:
    steps: int = 40  # optimizer steps
    max_wall_minutes: float = 0.0  # >0: stop training after this long (then checkpoint + eval)
    prompts_per_step: int = 8
    group_size: int = 4  # samples per prompt (group-relative advantages)
    # env worker processes; each spends ~17 ms of CPU per short episode on its one event loop
    # (scripts/rollout_probe.py), so a GPU engine needs several: `forge bench e2e --device cuda` uses 4 × 32
    env_workers: int = 1
    worker_concurrency: int = 32  # episodes in flight per worker
    checkpoint_every: int = 10  # steps; also on Ctrl-C and at the end
    weight_sync: str = "distributed"  # distributed (torch.distributed group) | disk
    batch_timeout_s: float = 900.0  # waiting for a batch longer than this is an error
    trainer_world_size: int = 1
    trainer_num_gpus: float = 0.0  # per rank
    trainer_torch_threads: int = 0  # 0: leave torch's default


@dataclass
class LoggerConfig:
    mode: str = "offline"  # offline (W&B into the run dir, no key) | online | none
    project: str = "forge"
    console: bool = True  # live rich display
    sample_table_every: int = 10  # steps between W&B tables of sample trajectories


@dataclass
class ClusterConfig:
    address: str | None = None  # None: start a local Ray; "auto": join the running cluster
    num_cpus: int | None = None


@dataclass
class PlacementConfig:
    """Which hosts of a Ray cluster run each tier. An entry names a Ray resource that the host's
    node offers (`ray start --resources='{"host_b": 1}'`, or Ray's own `node:10.0.0.2`); each
    instance of the tier asks for 0.001 of it, so the entry pins where it runs, not how many fit.
    A list has one entry per instance (its length is the tier's count: engine.num_engines,
    loop.trainer_world_size, loop.env_workers) or a single entry for all of them; empty (the
    default) lets Ray choose, which on one host is today's behaviour. A name no node offers is
    refused at start instead of leaving an actor pending forever."""

    engines: list[str] = field(default_factory=list)
    trainer: list[str] = field(default_factory=list)  # rank i runs on trainer[i]
    env_workers: list[str] = field(default_factory=list)
    gateway: str | None = None
    # addresses services bind: "auto" = loopback on a one-node cluster, else 0.0.0.0 reached at
    # each node's Ray address (the gateway then needs gateway.api_keys; one is generated if unset)
    bind: str = "auto"  # auto | loopback | all

    def instances(self, tier: str, count: int) -> list[str | None]:
        """The resource each of `count` instances of `tier` asks for (None: anywhere)."""
        hosts = [self.gateway] if tier == "gateway" else list(getattr(self, tier))
        if not hosts or hosts == [None]:
            return [None] * count
        if len(hosts) == 1:
            return hosts * count
        if len(hosts) != count:
            raise ValueError(f"placement.{tier} has {len(hosts)} entries for {count} instances")
        return hosts


@dataclass
class ForgeConfig:
    run_dir: str = "runs/default"
    resume: bool = False
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)


def register() -> None:
    ConfigStore.instance().store(name="forge_schema", node=ForgeConfig)


def validate(cfg: ForgeConfig) -> None:
    """Checks Hydra's typing cannot express; each error names its key."""
    from agent_side.registry import load_env_modules, make_config
    from trainer.losses import check_algo
    from trainer.model_setup import check_compile_mode

    load_env_modules(list(cfg.env.modules))  # plug-in environments register on import
    if cfg.engine.kind not in ("native", "sglang"):
        raise ValueError(f"engine.kind={cfg.engine.kind!r}: expected native or sglang")
    ps = cfg.engine.page_size
    if ps < 1 or ps & (ps - 1):
        raise ValueError(f"engine.page_size={ps}: must be a power of two")
    if cfg.engine.attention not in ("auto", "triton", "sdpa"):
        raise ValueError(f"engine.attention={cfg.engine.attention!r}: expected auto, triton or sdpa")
    if cfg.loop.weight_sync not in ("distributed", "disk"):
        raise ValueError(f"loop.weight_sync={cfg.loop.weight_sync!r}: expected distributed or disk")
    if cfg.logger.mode not in ("offline", "online", "none"):
        raise ValueError(f"logger.mode={cfg.logger.mode!r}: expected offline, online or none")
    for name in ("steps", "prompts_per_step", "group_size", "env_workers", "checkpoint_every"):
        if getattr(cfg.loop, name) < 1:
            raise ValueError(f"loop.{name}={getattr(cfg.loop, name)}: must be ≥ 1")
    try:
        make_config(cfg.env.name, dict(cfg.env.settings))
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"env.settings: {exc}") from exc
    counts = {
        "engines": (len(cfg.engine.urls) or cfg.engine.num_engines, "engine.num_engines"),
        "trainer": (cfg.loop.trainer_world_size, "loop.trainer_world_size"),
        "env_workers": (cfg.loop.env_workers, "loop.env_workers"),
    }
    for tier, (count, key) in counts.items():
        hosts = getattr(cfg.placement, tier)
        if len(hosts) > 1 and len(hosts) != count:
            raise ValueError(
                f"placement.{tier}={hosts}: {len(hosts)} entries but {key}={count} "
                "(give one entry per instance, or one for all)"
            )
        if any(not h for h in hosts):
            raise ValueError(f"placement.{tier}={hosts}: empty entry")
    if cfg.engine.urls and cfg.placement.engines:
        raise ValueError("placement.engines is set but engine.urls attaches to running engines")
    if cfg.placement.bind not in ("auto", "loopback", "all"):
        raise ValueError(f"placement.bind={cfg.placement.bind!r}: expected auto, loopback or all")
    check_compile_mode(cfg.trainer.compile_mode)
    check_algo(cfg.algo)
    cfg.pool.validate()
