"""UNION ALL: linear.

Rule: ``Δ(B₁ ∪ₐₗₗ … ∪ₐₗₗ Bₖ) = ΔB₁ ∪ₐₗₗ … ∪ₐₗₗ ΔBₖ``. Each branch is a FROM/WHERE block with a
projection (its delta is :func:`.join.delta`); the union of the branch deltas is consolidated per
output row (row id = hash(values)) and applied as a multiset, so a row produced by several branches
is stored as that many copies and disappears only when its multiplicity reaches zero.
"""

from __future__ import annotations

from ..ir import QueryShape
from . import join
from ._sql import ROW_ID, q, row_hash
from .project import consolidate_multiset


def _outputs(branch: QueryShape) -> list[tuple[str, str]]:
    return [(o.sql, o.name) for o in branch.outputs]


def full(branches: list[QueryShape]) -> str:
    z = q("__pgt_z")
    names = [o.name for o in branches[0].outputs]
    inner = " UNION ALL ".join(f"({join.current(b, _outputs(b))})" for b in branches)
    return (
        f"SELECT {row_hash([f'{z}.{q(n)}' for n in names])} AS {ROW_ID}, {z}.* "
        f"FROM ({inner}) AS {z}"
    )


def delta(branches: list[QueryShape], changed: set[str]) -> str:
    names = [o.name for o in branches[0].outputs]
    raw = " UNION ALL ".join(f"({join.delta(b, _outputs(b), changed)})" for b in branches)
    return consolidate_multiset(names, raw)
