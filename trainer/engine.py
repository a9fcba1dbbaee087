"""The train engine: one DeepSpeed rank that turns a batch of Episodes into one optimizer step.
(Its set-up helpers: trainer/deepspeed_setup.py; its DeepSpeed patches: trainer/deepspeed_patches.py.)

Plain Python, no Ray: `Trainer(cfg, algo).train_step(episodes)`. Under data parallelism every
rank receives the whole batch (advantages and the token normaliser need all of it), then keeps
its share of the samples (whole groups, balanced by tokens). Each rank runs the same number of
micro-batches — a rank with less work runs zero-weight filler micro-batches — because ZeRO-3
collectives run per micro-batch. DeepSpeed averages gradients over ranks, so each rank's loss
is multiplied by the world size to keep the global token-level normalisation exact.

A non-finite loss or gradient norm skips the step (DeepSpeed's overflow check for ZeRO ≥ 1,
our own check for stage 0) and is reported in the metrics; it is never applied.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from forge.ground.net import free_port
from forge.ground.types import Episode
from trainer.advantages import compute_advantages
from trainer.batch import MicroBatch, TrainSample, build_samples, collate, make_microbatches
from trainer.config import AlgoConfig, TrainerConfig
from trainer.deepspeed_patches import fuse_clip_into_adam, fuse_grad_norm, fuse_overflow_check
from trainer.deepspeed_setup import (
    deepspeed_config,
    node_ip,
    reference_config,
    resolve_backend,
    resolve_device,
    resolve_precision,
)
from trainer.losses import check_algo, normalisation
from trainer.model_setup import prepare_for_training
from trainer.step import forward_backward

log = logging.getLogger("forge.trainer")

SUMMED = ("loss", "trained_tokens", "tree_tokens", "flat_tokens")
TOKEN_MEANS = ("clip_fraction", "masked_fraction", "entropy", "is_ratio_mean")


def shard_samples(samples: Sequence[TrainSample], rank: int, world: int) -> list[TrainSample]:
    """Whole groups per rank (their prefixes merge), balanced greedily by token count."""
    groups: dict[str, list[TrainSample]] = {}
    for s in samples:
        groups.setdefault(s.group, []).append(s)
    loads = [0] * world
    mine: list[TrainSample] = []
    for _, members in sorted(groups.items(), key=lambda kv: -sum(len(s.tokens) for s in kv[1])):
        r = loads.index(min(loads))
        loads[r] += sum(len(s.tokens) for s in members)
        if r == rank:
            mine.extend(members)
    return mine


def filler_microbatch() -> MicroBatch:
    """A two-token micro-batch with zero weight: keeps ranks' collective calls in step."""
    s = TrainSample(
        "filler#0", np.zeros(2, dtype=np.int64), 1, np.zeros(1, np.float32), np.zeros(1, np.float32), 0.0
    )
    mb = collate([s], merge=True)
    mb.flat_tokens = 0
    return mb


class Trainer:
    """One rank of the DeepSpeed train engine."""

    def __init__(self, cfg: TrainerConfig, algo: AlgoConfig, model: torch.nn.Module | None = None) -> None:
        import deepspeed

        from forge.ground.models import build_model

        self.cfg, self.algo = cfg, algo
        self.device = resolve_device(cfg)
        self.kernel, self.merge = resolve_backend(cfg, self.device)
        self.precision = resolve_precision(cfg, self.device)
        if cfg.fp32_lm_head and cfg.zero_stage == 3:
            raise ValueError("trainer.fp32_lm_head=true is not supported with trainer.zero_stage=3")
        check_algo(algo)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        if self.device == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        if not dist.is_initialized():
            deepspeed.init_distributed(
                dist_backend="nccl" if self.device == "cuda" else "gloo", verbose=False
            )
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(cfg.seed)
        if model is None:
            model = build_model(cfg.model, dtype=torch.float32, seed=cfg.seed)
        # the KL term's π_ref: the initial weights, frozen (a resumed run rebuilds it the same way)
        reference = copy.deepcopy(model) if algo.kl_coef > 0 else None
        # ZeRO-3 gathers each weight in module hooks, which compiled layers would trace (as for the head)
        self.compiled_layers = cfg.compile_layers and self.device == "cuda" and cfg.zero_stage != 3
        prepare_for_training(
            model, self.kernel, cfg.gradient_checkpointing, self.compiled_layers, cfg.compile_mode
        )
        self.engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=deepspeed_config(cfg, self.precision, self.world, self.device),
        )
        self.model = self.engine.module
        self.reference: torch.nn.Module | None = None
        if reference is not None:
            prepare_for_training(reference, self.kernel, False, self.compiled_layers, cfg.compile_mode)
            reference.requires_grad_(False)
            if cfg.zero_stage == 3:  # partitioned like the policy: DeepSpeed without an optimizer
                ref_engine, *_ = deepspeed.initialize(
                    model=reference, config=reference_config(self.precision, self.world)
                )
                reference = ref_engine.module
            else:
                dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
                reference = reference.to(self.engine.device, dtype)
            self.reference = reference.eval()
        if cfg.zero_stage in (1, 2):
            fuse_overflow_check(self.engine.optimizer)
            if not getattr(self.engine.optimizer, "cpu_offload", False):
                fuse_grad_norm(self.engine.optimizer)
            fuse_clip_into_adam(self.engine.optimizer)
        self.step = 0
        self.skipped_steps = 0
        self._sync_group: dist.ProcessGroup | None = None  # weight-update group, formed on first sync
        self._engine_uuids: dict[str, str] = {}  # engine URL → its GPU's UUID ("" off GPU)

    # ------------------------------------------------------------------ training
    def _all_reduce(self, values: list[float], op=dist.ReduceOp.SUM) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.engine.device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def train_step(self, episodes: Sequence[Episode]) -> dict[str, float]:
        """One optimizer step on a batch of completed episodes; returns global metrics."""
        start = time.perf_counter()
        advantages = compute_advantages(episodes, self.algo)
        samples, empty = build_samples(episodes, advantages, normalisation(self.algo))
        mine = shard_samples(samples, self.rank, self.world)
        mbs = make_microbatches(mine, self.cfg.micro_batch_tokens, self.merge)
        n_mb = int(self._all_reduce([len(mbs)], dist.ReduceOp.MAX)[0])
        mbs += [filler_microbatch() for _ in range(n_mb - len(mbs))]
        world = float(self.world)

        finite_losses: list[torch.Tensor] = []

        def backward(loss: torch.Tensor) -> None:
            # read once after the last micro-batch: a read here would stall the host until the
            # forward pass finished, before it could queue the backward
            finite_losses.append(torch.isfinite(loss.detach()))
            self.engine.backward(loss * world)

        prepared = self._clock()
        m = forward_backward(
            self.model,
            mbs,
            self.algo,
            self.kernel,
            backward,
            self.cfg.fp32_lm_head,
            self.cfg.logprob_chunk,
            # ZeRO-3 gathers the head weight in module hooks, which compiled code would trace
            compiled_head=self.cfg.compile_lm_head and self.device == "cuda" and self.cfg.zero_stage != 3,
            kernel_options=self.cfg.flex_kernel_options or None,
            fused_head=self.cfg.fused_lm_head and self.cfg.zero_stage != 3,
            reference=self.reference,
        )
        finite = bool(torch.stack(finite_losses).all()) if finite_losses else True
        finite = bool(self._all_reduce([0.0 if finite else 1.0])[0] == 0)
        computed = self._clock()
        applied = self._optimizer_step(finite)
        stepped = self._clock()
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        metrics = self._global_metrics(m)
        elapsed = time.perf_counter() - start
        self.step += int(applied)
        self.skipped_steps += int(not applied)
        metrics.update(
            step=float(self.step),
            step_applied=float(applied),
            skipped_steps=float(self.skipped_steps),
            nonfinite_loss=float(not finite),
            grad_norm=grad_norm,
            empty_completions_skipped=float(empty),
            samples=float(len(samples)),
            episodes=float(len(episodes)),
            token_ratio=metrics["flat_tokens"] / max(metrics["tree_tokens"], 1.0),
            step_time_s=elapsed,
            time_prepare_s=prepared - start,
            time_forward_backward_s=computed - prepared,
            time_optimizer_s=stepped - computed,
            # what a flat (unmerged) trainer would have had to process per second, and what we computed
            trained_tokens_per_s=metrics["flat_tokens"] / elapsed,
            computed_tokens_per_s=metrics["tree_tokens"] / elapsed,
        )
        return metrics

    def _optimizer_step(self, finite_loss: bool) -> bool:
        """Apply the step unless a loss or the gradient is non-finite; True when applied."""
        if self.cfg.zero_stage == 0:
            # no ZeRO optimizer: check the gradients ourselves (before DeepSpeed all-reduces them)
            local_ok = all(
                p.grad is None or bool(torch.isfinite(p.grad).all()) for p in self.model.parameters()
            )
            ok = self._all_reduce([0.0 if (local_ok and finite_loss) else 1.0])[0] == 0
            if not ok:
                self.engine.zero_grad()
                self.engine.optimizer.zero_grad(set_to_none=True)
                return False
            self.engine.step()
            return True
        if not finite_loss:
            self._poison_gradients()  # make DeepSpeed's overflow check see it and skip the step
        self.engine.step()
        return bool(self.engine.was_step_applied())

    def _clock(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def _poison_gradients(self) -> None:
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.fill_(float("nan"))
                return

    def _global_metrics(self, m: dict[str, float]) -> dict[str, float]:
        n = m["trained_tokens"]
        means = TOKEN_MEANS + (("kl",) if "kl" in m else ())  # kl: every rank or none (algo.kl_coef)
        summed = self._all_reduce([m[k] for k in SUMMED] + [m[k] * n for k in means])
        out = dict(zip(SUMMED, summed[: len(SUMMED)], strict=True))
        n_all = max(out["trained_tokens"], 1.0)
        out.update({k: v / n_all for k, v in zip(means, summed[len(SUMMED) :], strict=True)})
        hi = self._all_reduce([m["is_ratio_max"]], dist.ReduceOp.MAX)[0]
        lo = -self._all_reduce([-m["is_ratio_min"] if n else -math.inf], dist.ReduceOp.MAX)[0]
        out.update(is_ratio_max=hi, is_ratio_min=lo, microbatches=m["microbatches"])
        for k in ("tis_mean", "tis_max"):
            if k in m:
                out[k] = m[k]
        return out

    # ------------------------------------------------------------------ state
    def save_checkpoint(self, directory: str, tag: str | None = None) -> str:
        tag = tag or f"step{self.step}"
        self.engine.save_checkpoint(
            directory,
            tag=tag,
            client_state={"step": self.step, "skipped": self.skipped_steps, "cfg": asdict(self.cfg)},
        )
        return tag

    def load_checkpoint(self, directory: str, tag: str | None = None) -> None:
        path, client = self.engine.load_checkpoint(directory, tag=tag)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory!r} (tag={tag!r})")
        self.step = int(client.get("step", 0))
        self.skipped_steps = int(client.get("skipped", 0))

    def export_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full named tensors (gathered one by one under ZeRO-3), for weight sync and export.

        Every rank must iterate (the ZeRO-3 gather is collective); ranks other than 0 may
        ignore what they get.
        """
        import deepspeed

        for name, p in self.model.named_parameters():
            if hasattr(p, "ds_id"):  # ZeRO-3 partitioned parameter
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    yield name, p.data.detach().clone()
            else:
                yield name, p.data.detach()

    def sync_weights(
        self, urls: Sequence[str], version: int, mode: str = "distributed", directory: str | None = None
    ) -> dict[str, Any]:
        """Push the current weights to the inference engines at `urls`, tagged `version`.

        Every rank walks `export_weights()` (ZeRO-3 gathers are collective); rank 0 sends, over a
        torch.distributed group formed with the engines on first use (gloo on CPU, NCCL on
        GPU) or, with mode="disk" or when that fails, through a safetensors directory and
        /update_weights_from_disk.
        """
        start = time.perf_counter()
        named = self.export_weights()
        if self.rank != 0:
            for _ in named:
                pass
            return {}
        from forge.ground import weight_sync

        info: dict[str, Any] = {"mode": mode}
        if mode == "distributed":
            remote, local = self._split_by_gpu(urls)
            try:
                if remote and self._sync_group is None:
                    backend = "nccl" if self.device == "cuda" else "gloo"
                    self._sync_group = weight_sync.connect_engines(remote, node_ip(), free_port(), backend)
                info.update(
                    weight_sync.push_weights(remote, self._sync_group, named, str(version), ipc_urls=local)
                )
            except Exception as exc:
                # re-exporting alone is only possible when the gather is not collective
                if directory is None or (self.cfg.zero_stage == 3 and self.world > 1):
                    raise
                if self._sync_group is not None:
                    weight_sync.destroy_group(self._sync_group)
                self._sync_group = None
                weight_sync.leave_engines(remote)
                info = {"mode": "disk", "fallback_reason": f"{type(exc).__name__}: {exc}"}
                log.warning("weight sync fell back to disk: %s", info["fallback_reason"])
                named = self.export_weights()
        if info["mode"] == "disk":
            if directory is None:
                raise ValueError("disk weight sync needs a directory")
            info.update(weight_sync.push_weights_via_disk(urls, named, version, directory))
        return {**info, "seconds": time.perf_counter() - start}

    def _split_by_gpu(self, urls: Sequence[str]) -> tuple[list[str], list[str]]:
        """(engines on other devices: broadcast, engines on this GPU: CUDA IPC). NCCL refuses two
        ranks on one GPU, so a colocated engine (same GPU UUID in /get_model_info) gets IPC."""
        if self.device != "cuda":
            return list(urls), []
        from forge.ground.cuda_ipc import device_uuid
        from forge.ground.engine_client import SyncEngineClient

        cache = self._engine_uuids
        mine = device_uuid()
        remote: list[str] = []
        local: list[str] = []
        for url in urls:
            if url not in cache:
                cache[url] = str(SyncEngineClient(url, timeout=60).get_model_info().get("device_uuid") or "")
            (local if cache[url] == mine else remote).append(url)
        return remote, local

    def weights_digest(self) -> str:
        """A checksum of the full weights (for tests: ranks must agree)."""
        import hashlib

        h = hashlib.sha256()
        for name, t in self.export_weights():
            h.update(name.encode())
            h.update(t.float().cpu().numpy().tobytes())
        return h.hexdigest()
