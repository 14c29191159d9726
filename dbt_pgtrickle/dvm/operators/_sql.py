"""Small SQL-composition helpers shared by the operator modules."""

from __future__ import annotations

import re

from ..ir import FromItem, QueryShape, SemiJoin


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, always quoted."""
    return '"' + name.replace('"', '""') + '"'


q = quote_ident

ROW_ID = q("__pgt_row_id")
WEIGHT = q("__pgt_w")
KEEP = q("__pgt_keep")
COUNT = q("__pgt_count")


OUTER_JOINS = {"left": "LEFT JOIN", "right": "RIGHT JOIN", "full": "FULL JOIN"}


def from_clause_sql(
    froms: list[FromItem], relations: dict[str, str] | None = None, *, inner_only: bool = False
) -> str:
    """The FROM clause of ``froms``; ``relations`` replaces the relation read under an alias
    (e.g. by its change window); ``inner_only`` renders outer joins as inner joins (their
    matched part). A NULL-padded alias (``join = "null"``) is joined ``ON false``: its columns
    are NULL with their own types (and collations), exactly as in the query's padded rows. A
    set-returning function is joined LATERAL (:mod:`.lateral`). Every identifier quoted."""
    parts = []
    for i, item in enumerate(froms):
        if item.is_function:
            from .lateral import join_sql

            parts.append(join_sql(item))
            continue
        rel = (relations or {}).get(item.alias) or (
            f"{q(item.source.schema)}.{q(item.source.name)}"
        )
        ref = f"{rel} AS {q(item.alias)}"
        if i == 0:
            parts.append(ref)
        elif item.join == "null":
            parts.append(f"LEFT JOIN {ref} ON false")
        elif item.join == "cross":
            parts.append(f"CROSS JOIN {ref}")
        else:
            keyword = "JOIN" if inner_only else OUTER_JOINS.get(item.join, "JOIN")
            parts.append(f"{keyword} {ref} ON ({item.on})")
    return " ".join(parts)


def columns_of(alias: str, sql: str) -> tuple[str, ...]:
    """Columns of ``alias`` that rendered SQL refers to (identifiers are always quoted), in the
    order of their first reference."""
    found = re.findall(re.escape(quote_ident(alias)) + r'\."((?:[^"]|"")+)"', sql)
    return tuple(dict.fromkeys(c.replace('""', '"') for c in found))


def semijoin_condition(sj: SemiJoin, relation: str | None = None) -> str:
    """``[NOT] EXISTS (…)`` of a semi-join against the source (or ``relation``)."""
    rel = relation or f"{q(sj.source.schema)}.{q(sj.source.name)}"
    test = f"EXISTS (SELECT 1 FROM {rel} AS {q(sj.alias)} WHERE ({sj.condition}))"
    return f"NOT {test}" if sj.negated else test


def where_clause(shape: QueryShape, extra: str | None = None, *, semijoins: bool = True) -> str:
    """The WHERE clause of ``shape`` (with its semi-joins against the current sources unless
    ``semijoins`` is false), plus an extra conjunct."""
    parts = [f"({shape.where})"] if shape.where else []
    if semijoins:
        parts.extend(semijoin_condition(sj) for sj in shape.semijoins)
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


def row_key(shape: QueryShape) -> list[str]:
    """What identifies a row of a keyed FROM/WHERE block: the primary key of every table (NULL
    when the table is NULL-padded) and the ordinality of every set-returning function's row (a
    function's rows for one input row are numbered 1, 2, …)."""
    out: list[str] = []
    for f in shape.froms:
        if f.is_function:
            out.append(f"{q(f.alias)}.{q(f.ordinality)}")
        else:
            assert f.source.primary_key
            out.extend(f"{q(f.alias)}.{q(c)}" for c in f.source.primary_key)
    return out
