"""KV pages and the prefix cache: a page pool, and a radix tree of full pages over token ids.

The KV cache is one pool of fixed-size pages (`page_size` token positions each); a request holds
a list of pages (its page table), and page i holds the keys/values of its tokens
[i·P, (i+1)·P). Page 0 is never handed out: padding rows of a batch write there.

`PrefixCache` (as SGLang's RadixAttention, page-granular): a tree whose nodes are full pages,
keyed by the page's P token ids, so a path from the root spells a token prefix and holds its KV.
- `match(tokens)`: the longest cached run of full pages that is a prefix of `tokens`.
- `lock` / `unlock`: a request that reads a node holds a reference on it and on every ancestor;
  only unreferenced leaves can be evicted (least recently released first).
- `insert(tokens, pages)`: after a prefill (and again when a request ends) its full pages join
  the tree; where a page is already cached the request switches to the cached copy and its own
  page goes back to the pool.
- `flush()`: after a weight update no KV computed under the old weights may serve a new request:
  the tree is emptied at once; pages still read by running requests are freed when released.

Only whole pages are shared, so no page is ever written by two requests (no copy-on-write): a
request's first new token always starts a page of its own.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence


class PagePool:
    """Free-list allocator over pages 1..num_pages-1 (page 0 is the scratch page)."""

    def __init__(self, num_pages: int) -> None:
        if num_pages < 2:
            raise ValueError(f"a KV pool needs at least 2 pages, got {num_pages}")
        self.num_pages = num_pages
        self._free = list(range(num_pages - 1, 0, -1))

    @property
    def capacity(self) -> int:
        """Pages that can be handed out (all but the scratch page)."""
        return self.num_pages - 1

    @property
    def free_count(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"KV pool exhausted: {n} pages asked, {len(self._free)} free")
        out = self._free[len(self._free) - n :]
        del self._free[len(self._free) - n :]
        return out

    def free(self, pages: Sequence[int]) -> None:
        self._free.extend(pages)


class Node:
    __slots__ = ("key", "page", "parent", "children", "refs", "detached", "evicted", "idle_since")

    def __init__(self, key: tuple[int, ...], page: int, parent: Node | None) -> None:
        self.key = key
        self.page = page
        self.parent = parent
        self.children: dict[tuple[int, ...], Node] = {}
        self.refs = 0
        self.detached = False  # flushed out of the tree; its page is freed when the last reader lets go
        self.evicted = False  # evicted (its page is back in the pool)
        self.idle_since = 0.0  # time.monotonic() when its last reader let go


class PrefixCache:
    def __init__(self, pool: PagePool, page_size: int, enabled: bool = True) -> None:
        self.pool = pool
        self.page_size = page_size
        self.enabled = enabled
        self.root = Node((), 0, None)
        self._evictable: OrderedDict[Node, None] = OrderedDict()  # unreferenced leaves, LRU first
        self.nodes = 0  # pages held by the tree (referenced or not)
        self.unreferenced = 0  # of those, pages no request reads (all evictable, leaves first)
        self.epoch = 0  # bumped by flush(); a request admitted in an older epoch inserts nothing

    # ---- lookup ---------------------------------------------------------------------------
    def _key(self, tokens: Sequence[int], i: int) -> tuple[int, ...]:
        return tuple(tokens[i * self.page_size : (i + 1) * self.page_size])

    def match(self, tokens: Sequence[int], limit: int | None = None) -> list[Node]:
        """Nodes of the longest cached prefix of tokens[:limit], in whole pages."""
        return self.rematch(tokens, [], limit)

    def rematch(self, tokens: Sequence[int], path: list[Node], limit: int | None = None) -> list[Node]:
        """`match(tokens, limit)`, reusing `path`, an earlier match of the same tokens: its nodes
        still in the tree are kept (only leaves are evicted, so they are the leading ones) and only
        the pages past them are looked up. A waiting request is matched at every scheduler step;
        hashing its whole prompt each time cost ~2 ms per step with 70 waiting (multiturn, CPU)."""
        if not self.enabled:
            return []
        n = (len(tokens) if limit is None else min(limit, len(tokens))) // self.page_size
        keep = min(len(path), n)
        while keep and (path[keep - 1].detached or path[keep - 1].evicted):
            keep -= 1
        out = path[:keep]
        node = out[-1] if out else self.root
        for i in range(keep, n):
            child = node.children.get(self._key(tokens, i))
            if child is None:
                break
            out.append(child)
            node = child
        return out

    # ---- references -----------------------------------------------------------------------
    def lock(self, path: Sequence[Node]) -> None:
        for node in path:
            if node.refs == 0 and not node.detached:
                self._evictable.pop(node, None)
                self.unreferenced -= 1
            node.refs += 1

    def unlock(self, path: Sequence[Node]) -> None:
        for node in reversed(path):
            node.refs -= 1
            if node.refs > 0:
                continue
            if node.detached:
                self.pool.free([node.page])
            else:
                self.unreferenced += 1
                node.idle_since = time.monotonic()
                if not node.children:
                    self._evictable[node] = None

    # ---- growth ---------------------------------------------------------------------------
    def insert(self, tokens: Sequence[int], pages: list[int], path: list[Node], epoch: int) -> None:
        """Add the full pages of `tokens` (KV in `pages`, the request's page table) beyond `path`,
        the nodes the request already holds; extends `path` (locked) in place. Where a page is
        already cached, `pages[i]` switches to the cached page and the request's copy is freed."""
        if not self.enabled or epoch != self.epoch:
            return
        node = path[-1] if path else self.root
        for i in range(len(path), len(tokens) // self.page_size):
            key = self._key(tokens, i)
            child = node.children.get(key)
            if child is None:
                child = Node(key, pages[i], node)
                node.children[key] = child
                self._evictable.pop(node, None)  # no longer a leaf
                self.nodes += 1
                child.refs = 1
            else:
                self.lock([child])
                if child.page != pages[i]:
                    self.pool.free([pages[i]])
                    pages[i] = child.page
            path.append(child)
            node = child

    def owned(self, path: Sequence[Node]) -> int:
        """How many leading pages of a request's page table the tree owns (its `path`)."""
        return len(path)

    # ---- memory ---------------------------------------------------------------------------
    def available(self) -> int:
        """Pages obtainable now: free ones plus every unreferenced cached one."""
        return self.pool.free_count + self.unreferenced

    def available_idle(self, idle_s: float) -> int:
        """Pages obtainable without evicting KV that a reader let go of in the last idle_s
        seconds: free ones plus the unreferenced chains (leaf upwards) idle that long."""
        cutoff = time.monotonic() - idle_s
        count = self.pool.free_count
        for leaf in self._evictable:  # least recently used first
            if leaf.idle_since > cutoff:
                break
            node: Node | None = leaf
            while node is not None and node is not self.root and node.refs == 0 and node.idle_since <= cutoff:
                count += 1
                node = node.parent if node.parent is not None and len(node.parent.children) == 1 else None
        return count

    def alloc(self, n: int) -> list[int]:
        """n pages from the pool, evicting least recently used unreferenced leaves as needed."""
        short = n - self.pool.free_count
        if short > 0:
            self.evict(short)
        return self.pool.alloc(n)

    def evict(self, n: int) -> int:
        freed = 0
        while freed < n and self._evictable:
            node, _ = self._evictable.popitem(last=False)
            parent = node.parent
            assert parent is not None
            del parent.children[node.key]
            node.evicted = True
            self.pool.free([node.page])
            self.nodes -= 1
            self.unreferenced -= 1
            freed += 1
            if parent is not self.root and parent.refs == 0 and not parent.children:
                # the parent keeps its leaf's place (first out): one idle chain goes whole before
                # the next loses its tail, instead of every idle session losing a page in turn
                self._evictable[parent] = None
                self._evictable.move_to_end(parent, last=False)
        return freed

    def flush(self) -> int:
        """Empty the tree (a weight update): returns the pages freed now."""
        freed = 0
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            node.detached = True
            if node.refs == 0:
                self.pool.free([node.page])
                freed += 1
        self.root = Node((), 0, None)
        self._evictable.clear()
        self.nodes = 0
        self.unreferenced = 0
        self.epoch += 1
        return freed
