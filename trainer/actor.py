"""Ray wrapper: one `TrainerActor` per rank around the plain `Trainer`, and a `TrainerGroup`.

The group starts rank 0 first to learn its node address and a free port, then starts every
rank with MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE set, and constructs the DeepSpeed engines
concurrently (torch.distributed's rendezvous blocks until all ranks join). Episodes travel
as msgpack records (forge.ground.types), decoded in each actor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ray

from forge.ground.types import Episode, decode_episode, encode
from trainer.config import AlgoConfig, TrainerConfig


class TrainerActor:
    """Ray actor body (decorated in `TrainerGroup`); each method forwards to the Trainer."""

    def __init__(self, rank: int, world: int, master_addr: str, master_port: int) -> None:
        os.environ.update(
            RANK=str(rank),
            LOCAL_RANK=str(int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0),
            WORLD_SIZE=str(world),
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        self.trainer = None

    @staticmethod
    def address() -> tuple[str, int]:
        from forge.ground.net import free_port

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, cfg: TrainerConfig, algo: AlgoConfig, torch_threads: int = 0) -> int:
        from trainer.engine import Trainer

        if torch_threads > 0:
            import torch

            torch.set_num_threads(torch_threads)

        self.trainer = Trainer(cfg, algo)
        return self.trainer.rank

    def train_step(self, records: Sequence[bytes]) -> dict[str, float]:
        return self.trainer.train_step([decode_episode(r) for r in records])

    def save_checkpoint(self, directory: str, tag: str | None = None) -> str:
        return self.trainer.save_checkpoint(directory, tag)

    def load_checkpoint(self, directory: str, tag: str | None = None) -> int:
        self.trainer.load_checkpoint(directory, tag)
        return self.trainer.step

    def weights_digest(self) -> str:
        return self.trainer.weights_digest()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run a Trainer method by name (e.g. weight sync code that needs the engine in-process)."""
        return getattr(self.trainer, method)(*args, **kwargs)


class TrainerRankLost(RuntimeError):
    """A trainer rank's actor died (its process or its node): the group cannot step without it."""


def get_all(refs: list[Any]) -> list[Any]:
    """`ray.get` of every rank's result, raising the first failure as soon as it happens.

    A plain `ray.get(refs)` waits for rank 0 first; when rank 1 fails, rank 0 blocks forever
    in a collective (the rendezvous, an all-reduce) and so would the driver. A rank whose actor
    died (e.g. its node was lost) raises `TrainerRankLost` naming the rank."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(done[0])
        except ray.exceptions.RayActorError as exc:
            rank = refs.index(done[0])
            raise TrainerRankLost(
                f"trainer rank {rank} of {len(refs)} died ({type(exc).__name__}): {str(exc).splitlines()[0]}"
            ) from exc
    return ray.get(list(refs))


class TrainerGroup:
    """N trainer ranks as Ray actors with a correct torch.distributed rendezvous."""

    def __init__(
        self,
        cfg: TrainerConfig,
        algo: AlgoConfig,
        world_size: int = 1,
        num_cpus: float = 0,
        num_gpus: float = 0,
        torch_threads: int = 0,
        rank_options: Sequence[dict[str, Any]] = (),
    ) -> None:
        """`rank_options[r]`: extra Ray actor options of rank r (e.g. resources that pin its node)."""
        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(TrainerActor)
        opts = list(rank_options) or [{}] * world_size
        if len(opts) != world_size:
            raise ValueError(f"rank_options has {len(opts)} entries for world_size={world_size}")
        probe = remote.options(**opts[0]).remote(0, world_size, "", 0)  # where rank 0 will run
        addr, port = ray.get(probe.address.remote())
        self.master_addr = addr  # rank 0's node address: the trainers' rendezvous
        ray.kill(probe)
        # rank 0 on the probe's node: on a cluster Ray may otherwise pick another one (even one
        # offering the same placement resource), and every rank would wait for it at `addr` forever
        opts[0] = {**opts[0], "resources": {**opts[0].get("resources", {}), f"node:{addr}": 0.001}}
        self.actors = [remote.options(**opts[r]).remote(r, world_size, addr, port) for r in range(world_size)]
        try:
            get_all([a.setup.remote(cfg, algo, torch_threads) for a in self.actors])
        except Exception:
            self.shutdown()
            raise

    def gather(self, refs: list[Any], probe_timeout_s: float = 120.0) -> list[Any]:
        """`get_all`, and when a rank fails because a peer vanished (gloo: connection reset), find
        the rank whose actor died and raise `TrainerRankLost` naming it instead."""
        try:
            return get_all(refs)
        except TrainerRankLost:
            raise
        except Exception as exc:
            if len(self.actors) < 2:
                raise
            for rank, actor in enumerate(self.actors):
                try:
                    ray.get(actor.__ray_ready__.remote(), timeout=probe_timeout_s)
                except ray.exceptions.RayActorError as lost:
                    raise TrainerRankLost(
                        f"trainer rank {rank} of {len(self.actors)} died ({type(lost).__name__}); "
                        f"the other ranks failed with {type(exc).__name__}: {str(exc).splitlines()[0]}"
                    ) from exc
                except ray.exceptions.GetTimeoutError:
                    raise TrainerRankLost(
                        f"trainer rank {rank} of {len(self.actors)} does not answer within {probe_timeout_s:g}s"
                    ) from exc
            raise

    def train_step(self, episodes: Sequence[Episode]) -> dict[str, float]:
        records = ray.put([encode(e) for e in episodes])
        return self.gather([a.train_step.remote(records) for a in self.actors])[0]

    def save_checkpoint(self, directory: str, tag: str | None = None) -> str:
        return self.gather([a.save_checkpoint.remote(directory, tag) for a in self.actors])[0]

    def load_checkpoint(self, directory: str, tag: str | None = None) -> int:
        return self.gather([a.load_checkpoint.remote(directory, tag) for a in self.actors])[0]

    def sync_weights(self, urls: list[str], version: int, mode: str, directory: str) -> dict[str, Any]:
        return self.call("sync_weights", urls, version, mode, directory)[0]

    def weights_digests(self) -> list[str]:
        return get_all([a.weights_digest.remote() for a in self.actors])

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return self.gather([a.call.remote(method, *args, **kwargs) for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
