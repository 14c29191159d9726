"""Projection (SELECT list without grouping): linear.

Rule: ``Δ(π_e X) = π_e(ΔX)`` with weights carried through, where X is the FROM/WHERE block
(a scan, or a join: see :mod:`.join`). Two ways to give rows an identity:

* **keyed** (every source has a primary key): row id = hash(the primary keys of the joined rows).
  The delta rows are consolidated per (row id, content): an unchanged row cancels out, a changed
  row leaves its old content with weight −1 and its new content with +1. Per row id the +1
  content is upserted, a lone −1 deletes the row. The sources are not read at all for a single
  table; for a join only through the inclusion–exclusion terms.
* **multiset** (some source has no primary key): row id = hash(output values); identical output
  rows share an id and their count is their multiplicity. The delta is consolidated per row id
  (sum of weights) and applied as "delete |w| copies" / "insert w copies".
"""

from __future__ import annotations

from ..ir import QueryShape
from . import join
from ._sql import KEEP, ROW_ID, WEIGHT, from_clause_sql, q, row_hash, row_key, where_clause


def _outputs(shape: QueryShape) -> list[tuple[str, str]]:
    return [(o.sql, o.name) for o in shape.outputs]


def _pks(shape: QueryShape) -> list[tuple[str, str]]:
    """Primary-key columns of every joined table and the ordinality of every set-returning
    function's row, as (expression, hidden name)."""
    return [(e, f"__pgt_pk_{i}") for i, e in enumerate(row_key(shape))]


def keyed_full(shape: QueryShape) -> str:
    cols = ", ".join(f"{e} AS {q(n)}" for e, n in _outputs(shape))
    pk = row_hash([e for e, _ in _pks(shape)])
    return (
        f"SELECT {pk} AS {ROW_ID}, {cols} FROM {from_clause_sql(shape.froms)}{where_clause(shape)}"
    )


def keyed_delta(shape: QueryShape, changed: set[str]) -> str:
    """``(row id, keep, outputs)``: per touched row id, its new content or a deletion."""
    pks = _pks(shape)
    names = [n for _, n in _outputs(shape)]
    d, c = q("__pgt_d"), q("__pgt_c")
    values = ", ".join(f"{d}.{q(n)}" for n in names)
    raw = (
        f"SELECT {row_hash([f'{d}.{q(n)}' for _, n in pks])} AS {ROW_ID}, "
        f"md5(ROW({values})::text) AS {q('__pgt_ch')}, {values}, {d}.{WEIGHT} "
        f"FROM ({join.delta(shape, [*pks, *_outputs(shape)], changed)}) AS {d}"
    )
    net = (
        f"SELECT {c}.*, sum({c}.{WEIGHT}) OVER (PARTITION BY {c}.{ROW_ID}, {c}.{q('__pgt_ch')}) "
        f"AS {q('__pgt_net')} FROM ({raw}) AS {c}"
    )
    n = q("__pgt_n")
    cols = ", ".join(f"{n}.{q(x)}" for x in names)
    return (
        f"SELECT DISTINCT ON ({n}.{ROW_ID}) {n}.{ROW_ID}, ({n}.{q('__pgt_net')} > 0) AS {KEEP}, "
        f"{cols} FROM ({net}) AS {n} WHERE {n}.{q('__pgt_net')} <> 0 "
        f"ORDER BY {n}.{ROW_ID}, {n}.{q('__pgt_net')} DESC"
    )


def _value_refs(shape: QueryShape, alias: str) -> list[str]:
    return [f"{q(alias)}.{q(o.name)}" for o in shape.outputs]


def multiset_full(shape: QueryShape) -> str:
    z = q("__pgt_z")
    return (
        f"SELECT {row_hash(_value_refs(shape, '__pgt_z'))} AS {ROW_ID}, {z}.* "
        f"FROM ({join.current(shape, _outputs(shape))}) AS {z}"
    )


def multiset_delta(shape: QueryShape, changed: set[str]) -> str:
    """Consolidated rows ``(row id, w, outputs)`` with ``w ≠ 0``: the net multiplicity change."""
    names = [o.name for o in shape.outputs]
    return consolidate_multiset(names, join.delta(shape, _outputs(shape), changed))


def consolidate_multiset(names: list[str], raw_delta: str) -> str:
    """Net multiplicity change per output row of a Z-set ``raw_delta`` (columns ``names`` and
    ``__pgt_w``): ``(row id = hash(values), w, values)`` for every row with ``w ≠ 0``."""
    z, r, net = q("__pgt_z"), q("__pgt_r"), q("__pgt_net")
    raw = (
        f"SELECT {row_hash([f'{z}.{q(n)}' for n in names])} AS {ROW_ID}, {z}.* "
        f"FROM ({raw_delta}) AS {z}"
    )
    cols = ", ".join(f"{r}.{q(n)}" for n in names)
    return (
        f"WITH {q('__pgt_raw')} AS ({raw}), "
        f"{net} AS (SELECT {ROW_ID}, sum({WEIGHT})::bigint AS {WEIGHT} "
        f"FROM {q('__pgt_raw')} GROUP BY {ROW_ID} HAVING sum({WEIGHT}) <> 0) "
        f"SELECT DISTINCT ON ({r}.{ROW_ID}) {r}.{ROW_ID}, {net}.{WEIGHT}, {cols} "
        f"FROM {q('__pgt_raw')} AS {r} JOIN {net} ON {net}.{ROW_ID} = {r}.{ROW_ID}"
    )
