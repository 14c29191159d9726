"""Reading stream-table rows of the catalog."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..errors import StreamTableNotFound


@dataclass
class StreamTableRecord:
    pgt_id: int
    pgt_schema: str
    pgt_name: str
    defining_query: str
    original_query: str
    query_hash: str
    schedule: str | None
    requested_mode: str
    effective_mode: str
    status: str
    frontier: str | None
    needs_full: bool
    fallback_reason: str | None
    initialize: bool
    cdc_mode: str
    options: dict[str, Any]
    placement: str = "local"
    distribution_column: str | None = None
    #: Whether a source is captured from Citus worker slots (``cdc_mode = 'citus_slot'``): only
    #: then does a refresh import from the workers first.
    citus_captured: bool = False

    @property
    def qualified(self) -> str:
        return f"{self.pgt_schema}.{self.pgt_name}"


_COLUMNS = (
    "pgt_id, pgt_schema, pgt_name, defining_query, original_query, query_hash, schedule, "
    "requested_mode, effective_mode, status, frontier::text AS frontier, needs_full, "
    "fallback_reason, initialize, cdc_mode, options, placement, distribution_column, "
    # In the same query (an index probe per stream table), so a refresh without Citus sources
    # learns that it has none without a query of its own.
    "EXISTS (SELECT FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_change_tracking t "
    "USING (source_stable_name) WHERE d.pgt_id = pgt_stream_tables.pgt_id "
    "AND t.cdc_mode = 'citus_slot') AS citus_captured"
)


def split_name(name: str) -> tuple[str, str]:
    """``schema.name`` or ``name`` (meaning ``public.name``). Unquoted parts fold to lower case
    as in SQL; double quotes keep dots and case."""
    parts: list[str] = []
    buf, quoted, i = "", False, 0
    while i < len(name):
        ch = name[i]
        if ch == '"':
            if quoted and i + 1 < len(name) and name[i + 1] == '"':
                buf += '"'
                i += 1
            else:
                quoted = not quoted
        elif ch == "." and not quoted:
            parts.append(buf)
            buf = ""
        else:
            buf += ch if quoted else ch.lower()
        i += 1
    parts.append(buf)
    if len(parts) == 1:
        return "public", parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    from ..errors import ConfigError

    raise ConfigError(f"invalid stream table name {name!r}: use NAME or SCHEMA.NAME")


def find(conn: psycopg.Connection[Any], schema: str, name: str) -> StreamTableRecord | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {_COLUMNS} FROM pgtrickle.pgt_stream_tables "
            "WHERE pgt_schema = %s AND pgt_name = %s",
            (schema, name),
        ).fetchone()
    return StreamTableRecord(**row) if row else None


def get(conn: psycopg.Connection[Any], schema: str, name: str) -> StreamTableRecord:
    record = find(conn, schema, name)
    if record is None:
        raise StreamTableNotFound(f"no stream table named {schema}.{name}")
    return record


def all_records(conn: psycopg.Connection[Any]) -> list[StreamTableRecord]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {_COLUMNS} FROM pgtrickle.pgt_stream_tables ORDER BY pgt_schema, pgt_name"
        ).fetchall()
    return [StreamTableRecord(**r) for r in rows]
