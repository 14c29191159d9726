"""The dependency graph of stream tables (pure: no database).

Nodes are stream tables (by ``pgt_id``); an edge runs from a stream table to each stream table it
reads. Base tables (sources that are not stream tables) are leaves named by stable name.

**Diamonds.** When a stream table D reaches one base table A along two or more paths
(A→B→D and A→C→D, or A read directly by D and through B), refreshing B and C at different
moments would let D combine two versions of A. The scheduler therefore refreshes such a
:class:`DiamondGroup` — D and every stream table on a path from a shared base table to D — while
it holds a ``SHARE`` lock on the shared base tables: writers of A wait for the group, so every
member reflects the same state of A (see docs/scheduler.md).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class DiamondGroup:
    """Stream tables to refresh together (in ``members`` order, apex last) and the base tables
    (``(schema, name)``) to hold still meanwhile."""

    apex: int
    members: tuple[int, ...]
    shared_sources: tuple[tuple[str, str], ...]


class Graph:
    """Stream tables, the stream tables each reads, and the base tables each reads."""

    def __init__(
        self,
        upstream: Mapping[int, Iterable[int]],
        base_sources: Mapping[int, Iterable[tuple[str, str]]],
    ) -> None:
        self.upstream: dict[int, frozenset[int]] = {n: frozenset(u) for n, u in upstream.items()}
        self.base: dict[int, frozenset[tuple[str, str]]] = {
            n: frozenset(base_sources.get(n, ())) for n in self.upstream
        }
        self.downstream: dict[int, set[int]] = {n: set() for n in self.upstream}
        for node, ups in self.upstream.items():
            for up in ups:
                self.downstream.setdefault(up, set()).add(node)
        self.order = topological_order(self.upstream)
        self._paths: dict[int, dict[tuple[str, str], int]] = {}

    def paths_to_base(self, node: int) -> dict[tuple[str, str], int]:
        """For each base table below ``node``, how many distinct paths lead from it to ``node``."""
        if node not in self._paths:
            counts: dict[tuple[str, str], int] = dict.fromkeys(self.base.get(node, ()), 1)
            for up in self.upstream.get(node, ()):
                for src, n in self.paths_to_base(up).items():
                    counts[src] = counts.get(src, 0) + n
            self._paths[node] = counts
        return self._paths[node]

    def ancestors(self, node: int) -> set[int]:
        """Every stream table ``node`` reads, directly or not."""
        return _reach(node, self.upstream)

    def descendants(self, node: int) -> set[int]:
        """Every stream table reading ``node``, directly or not."""
        return _reach(node, self.downstream)

    def diamond(self, node: int) -> DiamondGroup | None:
        """The diamond group whose apex is ``node``, or None when no base table is reached twice."""
        shared = sorted(src for src, n in self.paths_to_base(node).items() if n >= 2)
        if not shared:
            return None
        members = {
            up
            for up in self.ancestors(node)
            if any(src in self.paths_to_base(up) for src in shared)
        }
        ordered = tuple(n for n in self.order if n in members) + (node,)
        return DiamondGroup(node, ordered, tuple(shared))


def _reach(node: int, edges: Mapping[int, Iterable[int]]) -> set[int]:
    seen: set[int] = set()
    stack = list(edges.get(node, ()))
    while stack:
        nxt = stack.pop()
        if nxt not in seen:
            seen.add(nxt)
            stack.extend(edges.get(nxt, ()))
    return seen


def topological_order(upstream: Mapping[int, Iterable[int]]) -> list[int]:
    """Nodes ordered so each comes after the nodes it reads; ties by id (Kahn's algorithm with a
    heap: O((nodes + edges) log nodes)). Edges to nodes outside ``upstream`` are ignored. A cycle
    is a :class:`ConfigError` (creation and alteration reject them, so it means a damaged
    catalog)."""
    waiting: dict[int, int] = {}
    readers: dict[int, list[int]] = {}
    for node, ups in upstream.items():
        known = {u for u in ups if u in upstream}
        waiting[node] = len(known)
        for up in known:
            readers.setdefault(up, []).append(node)
    ready = [n for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    ordered: list[int] = []
    while ready:
        node = heapq.heappop(ready)
        ordered.append(node)
        for reader in readers.get(node, ()):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(ordered) < len(waiting):
        stuck = sorted(set(waiting) - set(ordered))
        raise ConfigError(
            f"stream tables {stuck} depend on each other in a cycle; alter one of them to break it"
        )
    return ordered
