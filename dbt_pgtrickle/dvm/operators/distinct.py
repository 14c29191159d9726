"""DISTINCT: multiplicity crossing zero.

Rule: ``SELECT DISTINCT e FROM S`` is maintained as ``GROUP BY e`` with only the hidden count
``__pgt_count`` = number of source rows producing ``e``. For each ``e`` touched by the window,
``count_new = count_old + Σ w``; the row appears when the count goes from 0 to positive and
disappears when it returns to 0 (the aggregate rule with no aggregate calls). Row id = hash(e).
"""

from __future__ import annotations

from ..ir import QueryShape
from . import aggregate


def full(shape: QueryShape) -> str:
    assert shape.distinct and not shape.aggs
    return aggregate.full(shape)


def delta(shape: QueryShape, changed: set[str], target: str) -> str:
    assert shape.distinct and not shape.aggs
    return aggregate.delta(shape, changed, target)
