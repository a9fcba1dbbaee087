"""Attention kernels on the trainer bench's shape (GPU): FlexAttention configs against SDPA.

usage: python3 scripts/device/attn_variants.py [--docs 32] [--doc-len 512]
One layer of Qwen3-0.6B attention (16 query heads, 8 KV heads, head_dim 128, bf16) over
docs × doc-len packed tokens with a document-causal mask (the tree rule of trainer.attention).
Prints, per variant, forward and forward+backward medians (ms) and TFLOP/s (12·heads·dim·pairs).
Variants: FlexAttention's default config, hand-picked fwd_/bwd_ kernel options (block sizes,
stages, warps, TMA), max-autotune; SDPA (cuDNN, flash) in batch form [docs, heads, len, dim] as
the reference a document-only batch could reach.
"""

import argparse
import json

import torch
import triton.testing
from torch.nn.attention.flex_attention import flex_attention

from trainer.attention import tree_block_mask

p = argparse.ArgumentParser()
p.add_argument("--docs", type=int, default=32)
p.add_argument("--doc-len", type=int, default=512)
p.add_argument("--only", default="", help="comma-separated variant names")
args = p.parse_args()
H, KV, D = 16, 8, 128
T = args.docs * args.doc_len
dev = "cuda"
end = (torch.arange(T, device=dev) // args.doc_len + 1) * args.doc_len


def tree_mask(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) & (q_idx < end[kv_idx])


bm = tree_block_mask(end, tree_mask)
pairs = args.docs * args.doc_len * (args.doc_len + 1) // 2
flops_fb = 12 * H * D * pairs  # fwd 4·, bwd 8·
flops_f = 4 * H * D * pairs


def inputs(batch_form=False, varlen_form=False):
    g = torch.Generator(device=dev).manual_seed(0)
    shape = (args.docs, H, args.doc_len, D) if batch_form else (1, H, T, D)
    kvshape = (args.docs, KV, args.doc_len, D) if batch_form else (1, KV, T, D)
    if varlen_form:
        shape, kvshape = (T, H, D), (T, KV, D)
    q = torch.randn(shape, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    k = torch.randn(kvshape, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    v = torch.randn(kvshape, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    return q, k, v


def bench(fn, q, k, v):
    do = torch.randn_like(q)

    def fb():
        out = fn(q, k, v)
        out.backward(do)

    for _ in range(3):
        fb()
    with torch.no_grad():
        f_ms = triton.testing.do_bench(lambda: fn(q, k, v), warmup=50, rep=300, return_mode="median")
    fb_ms = triton.testing.do_bench(fb, warmup=50, rep=300, return_mode="median", grad_to_none=[q, k, v])
    return f_ms, fb_ms


VARIANTS = {
    "flex_default": {},
    "fwd_tma": {"fwd_USE_TMA": True},
    "fwd_128x128_s2_w8": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_stages": 2, "fwd_num_warps": 8},
    "fwd_128x128_s3_w8": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_stages": 3, "fwd_num_warps": 8},
    "fwd_128x64_s3_w4": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 64, "fwd_num_stages": 3, "fwd_num_warps": 4},
    "fwd_64x128_s3_w4": {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 128, "fwd_num_stages": 3, "fwd_num_warps": 4},
    "bwd_tma": {"bwd_USE_TMA": True},
    "bwd_64x64_s3_w4": {
        "bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 64,
        "bwd_num_stages": 3, "bwd_num_warps": 4,
    },
    "bwd_64x128_s2_w8": {
        "bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 64,
        "bwd_num_stages": 2, "bwd_num_warps": 8,
    },
    "bwd_32x128_s3_w4": {
        "bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 32,
        "bwd_num_stages": 3, "bwd_num_warps": 4,
    },
    "bwd_64x128_s4_w8": {
        "bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 64,
        "bwd_num_stages": 4, "bwd_num_warps": 8,
    },
}  # fmt: skip

rows = []
only = set(filter(None, args.only.split(",")))


def measure(name, make_fn, batch_form=False, varlen_form=False):
    """Time `make_fn()` on fresh inputs; a config the kernel refuses (shared memory, assertion) is a
    NaN row. Variants left out by --only are not even compiled."""
    if only and name not in only:
        return
    try:
        rows.append((name, *bench(make_fn(), *inputs(batch_form, varlen_form))))
    except Exception as e:
        rows.append((name, float("nan"), float("nan")))
        print(name, "failed:", type(e).__name__, str(e).splitlines()[0][:200], flush=True)
    print(json.dumps({"variant": name, "fwd_ms": rows[-1][1], "fwd_bwd_ms": rows[-1][2]}), flush=True)


def compiled_flex(opts, mode=None):
    torch._dynamo.reset()
    return torch.compile(
        lambda q, k, v: flex_attention(q, k, v, block_mask=bm, enable_gqa=True, kernel_options=opts),
        dynamic=False,
        mode=mode,
    )


for name, opts in VARIANTS.items():
    measure(name, lambda opts=opts: compiled_flex(opts))
measure("flex_autotune", lambda: compiled_flex({}, mode="max-autotune-no-cudagraphs"))

from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

for name, backend in (
    ("sdpa_cudnn_batch", SDPBackend.CUDNN_ATTENTION),
    ("sdpa_flash_batch", SDPBackend.FLASH_ATTENTION),
):

    def sdpa(q, k, v, backend=backend):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    measure(name, lambda sdpa=sdpa: sdpa, batch_form=True)


def make_varlen():
    """torch's FlashAttention-2 varlen op over the packed documents ([T, heads, dim] layout)."""
    from torch.nn.attention.varlen import varlen_attn

    cu = torch.arange(0, T + 1, args.doc_len, device=dev, dtype=torch.int32)
    for kw in (  # the signature changed between torch releases
        {"window_size": (-1, 0), "enable_gqa": True},
        {"window_size": (-1, 0)},
        {"is_causal": True, "enable_gqa": True},
        {"is_causal": True},
    ):
        try:
            varlen_attn(*inputs(varlen_form=True), cu, cu, args.doc_len, args.doc_len, **kw)
            break
        except TypeError as e:
            print("varlen_attn", kw, "refused:", e, flush=True)
    return lambda q, k, v: varlen_attn(q, k, v, cu, cu, args.doc_len, args.doc_len, **kw)


measure("varlen_fa2", make_varlen, varlen_form=True)

print(f"\n{T} tokens, {args.docs} docs × {args.doc_len}, H={H} KV={KV} D={D}, {torch.cuda.get_device_name()}")
print(f"{'variant':22s} {'fwd ms':>8s} {'fwd TF/s':>9s} {'f+b ms':>8s} {'f+b TF/s':>9s}")
for name, f_ms, fb_ms in rows:
    print(f"{name:22s} {f_ms:8.3f} {flops_f / f_ms / 1e9:9.1f} {fb_ms:8.3f} {flops_fb / fb_ms / 1e9:9.1f}")
