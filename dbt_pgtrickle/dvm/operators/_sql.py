"""Small SQL-composition helpers shared by the operator modules."""

from __future__ import annotations

from .._sqlglot import quote_ident as q
from ..ir import QueryShape

ROW_ID = q("__pgt_row_id")
WEIGHT = q("__pgt_w")
KEEP = q("__pgt_keep")
COUNT = q("__pgt_count")


def source_ref(shape: QueryShape) -> str:
    """The base table under the user's alias."""
    return f"{q(shape.source.schema)}.{q(shape.source.name)} AS {q(shape.alias)}"


def changes_ref(shape: QueryShape, changes: str) -> str:
    """The change window of the source under the user's alias, so user expressions apply."""
    return f"{q(changes)} AS {q(shape.alias)}"


def where_clause(shape: QueryShape, extra: str | None = None) -> str:
    parts = [f"({shape.where})"] if shape.where else []
    if extra:
        parts.append(extra)
    return (" WHERE " + " AND ".join(parts)) if parts else ""


def row_hash(exprs: list[str]) -> str:
    """Deterministic 64-bit row id of a tuple of values (PostgreSQL's extended hash, seed 0).

    The per-type hash functions are those used by hash partitioning, so they are stable across
    sessions, nodes, dump/restore and pg_upgrade.
    """
    if not exprs:
        return "0::bigint"
    return f"hash_record_extended(ROW({', '.join(exprs)}), 0)"
