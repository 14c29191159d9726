"""Detecting that unlogged change buffers lost their rows.

With the setting ``change_buffer_unlogged`` a change buffer is an ``UNLOGGED`` table: capture
writes no WAL, but PostgreSQL empties every unlogged table when it restarts after a crash (an
immediate shutdown, a power loss, a killed backend) and a standby has none of their rows when it
is promoted. Change rows committed before that are gone, and a differential refresh would
silently miss them.

The sentinel is the unlogged table ``pgtrickle.pgt_unlogged_sentinel``: one row per stream table
that reads an unlogged buffer, written in the transaction that registers the stream table's
sources and re-written by every refresh. The sentinel is emptied together with the buffers, so a
reader whose row is missing has lost changes: :func:`rearm` writes the row back and the refresh
recomputes the stream table (FULL), recording :func:`reset_reason` in the refresh history; the
scheduler's ``pgtrickle.has_pending_changes`` reports such a reader as having changes, so it is
refreshed even when nothing was written since the restart. A stream table whose row is missing
for any other reason (a buffer turned unlogged by hand) is recomputed once, which is safe.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from ..naming import CHANGES_SCHEMA

#: Whether the buffer of dependency ``d`` is unlogged (``pg_class.relpersistence``); the
#: buffer's name is ``naming.buffer_table`` of the source's stable name.
BUFFER_IS_UNLOGGED = sql.SQL(
    "EXISTS (SELECT 1 FROM pg_class c WHERE c.relname = 'changes_' || d.source_stable_name "
    "AND c.relnamespace = {}::regnamespace AND c.relpersistence = 'u')"
).format(sql.Literal(CHANGES_SCHEMA))


def rearm(conn: psycopg.Connection[Any], pgt_id: int) -> bool:
    """Write the sentinel row of a stream table that reads an unlogged buffer; returns whether it
    was missing (the buffers were emptied since the last refresh: recompute). One statement,
    inside the refresh (or registering) transaction."""
    cur = conn.execute(
        sql.SQL(
            "INSERT INTO pgtrickle.pgt_unlogged_sentinel (pgt_id) SELECT %(id)s WHERE EXISTS "
            "(SELECT 1 FROM pgtrickle.pgt_dependencies d WHERE d.pgt_id = %(id)s AND {}) "
            "ON CONFLICT (pgt_id) DO NOTHING"
        ).format(BUFFER_IS_UNLOGGED),
        {"id": pgt_id},
    )
    return cur.rowcount > 0


def reset_reason(sources: list[str]) -> str:
    """The fallback reason recorded for a refresh that recomputes after the buffers emptied."""
    return (
        f"the unlogged change buffer of {', '.join(sources)} was emptied by a crash restart or a "
        "standby promotion (change_buffer_unlogged), so changes may be lost; recomputed"
    )


def forget(conn: psycopg.Connection[Any], pgt_id: int) -> None:
    """Remove the sentinel row of a dropped stream table."""
    conn.execute("DELETE FROM pgtrickle.pgt_unlogged_sentinel WHERE pgt_id = %s", (pgt_id,))
