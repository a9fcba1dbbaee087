"""The Redis key layout (all keys share the hash tag {prefix}: one slot on Redis Cluster).

{p}:seq            last assigned FIFO seq (INCRBY)
{p}:t:<id>         task hash: rec (task record), seq, gk, gid, gsize, status, attempt, worker,
                   lease, err, reward, srew, met, slen, minwv, batch, sub_at/acq_at/fin_at/...
{p}:s:<id>         list of raw sample records of the current attempt, in call order
{p}:ts:<id>        set of session ids of the current attempt; {p}:sess:<sid> hash {t, a}
{p}:g:<gk>         group hash: lo, hi (seq range), size; {p}:gm:<gk> list of member ids
{p}:pending        zset seq → id, waiting to be acquired (retries keep their seq)
{p}:leases         zset lease deadline (ms) → id, running
{p}:open           zset seq → id, not yet consumed: its minimum is the window's head
{p}:ready          zset lo → gk, groups whose members all finished
{p}:b:<bid>        batch hash {consumer, created}; {p}:bt:<bid> list of its task ids
{p}:claims         zset claim deadline (ms) → bid
{p}:cnt            hash: count per status, submitted, retries, malformed, dropped_stale, max_acq_seq
{p}:wv             trainer weight version
{p}:sched          hash: head, window, batches (batch id counter)
"""

from __future__ import annotations


def prefix(key_prefix: str) -> str:
    return "{" + key_prefix + "}"


def group_key(task_id: str, group_id: str) -> str:
    """Internal group key: 'g:<group_id>', or 't:<task id>' for a task without a group."""
    return f"g:{group_id}" if group_id else f"t:{task_id}"
