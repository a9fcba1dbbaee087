"""Trainer → engine weight sync over torch.distributed, in SGLang's `update_weights_from_distributed` format.

The protocol (SGLang's, and the built-in engine's):
1. The trainer (rank 0) and every engine (rank `rank_offset`, 1..N) form a process group of
   their own, rendezvousing over TCP at `master_address:master_port` (the trainer hosts the
   store). Engines join when POSTed `/init_weights_update_group`; the trainer joins with
   `new_weight_update_group(..., rank=0)` at the same time (both block until all have joined).
   The group is separate from the trainer's default (training) group, and needs none.
2. For each update, the trainer POSTs `/update_weights_from_distributed` with the names, dtypes
   and shapes of a bucket of tensors and, while that call is open, broadcasts each tensor from
   rank 0 in exactly that order (`broadcast_weights`). The engine answers once it has received
   and loaded them all.

gloo on CPU, NCCL on GPU (then tensors must be on the current CUDA device).

    group = connect_engines(urls, "127.0.0.1", port, backend="gloo")
    push_weights(urls, group, model.state_dict().items(), weight_version="3")
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_GROUP_NAME = "weight_update_group"


def new_weight_update_group(
    backend: str,
    master_address: str,
    master_port: int,
    world_size: int,
    rank: int,
    group_name: str = DEFAULT_GROUP_NAME,
    timeout_s: float = 600.0,
) -> dist.ProcessGroup:
    """A process group of its own (no default group needed), as SGLang's engines create theirs:
    TCP rendezvous, a store prefixed by `group_name`, and ranks 0..world_size-1 that are their own
    "global" ranks (so `broadcast(src=0, group=g)` means the trainer)."""
    from torch.distributed import distributed_c10d as c10d

    timeout = timedelta(seconds=timeout_s)
    init_method = f"tcp://{master_address}:{int(master_port)}"
    store, rank, world_size = next(c10d.rendezvous(init_method, rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    store = c10d.PrefixStore(group_name, store)
    pg, _ = c10d._new_process_group_helper(
        world_size,
        rank,
        [],
        c10d.Backend(backend),
        store,
        group_name=group_name,  # type: ignore[arg-type]  # c10d's private helper wants its GroupName
        backend_options=None,
        timeout=timeout,
    )
    c10d._world.pg_group_ranks[pg] = {i: i for i in range(world_size)}
    return pg


def destroy_group(group: dist.ProcessGroup) -> None:
    dist.destroy_process_group(group)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 → "bfloat16" (the string SGLang turns back with getattr(torch, name))."""
    return str(dtype).removeprefix("torch.")


def broadcast_weights(group: dist.ProcessGroup, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Broadcast each tensor from rank 0 (this process), in order; returns the bytes sent.

    The receiving side allocates `torch.empty(shape, dtype)` per name and posts one broadcast each,
    in the same order, so tensors must be contiguous and of the dtype announced."""
    handles = []
    sent = 0
    for _, tensor in named_tensors:
        t = tensor.detach()
        if not t.is_contiguous():
            t = t.contiguous()
        handles.append(dist.broadcast(t, src=0, group=group, async_op=True))
        sent += t.numel() * t.element_size()
    for h in handles:
        h.wait()
    return sent


def buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group tensors into lists of at most `bucket_bytes` (a larger tensor goes alone)."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        n = tensor.numel() * tensor.element_size()
        if bucket and size + n > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += n
    if bucket:
        yield bucket


def connect_engines(
    urls: Sequence[str],
    master_address: str,
    master_port: int,
    backend: str = "nccl",
    group_name: str = DEFAULT_GROUP_NAME,
    timeout_s: float = 600.0,
) -> dist.ProcessGroup:
    """Form the weight-update group with engines at `urls` (one rank each, ranks 1..N); rank 0 here.

    A group of the same name left on an engine by an earlier, failed attempt is destroyed first.
    If an engine refuses to join, this raises at once instead of waiting out the rendezvous."""
    from forge.ground.engine_client import EngineRequestError, SyncEngineClient

    for url in urls:
        try:
            SyncEngineClient(url, timeout=60).destroy_weights_update_group(group_name)
        except EngineRequestError:
            pass  # none there: the usual case
    world_size = len(urls) + 1
    errors: list[BaseException] = []
    failed = threading.Event()

    def join(i: int, url: str) -> None:
        try:
            out = SyncEngineClient(url, timeout=timeout_s).init_weights_update_group(
                master_address, master_port, i + 1, world_size, group_name, backend
            )
            if isinstance(out, dict) and not out.get("success", True):
                raise RuntimeError(f"{url}: {out.get('message')}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            failed.set()

    result: list[Any] = []

    def host() -> None:
        try:
            result.append(
                new_weight_update_group(
                    backend, master_address, master_port, world_size, 0, group_name, timeout_s
                )
            )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            failed.set()

    threads = [threading.Thread(target=join, args=(i, u), daemon=True) for i, u in enumerate(urls)]
    hosting = threading.Thread(target=host, daemon=True)
    hosting.start()
    for t in threads:
        t.start()
    while hosting.is_alive() or any(t.is_alive() for t in threads):
        if failed.wait(0.05):
            break
    if errors:
        raise RuntimeError(f"engines failed to join the weight-update group: {errors}")
    return result[0]


def leave_engines(urls: Sequence[str], group_name: str = DEFAULT_GROUP_NAME) -> None:
    """Best effort: ask engines to drop the weight-update group (after a failed sync)."""
    from forge.ground.engine_client import EngineError, SyncEngineClient

    for url in urls:
        try:
            SyncEngineClient(url, timeout=60).destroy_weights_update_group(group_name)
        except EngineError:
            pass


def push_weights(
    urls: Sequence[str],
    group: dist.ProcessGroup | None,
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    weight_version: str,
    group_name: str = DEFAULT_GROUP_NAME,
    bucket_bytes: int = 1 << 30,
    pause: bool = True,
    timeout_s: float = 600.0,
    ipc_urls: Sequence[str] = (),
) -> dict[str, Any]:
    """Send all tensors to every engine, bucket by bucket, and set `weight_version`.

    Engines at `urls` are the members of `group` (broadcast); engines at `ipc_urls` share this
    process's GPU and get each bucket as a CUDA IPC buffer instead (NCCL refuses two ranks on one
    GPU). With `pause` (default) engines are paused in place for the whole update, so no token is
    generated with half-updated weights; every bucket carries the same `weight_version`."""
    from forge.ground.engine_client import SyncEngineClient

    if urls and group is None:
        raise ValueError("engines to broadcast to, but no weight-update group")
    clients = [SyncEngineClient(u, timeout=timeout_s) for u in urls]
    ipc_clients = [SyncEngineClient(u, timeout=timeout_s) for u in ipc_urls]
    everyone = clients + ipc_clients
    if pause:
        for c in everyone:
            c.pause_generation("in_place")
    try:
        total, count = 0, 0
        for bucket in buckets(named_tensors, bucket_bytes):
            if clients:
                assert group is not None  # checked above: engines to broadcast to need the group
                total += _push_bucket(clients, group, bucket, str(weight_version), group_name)
            if ipc_clients:
                total += _push_bucket_ipc(ipc_clients, bucket, str(weight_version))
            count += 1
    finally:
        if pause:
            for c in everyone:
                c.continue_generation()
    return {
        "buckets": count,
        "bytes": total,
        "weight_version": str(weight_version),
        "ipc_engines": len(ipc_urls),
    }


def _push_bucket_ipc(
    clients: Sequence[Any], bucket: list[tuple[str, torch.Tensor]], weight_version: str
) -> int:
    from forge.ground import cuda_ipc

    packed = cuda_ipc.pack_bucket(bucket)
    torch.cuda.current_stream().synchronize()  # the buffer is filled before an engine reads it
    entry = cuda_ipc.encode(packed.meta)
    try:
        for client in clients:
            out = client.update_weights_from_tensor([entry], cuda_ipc.FORMAT, weight_version)
            if isinstance(out, dict) and not out.get("success", True):
                raise RuntimeError(f"{client.base_url}: {out.get('message')}")
    finally:
        del packed
        torch.cuda.ipc_collect()  # free buffers the engines have released
    return sum(t.numel() * t.element_size() for _, t in bucket)


def _push_bucket(
    clients: Sequence[Any],
    group: dist.ProcessGroup,
    bucket: list[tuple[str, torch.Tensor]],
    weight_version: str,
    group_name: str,
) -> int:
    names = [n for n, _ in bucket]
    dtypes = [dtype_name(t.dtype) for _, t in bucket]
    shapes = [list(t.shape) for _, t in bucket]
    errors: list[BaseException] = []

    def post(client: Any) -> None:
        try:
            out = client.update_weights_from_distributed(names, dtypes, shapes, group_name, weight_version)
            if isinstance(out, dict) and not out.get("success", True):
                raise RuntimeError(f"{client.base_url}: {out.get('message')}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    sent = broadcast_weights(group, bucket)
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"weight update failed: {errors}")
    return sent


def push_weights_via_disk(
    urls: Sequence[str],
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    weight_version: int | str,
    directory: str,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """The fallback path: write one safetensors file, then POST /update_weights_from_disk to each engine.

    Only the newest version is kept on disk (older `v*` directories are removed)."""
    import shutil
    from pathlib import Path

    from safetensors.torch import save_file

    from forge.ground.engine_client import SyncEngineClient

    root = Path(directory)
    target = root / f"v{weight_version}"
    target.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in named_tensors}
    save_file(tensors, str(target / "model.safetensors"))
    for url in urls:
        out = SyncEngineClient(url, timeout=timeout_s).update_weights_from_disk(
            str(target), weight_version=str(weight_version)
        )
        if isinstance(out, dict) and not out.get("success", True):
            raise RuntimeError(f"{url}: {out.get('message')}")
    for old in root.glob("v*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return {"bytes": sum(t.numel() * t.element_size() for t in tensors.values()), "path": str(target)}
