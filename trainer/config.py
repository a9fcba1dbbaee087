"""Typed configuration of the trainer tier (registered in Hydra's ConfigStore by forge.config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class AlgoConfig:
    """The policy-gradient objective and its advantage estimator.

    name: cispo (M1 form, clip(r, 1-eps_low, 1+eps_high)), cispo_m2 (clip(r, 0, 1+eps_high)),
    grpo (PPO-clip surrogate, sequence-mean normalisation) or ppo (PPO-clip, token-level).
    MiniMax publishes no epsilon values: eps_low=1.0 means "no lower bound" (M1 set it large),
    eps_high=0.28 is our default; the clip fraction is logged so it can be tuned.
    """

    name: str = "cispo"
    eps_low: float = 1.0
    eps_high: float = 0.28
    ppo_eps: float = 0.2  # grpo / ppo clip range
    unified_mask: bool = False  # CISPO eq. 6-7: mask M recovering the PPO trust region
    advantage: str = "group"  # group | m2_step (per-step reward-to-go minus a trajectory baseline)
    normalize_std: bool = True  # divide group-relative advantages by the group's std
    alpha_process: float = 1.0  # m2_step: weight of the per-step "process" reward
    beta_speed: float = 1.0  # m2_step: weight of the per-step "speed" reward
    tis_cap: float = 0.0  # >0: truncated IS weight min(pi_trainer/pi_behaviour, cap) on every token
    # KL to a reference policy (a frozen copy of the initial weights), off by default as in
    # MiniMax-M1; >0 adds kl_coef · Σ_t w_t · KL_t to the loss (GRPO's paper used 0.04)
    kl_coef: float = 0.0
    kl_estimator: str = "k3"  # k1: log π/π_ref; k2: ½(log π/π_ref)²; k3: π_ref/π − log(π_ref/π) − 1


@dataclass
class TrainerConfig:
    """The DeepSpeed train engine."""

    model: str = "tiny"  # a name forge.ground.models resolves, or a local HF directory
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | fp32 | bf16
    zero_stage: int = 2
    backend: str = "auto"  # auto (flex on cuda, sdpa_dense on cpu) | sdpa_dense | flex | flat
    micro_batch_tokens: int = 4096  # token budget of one packed micro-batch
    lr: float = 1e-6
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-15  # MiniMax-M1's AdamW settings
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    gradient_checkpointing: bool = True
    # torch.compile each decoder layer (fuses norms, rotary, MLP); on CUDA with ZeRO 0-2 only, the
    # CPU path stays eager. H200, 0.6B, 16k tokens: 0.154 s per step against 0.317 s eager (RESULTS.md)
    compile_layers: bool = True
    # torch.compile the LM head's softmax passes (one fused pass over each logits chunk instead
    # of ~10 eager ones); on CUDA with ZeRO 0-2 only, the CPU path stays eager
    compile_lm_head: bool = True
    # torch.compile mode of those layers: default | max-autotune-no-cudagraphs (CUDA-graph modes
    # are refused, see trainer.model_setup)
    compile_mode: str = "default"
    # FlexAttention kernel options (fwd_/bwd_ BLOCK_M, BLOCK_N, num_stages, num_warps, USE_TMA, ...)
    flex_kernel_options: dict[str, Any] = field(default_factory=dict)
    fp32_lm_head: bool = False  # compute the LM head in fp32 (M1's train/inference mismatch fix)
    logprob_chunk: int = 1024  # rows per LM-head chunk: [chunk x vocab] is the largest logits block
    # head + log-softmax + loss with its gradient in one pass (trainer.fused_head): no recomputed
    # logits. ZeRO-3 (partitioned head weight) always uses the checkpointed head.
    fused_lm_head: bool = True
    # extra keys for DeepSpeed's zero_optimization section (overlap_comm, contiguous_gradients,
    # reduce_bucket_size, ...), checked by DeepSpeed at start; "stage" comes from zero_stage
    zero_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
