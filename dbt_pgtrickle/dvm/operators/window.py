"""Window functions and DISTINCT ON: recompute only the partitions a change touches.

Rule: a window function's value for a row depends on every row of its partition and on nothing
else, so ``Δ(ω_P(X))`` is confined to the partitions P whose key appears in ΔX (old or new
images). For those partitions the stream table's rows are deleted and recomputed from the current
input restricted to them; other partitions are untouched. Each stream-table row stores
``__pgt_part`` = hash(partition key) so a partition's rows can be found (and indexed). Work is
proportional to the size of the touched partitions; without PARTITION BY every change recomputes
the whole result. ``DISTINCT ON (k) … ORDER BY k, o`` is the first row of each partition k by
o, so it follows the same rule with the partition key k.
"""

from __future__ import annotations

from ..ir import QueryShape
from . import join
from ._sql import ROW_ID, from_clause_sql, q, row_hash, row_key, where_clause

PART = q("__pgt_part")


def _keys(shape: QueryShape) -> list[str]:
    assert shape.window_partition is not None
    return shape.window_partition


def _row_id(shape: QueryShape) -> str:
    """hash(primary keys) when every source has one, else hash(output values): rows are found
    through their partition, so the id only needs to be deterministic."""
    if shape.keyed:
        return row_hash(row_key(shape))
    return row_hash([o.sql for o in shape.outputs])


def _select(shape: QueryShape) -> str:
    outputs = ", ".join(f"{o.sql} AS {q(o.name)}" for o in shape.outputs)
    return f"{_row_id(shape)} AS {ROW_ID}, {outputs}, {row_hash(_keys(shape))} AS {PART}"


def _rows(shape: QueryShape, from_where: str) -> str:
    """The stream-table rows computed over ``from_where`` (a FROM … WHERE … text). For
    ``DISTINCT ON (keys) … ORDER BY keys, o`` only the first row of each partition is kept."""
    if shape.distinct_on_order is None:
        return f"SELECT {_select(shape)} {from_where}"
    rank = (
        f"row_number() OVER (PARTITION BY {', '.join(_keys(shape))} "
        f"ORDER BY {shape.distinct_on_order}) AS {q('__pgt_rn')}"
    )
    cols = ", ".join([ROW_ID, *(q(o.name) for o in shape.outputs), PART])
    return (
        f"SELECT {cols} FROM (SELECT {_select(shape)}, {rank} {from_where}) AS {q('__pgt_first')} "
        f"WHERE {q('__pgt_rn')} = 1"
    )


def full(shape: QueryShape) -> str:
    return _rows(shape, f"FROM {from_clause_sql(shape.froms)}{where_clause(shape)}")


def delta(shape: QueryShape, changed: set[str]) -> str:
    """Rows ``(row id, outputs, __pgt_part)`` of every touched partition, plus one row with a
    NULL row id per touched partition (so an emptied partition is still deleted)."""
    keys = _keys(shape)
    t = q("__pgt_t")
    if not keys:
        touched = f"SELECT {row_hash([])} AS {PART}"
        recomputed = full(shape)
    else:
        names = [f"__pgt_pk_{i}" for i in range(len(keys))]
        d = q("__pgt_d")
        touched_keys = (
            f"SELECT DISTINCT {', '.join(f'{d}.{q(n)}' for n in names)} "
            f"FROM ({join.delta(shape, list(zip(keys, names, strict=True)), changed)}) AS {d}"
        )
        match = " AND ".join(
            f"({k} = {t}.{q(n)} OR ({k} IS NULL AND {t}.{q(n)} IS NULL))"
            for k, n in zip(keys, names, strict=True)
        )
        touched = (
            f"SELECT DISTINCT {row_hash([f'{t}.{q(n)}' for n in names])} AS {PART} "
            f"FROM ({touched_keys}) AS {t}"
        )
        # Joining the touched keys only filters: each touched partition is read whole, so
        # the window functions see exactly the rows they see in the query.
        recomputed = _rows(
            shape,
            f"FROM {from_clause_sql(shape.froms)} "
            f"JOIN ({touched_keys}) AS {t} ON {match}{where_clause(shape)}",
        )
    r, p = q("__pgt_r"), q("__pgt_p")
    return (
        f"SELECT {r}.{ROW_ID}, {', '.join(f'{r}.{q(o.name)}' for o in shape.outputs)}, "
        f"{p}.{PART} FROM ({touched}) AS {p} LEFT JOIN ({recomputed}) AS {r} "
        f"ON {r}.{PART} = {p}.{PART}"
    )
