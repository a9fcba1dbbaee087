"""The scheduler: continuous batching over a paged KV cache with prefix reuse, in a thread of its own.

Loop: run queued control operations (abort, pause, weight updates, ...) → admit waiting requests
(each reuses the longest cached prefix of its prompt, in whole pages, and gets pages for the
rest; one batched prefill of the uncached suffixes also samples their first token) → give every
running row a page for the position it writes next (when none is left, the newest rows are
retracted: their KV joins the cache and they queue again at the front) → one batched decode step
→ finish rows (stop token, stop string, length, abort), put their KV in the prefix cache, release
their pages and compact the running rows to the front of the page table. New requests therefore
join between decode steps, and wait (never fail) while the pool is full.

Prefix reuse is exact: a page is shared only when its P tokens and every token before them are
equal, and never across a weight update (`set_weight_version` flushes the cache; a request
admitted before the flush puts nothing into the new tree).

Threading: HTTP handlers call `submit()` / `call()` from the server's event loop; everything that
touches the model or the slot state runs on the scheduler thread. Results go back through the
`on_done` callback of each request (the server wraps an asyncio future).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from gateway.engines.native.prefix_cache import PagePool, PrefixCache
from gateway.engines.native.request import BadRequest, Req
from gateway.engines.native.runner import ModelRunner, RowInputs

KEEP_RECENT_S = 1.0  # cold admissions leave KV released this recently alone (see _take_waiting)
LPM_MAX_WAITING = 256  # waiting requests ordered by cached prefix up to this many (SGLang: 128)

log = logging.getLogger("forge.engine")

Done = Callable[[dict[str, Any]], None]


class EngineCore:
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any | None,
        *,
        max_running: int,
        context_length: int,
        use_cuda_graph: bool,
        eos_token_ids: set[int],
        weight_version: str = "0",
        max_prefill_tokens: int = 8192,
        pad_to_buckets: bool | None = None,
        prefill_batch: int = 16,
        prefill_delay_steps: int = 12,
        num_pages: int | None = None,
        page_size: int = 16,
        prefix_cache: bool = True,
        attention: str = "auto",
        compile: bool = False,
    ) -> None:
        max_pages = -(-context_length // page_size)
        if num_pages is None:  # enough for every row at full context
            num_pages = max_running * max_pages + 1
        if num_pages - 1 < max_pages:
            raise ValueError(
                f"the KV pool holds {num_pages - 1} pages of {page_size} tokens, less than one "
                f"sequence of {context_length} tokens: lower the context length or raise the KV budget"
            )
        self.runner = ModelRunner(
            model,
            max_running,
            context_length,
            use_cuda_graph,
            pad_to_buckets,
            num_pages=num_pages,
            page_size=page_size,
            attention=attention,
            compile=compile,
            # a prefill packs its rows' new tokens (<= max_prefill_tokens, or one row <= the context)
            prefill_graph_tokens=max(max_prefill_tokens, context_length),
        )
        self.page_size = page_size
        self.pool = PagePool(num_pages)
        self.cache = PrefixCache(self.pool, page_size, enabled=prefix_cache)
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = set(eos_token_ids)
        self.weight_version = str(weight_version)
        self.max_prefill_tokens = max_prefill_tokens
        # while rows decode, new requests wait until `prefill_batch` of them (or all free slots)
        # are queued, or the oldest has waited `prefill_delay_steps` decode steps: a prefill is a
        # whole eager forward pass, as costly as several graph-replayed decode steps, whether it
        # holds one prompt or sixteen
        self.prefill_batch = max(1, prefill_batch)
        self.prefill_delay_steps = max(0, prefill_delay_steps)
        self.context_length = context_length
        self.max_running = max_running
        self.rows: list[Req] = []  # active requests; rows[i] lives in slot i
        self._done: dict[str, Done] = {}
        self._waiting: deque[Req] = deque()
        self._ops: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._cv = threading.Condition()
        self._rids: set[str] = set()
        self.paused = False
        self._stopped = False
        self.steps = 0
        # cumulative counters for utilisation metrics (read through stats())
        self._started_at = time.perf_counter()
        # seconds spent in prefill + decode, and when the step under way began (None between steps):
        # one tuple, swapped whole, so another thread reads a consistent pair (see stats())
        self._busy: tuple[float, float | None] = (0.0, None)
        self.decode_rows = 0  # sum over decode steps of the batch size
        self.prefills = 0
        self.prefill_rows = 0
        self.prefill_s = 0.0
        self.decode_s = 0.0  # in the runner's decode (the GPU step and its one sync); busy - both = host
        self.prompt_tokens = 0  # prompt tokens of admitted requests (first admission)
        self.cached_tokens = 0  # of those, found in the prefix cache
        self.prefill_tokens = 0  # tokens prefilled (computed), re-admissions included
        self.retractions = 0
        self.peak_pages_used = 0
        self.cache_flushes = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="forge-engine-scheduler", daemon=True)

    @property
    def vocab_size(self) -> int:
        return self.runner.vocab_size

    # ---- called from other threads --------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        self._thread.join(timeout=30)

    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def submit(self, req: Req, on_done: Done) -> None:
        with self._cv:
            if self._stopped or self.error is not None:
                raise RuntimeError("the engine is stopped")
            if req.rid in self._rids:
                raise BadRequest(f"a request with rid {req.rid!r} is already running")
            need = -(-(len(req.input_ids) + req.max_new_tokens) // self.page_size)
            if need > self.pool.capacity:
                raise BadRequest(
                    f"prompt + max_new_tokens = {len(req.input_ids) + req.max_new_tokens} tokens need "
                    f"{need} KV pages; the pool holds {self.pool.capacity}"
                )
            self._rids.add(req.rid)
            self._done[req.rid] = on_done
            req.queued_step = self.steps
            self._waiting.append(req)
            self._cv.notify_all()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn` on the scheduler thread between steps; its result in the returned future."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self._stopped or self.error is not None:
                fut.set_exception(RuntimeError("the engine is stopped"))
                return fut
            self._ops.append((fn, fut))
            self._cv.notify_all()
        return fut

    def load(self) -> dict[str, int]:
        with self._cv:
            return {"running": len(self.rows), "waiting": len(self._waiting)}

    def pages_used(self) -> int:
        """Pages that hold some running request's KV (shared pages once)."""
        return self.pool.capacity - self.pool.free_count - self.cache.unreferenced

    def busy_seconds(self, now: float) -> float:
        """Seconds spent stepping up to `now` (perf_counter), the step under way included, so that
        between two reads busy time never exceeds the wall time between them."""
        total, started = self._busy
        return total + (max(0.0, now - started) if started is not None else 0.0)

    def stats(self) -> dict[str, float]:
        """Cumulative counters; differences between two reads give utilisation over that time."""
        now = time.perf_counter()
        return {
            "busy_s": self.busy_seconds(now),
            "decode_steps": self.steps,
            "decode_rows": self.decode_rows,
            "prefills": self.prefills,
            "prefill_rows": self.prefill_rows,
            "prefill_s": self.prefill_s,
            "decode_s": self.decode_s,
            "uptime_s": now - self._started_at,
            # the paged KV cache: levels (pages now) and counters
            "page_size": self.page_size,
            "pages_total": self.pool.capacity,
            "pages_used": self.pages_used(),
            "pages_free": self.cache.available(),
            "pages_cached": self.cache.nodes,
            "peak_pages_used": self.peak_pages_used,
            "tokens_held": sum(r.position for r in list(self.rows)),
            "kv_cache_bytes": self.runner.kv.nbytes(),
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "prefill_tokens": self.prefill_tokens,
            "prefill_padded_tokens": self.runner.prefill_padded_tokens,  # run, padding included
            "retractions": self.retractions,
            "cache_flushes": self.cache_flushes,
        }

    # ---- scheduler thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self.runner.device.type == "cuda":
                torch.cuda.set_device(self.runner.device)
            with torch.inference_mode():
                while self._step():
                    pass
        except BaseException as exc:  # noqa: BLE001 - the engine is dead; fail everything
            log.exception("engine scheduler crashed")
            self.error = exc
            self._fail_all(f"engine error: {exc!r}")

    def _step(self) -> bool:
        with self._cv:
            while not self._stopped and not self._ops and (self.paused or not (self._waiting or self.rows)):
                self._cv.wait()
            if self._stopped:
                self._fail_all("engine stopped")
                return False
            ops = list(self._ops)
            self._ops.clear()
        for fn, fut in ops:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)
        if self.paused:
            return True
        started = time.perf_counter()
        self._busy = (self._busy[0], started)
        try:
            self._admit()
            if self.rows:
                self._decode()
        finally:
            self._busy = (self._busy[0] + time.perf_counter() - started, None)
        return True

    def _take_waiting(self, gate: bool = True) -> tuple[list[Req], bool]:
        """Waiting requests to prefill now, their pages allocated; and whether a sibling was held
        back because it shares the first uncached page of one taken (it hits after this prefill)."""
        batch: list[Req] = []
        deferred = False
        with self._cv:
            free = self.max_running - len(self.rows)
            if gate and self.rows and self._waiting:
                enough = len(self._waiting) >= min(free, self.prefill_batch)
                waited = self.steps - self._waiting[0].queued_step >= self.prefill_delay_steps
                if not (enough or waited):
                    return batch, deferred
            firsts: set[tuple[int, tuple[int, ...]]] = set()  # (cached node, first uncached page) taken
            longest = total = 0
            p = self.page_size
            idle_pages: int | None = None
            for req in self._by_longest_prefix():
                if len(batch) >= free:
                    break
                seq = req.tokens()
                if req.max_new_tokens <= len(req.output_ids):  # nothing to generate: answered at once
                    self._waiting.remove(req)
                    batch.append(req)
                    continue
                path = list(self._match(req))
                cached = len(path) * p
                first = (id(path[-1]) if path else 0, tuple(seq[cached : cached + p]))
                if len(first[1]) == p and first in firsts:
                    deferred = True
                    continue
                longest2 = max(longest, len(seq) - cached)
                total2 = total + len(seq) - cached
                # the forward's size: packed rows cost their tokens, unpacked ones the longest per row
                size = total2 if self.runner.prefill_buckets else longest2 * (len(batch) + 1)
                if batch and size > self.max_prefill_tokens:
                    break
                need = -(-len(seq) // p) - len(path)
                self.cache.lock(path)
                # keep a page per running row free for their next decode positions
                if self.cache.available() - len(self.rows) - len(batch) < need:
                    self.cache.unlock(path)
                    break
                # a cold request (less than half of it cached: a new session, or one whose KV
                # went) must not evict what a session let go of moments ago (its next call is on
                # its way): else, once sessions outgrow the pool, they evict each other in turn
                cold = 2 * cached < len(seq)
                if cold and (self.rows or batch):
                    if idle_pages is None:
                        idle_pages = self.cache.available_idle(KEEP_RECENT_S)
                    if idle_pages - len(self.rows) - len(batch) < need:
                        self.cache.unlock(path)
                        continue
                    idle_pages -= need
                longest, total = longest2, total2
                req.path = path
                req.pages = [n.page for n in path] + self.cache.alloc(need)
                req.epoch = self.cache.epoch
                if req.cached_tokens < 0:  # first admission (a retracted request comes back)
                    req.cached_tokens = cached
                    self.prompt_tokens += len(seq)
                    self.cached_tokens += cached
                self._waiting.remove(req)
                batch.append(req)
                firsts.add(first)
        return batch, deferred

    def _by_longest_prefix(self) -> list[Req]:
        """Waiting requests, the longest cached prefix first (FIFO among equals), as SGLang's
        `lpm` policy: when sessions outgrow the pool, the ones whose KV is cached run on and finish
        while the rest wait, instead of all of them taking turns evicting each other. Past
        LPM_MAX_WAITING requests, matching them all costs more than it saves: FIFO. (The caller
        matches again at each request's turn: admitting one may evict another's prefix.)"""
        waiting = list(self._waiting)
        if len(waiting) > LPM_MAX_WAITING or not self.cache.enabled:
            return waiting
        cached = {id(r): len(self._match(r)) for r in waiting}
        return sorted(waiting, key=lambda r: -cached[id(r)])

    def _match(self, req: Req) -> list:
        """The cached prefix of a waiting request's tokens, leaving at least one token to compute
        (re-matched from its last match: PrefixCache.rematch)."""
        seq = req.tokens()
        req.matched = self.cache.rematch(seq, req.matched, limit=len(seq) - 1)
        return req.matched

    def _admit(self) -> None:
        gate = True
        for _ in range(3):  # a second round admits the siblings held back by the first
            batch, deferred = self._take_waiting(gate)
            self._prefill(batch)
            if not (batch and deferred):
                return
            gate = False

    def _prefill(self, batch: list[Req]) -> None:
        empty = [r for r in batch if r.max_new_tokens <= len(r.output_ids)]
        for req in empty:
            req.finish_reason = {"type": "length", "length": req.max_new_tokens}
            self._finish(req)
        batch = [r for r in batch if r.max_new_tokens > len(r.output_ids)]
        if not batch:
            return
        start = len(self.rows)
        seqs = [r.tokens() for r in batch]
        cached = [len(r.path) * self.page_size for r in batch]
        for i, req in enumerate(batch):
            req.slot = start + i
            self.runner.set_pages(start + i, req.pages)
        inputs = RowInputs(
            tokens=[],
            positions=[len(s) - 1 for s in seqs],
            temperature=[r.temperature for r in batch],
            top_p=[r.top_p for r in batch],
            top_k=[r.top_k for r in batch],
            min_p=[r.min_p for r in batch],
            seed=[r.seed for r in batch],
        )
        started = time.perf_counter()
        tokens, logprobs = self.runner.prefill(start, seqs, cached, inputs)
        self.prefill_s += time.perf_counter() - started
        self.prefills += 1
        self.prefill_rows += len(batch)
        self.prefill_tokens += sum(len(s) - c for s, c in zip(seqs, cached, strict=True))
        for req, seq in zip(batch, seqs, strict=True):  # siblings and the next call find these
            self.cache.insert(seq, req.pages, req.path, req.epoch)
            self.runner.set_pages(req.slot, req.pages)
        self.rows.extend(batch)
        self._note_pages()
        self._advance(batch, tokens, logprobs)

    def _grow(self) -> None:
        """A page for the position each running row writes next; retract the newest rows when the
        pool (free + evictable pages) has none left."""
        i = 0
        while i < len(self.rows):
            req = self.rows[i]
            index = req.position // self.page_size
            if index >= len(req.pages):
                while self.cache.available() < 1 and len(self.rows) > i + 1:
                    self._retract(self.rows.pop())
                if self.cache.available() < 1:  # this row is the newest: retract it too
                    self._retract(self.rows.pop())
                    break
                req.pages.append(self.cache.alloc(1)[0])
                self.runner.add_page(i, index, req.pages[-1])
            i += 1
        self._note_pages()

    def _retract(self, req: Req) -> None:
        """Take a running request (the last row) back to the front of the queue; its KV so far
        joins the prefix cache, so the re-admission recomputes little."""
        self.runner.clear_rows(req.slot, req.slot + 1)
        self._release(req)
        req.slot = -1
        self.retractions += 1
        with self._cv:
            self._waiting.appendleft(req)

    def _release(self, req: Req) -> None:
        """Put a request's computed KV into the prefix cache and give back its references/pages."""
        if req.epoch < 0:
            return
        computed = (req.input_ids + req.output_ids)[: req.position]  # the last token was never fed
        self.cache.insert(computed, req.pages, req.path, req.epoch)
        self.cache.unlock(req.path)
        self.pool.free(req.pages[len(req.path) :])
        req.pages, req.path, req.epoch = [], [], -1

    def _note_pages(self) -> None:
        self.peak_pages_used = max(self.peak_pages_used, self.pages_used())

    def _decode(self) -> None:
        self._grow()
        rows = self.rows
        if not rows:
            return
        inputs = RowInputs(
            tokens=[r.output_ids[-1] for r in rows],
            positions=[r.position for r in rows],
            temperature=[r.temperature for r in rows],
            top_p=[r.top_p for r in rows],
            top_k=[r.top_k for r in rows],
            min_p=[r.min_p for r in rows],
            seed=[r.seed for r in rows],
        )
        started = time.perf_counter()
        tokens, logprobs = self.runner.decode(inputs)
        self.decode_s += time.perf_counter() - started
        self.steps += 1
        self.decode_rows += len(rows)
        self._advance(rows, tokens, logprobs)

    def _advance(self, rows: list[Req], tokens: list[int], logprobs: list[float]) -> None:
        for req, tok, lp in zip(rows, tokens, logprobs, strict=True):
            req.output_ids.append(tok)
            req.output_logprobs.append(lp)
            req.finish_reason = self._check_finished(req, tok)
        self._reap()

    def _check_finished(self, req: Req, tok: int) -> dict[str, Any] | None:
        # Same precedence as SGLang's Req.check_finished: length, then stop token, then stop string.
        if len(req.output_ids) >= req.max_new_tokens:
            return {"type": "length", "length": req.max_new_tokens}
        if tok in req.stop_token_ids or (not req.ignore_eos and tok in self.eos_token_ids):
            return {"type": "stop", "matched": tok}
        if req.stop_strs:
            longest = max(len(s) for s in req.stop_strs)
            tail = self.tokenizer.decode(req.output_ids[-(longest + 8) :], skip_special_tokens=False)
            for s in req.stop_strs:
                if s in tail:
                    return {"type": "stop", "matched": s}
        return None

    def _reap(self) -> None:
        """Finish rows that have a finish reason and compact the survivors to the front."""
        rows = self.rows
        if not any(r.finish_reason is not None for r in rows):
            return
        keep = [r for r in rows if r.finish_reason is None]
        n_keep = len(keep)
        holes = [i for i in range(n_keep) if rows[i].finish_reason is not None]
        movers = [j for j in range(n_keep, len(rows)) if rows[j].finish_reason is None]
        for req in rows:
            if req.finish_reason is not None:
                self._finish(req)
        for hole, src in zip(holes, movers, strict=True):
            req = rows[src]
            self.runner.move_row(hole, src)
            req.slot = hole
            rows[hole] = req
        self.runner.clear_rows(n_keep, len(rows))
        self.rows = rows[:n_keep]

    def _finish(self, req: Req) -> None:
        self._release(req)
        done = self._done.pop(req.rid, None)
        with self._cv:
            self._rids.discard(req.rid)
        if done is not None:
            done(self._response(req))

    def _response(self, req: Req) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": req.rid,
            "finish_reason": req.finish_reason,
            "prompt_tokens": len(req.input_ids),
            "completion_tokens": len(req.output_ids),
            "cached_tokens": max(0, req.cached_tokens),
            "weight_version": self.weight_version,
            "e2e_latency": time.monotonic() - req.created,
        }
        if req.return_logprob:
            texts: list[str | None] = [None] * len(req.output_ids)
            if req.return_text_in_logprobs and self.tokenizer is not None:
                texts = [self.tokenizer.decode([t]) for t in req.output_ids]
            meta["output_token_logprobs"] = [
                [lp, tok, txt]
                for lp, tok, txt in zip(req.output_logprobs, req.output_ids, texts, strict=True)
            ]
        return {"text": self._text(req), "output_ids": list(req.output_ids), "meta_info": meta}

    def _text(self, req: Req) -> str:
        if self.tokenizer is None:
            return ""
        text = self.tokenizer.decode(req.output_ids, skip_special_tokens=req.skip_special_tokens)
        fr = req.finish_reason or {}
        matched = fr.get("matched")
        if isinstance(matched, str) and not req.no_stop_trim and matched in text:
            text = text[: text.index(matched)]
        return text

    def _fail_all(self, message: str) -> None:
        with self._cv:
            pending = list(self._waiting)
            self._waiting.clear()
        for req in pending + list(self.rows):
            req.finish_reason = {"type": "abort", "message": message, "status_code": 503}
            self._finish(req)
        self.rows = []
        with self._cv:
            ops = list(self._ops)
            self._ops.clear()
        for _, fut in ops:
            if not fut.done():
                fut.set_exception(RuntimeError(message))

    # ---- control operations (run through `call`) ------------------------------------------
    def abort(self, rid: str | None, abort_all: bool = False, message: str = "Aborted by request") -> int:
        """Abort a request by rid (waiting or running), or all; returns how many were aborted."""
        reason = {"type": "abort", "message": message, "status_code": None, "err_type": None}
        with self._cv:
            hit = [r for r in self._waiting if abort_all or r.rid == rid]
            for r in hit:
                self._waiting.remove(r)
        for r in hit:
            r.finish_reason = dict(reason)
            self._finish(r)
        running = [r for r in self.rows if abort_all or r.rid == rid]
        for r in running:
            r.finish_reason = dict(reason)
        self._reap()
        return len(hit) + len(running)

    def pause(self, mode: str) -> None:
        if mode == "abort":
            self.abort(None, abort_all=True, message="Aborted by pause_generation")
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def flush_cache(self) -> int:
        """Drop every cached prefix (SGLang's /flush_cache); returns the pages freed now."""
        self.cache_flushes += 1
        return self.cache.flush()

    def set_weight_version(self, version: str | None) -> str:
        """A weight update happened: no KV computed under the old weights may serve a new request."""
        self.flush_cache()
        if version is not None:
            self.weight_version = str(version)
        elif self.weight_version.isdigit():
            self.weight_version = str(int(self.weight_version) + 1)
        else:
            self.weight_version = f"{self.weight_version}+1"
        return self.weight_version
