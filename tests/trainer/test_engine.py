"""The plain Trainer (one rank, in-process, gloo): bad input, skipped steps, ZeRO-3 export, learning."""

import numpy as np
import pytest
import torch

from forge.ground.types import Episode, Sample, Task
from trainer.batch import build_samples, make_microbatches
from trainer.config import AlgoConfig, TrainerConfig
from trainer.engine import Trainer
from trainer.logprobs import completion_logprobs
from trainer.synthetic import agent_batch


def episodes(seed=0, logprob=-10.8):
    eps = agent_batch(np.random.default_rng(seed), 2, 3, 2, 12, 5, 2000)
    for e in eps:
        for s in e.samples:
            s.logprobs = [logprob] * len(s.completion_ids)
    return eps


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_nonfinite_loss_skips_the_step(stage):
    tr = Trainer(TrainerConfig(model="tiny", zero_stage=stage, lr=1e-2), AlgoConfig())
    before = tr.weights_digest()
    bad = episodes()
    bad[1].samples[0].logprobs[0] = float("nan")
    m = tr.train_step(bad)
    assert m["step_applied"] == 0.0 and m["nonfinite_loss"] == 1.0 and m["skipped_steps"] == 1.0
    assert tr.weights_digest() == before
    ok = tr.train_step(episodes())
    assert ok["step_applied"] == 1.0 and ok["step"] == 1.0
    assert tr.weights_digest() != before


@pytest.mark.parametrize("stage", [1, 2])
def test_one_infinite_gradient_element_skips_the_step(stage):
    """The fused overflow check (trainer.deepspeed_patches.fuse_overflow_check) sees a single inf among
    millions of finite gradient elements, and lets finite steps through."""
    tr = Trainer(TrainerConfig(model="tiny", zero_stage=stage, lr=1e-2), AlgoConfig())
    assert "has_overflow_partitioned_grads_serial" in vars(tr.engine.optimizer), (
        "the fused check is installed"
    )
    before = tr.weights_digest()
    weight = tr.model.get_input_embeddings().weight
    hook = weight.register_hook(
        lambda g: g.index_put((torch.tensor([3]), torch.tensor([1])), torch.tensor(float("inf")))
    )
    m = tr.train_step(episodes())
    hook.remove()
    assert m["step_applied"] == 0.0 and m["nonfinite_loss"] == 0.0
    assert tr.weights_digest() == before
    assert tr.train_step(episodes())["step_applied"] == 1.0


def test_fused_overflow_check_answers_like_deepspeed():
    from types import SimpleNamespace

    from trainer.deepspeed_patches import fuse_overflow_check

    grads = [torch.randn(1000), torch.randn(3, 7), torch.empty(0)]
    opt = SimpleNamespace(
        bit16_groups=[[0], [1]],
        averaged_gradients={0: grads[:2], 1: [None, grads[2]]},
        device="cpu",
        has_overflow_partitioned_grads_serial=None,
    )
    fuse_overflow_check(opt)
    check = opt.has_overflow_partitioned_grads_serial
    assert check().shape == (1,) and not check().item()
    for bad in (float("inf"), float("-inf"), float("nan")):
        grads[1][2, 5] = bad
        assert check().item(), bad
    grads[1][2, 5] = 3e18
    assert not check().item()


@pytest.mark.parametrize("stage", [1, 2])
def test_fused_grad_norm_answers_like_deepspeed(stage):
    """trainer.deepspeed_patches.fuse_grad_norm gives DeepSpeed's own gradient norm (fp64 per tensor, one
    at a time) to fp32 rounding, on a real ZeRO optimizer's gradients, and masks a non-finite
    norm the same way."""
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    tr = Trainer(TrainerConfig(model="tiny", zero_stage=stage), AlgoConfig())
    opt = tr.engine.optimizer
    assert "get_grad_norm_direct" in vars(opt), "the fused norm is installed"
    grads = [torch.randn(n) * s for n, s in ((1000, 1.0), (37, 1e-3), (0, 1.0), (5000, 30.0))]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    ours = opt.get_grad_norm_direct(grads, params)
    theirs = DeepSpeedZeroOptimizer.get_grad_norm_direct(opt, grads, params)
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    grads[1][3] = float("nan")
    assert opt.get_grad_norm_direct(grads, params).item() == -1.0
    assert DeepSpeedZeroOptimizer.get_grad_norm_direct(opt, grads, params).item() == -1.0


@pytest.mark.parametrize("stage", [1, 2])
def test_clip_in_fused_adam_steps_like_deepspeed(stage, monkeypatch):
    """trainer.deepspeed_patches.fuse_clip_into_adam: with the clip scale handed to torch's fused AdamW as
    its grad_scale, two clipped steps leave the same weights as DeepSpeed's own separate clip pass
    (fused AdamW on CPU here, as on CUDA in production). A large Adam eps makes the update depend
    on the gradient's scale, so a clip that was dropped would show (checked against no clip)."""
    import trainer.engine as engine

    plain_config = engine.deepspeed_config

    def fused_config(*args, **kwargs):
        config = plain_config(*args, **kwargs)
        config["optimizer"]["params"]["fused"] = True
        return config

    monkeypatch.setattr(engine, "deepspeed_config", fused_config)
    cfg = TrainerConfig(model="tiny", zero_stage=stage, lr=1e-2, grad_clip=1e-3, adam_eps=1e-4)
    ours = Trainer(cfg, AlgoConfig())
    monkeypatch.setattr(engine, "fuse_clip_into_adam", lambda optimizer: None)
    theirs = Trainer(cfg, AlgoConfig())
    unclipped = Trainer(TrainerConfig(**{**vars(cfg), "grad_clip": 0.0}), AlgoConfig())
    assert "unscale_and_clip_grads" in vars(ours.engine.optimizer)
    assert "unscale_and_clip_grads" not in vars(theirs.engine.optimizer)
    assert ours.engine.optimizer.optimizer.defaults["fused"]
    for seed in (0, 1):
        a, b = ours.train_step(episodes(seed)), theirs.train_step(episodes(seed))
        unclipped.train_step(episodes(seed))
        assert a["step_applied"] == b["step_applied"] == 1.0
        assert a["grad_norm"] > 10 * cfg.grad_clip  # the clip changes the step
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-6)
    reference = dict(theirs.model.named_parameters())
    far = dict(unclipped.model.named_parameters())
    for name, p in ours.model.named_parameters():
        torch.testing.assert_close(p, reference[name], rtol=1e-6, atol=1e-7, msg=name)
    assert any(not torch.allclose(p, far[n], rtol=1e-6, atol=1e-7) for n, p in ours.model.named_parameters())


def test_zero_options_reach_deepspeed_and_a_wrong_key_fails_at_start():
    cfg = TrainerConfig(model="tiny", zero_stage=2, zero_options={"reduce_bucket_size": 1000})
    tr = Trainer(cfg, AlgoConfig())
    assert tr.engine.zero_reduce_bucket_size() == 1000
    assert tr.train_step(episodes())["step_applied"] == 1.0
    with pytest.raises(Exception, match="overlap_com"):
        Trainer(TrainerConfig(model="tiny", zero_stage=2, zero_options={"overlap_com": True}), AlgoConfig())
    with pytest.raises(ValueError, match="trainer.zero_stage"):
        Trainer(TrainerConfig(model="tiny", zero_options={"stage": 3}), AlgoConfig())


def test_sample_over_budget_is_named():
    eps = episodes()
    samples, _ = build_samples(eps, {(e.task.id, i): 1.0 for e in eps for i in range(2)}, "token")
    longest = next(s for s in samples if len(s.tokens) > 20)
    with pytest.raises(
        ValueError, match=f"sample {longest.ref} has {len(longest.tokens)} tokens.*micro_batch_tokens=20"
    ):
        make_microbatches(samples, 20, merge=True)


def test_empty_completions_are_skipped_and_counted():
    tr = Trainer(TrainerConfig(model="tiny", zero_stage=0), AlgoConfig())
    eps = episodes()
    eps[0].samples.append(Sample(eps[0].task.id, "s", 9, [1, 2, 3], [], []))
    m = tr.train_step(eps)
    assert m["empty_completions_skipped"] == 1.0 and m["step_applied"] == 1.0


def test_layers_compile_on_cuda_only():
    """trainer.compile_layers defaults on; the CPU path stays eager (compiling there buys nothing)."""
    assert TrainerConfig().compile_layers
    tr = Trainer(TrainerConfig(model="tiny", zero_stage=0, device="cpu"), AlgoConfig())
    assert not tr.compiled_layers
    assert all(layer._compiled_call_impl is None for layer in tr.model.get_decoder().layers)


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune", "fastest"])
def test_cuda_graph_and_unknown_compile_modes_fail_at_start(mode):
    with pytest.raises(ValueError, match="trainer.compile_mode"):
        Trainer(TrainerConfig(model="tiny", zero_stage=0, compile_mode=mode), AlgoConfig())


def test_zero3_exports_full_tensors():
    tr = Trainer(TrainerConfig(model="tiny", zero_stage=3), AlgoConfig())
    from transformers import AutoModelForCausalLM

    from forge.ground.models import tiny_model_dir

    ref = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir()).named_parameters())
    exported = dict(tr.export_weights())
    assert exported.keys() == ref.keys()
    for name, t in exported.items():
        assert t.shape == ref[name].shape, name
        torch.testing.assert_close(t, ref[name].detach())  # before any step: the initial weights
    assert tr.train_step(episodes())["step_applied"] == 1.0


@pytest.mark.parametrize("algo", ["cispo", "cispo_m2", "grpo", "ppo"])
def test_steps_move_probability_toward_positive_advantage(algo):
    """One fixed group: the rewarded completion gains log-prob, the punished one loses it."""
    tr = Trainer(TrainerConfig(model="tiny", zero_stage=0, lr=3e-3, grad_clip=0.0), AlgoConfig(name=algo))
    task = lambda i: Task(f"t{i}", "e", group_id="g", group_size=2)  # noqa: E731
    prompt, good, bad = [5, 6, 7, 8], [11, 12, 13], [21, 22, 23]
    eps = [
        Episode(task(0), [Sample("t0", "s", 0, prompt, good, [-10.8] * 3)], reward=1.0),
        Episode(task(1), [Sample("t1", "s", 0, prompt, bad, [-10.8] * 3)], reward=0.0),
    ]

    def logp():
        samples, _ = build_samples(eps, {("t0", 0): 0.0, ("t1", 0): 0.0}, "token")
        with torch.no_grad():
            lp, _ = completion_logprobs(tr.model, make_microbatches(samples, 64, True)[0], "sdpa_dense")
        return lp[:3].sum().item(), lp[3:].sum().item()

    g0, b0 = logp()
    for _ in range(5):
        assert tr.train_step(eps)["step_applied"] == 1.0
    g1, b1 = logp()
    assert g1 > g0 + 0.1 and b1 < b0 - 0.1


def test_kl_to_reference_starts_at_zero_and_grows_as_the_policy_moves():
    """The reference is the frozen initial policy: KL 0 on the first step, > 0 after updates."""
    kl_on = Trainer(TrainerConfig(model="tiny", zero_stage=2, lr=1e-2), AlgoConfig(kl_coef=0.1))
    plain = Trainer(TrainerConfig(model="tiny", zero_stage=2, lr=1e-2), AlgoConfig())
    first = kl_on.train_step(episodes())
    assert abs(first["kl"]) < 1e-6
    assert first["loss"] == pytest.approx(plain.train_step(episodes())["loss"], abs=1e-6)
    assert "kl" not in plain.train_step(episodes())
    later = [kl_on.train_step(episodes())["kl"] for _ in range(2)]
    assert later[0] > 1e-5 and later[1] > later[0]
    assert all(not p.requires_grad for p in kl_on.reference.parameters())


def test_kl_under_zero3_matches_zero2():
    """Under ZeRO-3 the reference is partitioned too (DeepSpeed without an optimizer): same KL."""
    got = []
    for stage in (2, 3):
        tr = Trainer(TrainerConfig(model="tiny", zero_stage=stage, lr=1e-2), AlgoConfig(kl_coef=0.1))
        got.append([tr.train_step(episodes(seed))["kl"] for seed in range(3)])
        if stage == 3:
            assert all(hasattr(p, "ds_id") for p in tr.reference.parameters())
    assert got[1][2] > 1e-5
    assert got[1] == pytest.approx(got[0], rel=1e-4, abs=1e-9)
