"""UNION ALL (linear) and UNION (its DISTINCT).

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


def distinct_full(branches: list[QueryShape]) -> str:
    """UNION (without ALL): one row per distinct output row with its hidden multiplicity
    ``__pgt_count`` across all branches."""
    names = [o.name for o in branches[0].outputs]
    cols = ", ".join(q(n) for n in names)
    z = q("__pgt_z")
    inner = " UNION ALL ".join(f"({join.current(b, _outputs(b))})" for b in branches)
    return (
        f"SELECT {row_hash([f'{z}.{q(n)}' for n in names])} AS {ROW_ID}, {z}.* FROM "
        f"(SELECT {cols}, count(*) AS {q('__pgt_count')} FROM ({inner}) AS {q('__pgt_u')} "
        f"GROUP BY {cols}) AS {z}"
    )


def distinct_delta(branches: list[QueryShape], changed: set[str], target: str) -> str:
    """Rule (UNION as DISTINCT over UNION ALL): ``count_new = count_old + Σ w`` per distinct
    row; the row is present while its count is positive."""
    names = [o.name for o in branches[0].outputs]
    cols = ", ".join(q(n) for n in names)
    g, t = q("__pgt_g"), q("__pgt_t")
    raw = " UNION ALL ".join(f"({join.delta(b, _outputs(b), changed)})" for b in branches)
    g_id = row_hash([f"{g}.{q(n)}" for n in names])
    count = q("__pgt_count")
    return (
        f"WITH {g} AS (SELECT {cols}, sum({q('__pgt_w')}) AS {q('__pgt_dc')} "
        f"FROM ({raw}) AS {q('__pgt_u')} GROUP BY {cols}) "
        f"SELECT {g_id} AS {ROW_ID}, "
        f"(coalesce({t}.{count}, 0) + {g}.{q('__pgt_dc')} > 0) AS {q('__pgt_keep')}, "
        f"{', '.join(f'{g}.{q(n)}' for n in names)}, "
        f"coalesce({t}.{count}, 0) + {g}.{q('__pgt_dc')} AS {count} "
        f"FROM {g} LEFT JOIN {target} AS {t} ON {t}.{ROW_ID} = {g_id}"
    )
