"""A causal LM made ready to train with one attention kernel, the same way everywhere.

The Trainer, `forge bench tree` and the device profiles all call `prepare_for_training`, so a
bench measures the model the trainer runs: the attention implementation of the kernel, flex
compiled for dynamic sequence lengths, activation checkpointing, and (optionally) each decoder
layer under torch.compile.
"""

from __future__ import annotations

import torch

from trainer.attention import model_attn_implementation

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
# torch.compile's CUDA-graph modes, refused: with per-layer compile under DeepSpeed a train step took
# 1.46-1.47 s against 0.15 s in "default" (H200, forge bench trainer, sessions 7 and 9). Marking each
# micro-batch a new graph-tree iteration did not help; the cause is not established.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def check_compile_mode(mode: str) -> None:
    if mode in CUDA_GRAPH_MODES:
        raise ValueError(
            f"trainer.compile_mode={mode!r} uses CUDA graphs, which made a train step ~10x "
            f"slower here (see trainer/model_setup.py); use one of {COMPILE_MODES}"
        )
    if mode not in COMPILE_MODES:
        raise ValueError(f"trainer.compile_mode={mode!r}: expected one of {COMPILE_MODES}")


def prepare_for_training(
    model: torch.nn.Module,
    kernel: str,
    checkpointing: bool = True,
    compile_layers: bool = False,
    compile_mode: str = "default",
) -> torch.nn.Module:
    """Set `model` (a transformers causal LM) up in place for training with `kernel`; returns it."""
    check_compile_mode(compile_mode)
    model.set_attn_implementation(model_attn_implementation(kernel))
    if kernel == "flex":
        # transformers compiles flex_attention once, static in the sequence length; the first
        # batch of a new length then recompiles it (~10 s on an H100, mid-run). Packed lengths
        # change every step, so compile for dynamic shapes from the start.
        from torch._dynamo import config as dynamo_config

        dynamo_config.assume_static_by_default = False
    model.config.use_cache = False
    if checkpointing:
        # transformers >= 5.23 renamed it; the GPU image's 5.17 has only the old name
        enable = (
            getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        )
        enable({"use_reentrant": False})
    if compile_layers:
        for layer in model.get_decoder().layers:
            layer.compile(dynamic=True, mode=None if compile_mode == "default" else compile_mode)
    model.train()
    return model
