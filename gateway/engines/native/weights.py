"""Weight updates for the built-in engine: from a safetensors directory, or received over torch.distributed.

Tensors are named as in the model's Hugging Face checkpoint (= `model.state_dict()` keys). They
are checked (known name, same shape) before anything is written, then copied *in place* into the
existing parameters, so the KV cache layout and captured CUDA graphs stay valid. A tied LM head
that a checkpoint leaves out is fine; a name the model does not have is an error.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist


class WeightError(ValueError):
    """A weight update that cannot be applied (answered 400 with success=false)."""


def _targets(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict(keep_vars=False))


def check(model: torch.nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    targets = _targets(model)
    unknown = sorted(n for n in shapes if n not in targets)
    if unknown:
        raise WeightError(f"unknown parameter name(s): {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    for name, shape in shapes.items():
        if tuple(targets[name].shape) != tuple(shape):
            raise WeightError(
                f"{name}: shape {list(shape)} does not match the model's {list(targets[name].shape)}"
            )


@torch.no_grad()
def apply(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> int:
    """Copy tensors into the model's parameters/buffers in place; returns how many were copied."""
    check(model, {n: tuple(t.shape) for n, t in tensors.items()})
    targets = _targets(model)
    for name, tensor in tensors.items():
        targets[name].copy_(tensor.to(device=targets[name].device, dtype=targets[name].dtype))
    return len(tensors)


def load_dir(model: torch.nn.Module, path: str | Path) -> int:
    """Load every `*.safetensors` file of a directory (a `save_pretrained` output) into the model."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_dir():
        raise WeightError(f"model_path {str(path)!r} is not a directory")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightError(f"no .safetensors files in {str(path)!r}")
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                shapes[name] = tuple(fh.get_slice(name).get_shape())
    check(model, shapes)
    count = 0
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            count += apply(model, {name: fh.get_tensor(name) for name in fh.keys()})  # noqa: SIM118
    return count


def receive(
    group: dist.ProcessGroup,
    names: list[str],
    dtypes: list[str],
    shapes: list[list[int]],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Receive one broadcast from rank 0 per name, in order (SGLang's update_weights_from_distributed)."""
    if not (len(names) == len(dtypes) == len(shapes)):
        raise WeightError("names, dtypes and shapes must have the same length")
    tensors: dict[str, torch.Tensor] = {}
    handles = []
    for name, dtype_name, shape in zip(names, dtypes, shapes, strict=True):
        dtype = getattr(torch, str(dtype_name).removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise WeightError(f"{name}: unknown dtype {dtype_name!r}")
        buf = torch.empty([int(s) for s in shape], dtype=dtype, device=device)
        handles.append(dist.broadcast(buf, src=0, group=group, async_op=True))
        tensors[name] = buf
    for h in handles:
        h.wait()
    return tensors
