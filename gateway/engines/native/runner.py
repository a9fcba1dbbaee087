"""The model side of the engine: batched prefill and decode over the paged KV cache, CUDA graphs, sampling.

`ModelRunner` owns the transformers model (attention routed through `kv.PagedKV`), static input
buffers, the page table (one row per running request, a pinned host copy the scheduler edits and
a device copy refreshed before each forward) and, on CUDA, one captured graph per (batch bucket,
key-length bucket) for the decode forward (with the Triton kernel the grid no longer depends on
the length: one graph per batch bucket).
A prefill packs its rows' new tokens into one [1, N] forward, N padded to a token bucket; on CUDA
one graph per bucket (captured at start too). Per decode step the host uploads the small pinned
buffers (token ids, positions, sampling parameters, the page-table rows) and reads back one
(sampled tokens and their log-probs): a single sync.
The scheduler (`core.py`) decides what runs; this module only runs it.
"""

from __future__ import annotations

import bisect
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from gateway.engines.native import kv as kvmod
from gateway.engines.native import paged_attn, projections
from gateway.engines.native.sample_kernel import sample_fused
from gateway.engines.native.sampling import RowParams, sample

log = logging.getLogger("forge.engine")


@dataclass
class RowInputs:
    """Host-side inputs for a batch of rows (one decode step, or the first token after prefill)."""

    tokens: list[int]  # decode: the token fed per row; prefill: unused
    positions: list[int]  # position of the fed token (decode) / prompt length - 1 (prefill)
    temperature: list[float]
    top_p: list[float]
    top_k: list[int]
    min_p: list[float]
    seed: list[int]


def _buckets(limit: int, small: list[int], step: int) -> list[int]:
    out = [b for b in small if b < limit]
    b = (out[-1] if out else 0) + step
    while b < limit:
        out.append(b)
        b += step
    out.append(limit)
    return sorted(set(out))


def _prefill_lengths(limit: int) -> list[int]:
    """Token-count buckets of a packed prefill: 16, 32, 64, then steps of x1.5 / x1.33 (96, 128,
    192, 256, 384, ...): the padding is at most half the tokens; all multiples of 16 (triton
    specialises a length divisible by 16: one kernel variant)."""
    out, b = [16, 32, 64], 64
    while out[-1] < limit:
        b = b * 3 // 2 if (b & (b - 1)) == 0 else b * 4 // 3
        out.append(-(-b // 16) * 16)
    return [x for x in out if x < limit] + [-(-limit // 16) * 16]


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# (rows, tokens) of the forwards `ModelRunner.warm_up` runs: dynamo specialises sizes of 1, so these
# are every shape class of the compiled regions (tests/engines/test_fuse.py pins that)
WARM_UP_SHAPES = ((1, 1), (1, 2), (2, 1), (2, 2))
# and the Triton prefill kernel's: triton specialises an int argument equal to 1 or divisible by 16
# (its token count), so a 16-token prefill compiles the third variant at start too
KERNEL_WARM_UP_TOKENS = 16


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        max_running: int,
        context_length: int,
        use_cuda_graph: bool,
        pad_to_buckets: bool | None = None,
        *,
        num_pages: int,
        page_size: int = 16,
        attention: str = "auto",
        compile: bool = False,
        prefill_graph_tokens: int = 0,
    ) -> None:
        self.model = model
        self.config = model.config
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self.base = model.base_model
        self.lm_head = model.get_output_embeddings()
        self.vocab_size = int(self.lm_head.weight.shape[0])
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.max_running = max_running
        self.context_length = context_length
        self.page_size = page_size
        self.max_pages = -(-context_length // page_size)
        if attention not in ("auto", "triton", "sdpa"):
            raise ValueError(f"attention={attention!r}: must be auto, triton or sdpa")
        cuda = self.device.type == "cuda"
        if attention == "triton" and not (cuda and triton_available()):
            raise ValueError("attention=triton needs a CUDA device and triton installed")
        self.attention = (
            "triton"
            if attention == "triton" or (attention == "auto" and cuda and triton_available())
            else "sdpa"
        )
        self.kv = kvmod.PagedKV(
            cfg.num_hidden_layers,
            num_pages,
            page_size,
            kv_heads,
            head_dim,
            self.dtype,
            self.device,
            use_triton=self.attention == "triton",
        )
        kvmod.bind(model, self.kv)
        # one GEMM for q/k/v and one for gate/up, on every device (projections.py)
        self.fused: list[str] = projections.fuse_projections(model)
        self._sample_fn = sample
        # rows without top-k / top-p / min-p sample in one Triton kernel (sample_kernel.py), inside
        # the decode graph; with a filter, the torch sampler (sampling.py) runs after the logits
        self.fused_sampler = self.attention == "triton"
        if compile:  # the small elementwise regions compiled (fuse.py); launch.py asks on CUDA only
            from gateway.engines.native import fuse

            self.fused += fuse.fuse(model)  # the sampler stays eager (fuse.py says why)
            self.warm_up()
        self.use_cuda_graph = bool(use_cuda_graph and cuda)
        # Graphs run padded shapes; `pad_to_buckets` runs the same padded shapes eagerly (tests on CPU).
        self.pad_to_buckets = self.use_cuda_graph if pad_to_buckets is None else bool(pad_to_buckets)
        pin = cuda
        # int64 inputs: tokens, positions, top_k, seeds; float32: temperature, top_p, min_p
        self._host_i = torch.zeros(4, max_running, dtype=torch.int64, pin_memory=pin)
        self._host_f = torch.zeros(3, max_running, dtype=torch.float32, pin_memory=pin)
        self._host_i_np, self._host_f_np = self._host_i.numpy(), self._host_f.numpy()
        self._dev_i = torch.zeros(4, max_running, dtype=torch.int64, device=self.device)
        self._dev_f = torch.zeros(3, max_running, dtype=torch.float32, device=self.device)
        # the page table: row i = the pages of the request in row i (0: scratch / unused)
        self._host_pt = torch.zeros(max_running, self.max_pages, dtype=torch.int32, pin_memory=pin)
        self.page_table = self._host_pt.numpy()  # the scheduler's view (edits land in the pinned buffer)
        self._dev_pt = torch.zeros(max_running, self.max_pages, dtype=torch.int32, device=self.device)
        self.batch_buckets = _buckets(max_running, [1, 2, 4, 8, 16], 8)
        self.length_buckets = _buckets(context_length, [64, 128, 256, 512, 1024], 1024)
        # (batch, length, sampler in the graph) -> (graph, its output: logits or [2, B] samples)
        self._graphs: dict[tuple[int, int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool: object | None = None
        # prefill with the rows packed into one token axis, padded to a bucket of tokens: replayed as
        # CUDA graphs with the Triton kernels (captured at start), else run eagerly in the same
        # shapes when pad_to_buckets; more than `prefill_graph_tokens` new tokens (0: never) run
        # unpacked, padded to the longest row, eagerly
        self.prefill_graph_tokens = prefill_graph_tokens if self.pad_to_buckets else 0
        self.prefill_buckets = (
            _prefill_lengths(self.prefill_graph_tokens) if self.prefill_graph_tokens else []
        )
        self._rep = cfg.num_attention_heads // kv_heads
        self._block_m = paged_attn.default_prefill_blocks(head_dim, self.dtype)[0]
        cap = max(self.prefill_buckets, default=1)
        progs = paged_attn.packed_programs(cap, max_running, self._rep, self._block_m)
        # int64 layout: ids, positions, write slots [cap] each; cached, lengths, starts, last [rows]
        # each; the kernel's prog_row, prog_tile [progs] each
        self._pf_at = {"ids": 0, "pos": cap, "slot": 2 * cap, "cached": 3 * cap}
        for i, name in enumerate(("lengths", "starts", "last", "prog_row")):
            self._pf_at[name] = 3 * cap + (i + 1) * max_running
        self._pf_at["prog_tile"] = self._pf_at["prog_row"] + progs
        size = self._pf_at["prog_tile"] + progs
        self._pf_host = torch.zeros(size, dtype=torch.int64, pin_memory=pin)
        self._pf_host_np = self._pf_host.numpy()
        self._pf_dev = torch.zeros(size, dtype=torch.int64, device=self.device)
        self._pf_pt = torch.zeros(max_running, self.max_pages, dtype=torch.int32, device=self.device)
        self._prefill_graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.prefill_graph_replays = 0
        self.prefill_padded_tokens = 0  # tokens the prefill forwards ran, padding included
        if self.use_cuda_graph and self.attention == "triton":
            self.capture_graphs()

    # ---- the page table ----------------------------------------------------------------
    def set_pages(self, row: int, pages: list[int]) -> None:
        self.page_table[row, : len(pages)] = pages
        self.page_table[row, len(pages) :] = 0

    def add_page(self, row: int, index: int, page: int) -> None:
        self.page_table[row, index] = page

    def move_row(self, dst: int, src: int) -> None:
        """Row `src`'s pages become row `dst`'s (compaction); `src` is cleared."""
        self.page_table[dst] = self.page_table[src]
        self.page_table[src] = 0

    def clear_rows(self, start: int, stop: int) -> None:
        self.page_table[start:stop] = 0

    def _upload_pages(self, start: int, stop: int) -> None:
        self._dev_pt[start:stop].copy_(self._host_pt[start:stop], non_blocking=True)

    # ---- inputs -------------------------------------------------------------------------
    def _upload(self, rows: RowInputs, n: int, pad_to: int) -> RowParams:
        """Write rows [0, n) of the pinned host buffers (rows [n, pad_to) zeroed: padding rows of a
        graph bucket then write into position 0 of free slots) and copy both buffers whole to the
        device: two small contiguous async copies, ordered before the forward on the stream."""
        hi, hf = self._host_i_np, self._host_f_np  # numpy views of the pinned buffers: no tensor per list
        hi[:, n:pad_to] = 0
        hi[0, :n] = rows.tokens if rows.tokens else 0
        hi[1, :n] = rows.positions
        hi[2, :n] = rows.top_k
        hi[3, :n] = rows.seed
        hf[0, :n] = rows.temperature
        hf[1, :n] = rows.top_p
        hf[1, :n][hf[1, :n] >= 1.0] = 2.0  # no top-p
        hf[2, :n] = rows.min_p
        self._dev_i.copy_(self._host_i, non_blocking=True)
        self._dev_f.copy_(self._host_f, non_blocking=True)
        sampled = [t > 1e-5 for t in rows.temperature]
        filt = any(
            s and (p < 1.0 or k < self.vocab_size or m > 0.0)
            for s, p, k, m in zip(sampled, rows.top_p, rows.top_k, rows.min_p, strict=True)
        )
        return RowParams(
            temperature=self._dev_f[0, :n],
            top_p=self._dev_f[1, :n],
            min_p=self._dev_f[2, :n],
            top_k=self._dev_i[2, :n],
            seed=self._dev_i[3, :n],
            position=self._dev_i[1, :n] + 1,
            any_sampled=any(sampled),
            any_filter=filt,
        )

    # ---- forward ------------------------------------------------------------------------
    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def _decode_forward(self, batch: int, length: int, fused: bool = False) -> torch.Tensor:
        """Logits [batch, V] of one decode step, or with `fused` its samples [2, batch] (tokens,
        log-probs; float64) drawn by the fused kernel from the raw model-dtype logits."""
        positions = self._dev_i[1, :batch]
        table = self._dev_pt[:batch]
        seq_lens = (positions + 1).to(torch.int32)
        plan = kvmod.DecodePlan(
            write_slots=kvmod.slot_index(table, positions[:, None], self.page_size)[:, 0],
            seq_lens=seq_lens,
            page_table=table,
            max_len=length,
        )
        if self.attention == "sdpa":
            keys = torch.arange(length, device=self.device).expand(batch, length)
            plan.kv_idx = kvmod.slot_index(table, keys, self.page_size)
            plan.mask = kvmod.decode_mask(seq_lens, length, self.dtype)
        self.kv.plan = plan
        out = self.base(
            input_ids=self._dev_i[0, :batch, None], position_ids=positions[:, None], use_cache=False
        )
        hidden = out.last_hidden_state[:, -1]
        if fused:  # the drawn token is at position + 1
            return self._fused_sample(self.lm_head(hidden), self._dev_f[0, :batch], self._dev_i[3, :batch],
                                      positions, 1)  # fmt: skip
        return self._logits(hidden)

    @staticmethod
    def _fused_sample(
        logits: torch.Tensor,
        temperature: torch.Tensor,
        seed: torch.Tensor,
        position: torch.Tensor,
        offset: int,
    ) -> torch.Tensor:
        return sample_fused(logits, temperature, seed, position, position_offset=offset)

    def _graph_logits(self, batch: int, length: int, fused: bool = False) -> torch.Tensor:
        """Replay (capturing on first use) the decode graph of this bucket: `_decode_forward`'s output."""
        return self._replay(
            self._graphs, (batch, length, fused), lambda: self._decode_forward(batch, length, fused)
        )

    def _replay(self, graphs: dict, key: tuple[int, int, bool], forward) -> torch.Tensor:
        """Replay the graph of `key` in `graphs`, capturing `forward()` first if it is new (all
        graphs share one memory pool)."""
        if key not in graphs:
            # Warm up on a side stream, then capture. Both runs write this step's keys/values at
            # this step's positions, which the replay below writes again identically.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                forward()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                result = forward()
            if self._pool is None:
                self._pool = graph.pool()
            graphs[key] = (graph, result)
        graph, result = graphs[key]
        graph.replay()
        return result

    @torch.inference_mode()
    def decode(self, rows: RowInputs) -> tuple[list[int], list[float]]:
        """One token for each of the first n rows (n = len(rows.positions)); their page-table rows
        must hold a page for every position up to the fed one."""
        n = len(rows.positions)
        need = max(rows.positions) + 1
        if self.pad_to_buckets:
            batch = self.batch_buckets[bisect.bisect_left(self.batch_buckets, n)]
            # the Triton kernel's grid depends on the length bound only: one graph per batch bucket
            if self.attention == "triton":
                length = self.context_length
            else:
                length = self.length_buckets[bisect.bisect_left(self.length_buckets, need)]
            self.page_table[n:batch] = 0  # padding rows write to and read the scratch page
            params = self._upload(rows, n, batch)
            self._upload_pages(0, batch)
            run = self._graph_logits if self.use_cuda_graph else self._decode_forward
        else:
            batch, length = n, need
            params = self._upload(rows, n, n)
            self._upload_pages(0, n)
            run = self._decode_forward
        if self.fused_sampler and not params.any_filter:
            return self._read_back(run(batch, length, True)[:, :n])
        return self._sample(run(batch, length)[:n], params)

    def _plan_prefill(
        self, table: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, t: int, key_len: int
    ) -> torch.Tensor:
        """Set the PagedKV plan of a prefill of B rows (`offsets` cached, `lengths` new, padded to t;
        key_len = max(offsets + lengths), a host int) over page-table rows `table` [B, max_pages];
        returns the tokens' positions [B, T]."""
        b = table.shape[0]
        steps = torch.arange(t, device=self.device)
        positions = offsets[:, None] + steps[None, :]  # [B, T]
        valid = steps[None, :] < lengths[:, None]
        real = kvmod.slot_index(table, torch.where(valid, positions, 0), self.page_size)
        scratch = (steps % self.page_size).expand(b, t)  # page 0
        plan = kvmod.PrefillPlan(write_slots=torch.where(valid, real, scratch).reshape(-1))
        if self.attention == "triton":  # the kernel reads the pages in place
            plan.page_table, plan.cached, plan.lengths = table, offsets, lengths
        else:
            plan.kv_idx, plan.mask = self._sdpa_keys(table, offsets, lengths, t, key_len)
        self.kv.plan = plan
        return positions

    def _sdpa_keys(
        self, table: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, t: int, key_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The SDPA path's key slots [B, key_len] and additive mask [B, 1, t, key_len] of a prefill
        of B rows padded to t (PrefillPlan.kv_idx, .mask)."""
        keys = torch.arange(key_len, device=self.device).expand(table.shape[0], key_len)
        kv_idx = kvmod.slot_index(table, keys, self.page_size)
        return kv_idx, kvmod.prefill_mask(offsets, lengths, t, key_len, self.dtype)

    @torch.inference_mode()
    def capture_graphs(self) -> None:
        """Capture the decode graph of every batch bucket now (largest first, so the smaller ones
        reuse its memory pool), as SGLang does at start, instead of on each bucket's first use in
        the middle of serving. With the Triton kernel there is one graph per batch bucket (and
        sampler choice: the fused one here; rows that filter capture the logits graph on first use).
        The inputs are the zeroed static buffers: every row writes and reads the scratch page."""
        started = time.perf_counter()
        self.page_table[:] = 0
        self._upload_pages(0, self.max_running)
        for batch in reversed(self.batch_buckets):
            self._graph_logits(batch, self.context_length, self.fused_sampler)
        torch.cuda.synchronize(self.device)
        log.info(
            "captured %d decode graphs in %.1f s", len(self.batch_buckets), time.perf_counter() - started
        )
        # the packed prefill of every token bucket (zeroed inputs: no row, every token on the scratch page)
        started = time.perf_counter()
        self._pf_host.zero_()
        self._pf_dev.zero_()
        self._pf_pt.zero_()
        for n in reversed(self.prefill_buckets):
            key = (n, self.fused_sampler)
            self._replay(self._prefill_graphs, key, lambda n=n: self._prefill_forward(n, self.fused_sampler))
        torch.cuda.synchronize(self.device)
        log.info(
            "captured %d prefill graphs in %.1f s", len(self.prefill_buckets), time.perf_counter() - started
        )

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Forward every shape class the compiled regions specialise on (1 or 2 rows × 1 or 2
        tokens) once, on the scratch page, so no compile lands in the middle of serving (fuse.py);
        then the prefill kernel's and the prefill sampler's remaining Triton variants."""
        shapes = (
            WARM_UP_SHAPES + ((1, KERNEL_WARM_UP_TOKENS),) if self.attention == "triton" else WARM_UP_SHAPES
        )
        for b, t in shapes:
            table = torch.zeros(b, self.max_pages, dtype=torch.int32, device=self.device)
            zeros = torch.zeros(b, dtype=torch.int64, device=self.device)
            positions = self._plan_prefill(table, zeros, zeros + t, t, t)
            ids = torch.zeros(b, t, dtype=torch.int64, device=self.device)
            self.base(input_ids=ids, position_ids=positions, use_cache=False)
        self.kv.plan = None
        if self.fused_sampler:  # the prefill's draw (position offset 0; decode's 1 is captured)
            logits = torch.zeros(1, self.vocab_size, dtype=self.dtype, device=self.device)
            zero = torch.zeros(1, dtype=torch.int64, device=self.device)
            self._fused_sample(logits, torch.ones(1, device=self.device), zero, zero, 0)

    @torch.inference_mode()
    def prefill(
        self, start: int, prompts: list[list[int]], cached: list[int], rows: RowInputs
    ) -> tuple[list[int], list[float]]:
        """Rows [start, start+B): compute the KV of each prompt's tokens past its `cached` leading
        positions (already in the row's pages, which cover the whole prompt); returns each row's
        first sampled token."""
        b = len(prompts)
        news = [p[c:] for p, c in zip(prompts, cached, strict=True)]
        t = max(len(x) for x in news)
        n = self._prefill_bucket(sum(len(x) for x in news))
        if n is not None:
            self.prefill_padded_tokens += n
            return self._prefill_packed(start, news, cached, rows, n)
        self.prefill_padded_tokens += b * t
        ids = torch.zeros(b, t, dtype=torch.int64)
        for i, x in enumerate(news):
            ids[i, : len(x)] = torch.tensor(x, dtype=torch.int64)
        lengths = torch.tensor([len(x) for x in news], dtype=torch.int64)
        offsets = torch.tensor(cached, dtype=torch.int64)
        ids, lengths, offsets = ids.to(self.device), lengths.to(self.device), offsets.to(self.device)
        self._upload_pages(start, start + b)
        key_len = max(c + len(x) for c, x in zip(cached, news, strict=True))
        positions = self._plan_prefill(self._dev_pt[start : start + b], offsets, lengths, t, key_len)
        out = self.base(input_ids=ids, position_ids=positions, use_cache=False)
        last = out.last_hidden_state[torch.arange(b, device=self.device), lengths - 1]
        params = self._upload(rows, b, b)
        if self.fused_sampler and not params.any_filter:
            return self._read_back(
                self._fused_sample(self.lm_head(last), params.temperature, params.seed, params.position, 0)
            )
        return self._sample(self._logits(last), params)

    def _prefill_bucket(self, total: int) -> int | None:
        """The token bucket `total` packed new tokens pad to, or None (unpacked)."""
        i = bisect.bisect_left(self.prefill_buckets, total)
        return self.prefill_buckets[i] if i < len(self.prefill_buckets) else None

    def _pf(self, name: str, n: int) -> torch.Tensor:
        """The first n entries of a packed-prefill input on the device (_pf_at's layout)."""
        at = self._pf_at[name]
        return self._pf_dev[at : at + n]

    def _prefill_packed(
        self, start: int, news: list[list[int]], cached: list[int], rows: RowInputs, n: int
    ) -> tuple[list[int], list[float]]:
        """The prefill of rows [start, start+B), their new tokens packed one after another into a
        [1, n] forward (tokens past them write the scratch page). With CUDA graphs one replay."""
        b, nrows, p = len(news), self.max_running, self.page_size
        at, host = self._pf_at, self._pf_host_np
        lens = np.array([len(x) for x in news], dtype=np.int64)
        total = int(lens.sum())
        starts = np.zeros(b, dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        row_of = np.repeat(np.arange(b), lens)
        pos = np.asarray(cached, dtype=np.int64)[row_of] + np.arange(total) - starts[row_of]
        table = self.page_table[start : start + b]
        host[at["ids"] : at["ids"] + total] = np.concatenate(news)
        host[at["ids"] + total : at["ids"] + n] = 0
        host[at["pos"] : at["pos"] + total] = pos
        host[at["pos"] + total : at["pos"] + n] = 0
        host[at["slot"] : at["slot"] + total] = table[row_of, pos // p].astype(np.int64) * p + pos % p
        host[at["slot"] + total : at["slot"] + n] = np.arange(n - total) % p  # the scratch page
        for name, vals in (
            ("cached", cached),
            ("lengths", lens),
            ("starts", starts),
            ("last", starts + lens - 1),
        ):
            host[at[name] : at[name] + nrows] = 0
            host[at[name] : at[name] + b] = vals
        progs = paged_attn.packed_programs(n, nrows, self._rep, self._block_m)
        prog_row, prog_tile = paged_attn.packed_tiles(lens.tolist(), self._rep, self._block_m, progs)
        host[at["prog_row"] : at["prog_row"] + progs] = prog_row
        host[at["prog_tile"] : at["prog_tile"] + progs] = prog_tile
        self._pf_dev.copy_(self._pf_host, non_blocking=True)
        self._pf_pt[:b].copy_(self._host_pt[start : start + b], non_blocking=True)
        self._pf_pt[b:].zero_()
        params = self._upload(rows, b, nrows)
        fused = self.fused_sampler and not params.any_filter
        if self.use_cuda_graph and self.attention == "triton":
            out = self._replay(self._prefill_graphs, (n, fused), lambda: self._prefill_forward(n, fused))
            self.prefill_graph_replays += 1
        elif self.attention == "triton":
            out = self._prefill_forward(n, fused)
        else:  # SDPA: unpack to [B, T], attend, pack back
            out = self._prefill_forward(n, fused, self._sdpa_plan(start, b, lens, starts, row_of, n, cached))
        if fused:
            return self._read_back(out[:, :b])
        return self._sample(out[:b], params)

    def _sdpa_plan(
        self,
        start: int,
        b: int,
        lens: np.ndarray,
        starts: np.ndarray,
        row_of: np.ndarray,
        n: int,
        cached: list[int],
    ) -> kvmod.PrefillPlan:
        """The SDPA path's unpack/pack indices and its key gather and mask over rows [start, start+b)."""
        t = int(lens.max())
        steps = np.arange(t)
        unpack = np.where(steps[None, :] < lens[:, None], starts[:, None] + steps[None, :], 0)
        pack = np.zeros(n, dtype=np.int64)
        pack[: len(row_of)] = row_of * t + (np.arange(len(row_of)) - starts[row_of])
        offsets = torch.tensor(cached, dtype=torch.int64, device=self.device)
        lengths = torch.as_tensor(lens, device=self.device)
        key_len = int(max(c + x for c, x in zip(cached, lens.tolist(), strict=True)))
        self._upload_pages(start, start + b)
        kv_idx, mask = self._sdpa_keys(self._dev_pt[start : start + b], offsets, lengths, t, key_len)
        return kvmod.PrefillPlan(
            write_slots=self._pf("slot", n),
            kv_idx=kv_idx,
            mask=mask,
            unpack_idx=torch.as_tensor(unpack, device=self.device),
            pack_idx=torch.as_tensor(pack, device=self.device),
        )

    def _prefill_forward(
        self, n: int, fused: bool, sdpa_plan: kvmod.PrefillPlan | None = None
    ) -> torch.Tensor:
        """`_prefill_packed`'s forward over the static inputs: logits [rows, V] of each row's last
        token, or with `fused` its samples [2, rows] (position offset 0: the first new token)."""
        nrows = self.max_running
        if sdpa_plan is None:
            progs = paged_attn.packed_programs(n, nrows, self._rep, self._block_m)
            self.kv.plan = kvmod.PrefillPlan(
                write_slots=self._pf("slot", n),
                page_table=self._pf_pt,
                cached=self._pf("cached", nrows),
                lengths=self._pf("lengths", nrows),
                starts=self._pf("starts", nrows),
                prog_row=self._pf("prog_row", progs),
                prog_tile=self._pf("prog_tile", progs),
            )
        else:
            self.kv.plan = sdpa_plan
        ids, positions = self._pf("ids", n).view(1, n), self._pf("pos", n).view(1, n)
        out = self.base(input_ids=ids, position_ids=positions, use_cache=False)
        last = out.last_hidden_state[0, self._pf("last", nrows)]
        if fused:
            position = self._dev_i[1, :nrows] + 1
            return self._fused_sample(
                self.lm_head(last), self._dev_f[0, :nrows], self._dev_i[3, :nrows], position, 0
            )
        return self._logits(last)

    def _sample(self, logits: torch.Tensor, params: RowParams) -> tuple[list[int], list[float]]:
        tokens, logprobs = self._sample_fn(logits, params)
        return self._read_back(torch.stack([tokens.to(torch.float64), logprobs.to(torch.float64)]))

    @staticmethod
    def _read_back(both: torch.Tensor) -> tuple[list[int], list[float]]:
        """[2, n] float64 (tokens, log-probs) on the device → host lists: the step's one sync."""
        host = both.cpu()
        return [int(x) for x in host[0].tolist()], host[1].tolist()

    def reset_graphs(self) -> None:
        """Drop captured graphs (their parameters are read in place, so weight updates keep them valid)."""
        self._graphs.clear()
        self._prefill_graphs.clear()
        self._pool = None
