"""Prefix-tree merging: a compressed trie over token sequences, DFS-packed into one sequence.

Any shared prefix merges: the samples of one prompt's group, the successive calls of one
multi-turn episode (prompt_{t+1} extends prompt_t + completion_t), identical completions.
The trie is laid out depth-first, so every node's tokens are contiguous and a node's
subtree is the contiguous range [offset, end). Then, for packed positions q and k:

    position_id[q] = depth of q in its tree (its index in its own sequence)
    q may attend k  iff  k <= q < end[k]      (k is q itself or one of its ancestors)

Each input sequence is recovered as an index vector into the packed sequence
(`Packed.seq_index[i]`): running a causal LM on the packed sequence with that mask and those
positions gives, row for row, the hidden states each sequence would get on its own.

`merge=False` packs the same sequences without sharing anything (the flat baseline): the
identical layout machinery with one tree per sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


class _Node:
    __slots__ = ("tokens", "children", "offset", "end", "depth")

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens
        self.children: dict[int, _Node] = {}
        self.offset = 0
        self.end = 0
        self.depth = 0


def _lcp(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


class PrefixTrie:
    """A compressed trie of int token sequences; `size` counts the tokens it stores."""

    def __init__(self) -> None:
        self.root = _Node(np.empty(0, dtype=np.int64))
        self.size = 0
        self.seqs: list[np.ndarray] = []

    def matched(self, seq: np.ndarray) -> int:
        """Length of the longest prefix of `seq` already in the trie."""
        node, pos = self.root, 0
        while pos < len(seq):
            child = node.children.get(int(seq[pos]))
            if child is None:
                return pos
            n = _lcp(child.tokens, seq[pos : pos + len(child.tokens)])
            pos += n
            if n < len(child.tokens):
                return pos
            node = child
        return pos

    def insert(self, seq: np.ndarray) -> None:
        seq = np.asarray(seq, dtype=np.int64)
        self.seqs.append(seq)
        node, pos = self.root, 0
        while pos < len(seq):
            first = int(seq[pos])
            child = node.children.get(first)
            if child is None:
                if node is not self.root and not node.children:
                    # seq runs past the end of a leaf (the next call of an episode): grow the leaf
                    # instead of hanging a child on it, so a K-call chain stays one node deep
                    node.tokens = np.concatenate([node.tokens, seq[pos:]])
                else:
                    node.children[first] = _Node(seq[pos:])
                self.size += len(seq) - pos
                return
            n = _lcp(child.tokens, seq[pos : pos + len(child.tokens)])
            if n == len(child.tokens):
                node, pos = child, pos + n
                continue
            if pos + n == len(seq):  # seq ends inside this edge: nothing new to store
                return
            mid = _Node(child.tokens[:n])  # split the edge where seq diverges
            child.tokens = child.tokens[n:]
            mid.children[int(child.tokens[0])] = child
            node.children[first] = mid
            node, pos = mid, pos + n


def _add_separate(trie: PrefixTrie, seq: np.ndarray) -> None:
    """Flat mode: every sequence is a tree of its own (a fresh root child, keyed uniquely)."""
    seq = np.asarray(seq, dtype=np.int64)
    trie.seqs.append(seq)
    if len(seq):
        trie.root.children[-len(trie.seqs)] = _Node(seq)  # negative keys never collide with tokens
        trie.size += len(seq)


@dataclass
class Packed:
    """One packed sequence: T tokens holding one or more trees."""

    input_ids: torch.Tensor  # [T] long
    position_ids: torch.Tensor  # [T] long, depth in the tree
    subtree_end: torch.Tensor  # [T] long, one past the last packed position of the token's subtree
    seq_index: list[torch.Tensor]  # per input sequence: [L_i] long, its tokens' packed positions

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


def _layout(trie: PrefixTrie) -> Packed:
    ids: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    node_ranges: list[tuple[_Node, int]] = []
    offset = 0
    # iterative DFS preorder; post-order pass fills `end`
    stack: list[tuple[_Node, int, bool]] = [(c, 0, False) for c in reversed(trie.root.children.values())]
    while stack:
        node, depth, done = stack.pop()
        if done:
            node.end = offset
            continue
        node.offset, node.depth = offset, depth
        ids.append(node.tokens)
        pos.append(np.arange(depth, depth + len(node.tokens), dtype=np.int64))
        node_ranges.append((node, offset))
        offset += len(node.tokens)
        stack.append((node, depth, True))
        stack.extend((c, depth + len(node.tokens), False) for c in reversed(node.children.values()))
    end = np.empty(offset, dtype=np.int64)
    for node, start in node_ranges:
        end[start : start + len(node.tokens)] = node.end
    seq_index = [_path_index(trie, s, flat_key=-(i + 1)) for i, s in enumerate(trie.seqs)]
    cat = np.concatenate if ids else (lambda _: np.empty(0, dtype=np.int64))
    return Packed(
        input_ids=torch.from_numpy(cat(ids)),
        position_ids=torch.from_numpy(cat(pos)),
        subtree_end=torch.from_numpy(end),
        seq_index=seq_index,
    )


def _path_index(trie: PrefixTrie, seq: np.ndarray, flat_key: int) -> torch.Tensor:
    parts: list[np.ndarray] = []
    node, pos = trie.root, 0
    while pos < len(seq):
        child = node.children.get(flat_key) if pos == 0 and flat_key in node.children else None
        if child is None:
            child = node.children[int(seq[pos])]
        take = min(len(child.tokens), len(seq) - pos)
        parts.append(np.arange(child.offset, child.offset + take, dtype=np.int64))
        node, pos = child, pos + take
    return torch.from_numpy(np.concatenate(parts) if parts else np.empty(0, dtype=np.int64))


def pack(seqs: Sequence[Sequence[int] | np.ndarray], merge: bool = True) -> Packed:
    """Pack sequences into one prefix-merged (or, with merge=False, flat) sequence."""
    trie = PrefixTrie()
    for s in seqs:
        (trie.insert if merge else lambda x: _add_separate(trie, x))(np.asarray(s, dtype=np.int64))
    return _layout(trie)


def tree_attention_mask(packed: Packed) -> torch.Tensor:
    """Dense [T, T] boolean mask: q attends k iff k <= q < end[k]."""
    t = packed.num_tokens
    q = torch.arange(t).unsqueeze(1)
    k = torch.arange(t).unsqueeze(0)
    return (k <= q) & (q < packed.subtree_end.unsqueeze(0))
