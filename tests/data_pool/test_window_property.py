"""Property-based: under random finishing orders, aborts, acks and nacks, the scheduler never
hands out a task outside the window, never one twice, never splits a group, and never leaves
an eligible ready group behind when it had room for it (so none starves); producers never start
a group beyond the in-flight bound; draining ends every task completed or failed/dropped (no
deadlock), each completed one acked exactly once."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_pool import PoolConfig, Scheduler, TaskStatus, connect
from forge.ground.types import Task
from tests.helpers.pool import complete

OPS = [
    "acquire",
    "acquire",
    "acquire",
    "finish",
    "finish",
    "finish",
    "abort",
    "batch",
    "batch",
    "ack",
    "nack",
]
SETTLED = {TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.DROPPED}


class Model:
    def __init__(self, pool, tasks, window, policy, bound):
        self.pool, self.window, self.policy, self.bound = pool, window, policy, bound
        self.seq = {t.id: t.seq for t in tasks}
        self.group = {t.id: t.group_id or t.id for t in tasks}
        self.members: dict[str, list[str]] = {}
        for t in tasks:
            self.members.setdefault(self.group[t.id], []).append(t.id)
        self.outstanding: dict[str, list[str]] = {}  # batch id → task ids
        self.acked: list[str] = []

    def statuses(self):
        return self.pool.statuses(self.seq)

    def consumed(self, st):
        held = {t for ids in self.outstanding.values() for t in ids}
        return (
            held
            | set(self.acked)
            | {t for t, s in st.items() if s in (TaskStatus.FAILED, TaskStatus.DROPPED)}
        )

    def head(self, consumed):
        open_ = [self.seq[t] for t in self.seq if t not in consumed]
        return min(open_) if open_ else len(self.seq)

    def eligible(self, g, head):
        seqs = [self.seq[m] for m in self.members[g]]
        lo, hi = min(seqs), max(seqs)
        return self.window is None or lo <= head or hi < head + self.window

    def ready_groups(self, st, consumed):
        """Groups the scheduler may claim now, in seq order, with their trainable members."""
        out = []
        for g, ms in sorted(self.members.items(), key=lambda kv: self.seq[kv[1][0]]):
            if any(st[m] not in SETTLED for m in ms) or any(
                m in consumed and st[m] == TaskStatus.DONE for m in ms
            ):
                continue
            done = [m for m in ms if st[m] == TaskStatus.DONE and m not in consumed]
            bad = any(st[m] in (TaskStatus.FAILED, TaskStatus.DROPPED) for m in ms)
            if done and not (bad and self.policy == "drop"):
                out.append((g, done))
        return out

    def check_batch(self, batch, n, before):
        consumed = self.consumed(before)
        ids = batch.task_ids
        assert len(set(ids)) == len(ids), "a task twice in one batch"
        assert not set(ids) & consumed, "a consumed task handed out again"
        i = 0
        while i < len(ids):
            g = self.group[ids[i]]
            j = i
            while j < len(ids) and self.group[ids[j]] == g:
                j += 1
            members = ids[i:j]
            head = self.head(consumed)
            assert self.eligible(g, head), f"group {g} outside the window [{head}, {head}+{self.window})"
            trainable = [m for m in self.members[g] if before[m] == TaskStatus.DONE]
            assert members == trainable, f"group {g} split: {members} vs {trainable}"
            assert g not in {self.group[x] for x in ids[j:]}, "group appears twice"
            consumed |= set(members)
            i = j
        after = self.statuses()
        consumed = self.consumed(after) | set(ids)
        head = self.head(consumed)
        left = [(g, d) for g, d in self.ready_groups(after, consumed) if self.eligible(g, head)]
        if left:
            _, done = left[0]
            assert ids and len(ids) + len(done) > n, (
                f"eligible ready group {left[0]} left behind by {ids} (n={n})"
            )
        self.outstanding[batch.id] = ids


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_window_invariants(redis_server, data):
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=8), label="group sizes")
    bound = data.draw(st.integers(1, 8), label="max_in_flight")
    mode = data.draw(st.sampled_from(["strict", "windowed", "greedy"]), label="mode")
    window = data.draw(st.integers(1, bound + 2), label="W")
    policy = data.draw(st.sampled_from(["drop", "partial"]), label="policy")
    cfg = PoolConfig(
        redis_url=redis_server.url,
        key_prefix="prop",
        max_in_flight=bound,
        mode=mode,
        window=window,
        group_failure=policy,
        max_attempts=data.draw(st.integers(1, 2), label="max_attempts"),
    )
    pool = connect(cfg)
    try:
        pool.flush()
        tasks = []
        for g, size in enumerate(sizes):
            tasks += [
                Task(id=f"g{g}m{m}", env="e", group_id=f"g{g}" if size > 1 else "", group_size=size)
                for m in range(size)
            ]
        tasks = pool.submit(tasks)
        sched = Scheduler(pool)
        model = Model(pool, tasks, cfg.effective_window(), policy, bound)
        running: dict[str, Task] = {}
        admitted: set[str] = set()  # groups with a member acquired: the bound admits whole groups
        ops = data.draw(st.lists(st.sampled_from(OPS), min_size=10, max_size=80), label="ops")
        for op in ops:
            if op == "acquire":
                full = pool.counts()["in_flight"] >= bound
                t = pool.acquire_task("w", timeout=0)
                if t is not None:
                    g = model.group[t.id]
                    assert not full or g in admitted, "a new group started beyond the in-flight bound"
                    admitted.add(g)
                    running[t.id] = t
            elif op in ("finish", "abort") and running:
                tid = data.draw(st.sampled_from(sorted(running)))
                t = running.pop(tid)
                if op == "finish":
                    complete(pool, t)
                else:
                    pool.abort(tid, "random abort", attempt=t.attempt)
            elif op == "batch":
                n = data.draw(st.integers(1, 6), label="n")
                before = model.statuses()
                model.check_batch(sched.next_batch(n, timeout=0), n, before)
            elif op in ("ack", "nack") and model.outstanding:
                bid = data.draw(st.sampled_from(sorted(model.outstanding)))
                ids = model.outstanding.pop(bid)
                batch = type("B", (), {"id": bid, "episodes": ids})()
                if op == "ack":
                    sched.ack(batch)
                    model.acked += ids
                else:
                    sched.nack(batch)
            if op in ("batch", "ack", "nack", "abort"):
                assert sched.head == model.head(model.consumed(model.statuses())), (
                    "head differs from the model"
                )
        # drain: everything ends completed or failed/dropped, nothing lost, nothing trained twice
        for bid, ids in list(model.outstanding.items()):
            sched.ack(type("B", (), {"id": bid, "episodes": ids})())
            model.acked += ids
        model.outstanding.clear()
        rnd = data.draw(st.randoms(use_true_random=False), label="drain order")
        for _ in range(8 * len(tasks) + 8):
            while (t := pool.acquire_task("w", timeout=0)) is not None:
                running[t.id] = t
            if running:  # finish one task at a time, in random order, a batch after each
                complete(pool, running.pop(rnd.choice(sorted(running))))
            before = model.statuses()
            n = rnd.randint(1, 6)
            b = sched.next_batch(n, timeout=0)
            model.check_batch(b, n, before)
            sched.ack(b)
            model.acked += model.outstanding.pop(b.id)
            if all(s.terminal for s in model.statuses().values()):
                break
        final = model.statuses()
        assert all(s.terminal for s in final.values()), final
        completed = sorted(t for t, s in final.items() if s == TaskStatus.COMPLETED)
        assert sorted(model.acked) == completed, "acked ≠ completed: a task lost or trained twice"
        c = pool.counts()
        assert c["completed"] + c["failed"] + c["dropped"] == c["submitted"] == len(tasks)
    finally:
        pool.close()
