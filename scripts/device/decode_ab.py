"""A/B of the paged decode kernel: .ab/paged_attn_fd70ec5.py (old) vs the working tree (new), engine shapes."""
import importlib.util, math, sys
import torch, triton.testing
sys.path.insert(0, ".")
from gateway.engines.native import paged_attn as new
spec = importlib.util.spec_from_file_location("old_pa", ".ab/paged_attn_fd70ec5.py")
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
HQ, HKV, D, PS = 16, 8, 128, 16
g = torch.Generator(device="cuda").manual_seed(0)
def case(b, lo, hi, max_len):
    lens = torch.randint(lo, hi + 1, (b,), device="cuda", generator=g).int()
    pages = -(-max_len // PS)
    total = b * pages + 1
    perm = torch.randperm(total - 1, device="cuda", generator=g)[: b * pages] + 1
    table = perm.view(b, pages).int().contiguous()
    k = torch.randn(total * PS, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(total * PS, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    q = torch.randn(b, HQ, D, device="cuda", dtype=torch.bfloat16, generator=g)
    return q, k, v, table, lens, max_len
rows = [(128, 128, 192, 4096), (128, 128, 320, 4096), (128, 200, 1200, 4096), (64, 1, 4096, 4096),
        (56, 2048, 2150, 4096), (16, 128, 192, 4096), (16, 1, 4096, 4096), (1, 4000, 4000, 4096), (8, 300, 3000, 4096)]
print(f"{'B':>4} {'lens':>11} {'max':>5} {'MB':>7} {'old us':>8} {'GB/s':>6} {'new us':>8} {'GB/s':>6} {'maxerr':>8}")
for b, lo, hi, ml in rows:
    q, k, v, t, lens, ml = case(b, lo, hi, ml)
    nb = new.kv_bytes_read(lens, HKV, D, 2)
    o1 = torch.empty_like(q); o2 = torch.empty_like(q)
    f_old = lambda: old.paged_decode_triton(q, k, v, t, lens, PS, 1 / math.sqrt(D), ml, out=o1)
    f_new = lambda: new.paged_decode_triton(q, k, v, t, lens, PS, 1 / math.sqrt(D), ml, out=o2)
    f_old(); f_new(); torch.cuda.synchronize()
    ref = new.paged_decode_reference(q, k, v, t, lens, PS, 1 / math.sqrt(D))
    err = max((o2.float() - ref.float()).abs().max().item(), 0)
    to = triton.testing.do_bench(f_old, warmup=50, rep=300) * 1e3
    tn = triton.testing.do_bench(f_new, warmup=50, rep=300) * 1e3
    print(f"{b:4d} {lo:5d}-{hi:<5d} {ml:5d} {nb/1e6:7.1f} {to:8.1f} {nb/to/1e3:6.0f} {tn:8.1f} {nb/tn/1e3:6.0f} {err:8.1e}", flush=True)
# the fused sampler: one program per row (old) vs vocabulary chunks (new), batch x Qwen3 vocab
from gateway.engines.native import sample_kernel as snew
spec = importlib.util.spec_from_file_location("old_sk", ".ab/sample_kernel_fd70ec5.py")
sold = importlib.util.module_from_spec(spec); spec.loader.exec_module(sold)
for b in (16, 64, 128):
    logits = (torch.randn(b, 151936, device="cuda", generator=g) * 3).to(torch.bfloat16)
    temps = torch.ones(b, device="cuda"); temps[::4] = 0.0
    seeds = torch.arange(b, device="cuda", dtype=torch.int64); pos = torch.arange(b, device="cuda", dtype=torch.int64) * 7
    a = sold.sample_fused(logits, temps, seeds, pos, position_offset=1)
    c = snew.sample_fused(logits, temps, seeds, pos, position_offset=1)
    same = int((a[0] == c[0]).sum()); dlp = float((a[1] - c[1]).abs().max())
    to = triton.testing.do_bench(lambda: sold.sample_fused(logits, temps, seeds, pos, position_offset=1), warmup=50, rep=300) * 1e3
    tn = triton.testing.do_bench(lambda: snew.sample_fused(logits, temps, seeds, pos, position_offset=1), warmup=50, rep=300) * 1e3
    print(f"sampler B={b}: old {to:.1f} us, new {tn:.1f} us; tokens equal {same}/{b}, max |dlogprob| {dlp:.1e}", flush=True)
