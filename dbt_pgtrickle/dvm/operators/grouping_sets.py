"""GROUPING SETS, ROLLUP and CUBE.

``GROUP BY GROUPING SETS (S_1, …, S_m)`` (ROLLUP and CUBE expand to such a list, duplicates kept)
is the ``UNION ALL`` over the sets of ``GROUP BY S_j``, in which the grouping expressions outside
``S_j`` are NULL and ``GROUPING(…)`` is a constant (bit i set when argument i is not in ``S_j``).
The empty set ``()`` is an aggregate without GROUP BY (always one row, even over no input).

Rule: each set j is maintained by the aggregate rule (:mod:`.aggregate`: hidden count and
aggregate state per group, invertible updates, MIN/MAX and other aggregates rescanned for the
touched groups only, HAVING) with row id = hash(j, keys of S_j): the set's index keeps a group
whose key is NULL in the data apart from the same key masked by another set, and duplicate sets
apart from each other. The delta is the ``UNION ALL`` of the per-set deltas (each reads its old
state from the stream table by row id), so the work is the aggregate's, once per grouping set.
"""

from __future__ import annotations

from ..ir import QueryShape
from . import aggregate


def full(sets: list[QueryShape]) -> str:
    return " UNION ALL ".join(f"({aggregate.full(s)})" for s in sets)


def delta(sets: list[QueryShape], changed: set[str], target: str) -> str:
    return " UNION ALL ".join(f"({aggregate.delta(s, changed, target)})" for s in sets)
