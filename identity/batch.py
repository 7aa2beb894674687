"""Batch identity resolution of a whole list of entities, and an in-memory index for single lookups.

:func:`resolve` runs four near-linear steps over plain dicts and lists:

1. **Block**: every entity's :func:`~identity.matching.blocking_keys` into ``key -> [record]``.
   The same pass counts records per identifier key: a key over its kind's limit
   (``max_records_per_key`` in rules.yaml) is neither a block nor evidence, and any other block
   larger than ``max_block_size`` is skipped (a key that common cannot tell people apart).
2. **Pair**: the distinct pairs that share at least one block.
3. **Score**: each pair through :meth:`~identity.matching.Scorer.weigh` -- the very function
   single-record scoring uses, with the same key counts, so a pair gets the same answer either way.
4. **Cluster**: matched pairs, strongest first, into a union-find that refuses a union when the
   two clusters conflict: two birth dates that cannot be one person's, or two first names that
   conflict (a family's shared phone may tie a mother's records together and her son's, never
   the two clusters to each other). Pairs of equal weight are taken in the order of their
   records' ids, never of their positions: the clusters depend only on the records, so the
   store's real-time path, which clusters a neighbourhood at a time (:mod:`identity.resolve`),
   and a batch over the whole population give the same answer.

:class:`MemoryIndex` holds the blocks of a resolved population and answers "who is this?" for one
incoming entity: its candidates from the blocks, each scored by the same scorer.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from identity.matching import (
    Entity,
    KeyStats,
    Scorer,
    attribute_keys,
    blocking_keys,
    default_scorer,
    key_kind,
    value_keys,
)

__all__ = ["MemoryIndex", "Resolution", "block", "candidate_pairs", "cluster", "no_gc", "resolve"]


@dataclass
class Resolution:
    """Cluster labels per entity (the smallest member index of the cluster), and what it took."""

    labels: list[int]
    pairs_scored: int
    pairs_matched: int
    unions_refused: int
    seconds: dict[str, float] = field(default_factory=dict)
    # (i, j, weight) of every matched pair, when asked for (keep_pairs=True)
    matched: list[tuple[int, int, float]] | None = None
    decisions: dict[tuple[int, int], bool] | None = None
    # (weight, i << 32 | j) of the pairs that joined two clusters, and the population's key
    # statistics they were weighed with, when asked for (keep_unions=True: evidence for a store)
    unions: list[tuple[float, int]] | None = None
    stats: KeyStats | None = None

    def cluster_ids(self, entities: Sequence[Entity]) -> list[str]:
        """A cluster id per entity: the id of the cluster's first member (stable for a given input)."""
        return [entities[i].id for i in self.labels]


def block(entities: Sequence[Entity], scorer: Scorer) -> tuple[dict[str, list[int]], KeyStats]:
    """``key -> members`` for every usable block, and the key statistics (records per identifier
    key for the limits; keys whose holders' first names conflict; name and postcode frequencies)."""
    idents: dict[str, list[int]] = {}
    attrs: dict[str, list[int]] = {}
    freq: dict[str, int] = {}
    iget, aget, fget = idents.get, attrs.get, freq.get
    for i, e in enumerate(entities):
        # Hot loop (millions of keys): dict operations inlined, no helper calls per key.
        for k in (*e.ids, *e.emails, *e.phones):
            m = iget(k)
            if m is None:
                idents[k] = [i]
            else:
                m.append(i)
        for k in attribute_keys(e):
            m = aget(k)
            if m is None:
                attrs[k] = [i]
            else:
                m.append(i)
        if e.first:
            k = "f|" + e.first
            freq[k] = fget(k, 0) + 1
        if e.last:
            k = "l|" + e.last
            freq[k] = fget(k, 0) + 1
        if e.postcode:
            k = "z|" + e.postcode
            freq[k] = fget(k, 0) + 1
    # Only shared keys can be evidence, so only they need counting.
    counts: dict[str, int] = {}
    mixed: set[str] = set()
    firsts_conflict = scorer.firsts_conflict
    limits = scorer.rules.max_records_per_key
    usable: dict[str, list[int]] = {}
    for k, members in idents.items():
        n = len(members)
        if n < 2:
            continue
        counts[k] = n
        kind = key_kind(k) or ""
        limit = limits.get(kind.split(":", 1)[0])
        if limit is not None and n > limit:
            continue
        names = {entities[m].first for m in members} - {""}
        if len(names) > 1 and any(firsts_conflict(x, y) for x in names for y in names if x < y):
            mixed.add(k)
        usable[k] = members
    cap = scorer.max_block_size
    for k, members in attrs.items():
        if 1 < len(members) <= cap:
            usable[k] = members
    return usable, KeyStats(counts, mixed, freq, len(entities))


def candidate_pairs(blocks: dict[str, list[int]]) -> list[int]:
    """Distinct pairs ``i < j`` sharing a block, encoded ``i << 32 | j``, in ascending order."""
    seen: set[int] = set()
    add = seen.add
    for members in blocks.values():
        n = len(members)
        if n == 2:
            a, b = members
            add(a << 32 | b if a < b else b << 32 | a)
            continue
        ms = sorted(members)
        for x in range(n - 1):
            hi = ms[x] << 32
            for y in range(x + 1, n):
                add(hi | ms[y])
    return sorted(seen)


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: batch work allocates millions of acyclic objects, and
    each collection rescans all live ones (it doubles the run time at 100k records, worse beyond)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def resolve(entities: Sequence[Entity], scorer: Scorer | None = None, *, keep_pairs: bool = False,
            keep_decisions: bool = False, keep_unions: bool = False) -> Resolution:
    """Cluster ``entities``: block, pair, score with ``scorer``, union-find with conflict checks."""
    with no_gc():
        return _resolve(entities, scorer or default_scorer(), keep_pairs, keep_decisions, keep_unions)


def _resolve(entities: Sequence[Entity], scorer: Scorer, keep_pairs: bool, keep_decisions: bool,
             keep_unions: bool = False) -> Resolution:
    t0 = time.perf_counter()
    blocks, stats = block(entities, scorer)
    t1 = time.perf_counter()
    pairs = candidate_pairs(blocks)
    del blocks
    t2 = time.perf_counter()
    weigh = scorer.weigh
    matched: list[tuple[float, int]] = []
    decisions: dict[tuple[int, int], bool] | None = {} if keep_decisions else None
    mask = (1 << 32) - 1
    for code in pairs:
        a = entities[code >> 32]
        b = entities[code & mask]
        ok, w, _ = weigh(a, b, stats)
        if ok:
            matched.append((w, code))
        if decisions is not None:
            decisions[(code >> 32, code & mask)] = ok
    t3 = time.perf_counter()
    matched = canonical_order(entities, matched)
    unions: list[tuple[float, int]] | None = [] if keep_unions else None
    labels, refused = _cluster(entities, matched, scorer, unions)
    t4 = time.perf_counter()
    return Resolution(
        labels=labels, pairs_scored=len(pairs), pairs_matched=len(matched), unions_refused=refused,
        seconds={"block": t1 - t0, "pair": t2 - t1, "score": t3 - t2, "cluster": t4 - t3},
        matched=[(c >> 32, c & mask, w) for w, c in matched] if keep_pairs else None,
        decisions=decisions, unions=unions, stats=stats if keep_unions else None,
    )


def canonical_order(entities: Sequence[Entity], matched: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Matched ``(weight, i << 32 | j)`` pairs, strongest first; equal weights in the order of the
    records' ids (the lower id of each pair, then the higher), whatever the entities' positions."""
    mask = (1 << 32) - 1
    involved = {c >> 32 for _, c in matched} | {c & mask for _, c in matched}
    ranked = sorted(involved, key=lambda i: entities[i].id)
    rank = {i: r for r, i in enumerate(ranked)}
    keyed = []
    for w, c in matched:
        a, b = rank[c >> 32], rank[c & mask]
        keyed.append((-w, a << 32 | b if a < b else b << 32 | a, c))
    keyed.sort()
    return [(-nw, c) for nw, _, c in keyed]


def cluster(entities: Sequence[Entity], matched: list[tuple[float, int]], scorer: Scorer,
            unions: list[tuple[float, int]] | None = None) -> tuple[list[int], int]:
    """Cluster labels (smallest member index) for matched ``(weight, i << 32 | j)`` pairs in any
    order, with the batch's rules; ``unions`` collects the pairs that joined two clusters."""
    return _cluster(entities, canonical_order(entities, matched), scorer, unions)


def _cluster(entities: Sequence[Entity], matched: list[tuple[float, int]],
             scorer: Scorer, unions: list[tuple[float, int]] | None = None) -> tuple[list[int], int]:
    n = len(entities)
    parent = list(range(n))
    # Per root of a multi-member cluster: its birth dates and first names (small sets).
    dobs: dict[int, set[int]] = {}
    firsts: dict[int, set[str]] = {}
    size = [1] * n
    refused = 0
    mask = (1 << 32) - 1
    conflict = scorer.clusters_conflict

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def attrs(r: int) -> tuple[set[int], set[str]]:
        if size[r] == 1:
            e = entities[r]
            return ({e.dob} if e.dob else set()), ({e.first} if e.first else set())
        return dobs[r], firsts[r]

    for w, code in matched:
        i, j = code >> 32, code & mask
        ri, rj = find(i), find(j)
        if ri == rj:
            continue
        di, fi = attrs(ri)
        dj, fj = attrs(rj)
        # Two singletons were already vetted by the pair score; only grown clusters need checking.
        if size[ri] > 1 or size[rj] > 1:
            if conflict(di, fi, dj, fj):
                refused += 1
                continue
        if unions is not None:
            unions.append((w, code))
        if size[ri] < size[rj]:
            ri, rj = rj, ri
        parent[rj] = ri
        size[ri] += size[rj]
        dobs[ri] = di | dj
        firsts[ri] = fi | fj
        dobs.pop(rj, None)
        firsts.pop(rj, None)
    # Label each cluster by its smallest member index, so labels do not depend on union order.
    smallest: dict[int, int] = {}
    labels = [0] * n
    for x in range(n):
        r = find(x)
        s = smallest.setdefault(r, x)
        labels[x] = s
    return labels, refused


class MemoryIndex:
    """Blocks of a population in memory; :meth:`candidates` and :meth:`match` for one new entity."""

    def __init__(self, entities: Sequence[Entity], scorer: Scorer | None = None):
        self.scorer = scorer or default_scorer()
        self.entities = list(entities)
        self.blocks: dict[str, list[int]] = {}
        self.counts: dict[str, int] = {}
        self.mixed: set[str] = set()
        self.freq: dict[str, int] = {}
        for i, e in enumerate(self.entities):
            self._add(i, e)

    def _mixes(self, k: str, e: Entity) -> bool:
        """Would ``e`` make key ``k`` mixed (a holder whose first name conflicts with e's)?"""
        if not e.first:
            return False
        kind = key_kind(k) or ""
        limit = self.scorer.rules.max_records_per_key.get(kind.split(":", 1)[0])
        if limit is not None and self.counts.get(k, 0) > limit + 1:  # over the limit: no evidence anyway
            return False
        conflict = self.scorer.firsts_conflict
        return any(self.entities[m].first and conflict(e.first, self.entities[m].first)
                   for m in self.blocks.get(k, ()))

    def _add(self, i: int, e: Entity) -> None:
        for k in value_keys(e):
            self.freq[k] = self.freq.get(k, 0) + 1
        for k in blocking_keys(e):
            if key_kind(k) is not None:
                self.counts[k] = self.counts.get(k, 0) + 1
                if k not in self.mixed and self._mixes(k, e):
                    self.mixed.add(k)
            self.blocks.setdefault(k, []).append(i)

    def add(self, e: Entity) -> int:
        self.entities.append(e)
        i = len(self.entities) - 1
        self._add(i, e)
        return i

    def candidates(self, e: Entity, *, stored: bool = False) -> list[int]:
        """Indexes sharing a usable block with ``e`` (``stored``: e is already in the index)."""
        cap = self.scorer.max_block_size
        limits = self.scorer.rules.max_records_per_key
        extra = 0 if stored else 1  # a new record would join each block it looks in
        out: dict[int, None] = {}
        for k in blocking_keys(e):
            members = self.blocks.get(k)
            if not members:
                continue
            kind = key_kind(k)
            if kind is not None:
                limit = limits.get(kind.split(":", 1)[0])
                if limit is not None and len(members) + extra > limit:
                    continue
            elif len(members) + extra > cap:
                continue
            for m in members:
                out[m] = None
        return list(out)

    def match(self, e: Entity, *, stored: bool = False) -> list[tuple[int, float]]:
        """Indexes of the entities ``e`` matches, strongest first, with their weights.

        A new record is scored as if it were stored (its own keys and names counted once more);
        ``stored=True`` scores an entity already in the index against the others, which gives
        exactly the decisions batch resolution of the indexed population makes.
        """
        if stored:
            stats = KeyStats(self.counts, self.mixed, self.freq, len(self.entities))
        else:
            extra: dict[str, int] = {}
            mixed: set[str] = set()
            for _, k in e.keys():
                extra[k] = self.counts.get(k, 0) + 1
                if k in self.mixed or self._mixes(k, e):
                    mixed.add(k)
            for k in value_keys(e):
                extra[k] = self.freq.get(k, 0) + 1
            stats = KeyStats(_Overlay(self.counts, extra), _Union(self.mixed, mixed),
                             _Overlay(self.freq, extra), len(self.entities) + 1)
        weigh = self.scorer.weigh
        hits = []
        for i in self.candidates(e, stored=stored):
            other = self.entities[i]
            if other is e:
                continue
            ok, w, _ = weigh(e, other, stats)
            if ok:
                hits.append((i, w))
        hits.sort(key=lambda t: -t[1])
        return hits


class _Union:
    """Membership in either of two sets, without copying the big one."""

    __slots__ = ("a", "b")

    def __init__(self, a: set[str], b: set[str]):
        self.a, self.b = a, b

    def __contains__(self, k: object) -> bool:
        return k in self.b or k in self.a


class _Overlay:
    """Read-only view of base counts with a few overrides (no copy of a million-key dict)."""

    __slots__ = ("base", "over")

    def __init__(self, base: dict[str, int], over: dict[str, int]):
        self.base, self.over = base, over

    def get(self, k: str, default: int = 0) -> int:
        v = self.over.get(k)
        return v if v is not None else self.base.get(k, default)
