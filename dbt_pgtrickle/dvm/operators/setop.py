"""INTERSECT, EXCEPT and their ALL forms, and any tree mixing them with UNION / UNION ALL.

Every set operation is a function of the per-branch multiplicities of each distinct row: with
``c_i(r)`` = number of rows ``r`` produced by branch i (a FROM/WHERE block with a projection),
the multiplicity of ``r`` in the result is ``F(c_1(r), …, c_k(r))``, built bottom-up from

    UNION ALL: l + r            UNION:     min(l + r, 1)
    INTERSECT ALL: min(l, r)    INTERSECT: min(l, r, 1)
    EXCEPT ALL: max(l − r, 0)   EXCEPT:    0 if r > 0 else min(l, 1)

(a branch with DISTINCT contributes ``min(c_i, 1)``). State: a backing table
``pgtrickle_changes.setop_<hash of the stream table's name>`` holds, per distinct row with some
``c_i > 0``, its row id = hash(values), the values and every ``c_i`` (hidden ``__pgt_c_<i>``).
The stream table holds ``F(c)`` copies of each row (row id = hash(values)): it equals the query as
a multiset and never shows a row whose multiplicity is zero.

Rule, per distinct row r touched by a change window (``Δc_i(r) = Σ w`` over branch i's delta,
which is :func:`.join.delta`): ``c_i_new = c_i_old + Δc_i``; the backing row is upserted (deleted
when every count is 0) and the stream table gets ``F(c_new) − F(c_old)`` copies more (or fewer).
Work is proportional to the change: the branch deltas, one index probe into the backing table per
touched row, and the copies that appear or disappear.
"""

from __future__ import annotations

from ..ir import QueryShape, SetOp
from . import join
from ._sql import KEEP, ROW_ID, WEIGHT, q, row_hash

LEAF = q("__pgt_leaf")


def count_column(i: int) -> str:
    """Hidden column holding branch i's multiplicity of a row (in the backing table)."""
    return f"__pgt_c_{i}"


def _names(branches: list[QueryShape]) -> list[str]:
    return [o.name for o in branches[0].outputs]


def _exprs(branch: QueryShape, i: int) -> list[tuple[str, str]]:
    """What branch i contributes per row: its output values and its index. A DISTINCT branch
    (kept as ``GROUP BY`` its outputs) is read through its group keys; DISTINCT is applied by
    :func:`multiplicity`."""
    if branch.distinct:
        values = list(zip(branch.group_keys, _names([branch]), strict=True))
    else:
        values = [(o.sql, o.name) for o in branch.outputs]
    return [*values, (str(i), "__pgt_leaf")]


def multiplicity(tree: SetOp | int, branches: list[QueryShape], counts: list[str]) -> str:
    """SQL for ``F``: the visible multiplicity of a row from its per-branch counts."""
    if isinstance(tree, int):
        c = counts[tree]
        return f"least({c}, 1)" if branches[tree].distinct else c
    left = multiplicity(tree.left, branches, counts)
    right = multiplicity(tree.right, branches, counts)
    if tree.op == "union":
        return f"({left} + {right})" if tree.all else f"least({left} + {right}, 1)"
    if tree.op == "intersect":
        return f"least({left}, {right})" if tree.all else f"least({left}, {right}, 1)"
    assert tree.op == "except"
    if tree.all:
        return f"greatest({left} - {right}, 0)"
    return f"(CASE WHEN {right} > 0 THEN 0 ELSE least({left}, 1) END)"


def backing_full(branches: list[QueryShape]) -> str:
    """All rows of the backing table: ``(row id, values, __pgt_c_0 … __pgt_c_k)``."""
    names = _names(branches)
    u, z = q("__pgt_u"), q("__pgt_z")
    cols = ", ".join(f"{u}.{q(n)}" for n in names)
    counts = ", ".join(
        f"count(*) FILTER (WHERE {u}.{LEAF} = {i}) AS {q(count_column(i))}"
        for i in range(len(branches))
    )
    inner = " UNION ALL ".join(f"({join.current(b, _exprs(b, i))})" for i, b in enumerate(branches))
    return (
        f"SELECT {row_hash([f'{z}.{q(n)}' for n in names])} AS {ROW_ID}, {z}.* FROM "
        f"(SELECT {cols}, {counts} FROM ({inner}) AS {u} GROUP BY {cols}) AS {z}"
    )


def full(tree: SetOp, branches: list[QueryShape], backing: str) -> str:
    """The stream table's rows: ``F(counts)`` copies of each backing row."""
    b = q("__pgt_b")
    counts = [f"{b}.{q(count_column(i))}" for i in range(len(branches))]
    cols = ", ".join(f"{b}.{q(n)}" for n in _names(branches))
    return (
        f"SELECT {b}.{ROW_ID}, {cols} FROM {backing} AS {b} "
        f"CROSS JOIN LATERAL generate_series(1, {multiplicity(tree, branches, counts)}) "
        f"AS {q('__pgt_copy')}"
    )


def delta(tree: SetOp, branches: list[QueryShape], changed: set[str], backing: str) -> str:
    """Per touched distinct row: ``(row id, keep, values, new counts, w)``. ``keep`` and the
    counts are upserted into the backing table (the keyed apply); ``w = F(new) − F(old)`` copies are
    added to (or, when negative, removed from) the stream table."""
    names = _names(branches)
    k = len(branches)
    g, t, n, u = q("__pgt_g"), q("__pgt_t"), q("__pgt_n"), q("__pgt_u")
    raw = " UNION ALL ".join(
        f"({join.delta(b, _exprs(b, i), changed)})" for i, b in enumerate(branches)
    )
    sums = ", ".join(
        f"coalesce(sum({u}.{WEIGHT}) FILTER (WHERE {u}.{LEAF} = {i}), 0) AS {q(f'__pgt_d_{i}')}"
        for i in range(k)
    )
    group_cols = ", ".join(f"{u}.{q(c)}" for c in names)
    g_id = row_hash([f"{g}.{q(c)}" for c in names])
    new_counts = ", ".join(
        f"coalesce({t}.{q(count_column(i))}, 0) + {g}.{q(f'__pgt_d_{i}')} AS {q(count_column(i))}"
        for i in range(k)
    )
    old_counts = ", ".join(
        f"coalesce({t}.{q(count_column(i))}, 0) AS {q(f'__pgt_o_{i}')}" for i in range(k)
    )
    new = [f"{n}.{q(count_column(i))}" for i in range(k)]
    old = [f"{n}.{q(f'__pgt_o_{i}')}" for i in range(k)]
    keep = " OR ".join(f"{c} > 0" for c in new)
    w = f"({multiplicity(tree, branches, new)}) - ({multiplicity(tree, branches, old)})"
    return (
        f"WITH {g} AS (SELECT {group_cols}, {sums} FROM ({raw}) AS {u} GROUP BY {group_cols}), "
        f"{n} AS (SELECT {g_id} AS {ROW_ID}, {', '.join(f'{g}.{q(c)}' for c in names)}, "
        f"{new_counts}, {old_counts} FROM {g} LEFT JOIN {backing} AS {t} "
        f"ON {t}.{ROW_ID} = {g_id}) "
        f"SELECT {n}.{ROW_ID}, ({keep}) AS {KEEP}, {', '.join(f'{n}.{q(c)}' for c in names)}, "
        f"{', '.join(new)}, ({w})::bigint AS {WEIGHT} FROM {n}"
    )
