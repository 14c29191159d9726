"""Projection (SELECT list without grouping): linear.

Rule: ``Δ(π_e S) = π_e(ΔS)`` with weights carried through. Two ways to give rows an identity:

* **keyed** (the source has a primary key): row id = hash(primary key). For every key touched by
  the window the stream-table row is recomputed from the current source row (or removed when the
  key no longer exists or no longer passes WHERE). Work is proportional to the touched keys (index
  lookups on the primary key).
* **multiset** (no primary key): row id = hash(output values); identical output rows share an id
  and their count is their multiplicity. The window is consolidated per row id (sum of weights) and
  applied as "delete |w| copies" / "insert w copies". Work is proportional to the window.
"""

from __future__ import annotations

from .._sqlglot import quote_ident as q
from ..ir import QueryShape
from ._sql import KEEP, ROW_ID, WEIGHT, changes_ref, row_hash, source_ref
from .filter import predicate


def _outputs(shape: QueryShape) -> str:
    return ", ".join(f"{o.sql} AS {q(o.name)}" for o in shape.outputs)


def _pk_refs(shape: QueryShape, alias: str) -> list[str]:
    assert shape.source.primary_key
    return [f"{q(alias)}.{q(c)}" for c in shape.source.primary_key]


def keyed_full(shape: QueryShape) -> str:
    return (
        f"SELECT {row_hash(_pk_refs(shape, shape.alias))} AS {ROW_ID}, {_outputs(shape)} "
        f"FROM {source_ref(shape)}{predicate(shape)}"
    )


def keyed_delta(shape: QueryShape, changes: str) -> str:
    """Rows ``(row id, keep, outputs)`` for every touched primary key."""
    c, k, n = q("__pgt_c"), q("__pgt_k"), q("__pgt_n")
    pk_src = ", ".join(_pk_refs(shape, shape.alias))
    pk_chg = ", ".join(_pk_refs(shape, "__pgt_c"))
    touched = (
        f"SELECT DISTINCT {row_hash(_pk_refs(shape, '__pgt_c'))} AS {ROW_ID} "
        f"FROM {q(changes)} AS {c}"
    )
    in_window = f"({pk_src}) IN (SELECT {pk_chg} FROM {q(changes)} AS {c})"
    current = (
        f"SELECT {row_hash(_pk_refs(shape, shape.alias))} AS {ROW_ID}, {_outputs(shape)} "
        f"FROM {source_ref(shape)}{predicate(shape, in_window)}"
    )
    cols = ", ".join(f"{n}.{q(o.name)}" for o in shape.outputs)
    return (
        f"SELECT {k}.{ROW_ID}, ({n}.{ROW_ID} IS NOT NULL) AS {KEEP}, {cols} "
        f"FROM ({touched}) AS {k} LEFT JOIN ({current}) AS {n} ON {n}.{ROW_ID} = {k}.{ROW_ID}"
    )


def _value_refs(shape: QueryShape, alias: str) -> list[str]:
    return [f"{q(alias)}.{q(o.name)}" for o in shape.outputs]


def multiset_full(shape: QueryShape) -> str:
    return (
        f"SELECT {row_hash(_value_refs(shape, '__pgt_z'))} AS {ROW_ID}, {q('__pgt_z')}.* "
        f"FROM (SELECT {_outputs(shape)} FROM {source_ref(shape)}{predicate(shape)}) "
        f"AS {q('__pgt_z')}"
    )


def multiset_delta(shape: QueryShape, changes: str) -> str:
    """Consolidated rows ``(row id, w, outputs)`` with ``w ≠ 0``: the net multiplicity change."""
    z = q("__pgt_z")
    raw = (
        f"SELECT {row_hash(_value_refs(shape, '__pgt_z'))} AS {ROW_ID}, {z}.* "
        f"FROM (SELECT {_outputs(shape)}, {q(shape.alias)}.{WEIGHT} AS {WEIGHT} "
        f"FROM {changes_ref(shape, changes)}{predicate(shape)}) AS {z}"
    )
    cols = ", ".join(f"{q('__pgt_r')}.{q(o.name)}" for o in shape.outputs)
    return (
        f"WITH {q('__pgt_raw')} AS ({raw}), "
        f"{q('__pgt_net')} AS (SELECT {ROW_ID}, sum({WEIGHT})::bigint AS {WEIGHT} "
        f"FROM {q('__pgt_raw')} GROUP BY {ROW_ID} HAVING sum({WEIGHT}) <> 0) "
        f"SELECT DISTINCT ON ({q('__pgt_r')}.{ROW_ID}) {q('__pgt_r')}.{ROW_ID}, "
        f"{q('__pgt_net')}.{WEIGHT}, {cols} "
        f"FROM {q('__pgt_raw')} AS {q('__pgt_r')} JOIN {q('__pgt_net')} "
        f"ON {q('__pgt_net')}.{ROW_ID} = {q('__pgt_r')}.{ROW_ID}"
    )
