"""Share a CUDA buffer with another process on the same GPU, without pickle.

Colocated training (trainer and engine on one GPU) cannot sync weights over NCCL: NCCL refuses
two ranks on one device ("Duplicate GPU detected"). The trainer instead packs a bucket of
tensors into one flat byte buffer and hands the engine a CUDA IPC handle to it; the engine maps
the buffer, copies each tensor into its own parameters and answers, after which the trainer
frees it. This is the `update_weights_from_tensor` route of SGLang's protocol, with
`load_format="forge_cuda_ipc"` and each entry of `serialized_named_tensors` a base64 msgpack
map (never a pickle: nothing from the network is unpickled).

    payload = pack_bucket(named_tensors)          # producer: keep payload.buffer alive until answered
    named = unpack_bucket(decode(encode(payload.meta)))   # consumer: views into the shared buffer

The IPC fields are those of `torch.multiprocessing.reductions.reduce_tensor`; the device is
named by its UUID, since each process may number its visible GPUs differently.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import msgpack
import torch

FORMAT = "forge_cuda_ipc"
VERSION = 1


class IPCError(ValueError):
    """A payload that cannot be opened here (answered 400)."""


def device_uuid(device: torch.device | int | None = None) -> str:
    """The GPU's UUID as a string ("" without CUDA): the same for every process on that GPU."""
    if not torch.cuda.is_available():
        return ""
    if device is None:
        index = torch.cuda.current_device()
    elif isinstance(device, torch.device):
        index = device.index if device.index is not None else torch.cuda.current_device()
    else:
        index = int(device)
    return str(torch.cuda.get_device_properties(index).uuid)


@dataclass
class Bucket:
    meta: dict[str, Any]
    buffer: torch.Tensor  # the producer must keep this alive until every consumer answered


def pack_bucket(named_tensors: list[tuple[str, torch.Tensor]]) -> Bucket:
    """Copy tensors into one flat uint8 CUDA buffer and describe it for `unpack_bucket`."""
    if not named_tensors:
        raise ValueError("an empty bucket")
    device = named_tensors[0][1].device
    if device.type != "cuda":
        raise ValueError(f"CUDA IPC needs CUDA tensors, got {device}")
    sizes = [t.numel() * t.element_size() for _, t in named_tensors]
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += (n + 255) // 256 * 256  # keep every view aligned
    flat = torch.empty(total, dtype=torch.uint8, device=device)
    for (_, t), off, n in zip(named_tensors, offsets, sizes, strict=True):
        flat[off : off + n].copy_(t.detach().contiguous().view(-1).view(torch.uint8))
    storage = flat.untyped_storage()
    (_, handle, size_bytes, offset_bytes, ref_handle, ref_offset, event_handle, event_sync) = (
        storage._share_cuda_()
    )
    meta = {
        "v": VERSION,
        "names": [n for n, _ in named_tensors],
        "dtypes": [str(t.dtype).removeprefix("torch.") for _, t in named_tensors],
        "shapes": [list(t.shape) for _, t in named_tensors],
        "offsets": offsets,
        "nbytes": total,
        "device_uuid": device_uuid(device),
        "handle": bytes(handle),
        "storage_size_bytes": int(size_bytes),
        "storage_offset_bytes": int(offset_bytes),
        "ref_counter_handle": bytes(ref_handle),
        "ref_counter_offset": int(ref_offset),
        "event_handle": bytes(event_handle) if event_handle is not None else None,
        "event_sync_required": bool(event_sync),
    }
    return Bucket(meta, flat)


def encode(meta: dict[str, Any]) -> str:
    return base64.b64encode(msgpack.packb(meta, use_bin_type=True)).decode("ascii")


def decode(text: Any) -> dict[str, Any]:
    if not isinstance(text, str):
        raise IPCError("each serialized_named_tensors entry must be a base64 string")
    try:
        meta = msgpack.unpackb(base64.b64decode(text, validate=True), raw=False)
    except Exception as exc:  # noqa: BLE001 - any malformed payload is the client's error
        raise IPCError(f"not a base64 msgpack payload: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("v") != VERSION:
        raise IPCError(
            f"unsupported {FORMAT} payload (version {meta.get('v') if isinstance(meta, dict) else None})"
        )
    need = ("names", "dtypes", "shapes", "offsets", "nbytes", "device_uuid", "handle")
    missing = [k for k in need if k not in meta]
    if missing:
        raise IPCError(f"{FORMAT} payload lacks {missing}")
    if not (len(meta["names"]) == len(meta["dtypes"]) == len(meta["shapes"]) == len(meta["offsets"])):
        raise IPCError("names, dtypes, shapes and offsets must have the same length")
    return meta


def _local_index(uuid: str) -> int:
    for i in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(i).uuid) == uuid:
            return i
    raise IPCError(f"GPU {uuid} is not visible to this process: CUDA IPC needs trainer and engine on one GPU")


def unpack_bucket(meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Map the producer's buffer and return named views into it (valid while they are referenced)."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    if not torch.cuda.is_available():
        raise IPCError("this engine has no CUDA device")
    index = _local_index(str(meta["device_uuid"]))
    flat = rebuild_cuda_tensor(
        torch.Tensor,
        (int(meta["nbytes"]),),
        (1,),
        0,
        torch.storage.UntypedStorage,
        torch.uint8,
        index,
        meta["handle"],
        int(meta["storage_size_bytes"]),
        int(meta["storage_offset_bytes"]),
        False,
        meta["ref_counter_handle"],
        int(meta["ref_counter_offset"]),
        meta["event_handle"],
        bool(meta["event_sync_required"]),
    )
    out: dict[str, torch.Tensor] = {}
    for name, dtype_name, shape, off in zip(
        meta["names"], meta["dtypes"], meta["shapes"], meta["offsets"], strict=True
    ):
        dtype = getattr(torch, str(dtype_name), None)
        if not isinstance(dtype, torch.dtype):
            raise IPCError(f"{name}: unknown dtype {dtype_name!r}")
        numel = 1
        for s in shape:
            numel *= int(s)
        n = numel * torch.empty((), dtype=dtype).element_size()
        if off < 0 or off + n > int(meta["nbytes"]):
            raise IPCError(f"{name}: bytes [{off}, {off + n}) outside the {meta['nbytes']}-byte buffer")
        out[name] = flat[off : off + n].view(dtype).view([int(s) for s in shape])
    return out
