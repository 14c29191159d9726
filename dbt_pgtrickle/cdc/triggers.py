"""Trigger-based change capture into per-source change buffers.

For a source ``schema.table`` with stable name ``S`` we create

* ``pgtrickle_changes.changes_S``: ``__pgt_xid xid8`` (the writing transaction,
  ``pg_current_xact_id()``), ``__pgt_action "char"`` (``I``, ``D``, ``U``, ``T``), ``__pgt_w
  smallint`` (+1 new image, −1 old image, 0 for TRUNCATE) and one typed column per source column;
* four statement-level AFTER triggers (INSERT, UPDATE, DELETE with transition tables, TRUNCATE)
  calling SECURITY DEFINER functions that write one set-based INSERT per statement.

The buffer has one index, a BRIN index on :data:`XID_KEY` (the xid as a bigint: PostgreSQL has no
BRIN operator class for ``xid8``). Rows are appended in roughly increasing xid order, so the
per-range maximum lets a change window (``xid >= xmin of the previous frontier``) skip the pages
of older rows, while each insert costs next to nothing (a B-tree entry per change row cost 6.5 MB
of WAL per 100,000 rows; docs/BENCHMARK.md). Readers add :func:`xid_key_bound` to their window
predicate so the planner can use it. With the setting ``change_buffer_unlogged`` the buffer is
created ``UNLOGGED`` (no WAL at all); :mod:`.unlogged` detects when a crash emptied it.

An UPDATE writes its old images (−1) and new images (+1); a TRUNCATE writes one marker row that
makes every consumer's next refresh a FULL one. Every capture function also notifies
:data:`WAKE_CHANNEL` (see :func:`wake_statement`) so the scheduler wakes on changes. One buffer
serves every stream table reading the source; it is removed with its last consumer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..catalog.lookup import COLLATION_SQL
from ..dvm.ir import Column, SourceTable
from ..errors import NameCollision
from ..naming import CHANGES_SCHEMA, buffer_table, stable_name, trigger_function, trigger_name
from ..settings import get_setting

#: The channel change capture notifies (payload: the source's stable name) to wake the scheduler.
WAKE_CHANNEL = "pgtrickle_wake"

_EVENTS = (
    ("ins", "INSERT", "REFERENCING NEW TABLE AS __pgt_new"),
    ("upd", "UPDATE", "REFERENCING OLD TABLE AS __pgt_old NEW TABLE AS __pgt_new"),
    ("del", "DELETE", "REFERENCING OLD TABLE AS __pgt_old"),
    ("trunc", "TRUNCATE", ""),
)


#: The expression the BRIN index of a buffer covers: ``__pgt_xid`` as a bigint.
XID_KEY = "((__pgt_xid)::text)::bigint"


def xid_key_bound(alias: str, snapshot: sql.Composable) -> sql.Composed:
    """``<alias>.xid key >= xmin(snapshot) as a bigint``: redundant with the window predicate
    ``__pgt_xid >= pg_snapshot_xmin(snapshot)``, written on the indexed expression so that the
    planner can use the buffer's BRIN index."""
    return sql.SQL("(({}.__pgt_xid)::text)::bigint >= (pg_snapshot_xmin({})::text)::bigint").format(
        sql.Identifier(alias), snapshot
    )


@dataclass(frozen=True)
class ChangeBuffer:
    """The change buffer of one source."""

    source_schema: str
    source_name: str
    stable_name: str
    columns: tuple[str, ...]

    @property
    def table(self) -> sql.Composable:
        return sql.Identifier(CHANGES_SCHEMA, buffer_table(self.stable_name))


def _function_body(buf: sql.Composable, cols: list[str], event: str, stable: str) -> sql.Composed:
    col_list = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
    target = sql.SQL("INSERT INTO {} (__pgt_action, __pgt_w, {})").format(buf, col_list)

    def images(action: str, weight: int, transition: str) -> sql.Composed:
        return sql.SQL('SELECT {}::"char", {}::smallint, {} FROM {}').format(
            sql.Literal(action), sql.Literal(weight), col_list, sql.Identifier(transition)
        )

    if event == "ins":
        stmt = sql.SQL("{} {}").format(target, images("I", 1, "__pgt_new"))
    elif event == "del":
        stmt = sql.SQL("{} {}").format(target, images("D", -1, "__pgt_old"))
    elif event == "upd":
        stmt = sql.SQL("{} {} UNION ALL {}").format(
            target, images("U", -1, "__pgt_old"), images("U", 1, "__pgt_new")
        )
    else:
        stmt = sql.SQL("INSERT INTO {} (__pgt_action, __pgt_w) VALUES ('T', 0)").format(buf)
    return sql.SQL("BEGIN {}; {} RETURN NULL; END").format(stmt, wake_statement(stable))


def wake_statement(stable: str) -> sql.Composed:
    """The scheduler's wake-up: ``NOTIFY pgtrickle_wake, '<stable name>'``.

    PostgreSQL delivers identical (channel, payload) notifications of one transaction once, so a
    transaction writing a source in many statements wakes the scheduler once, at commit. A
    session can skip it with ``SET pgtrickle.wake = off`` (the scheduler's poll still finds the
    changes): a notifying commit takes PostgreSQL's global notify-queue lock, which serialises
    the commits of all notifying transactions (docs/scheduler.md has the measurement).
    """
    return sql.SQL(
        "IF current_setting('pgtrickle.wake', true) IS DISTINCT FROM 'off' THEN "
        "PERFORM pg_notify({}, {}); END IF;"
    ).format(sql.Literal(WAKE_CHANNEL), sql.Literal(stable))


def ensure_capture(
    conn: psycopg.Connection[Any], source: SourceTable, *, triggers: bool = True
) -> ChangeBuffer:
    """Create (or reuse) the buffer and triggers of ``source``; must run inside the creating
    transaction, after the source is locked against writers. ``triggers=False``: the buffer
    only (a Citus source, filled from worker slots by ``citus/capture.py``)."""
    stable = stable_name(source.schema, source.name)
    row = conn.execute(
        "SELECT source_schema, source_name, captured_columns FROM pgtrickle.pgt_change_tracking "
        "WHERE source_stable_name = %s",
        (stable,),
    ).fetchone()
    if row is not None:
        if (row[0], row[1]) != (source.schema, source.name):
            raise NameCollision(
                f"the stable name {stable} of {source.qualified} is already used by "
                f"{row[0]}.{row[1]}; rename one of the two tables"
            )
        captured = tuple(c["name"] for c in row[2])
        if captured == tuple(c.name for c in source.columns):
            _sync_collations(conn, source, stable)
            return ChangeBuffer(source.schema, source.name, stable, captured)
        # The source gained or lost columns since capture began: rebuild buffer and functions.
        # Pending rows keep their (old) columns; columns no longer present are dropped.
        _rebuild(conn, source, stable, captured, triggers=triggers)
        return ChangeBuffer(
            source.schema, source.name, stable, tuple(c.name for c in source.columns)
        )

    buf = sql.Identifier(CHANGES_SCHEMA, buffer_table(stable))
    col_defs = [_column_def(c) for c in source.columns]
    unlogged = get_setting(conn, "change_buffer_unlogged")
    conn.execute(
        sql.SQL(
            "CREATE {} TABLE {} (__pgt_xid xid8 NOT NULL DEFAULT pg_current_xact_id(), "
            '__pgt_action "char" NOT NULL, __pgt_w smallint NOT NULL, {})'
        ).format(sql.SQL("UNLOGGED" if unlogged else ""), buf, sql.SQL(", ").join(col_defs))
    )
    conn.execute(xid_index_statement(stable))
    if triggers:
        _install_triggers(conn, source, stable)
    conn.execute(
        "INSERT INTO pgtrickle.pgt_change_tracking (source_stable_name, source_schema, "
        "source_name, buffer_table, captured_columns, primary_key) VALUES (%s, %s, %s, %s, %s, %s)",
        (
            stable,
            source.schema,
            source.name,
            f"{CHANGES_SCHEMA}.{buffer_table(stable)}",
            json.dumps([{"name": c.name, "type": c.type} for c in source.columns]),
            list(source.primary_key) if source.primary_key else None,
        ),
    )
    return ChangeBuffer(source.schema, source.name, stable, tuple(c.name for c in source.columns))


def xid_index_statement(stable: str) -> sql.Composed:
    """``CREATE INDEX`` of the BRIN index on :data:`XID_KEY` of a source's buffer. Small ranges
    (32 pages) keep a window read close to the pages it needs; ``autosummarize`` summarises a
    range once it is full, so a buffer that only grows is pruned without waiting for VACUUM."""
    return sql.SQL(
        "CREATE INDEX {} ON {} USING brin (({})) WITH (pages_per_range = 32, autosummarize = on)"
    ).format(
        sql.Identifier(f"{buffer_table(stable)}_xid"),
        sql.Identifier(CHANGES_SCHEMA, buffer_table(stable)),
        sql.SQL(XID_KEY),
    )


def _install_triggers(conn: psycopg.Connection[Any], source: SourceTable, stable: str) -> None:
    buf = sql.Identifier(CHANGES_SCHEMA, buffer_table(stable))
    cols = [c.name for c in source.columns]
    table = sql.Identifier(source.schema, source.name)
    for short, event, referencing in _EVENTS:
        fn = sql.Identifier(CHANGES_SCHEMA, f"{trigger_function(stable)}_{short}")
        body = _function_body(buf, cols, short, stable).as_string(conn)
        conn.execute(
            sql.SQL(
                "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql "
                "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {}"
            ).format(fn, sql.Literal(body))
        )
        conn.execute(
            sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                sql.Identifier(trigger_name(stable, short)), table
            )
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER {} AFTER {} ON {} {} FOR EACH STATEMENT EXECUTE FUNCTION {}()"
            ).format(
                sql.Identifier(trigger_name(stable, short)),
                sql.SQL(event),
                table,
                sql.SQL(referencing),
                fn,
            )
        )


def _rebuild(
    conn: psycopg.Connection[Any],
    source: SourceTable,
    stable: str,
    captured: tuple[str, ...],
    *,
    triggers: bool = True,
) -> None:
    buf = sql.Identifier(CHANGES_SCHEMA, buffer_table(stable))
    wanted = {c.name: c for c in source.columns}
    for name in captured:
        if name not in wanted:
            conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(buf, sql.Identifier(name)))
    for col in source.columns:
        if col.name not in captured:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {}").format(buf, _column_def(col)))
    if triggers:
        _install_triggers(conn, source, stable)
    conn.execute(
        "UPDATE pgtrickle.pgt_change_tracking SET captured_columns = %s, primary_key = %s "
        "WHERE source_stable_name = %s",
        (
            json.dumps([{"name": c.name, "type": c.type} for c in source.columns]),
            list(source.primary_key) if source.primary_key else None,
            stable,
        ),
    )


def release_capture(conn: psycopg.Connection[Any], stable: str) -> bool:
    """Drop the buffer, triggers and functions of a source that no stream table reads any more.
    Returns whether anything was dropped."""
    users = conn.execute(
        "SELECT count(*) FROM pgtrickle.pgt_dependencies WHERE source_stable_name = %s", (stable,)
    ).fetchone()
    if users and users[0]:
        return False
    row = conn.execute(
        "SELECT source_schema, source_name, cdc_mode FROM pgtrickle.pgt_change_tracking "
        "WHERE source_stable_name = %s",
        (stable,),
    ).fetchone()
    if row is None:
        return False
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(row[0], row[1]).as_string(conn),)
    ).fetchone()
    if exists and exists[0] and row[2] == "trigger":
        for short, _, _ in _EVENTS:
            conn.execute(
                sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                    sql.Identifier(trigger_name(stable, short)), sql.Identifier(row[0], row[1])
                )
            )
    for short, _, _ in _EVENTS:
        conn.execute(
            sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
                sql.Identifier(CHANGES_SCHEMA, f"{trigger_function(stable)}_{short}")
            )
        )
    conn.execute(
        sql.SQL("DROP TABLE IF EXISTS {}").format(
            sql.Identifier(CHANGES_SCHEMA, buffer_table(stable))
        )
    )
    conn.execute(
        "DELETE FROM pgtrickle.pgt_change_tracking WHERE source_stable_name = %s", (stable,)
    )
    return True


def sources_missing_capture(
    conn: psycopg.Connection[Any], pgt_id: int
) -> list[tuple[str, str, bool]]:
    """Trigger-captured sources of a stream table whose capture triggers are gone (a table
    dropped and created again, e.g. by ``dbt seed --full-refresh``), as ``(schema, name,
    exists)``. One catalog query, so refreshes can afford it every time."""
    rows = conn.execute(
        "SELECT t.source_stable_name, t.source_schema, t.source_name, r.oid IS NOT NULL, "
        "ARRAY(SELECT tgname::text FROM pg_trigger WHERE tgrelid = r.oid) "
        "FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_change_tracking t "
        "USING (source_stable_name) "
        "LEFT JOIN LATERAL (SELECT to_regclass(quote_ident(t.source_schema) || '.' || "
        "quote_ident(t.source_name)) AS oid) r ON true "
        "WHERE d.pgt_id = %s AND t.cdc_mode = 'trigger'",
        (pgt_id,),
    ).fetchall()
    missing = []
    for stable, schema, name, exists, triggers in rows:
        wanted = {trigger_name(stable, short) for short, _, _ in _EVENTS}
        if not wanted <= set(triggers):
            missing.append((schema, name, bool(exists)))
    return missing


def repair_capture(conn: psycopg.Connection[Any], source: SourceTable) -> None:
    """Reinstall the capture of a source whose triggers are gone, and mark every stream table
    reading it for a full refresh (their change windows missed whatever happened meanwhile).
    Runs in its own transaction, holding the source against writers while it works."""
    stable = stable_name(source.schema, source.name)
    with conn.transaction():
        conn.execute(
            sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
                sql.Identifier(source.schema, source.name)
            )
        )
        row = conn.execute(
            "SELECT captured_columns FROM pgtrickle.pgt_change_tracking "
            "WHERE source_stable_name = %s",
            (stable,),
        ).fetchone()
        captured = tuple(c["name"] for c in row[0]) if row else ()
        if captured != tuple(c.name for c in source.columns):
            _rebuild(conn, source, stable, captured)
        else:
            _install_triggers(conn, source, stable)
        conn.execute(
            "UPDATE pgtrickle.pgt_stream_tables SET needs_full = true WHERE pgt_id IN "
            "(SELECT pgt_id FROM pgtrickle.pgt_dependencies WHERE source_stable_name = %s)",
            (stable,),
        )


def _sync_collations(conn: psycopg.Connection[Any], source: SourceTable, stable: str) -> None:
    """Give the buffer's columns the source columns' collations where they differ: a buffer
    made before buffers kept them, or a source column altered to another collation since."""
    buf = sql.Identifier(CHANGES_SCHEMA, buffer_table(stable))
    rows = conn.execute(
        "SELECT a.attname, " + COLLATION_SQL + " FROM pg_attribute a JOIN pg_type t "
        "ON t.oid = a.atttypid WHERE a.attrelid = %s::regclass AND a.attnum > 0 "
        "AND NOT a.attisdropped",
        (buf.as_string(conn),),
    ).fetchall()
    have = dict(rows)
    for col in source.columns:
        if col.name in have and have[col.name] != col.collation:
            conn.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(
                    buf, sql.Identifier(col.name), _column_def(col, with_name=False)
                )
            )


def _column_def(col: Column, *, with_name: bool = True) -> sql.Composed:
    """A buffer column: the source column's type (from ``format_type``) and, when it is not the
    type's default, its collation, so that conditions on change rows (a delta's WHERE, a
    change window's filter) compare as they do on the source: ``label = 'abc'`` under a
    case-insensitive collation also matches 'ABC'."""
    name = sql.SQL("{} ").format(sql.Identifier(col.name)) if with_name else sql.SQL("")
    if col.collation is None:
        return sql.SQL("{}{}").format(name, sql.SQL(col.type))
    return sql.SQL("{}{} COLLATE {}").format(name, sql.SQL(col.type), sql.SQL(col.collation))
