"""From Episodes to packed micro-batches: per-token advantages, weights, targets, tree packing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from forge.ground.types import Episode, EpisodeStatus
from trainer.tree import Packed, PrefixTrie, pack


@dataclass
class TrainSample:
    """One model call ready for training: its tokens and per-completion-token quantities."""

    ref: str  # "task_id#turn", for error messages
    tokens: np.ndarray  # [L] int64, prompt + completion
    prompt_len: int
    behaviour_logprobs: np.ndarray  # [C] float32, one per completion token
    advantages: np.ndarray  # [C] float32
    token_weight: float  # normaliser: 1/N_tokens (token-level) or 1/(|o_i| * N_samples) (sequence)
    group: str = ""  # samples of one group / episode are kept adjacent so their prefixes merge


@dataclass
class MicroBatch:
    """A packed sequence plus flat per-completion-token tensors, all of length M."""

    packed: Packed
    pred_rows: torch.Tensor  # [M] packed row whose logits predict the token
    targets: torch.Tensor  # [M] the token
    behaviour_logprobs: torch.Tensor  # [M]
    advantages: torch.Tensor  # [M]
    token_weights: torch.Tensor  # [M]
    sample_ids: torch.Tensor  # [M] index into `refs`
    refs: list[str] = field(default_factory=list)
    flat_tokens: int = 0  # tokens these samples take unmerged

    def to(self, device: torch.device) -> MicroBatch:
        """This micro-batch with its tensors on `device` (the packed tree's, and the per-token ones).

        On CUDA: one copy per dtype. A `.to(device)` from pageable memory waits for every kernel
        already queued, so copying a tensor in the middle of a pass (say, the rows to read after
        the decoder's forward) idles the GPU until the host catches up again. Staged before the
        first kernel, the copies wait for nothing. (Pinned, non-blocking copies were tried: a
        profiled H200 step then showed ~5 ms of idle GPU before the first copy.)
        """
        if device.type != "cuda" or self.packed.input_ids.is_cuda:  # CPU, or staged already
            return self
        p = self.packed
        longs = [p.input_ids, p.position_ids, p.subtree_end, self.pred_rows, self.targets, self.sample_ids]
        floats = [self.behaviour_logprobs, self.advantages, self.token_weights]
        on_device = []
        for parts, dtype in ((longs, torch.long), (floats, torch.float32)):
            staged = torch.cat([t.to(dtype) for t in parts]).to(device)
            on_device += list(staged.split([t.numel() for t in parts]))
        ids, pos, end, rows, targets, sids, behaviour, adv, weights = on_device
        return replace(
            self,
            packed=replace(p, input_ids=ids, position_ids=pos, subtree_end=end),
            pred_rows=rows,
            targets=targets,
            sample_ids=sids,
            behaviour_logprobs=behaviour,
            advantages=adv,
            token_weights=weights,
        )


def usable_samples(episodes: Sequence[Episode]) -> tuple[list[tuple[Episode, int]], int]:
    """(episode, sample index) pairs worth training on, and the count of empty completions skipped."""
    keep, empty = [], 0
    for ep in episodes:
        if ep.status != EpisodeStatus.COMPLETED:
            raise ValueError(f"episode {ep.task.id!r} has status {ep.status}; only completed episodes train")
        for i, s in enumerate(ep.samples):
            if not s.completion_ids:
                empty += 1
                continue
            if not s.prompt_ids:
                raise ValueError(
                    f"sample {s.task_id}#{s.turn} has an empty prompt: no row predicts its first token"
                )
            keep.append((ep, i))
    return keep, empty


def build_samples(
    episodes: Sequence[Episode], advantages: dict[tuple[str, int], float], normalisation: str
) -> tuple[list[TrainSample], int]:
    """TrainSamples in group/episode/turn order; `advantages[(task_id, turn_index)]` per sample."""
    keep, empty = usable_samples(episodes)
    n_tokens = sum(len(ep.samples[i].completion_ids) for ep, i in keep)
    out = []
    for ep, i in keep:
        s = ep.samples[i]
        c = len(s.completion_ids)
        weight = 1.0 / n_tokens if normalisation == "token" else 1.0 / (c * len(keep))
        out.append(
            TrainSample(
                ref=f"{s.task_id}#{s.turn}",
                tokens=np.asarray(list(s.prompt_ids) + list(s.completion_ids), dtype=np.int64),
                prompt_len=len(s.prompt_ids),
                behaviour_logprobs=np.asarray(s.logprobs, dtype=np.float32),
                advantages=np.full(c, advantages[(ep.task.id, i)], dtype=np.float32),
                token_weight=weight,
                group=ep.task.group_id or ep.task.id,
            )
        )
    out.sort(key=lambda t: t.group)  # stable: keeps turn order inside an episode
    return out, empty


def split_by_budget(
    samples: Sequence[TrainSample], budget: int, merge: bool, even: bool = True
) -> list[list[TrainSample]]:
    """Order-preserving split into as few micro-batches as a greedy fill to `budget` tokens needs,
    with their packed lengths evened out.

    A greedy fill leaves a small last micro-batch (32,768 + 1,024 tokens, say), whose pass is
    short on work per kernel and a new shape for compiled code. The second pass cuts wherever a
    micro-batch comes closest to the mean length of the greedy split instead (2 × ~16.9k), never
    above the budget; when that would take more micro-batches than the greedy fill, the greedy
    split stands. even=False: the greedy split alone.

    Where a cut falls inside a multi-call episode (each call's tokens extend the previous call's),
    the episode's earlier calls move to the next micro-batch with it: under merging they cost
    nothing there, and left behind they would be packed twice.
    """
    greedy, lengths = _split(samples, budget, merge)
    if len(greedy) < 2 or not even:
        return greedy
    evened, _ = _split(samples, budget, merge, sum(lengths) / len(greedy), len(greedy))
    return evened if len(evened) <= len(greedy) else greedy


def _split(
    samples: Sequence[TrainSample],
    budget: int,
    merge: bool,
    target: float | None = None,
    count: int = 0,
) -> tuple[list[list[TrainSample]], list[int]]:
    """(micro-batches, their packed lengths) of a greedy fill to `budget`; with `target`, also cut
    before a sample that would take the micro-batch further above `target` than it is below it
    now (for all but the last of `count`)."""
    batches: list[list[TrainSample]] = []
    lengths: list[int] = []
    trie, used, current, adds = PrefixTrie(), 0, [], []
    for s in samples:
        if len(s.tokens) > budget:
            raise ValueError(
                f"sample {s.ref} has {len(s.tokens)} tokens, more than the micro-batch budget "
                f"trainer.micro_batch_tokens={budget}; raise the budget or cap the episode length"
            )
        added = len(s.tokens) - (trie.matched(s.tokens) if merge else 0)
        full = used + added > budget
        past_target = (
            target is not None and len(batches) < count - 1 and used + added - target > target - used
        )
        if current and (full or past_target):
            # the earlier calls of this sample's episode move along with it: their tokens are a
            # prefix of its own, so they cost nothing there and would be counted twice here
            head = len(current)
            while (
                merge
                and head > 0
                and _extends(s if head == len(current) else current[head], current[head - 1])
            ):
                head -= 1
            if head == 0:  # the whole micro-batch is this episode's start: cut here after all
                head = len(current)
            batches.append(current[:head])
            lengths.append(used - sum(adds[head:]))
            current, trie, adds = current[head:], PrefixTrie(), []
            for moved in current:
                adds.append(len(moved.tokens) - trie.matched(moved.tokens))
                trie.insert(moved.tokens)
            used = sum(adds)
            added = len(s.tokens) - (trie.matched(s.tokens) if merge else 0)
        trie.insert(s.tokens)
        used += added
        current.append(s)
        adds.append(added)
    if current:
        batches.append(current)
        lengths.append(used)
    return batches, lengths


def _extends(later: TrainSample, earlier: TrainSample) -> bool:
    """True when `later`'s tokens start with all of `earlier`'s (the next call of one episode)."""
    n = len(earlier.tokens)
    return len(later.tokens) > n and bool(np.array_equal(later.tokens[:n], earlier.tokens))


def collate(samples: Sequence[TrainSample], merge: bool) -> MicroBatch:
    packed = pack([s.tokens for s in samples], merge=merge)
    completion = np.array([len(s.tokens) - s.prompt_len for s in samples], dtype=np.int64)
    rows = [
        index[s.prompt_len - 1 : len(s.tokens) - 1]
        for s, index in zip(samples, packed.seq_index, strict=True)
    ]
    weights = np.array([s.token_weight for s in samples], dtype=np.float64)
    return MicroBatch(
        packed=packed,
        pred_rows=torch.cat(rows),
        targets=torch.from_numpy(np.concatenate([s.tokens[s.prompt_len :] for s in samples])),
        behaviour_logprobs=torch.from_numpy(np.concatenate([s.behaviour_logprobs for s in samples])),
        advantages=torch.from_numpy(np.concatenate([s.advantages for s in samples])),
        token_weights=torch.from_numpy(np.repeat(weights, completion).astype(np.float32)),
        sample_ids=torch.from_numpy(np.repeat(np.arange(len(samples), dtype=np.int64), completion)),
        refs=[s.ref for s in samples],
        flat_tokens=sum(len(s.tokens) for s in samples),
    )


def make_microbatches(samples: Sequence[TrainSample], budget: int, merge: bool) -> list[MicroBatch]:
    return [collate(group, merge) for group in split_by_budget(samples, budget, merge)]
