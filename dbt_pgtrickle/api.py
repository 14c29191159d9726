"""The Python API (DESIGN §5). Every function takes a psycopg 3 connection or a DSN string.

Creation, alteration and drop are each one transaction: on any error nothing is left behind.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import psycopg
from psycopg import sql

from . import settings as _settings
from ._conn import session
from .catalog import install as _install
from .catalog import records
from .catalog.lookup import DatabaseLookup
from .cdc import unlogged
from .cdc.triggers import ensure_capture, release_capture
from .citus import capture as _citus_capture
from .citus import tables as _citus
from .dvm import _sqlglot, compiler
from .errors import (
    ConfigError,
    PgTrickleError,
    QueryError,
    RefreshError,
    SourceError,
    StreamTableExists,
    UnsupportedConstruct,
)
from .naming import stable_name
from .refresh import engine, storage
from .refresh._tx import repeatable_read
from .refresh.engine import RefreshResult

Conn = psycopg.Connection[Any] | str

REFRESH_MODES = ("AUTO", "DIFFERENTIAL", "FULL")
CDC_MODES = ("auto", "trigger")
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d))+$")
_CRON_ALIASES = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def install(conn: Conn) -> int:
    """Create or upgrade the ``pgtrickle`` schemas; returns the installed schema version."""
    with session(conn) as c:
        return _install.install(c)


def _check_mode(mode: str) -> str:
    upper = str(mode).upper()
    if upper not in REFRESH_MODES:
        raise ConfigError(f"refresh_mode must be one of {', '.join(REFRESH_MODES)}, got {mode!r}")
    return upper


def query_hash(query: str) -> str:
    """The ``query_hash`` the catalog stores for ``query``: sha256 of the text without
    surrounding whitespace and trailing semicolons (dbt compares compiled SQL with it)."""
    return _sqlglot.query_hash(_clean_query(query))


def check_schedule(schedule: str | None) -> str | None:
    """The schedule, normalised, or :class:`ConfigError` saying what is accepted."""
    return _check_schedule(schedule)


def _check_schedule(schedule: str | None) -> str | None:
    if schedule is None:
        return None
    text = str(schedule).strip()
    fields = text.split()
    if (
        _DURATION.match(text)
        or text in _CRON_ALIASES
        or text == "calculated"
        or (len(fields) in (5, 6) and all(re.match(r"^[\d*/,\-A-Za-z?LW#]+$", f) for f in fields))
    ):
        from .scheduler.schedule import parse  # pure; the daemon reads schedules with it

        try:
            parse(text)
        except ConfigError as exc:
            raise ConfigError(f"schedule {schedule!r} is not valid: {exc}") from None
        return text
    raise ConfigError(
        f"schedule {schedule!r} is not valid: use a duration like '30s', '5m' or '1h30m', "
        "a cron expression with 5 or 6 fields, an alias like '@hourly', or 'calculated'"
    )


def _check_cdc(cdc_mode: str) -> str:
    mode = str(cdc_mode).lower()
    if mode not in CDC_MODES:
        raise ConfigError(f"cdc_mode must be one of {', '.join(CDC_MODES)}, got {cdc_mode!r}")
    return "trigger"


def _describe(conn: psycopg.Connection[Any], query: str) -> list[str]:
    """Validate the query with PostgreSQL and return its output column names."""
    try:
        with conn.transaction():
            names = engine.describe_query(conn, query)
    except psycopg.errors.UndefinedTable as exc:
        raise SourceError(f"the query reads a relation that does not exist: {_msg(exc)}") from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PgTrickleError(
            f"missing privilege: {_msg(exc)}; grant SELECT on the sources to this role",
            sqlstate=exc.sqlstate,
        ) from None
    except psycopg.Error as exc:
        raise QueryError(f"the query is not valid: {_msg(exc)}") from None
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise QueryError(
                f"output column {name!r} appears more than once; give each column its own alias"
            )
        if name.startswith("__pgt_"):
            raise QueryError(f"output column {name!r} uses the reserved prefix __pgt_")
        seen.add(name)
    return names


def _clean_query(query: str) -> str:
    """The query without surrounding whitespace and trailing semicolons (dbt and editors add
    them; PostgreSQL cannot nest a statement terminator in a subquery)."""
    text = str(query).strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return text


def _msg(exc: psycopg.Error) -> str:
    return (exc.diag.message_primary or str(exc)).strip()


def _plan(conn: psycopg.Connection[Any], schema: str, name: str, query: str) -> compiler.DeltaPlan:
    _sqlglot.parse(query)  # non-SELECT and syntax errors, before PostgreSQL sees the text
    names = _describe(conn, query)
    lookup = DatabaseLookup(conn)
    # A view is read through its definition as it is now: the stream table keeps that
    # definition (its defining query), so a later CREATE OR REPLACE VIEW cannot make the
    # stored rows and the deltas disagree.
    expanded = _sqlglot.expand_views(query, lookup.view_definition)
    return compiler.compile_query(
        expanded, lookup, names, sql.Identifier(schema, name).as_string(conn)
    )


def _modes(plan: compiler.DeltaPlan, requested: str) -> tuple[str, str | None]:
    """Effective mode and fallback reason for a plan under the requested mode."""
    if requested == "FULL":
        return "FULL", None
    if not plan.differential:
        if requested == "DIFFERENTIAL":
            assert plan.unsupported
            raise UnsupportedConstruct(plan.unsupported.split(": ", 1)[-1])
        return "FULL", plan.unsupported
    return "DIFFERENTIAL", None


def _lock_sources(
    conn: psycopg.Connection[Any],
    plan: compiler.DeltaPlan,
    cplan: _citus.CitusPlan | None = None,
) -> None:
    """Block writers of the captured sources until commit (no snapshot is taken by LOCK), so
    every write is either visible to the initial population or captured by the new triggers
    (Citus sources: on the coordinator here, on the nodes in ``_citus.create_slots``)."""
    # A fixed order (schema, name): two creations sharing sources never deadlock.
    for src in sorted(plan.sources, key=lambda s: (s.schema, s.name)):
        if src.kind in ("table", "partitioned"):
            lock = sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
                sql.Identifier(src.schema, src.name)
            )
            conn.execute(_citus.lock_on_coordinator_only(cplan, src.schema, src.name, lock))


def _detach_sources(conn: psycopg.Connection[Any], pgt_id: int) -> list[str]:
    """Forget which sources a stream table reads; returns their stable names."""
    rows = conn.execute(
        "DELETE FROM pgtrickle.pgt_dependencies WHERE pgt_id = %s RETURNING source_stable_name",
        (pgt_id,),
    ).fetchall()
    return [r[0] for r in rows]


def _register_sources(
    conn: psycopg.Connection[Any],
    pgt_id: int,
    plan: compiler.DeltaPlan,
    cplan: _citus.CitusPlan | None = None,
) -> None:
    for src in plan.sources:
        on_citus = cplan is not None and (src.schema, src.name) in cplan.citus_sources
        if src.kind in ("table", "partitioned"):
            # Citus sources are captured by worker slots, not triggers (citus/capture.py).
            buf = ensure_capture(conn, src, triggers=not on_citus)
            stable = buf.stable_name
            if on_citus:
                assert cplan is not None
                _citus.register_source(conn, cplan, src.schema, src.name, stable)
        else:
            stable = stable_name(src.schema, src.name)
            conn.execute(
                "INSERT INTO pgtrickle.pgt_change_tracking (source_stable_name, source_schema, "
                "source_name, buffer_table, cdc_mode, captured_columns) VALUES "
                "(%s, %s, %s, '', 'none', '[]') ON CONFLICT DO NOTHING",
                (stable, src.schema, src.name),
            )
        conn.execute(
            "INSERT INTO pgtrickle.pgt_dependencies (pgt_id, source_stable_name, source_schema, "
            "source_name, source_placement) SELECT %s, %s, %s, %s, source_placement "
            "FROM pgtrickle.pgt_change_tracking WHERE source_stable_name = %s "
            "ON CONFLICT DO NOTHING",
            (pgt_id, stable, src.schema, src.name, stable),
        )
    unlogged.rearm(conn, pgt_id)  # reads an unlogged buffer: its crash sentinel starts armed


def create_stream_table(
    conn: Conn,
    name: str,
    query: str,
    *,
    schedule: str | None = None,
    refresh_mode: str = "AUTO",
    initialize: bool = True,
    cdc_mode: str = "auto",
    **options: Any,
) -> dict[str, Any]:
    """Create a stream table ``name`` defined by ``query`` (and populate it unless
    ``initialize=False``). Returns the catalog view of the new stream table."""
    mode = _check_mode(refresh_mode)
    schedule = _check_schedule(schedule)
    cdc = _check_cdc(cdc_mode)
    unknown = set(options) - set(_citus.OPTIONS)
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
    query = _clean_query(query)
    schema, rel = records.split_name(name)
    with session(conn) as c:
        _install.require_installed(c)
        if records.find(c, schema, rel) is not None:
            raise StreamTableExists(f"stream table {schema}.{rel} already exists")
        exists = c.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(schema, rel).as_string(c),)
        ).fetchone()
        if exists and exists[0]:
            raise StreamTableExists(
                f"a relation named {schema}.{rel} already exists; drop it or pick another name"
            )
        plan = _plan(c, schema, rel, query)
        effective, reason = _modes(plan, mode)
        cplan = _citus.plan_create(c, plan, options)
        _citus.prepare_sources(c, cplan)
        lock_ms = _settings.get_setting(c, "refresh_lock_timeout_ms")
        created = False
        try:
            with repeatable_read(c):
                # No data statement before the locks: the snapshot must be taken after them.
                c.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{lock_ms}ms"))
                )
                _lock_sources(c, plan, cplan)
                # Citus sources: slots first (their creation waits for the nodes' running
                # transactions), so the population below sees every change they do not stream.
                _citus.create_slots(c, cplan)
                frontier = c.execute("SELECT pg_current_snapshot()::text").fetchone()[0]  # type: ignore[index]
                built = time.perf_counter()
                rows = storage.build_table(
                    c, schema, rel, plan, initialize, cplan if cplan.placement != "local" else None
                )
                built_ms = (time.perf_counter() - built) * 1000
                pgt_id = c.execute(
                    "INSERT INTO pgtrickle.pgt_stream_tables (pgt_schema, pgt_name, "
                    "defining_query, original_query, query_hash, schedule, requested_mode, "
                    "effective_mode, status, frontier, fallback_reason, plan, initialize, cdc_mode, "
                    "last_refresh_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::pg_snapshot, "
                    "%s, %s, %s, %s, CASE WHEN %s THEN now() END) RETURNING pgt_id",
                    (
                        schema,
                        rel,
                        plan.defining_query,
                        query,
                        _sqlglot.query_hash(query),
                        schedule,
                        mode,
                        effective,
                        "ACTIVE" if initialize else "INITIALIZING",
                        frontier if initialize else None,
                        reason,
                        json.dumps(plan.to_json()),
                        initialize,
                        cdc,
                        initialize,
                    ),
                ).fetchone()[0]  # type: ignore[index]
                _register_sources(c, pgt_id, plan, cplan)
                _citus.record_placement(c, pgt_id, schema, rel, cplan)
                if initialize:
                    c.execute(
                        "INSERT INTO pgtrickle.pgt_refresh_history (pgt_id, pgt_schema, pgt_name, "
                        "started_at, ended_at, action, status, rows_in, rows_inserted, "
                        "rows_updated, rows_deleted, fallback_reason, initiated_by, "
                        "frontier_after, duration_ms) VALUES (%s, %s, %s, now(), "
                        "clock_timestamp(), 'FULL', 'COMPLETED', 0, %s, 0, 0, "
                        "'initial population', 'create', %s, %s)",
                        (pgt_id, schema, rel, rows, frontier, built_ms),
                    )
            created = True
        except psycopg.errors.LockNotAvailable as exc:
            raise PgTrickleError(
                f"could not lock the sources of {schema}.{rel}: {_msg(exc)}; "
                "long-running writers hold them, try again",
                sqlstate=exc.sqlstate,
            ) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise PgTrickleError(
                f"missing privilege while creating {schema}.{rel}: {_msg(exc)}; the role needs "
                "CREATE on the target schema and ownership (or TRIGGER) on the sources",
                sqlstate=exc.sqlstate,
            ) from None
        except psycopg.Error as exc:
            raise PgTrickleError(
                f"creating {schema}.{rel} failed: {_msg(exc)}", sqlstate=exc.sqlstate
            ) from exc
        finally:
            if not created:
                _citus.drop_new_slots(c, cplan)
        return _status_row(c, schema, rel)


def alter_stream_table(conn: Conn, name: str, **changes: Any) -> dict[str, Any]:
    """Change ``query``, ``schedule`` and/or ``refresh_mode`` of a stream table.

    A new query is built beside the old table and swapped in within one transaction, so readers
    never see an empty or half-built table.
    """
    allowed = {"query", "schedule", "refresh_mode"}
    unknown = set(changes) - allowed
    _citus.refuse_placement_change(name, changes)
    if unknown:
        raise ConfigError(
            f"cannot alter {', '.join(sorted(unknown))}; alterable: {', '.join(sorted(allowed))}"
        )
    schema, rel = records.split_name(name)
    with session(conn) as c:
        _install.require_installed(c)
        rec = records.get(c, schema, rel)
        mode = _check_mode(changes.get("refresh_mode", rec.requested_mode))
        schedule = _check_schedule(changes["schedule"]) if "schedule" in changes else rec.schedule
        query = _clean_query(changes.get("query", rec.original_query))
        plan = _plan(c, schema, rel, query)
        # The same text can mean a new query when a view it reads was redefined.
        new_query = "query" in changes and (
            _sqlglot.query_hash(query) != rec.query_hash
            or plan.defining_query != rec.defining_query
        )
        if new_query:
            _reject_cycle(c, schema, rel, plan)
            _citus.refuse_query_change(c, rec, plan)
        effective, reason = _modes(plan, mode)
        with repeatable_read(c):
            c.execute(
                sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(schema, rel))
            )
            if new_query:
                _lock_sources(c, plan)
            frontier = c.execute("SELECT pg_current_snapshot()::text").fetchone()[0]  # type: ignore[index]
            if new_query:
                storage.drop_internal_tables(c, schema, rel)  # the new plan builds its own
                tmp = f"{rel}__pgt_new"[:63]
                built = time.perf_counter()
                rows = storage.build_table(c, schema, tmp, plan, True)
                built_ms = (time.perf_counter() - built) * 1000
                c.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, rel)))
                c.execute(
                    sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                        sql.Identifier(schema, tmp), sql.Identifier(rel)
                    )
                )
                suffixes = {
                    compiler.FULL_ONLY: [],
                    compiler.TOPK: [],
                    compiler.WINDOW_PARTITIONS: ["__pgt_row_id", "__pgt_part"],
                }.get(plan.strategy, ["__pgt_row_id"])
                for suffix in suffixes:
                    c.execute(
                        sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                            sql.Identifier(schema, f"{tmp}{suffix}"[:63]),
                            sql.Identifier(f"{rel}{suffix}"[:63]),
                        )
                    )
                old_sources = _detach_sources(c, rec.pgt_id)
                _register_sources(c, rec.pgt_id, plan)
                for stable in old_sources:
                    release_capture(c, stable)
                c.execute(
                    "UPDATE pgtrickle.pgt_stream_tables SET defining_query = %s, "
                    "original_query = %s, query_hash = %s, frontier = %s::pg_snapshot, "
                    "plan = %s, status = 'ACTIVE', needs_full = false, last_refresh_at = now() "
                    "WHERE pgt_id = %s",
                    (
                        plan.defining_query,
                        query,
                        _sqlglot.query_hash(query),
                        frontier,
                        json.dumps(plan.to_json()),
                        rec.pgt_id,
                    ),
                )
                c.execute(
                    "INSERT INTO pgtrickle.pgt_refresh_history (pgt_id, pgt_schema, pgt_name, "
                    "started_at, ended_at, action, status, rows_in, rows_inserted, rows_updated, "
                    "rows_deleted, fallback_reason, initiated_by, frontier_after, duration_ms) "
                    "VALUES (%s, %s, %s, now(), clock_timestamp(), 'FULL', 'COMPLETED', 0, %s, "
                    "0, 0, 'query altered', 'alter', %s, %s)",
                    (rec.pgt_id, schema, rel, rows, frontier, built_ms),
                )
            c.execute(
                "UPDATE pgtrickle.pgt_stream_tables SET schedule = %s, requested_mode = %s, "
                "effective_mode = %s, fallback_reason = %s, updated_at = now() WHERE pgt_id = %s",
                (schedule, mode, effective, reason, rec.pgt_id),
            )
        return _status_row(c, schema, rel)


def _reject_cycle(
    c: psycopg.Connection[Any], schema: str, rel: str, plan: compiler.DeltaPlan
) -> None:
    """A new query must not read the stream table itself or any stream table reading it."""
    row = c.execute(
        "WITH RECURSIVE readers(s, n) AS (SELECT %s::text, %s::text UNION "
        "SELECT st.pgt_schema, st.pgt_name FROM readers r JOIN pgtrickle.pgt_dependencies d "
        "ON d.source_schema = r.s AND d.source_name = r.n JOIN pgtrickle.pgt_stream_tables st "
        "USING (pgt_id)) SELECT s || '.' || n FROM readers "
        "WHERE (s, n) IN (SELECT * FROM unnest(%s::text[], %s::text[])) LIMIT 1",
        (schema, rel, [x.schema for x in plan.sources], [x.name for x in plan.sources]),
    ).fetchone()
    if row is not None:
        raise ConfigError(
            f"the new query of {schema}.{rel} reads {row[0]}, which depends on {schema}.{rel}: "
            "stream tables cannot depend on each other in a cycle"
        )


def refresh_stream_table(
    conn: Conn, name: str, *, full: bool = False, initiated_by: str = "api"
) -> RefreshResult:
    """Refresh one stream table now. ``full=True`` forces a recomputation."""
    schema, rel = records.split_name(name)
    with session(conn) as c:
        _install.require_installed(c)
        return engine.refresh(c, schema, rel, full=full, initiated_by=initiated_by)


def refresh_all(
    conn: Conn, *, full: bool = False, initiated_by: str = "api"
) -> list[RefreshResult]:
    """Refresh every stream table, upstream stream tables before the ones reading them.

    A failure does not stop the others; afterwards a :class:`RefreshError` lists the failures
    (its ``results`` attribute holds the successful refreshes).
    """
    results: list[RefreshResult] = []
    failures: list[str] = []
    with session(conn) as c:
        _install.require_installed(c)
        for schema, name in _topological_order(c):
            try:
                results.append(
                    engine.refresh(c, schema, name, full=full, initiated_by=initiated_by)
                )
            except PgTrickleError as exc:
                failures.append(str(exc))
    if failures:
        err = RefreshError(
            f"{len(failures)} stream table(s) failed to refresh: " + "; ".join(failures)
        )
        err.results = results  # type: ignore[attr-defined]
        raise err
    return results


def refresh_order(conn: Conn) -> list[tuple[str, str]]:
    """``(schema, name)`` of every stream table, each after the stream tables it reads."""
    with session(conn) as c:
        _install.require_installed(c)
        return _topological_order(c)


def _topological_order(c: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """Stream tables ordered so that each comes after the stream tables it reads."""
    names = [(r.pgt_schema, r.pgt_name) for r in records.all_records(c)]
    edges = c.execute(
        "SELECT d.source_schema, d.source_name, st.pgt_schema, st.pgt_name "
        "FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) "
        "JOIN pgtrickle.pgt_stream_tables up ON up.pgt_schema = d.source_schema "
        "AND up.pgt_name = d.source_name"
    ).fetchall()
    upstream: dict[tuple[str, str], set[tuple[str, str]]] = {n: set() for n in names}
    for src_schema, src_name, schema, name in edges:
        upstream[(schema, name)].add((src_schema, src_name))
    ordered: list[tuple[str, str]] = []
    done: set[tuple[str, str]] = set()
    while len(ordered) < len(names):
        ready = [n for n in names if n not in done and upstream[n] <= done]
        if not ready:  # a cycle cannot be created, but never loop forever
            ready = [n for n in names if n not in done]
        for n in ready:
            ordered.append(n)
            done.add(n)
    return ordered


def drop_stream_table(conn: Conn, name: str) -> None:
    """Drop the stream table, its catalog rows, and the change capture no one else uses."""
    schema, rel = records.split_name(name)
    with session(conn) as c:
        _install.require_installed(c)
        rec = records.get(c, schema, rel)
        readers = c.execute(
            "SELECT st.pgt_schema || '.' || st.pgt_name FROM pgtrickle.pgt_dependencies d "
            "JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) "
            "WHERE d.source_schema = %s AND d.source_name = %s ORDER BY 1",
            (schema, rel),
        ).fetchall()
        if readers:
            raise PgTrickleError(
                f"cannot drop {schema}.{rel}: stream table(s) {', '.join(r[0] for r in readers)} "
                "read it; drop them first"
            )
        slots = []
        with c.transaction():
            c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, rel)))
            storage.drop_internal_tables(c, schema, rel)
            stables = _detach_sources(c, rec.pgt_id)
            c.execute("DELETE FROM pgtrickle.pgt_stream_tables WHERE pgt_id = %s", (rec.pgt_id,))
            unlogged.forget(c, rec.pgt_id)
            for stable in stables:
                if release_capture(c, stable):
                    slots.append((stable, _citus_capture.release(c, stable)))
        for stable, nodes in slots:  # worker slots are not transactional: after the commit
            _citus_capture.drop_slots(c, stable, nodes)


def verify_stream_table(conn: Conn, name: str, *, limit: int = 20) -> dict[str, Any]:
    """Compare a stream table with its defining query, as given at creation, right now.

    A symmetric ``EXCEPT ALL`` over the visible columns (one snapshot): returns ``{"equal": bool,
    "extra": n, "missing": n, "sample": [(side, row…), …]}`` with up to ``limit`` differing rows.
    This reads the whole table and runs the whole query: an explicit check, never part of a
    refresh.
    """
    schema, rel = records.split_name(name)
    with session(conn) as c:
        _install.require_installed(c)
        rec = records.get(c, schema, rel)
        target = sql.Identifier(schema, rel)
        cols = [
            d.name
            for d in c.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(target)).description or []
            if not d.name.startswith("__pgt_")
        ]
        col_list = sql.SQL(", ").join(sql.Identifier(n) for n in cols)
        query = sql.SQL(_clean_query(rec.original_query))
        diff = sql.SQL(
            "(SELECT 'extra' AS __pgt_side, * FROM (SELECT {c} FROM {t} EXCEPT ALL "
            "SELECT {c} FROM ({q}) AS q) AS x) UNION ALL (SELECT 'missing', * FROM "
            "(SELECT {c} FROM ({q}) AS q EXCEPT ALL SELECT {c} FROM {t}) AS y)"
        ).format(c=col_list, t=target, q=query)
        sample: list[Any] = []
        with repeatable_read(c):  # counts and sample from one snapshot
            counts = dict(
                c.execute(
                    sql.SQL("SELECT __pgt_side, count(*) FROM ({}) AS d GROUP BY 1").format(diff),
                    prepare=False,
                ).fetchall()
            )
            if counts:  # the sample only when they differ (no second run of the query)
                sample = c.execute(
                    sql.SQL("SELECT * FROM ({}) AS d LIMIT {}").format(diff, sql.Literal(limit)),
                    prepare=False,
                ).fetchall()
    extra, missing = counts.get("extra", 0), counts.get("missing", 0)
    return {
        "equal": not (extra or missing),
        "extra": extra,
        "missing": missing,
        "sample": [tuple(r) for r in sample],
    }


def explain_stream_table(conn: Conn, name: str, format: str = "text") -> Any:
    """The operator tree, per-operator delta cost, the generated SQL and fallback reasons.

    ``format``: ``text`` (a string), ``json`` (a dict) or ``dot`` (Graphviz source).
    """
    fmt = format.lower()
    if fmt not in ("text", "json", "dot"):
        raise ConfigError(f"format must be text, json or dot, got {format!r}")
    schema, rel = records.split_name(name)
    with session(conn) as c:
        _install.require_installed(c)
        rec = records.get(c, schema, rel)
        plan = engine.compile_for(c, rec)
        citus = _citus.describe(c, rec.pgt_id)
    data = {
        "name": rec.qualified,
        "requested_mode": rec.requested_mode,
        "effective_mode": rec.effective_mode,
        "strategy": plan.strategy,
        "fallback_reason": rec.fallback_reason,
        "defining_query": plan.defining_query,
        "operators": [vars(o) for o in plan.operators],
        "notes": plan.notes,
        "full_sql": plan.full_sql,
        "delta_sql": plan.delta_sql,
        "sources": [s.qualified for s in plan.sources],
        "citus": citus,
    }
    if fmt == "json":
        return data
    if fmt == "dot":
        lines = ["digraph stream_table {", "  rankdir=BT;"]
        for i, op in enumerate(plan.operators):
            label = f"{op.operator}\\n{op.delta_cost}".replace('"', "'")
            lines.append(f'  n{i} [shape=box, label="{label}"];')
            if i:
                lines.append(f"  n{i - 1} -> n{i};")
        lines.append("}")
        return "\n".join(lines)
    out = [
        f"Stream table {rec.qualified}",
        f"  mode: requested {rec.requested_mode}, effective {rec.effective_mode}"
        f" (strategy {plan.strategy})",
    ]
    if rec.fallback_reason:
        out.append(f"  fallback: {rec.fallback_reason}")
    out.extend(_citus.describe_lines(citus))
    out.append("  operators (bottom-up):")
    for op in plan.operators:
        out.append(f"    {op.operator:<15} {op.detail}")
        out.append(f"      delta cost: {op.delta_cost}" + (f" — {op.why}" if op.why else ""))
    for note in plan.notes:
        out.append(f"  note: {note}")
    out.append("  full SQL:")
    out.append(f"    {plan.full_sql}")
    if plan.delta_sql:
        out.append("  delta SQL:")
        out.append(f"    {plan.delta_sql}")
    return "\n".join(out)


def _status_row(c: psycopg.Connection[Any], schema: str, name: str) -> dict[str, Any]:
    rows = _status_rows(c, "WHERE pgt_schema = %s AND pgt_name = %s", (schema, name))
    return rows[0]


def _status_rows(
    c: psycopg.Connection[Any], where: str = "", params: tuple[Any, ...] = ()
) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with c.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT pgt_schema AS schema, pgt_name AS name, requested_mode, effective_mode, "
            "status, schedule, last_refresh_at, staleness, last_action, last_refresh_status, consecutive_failures, "
            "last_error, fallback_reason, (SELECT p.placement FROM pgtrickle.pgt_stream_tables p "
            f"WHERE p.pgt_id = v.pgt_id) AS placement FROM pgtrickle.stream_tables v {where} "
            "ORDER BY pgt_schema, pgt_name",
            params,
        ).fetchall()


def status(conn: Conn) -> list[dict[str, Any]]:
    """One dict per stream table: modes, status, staleness, last action and error."""
    with session(conn) as c:
        _install.require_installed(c)
        return _status_rows(c)


def list_settings(conn: Conn) -> dict[str, Any]:
    """Every setting with its effective value in this database."""
    with session(conn) as c:
        _install.require_installed(c)
        return _settings.all_settings(c)


def get_setting(conn: Conn, name: str) -> Any:
    with session(conn) as c:
        return _settings.get_setting(c, name)


def set_setting(conn: Conn, name: str, value: Any) -> None:
    with session(conn) as c:
        _install.require_installed(c)
        _settings.set_setting(c, name, value)


# -- subscriptions, SLA, scheduler -----------------------------------------------------------------


def _sql_name(c: psycopg.Connection[Any], name: str) -> str:
    schema, rel = records.split_name(name)
    return sql.Identifier(schema, rel).as_string(c)


def subscribe(conn: Conn, name: str, channel: str) -> bool:
    """After every refresh of ``name`` that changes rows, ``NOTIFY channel`` with JSON
    ``{name, refresh_id, inserted, updated, deleted, refreshes}`` (bursts coalesced per
    ``notify_coalesce_ms``). Returns False when the subscription existed already."""
    with session(conn) as c:
        _install.require_installed(c)
        return _call_bool(c, "SELECT pgtrickle.subscribe(%s, %s)", (_sql_name(c, name), channel))


def unsubscribe(conn: Conn, name: str, channel: str) -> bool:
    """Remove a subscription; returns False when there was none."""
    with session(conn) as c:
        _install.require_installed(c)
        return _call_bool(c, "SELECT pgtrickle.unsubscribe(%s, %s)", (_sql_name(c, name), channel))


def _call_bool(c: psycopg.Connection[Any], query: str, params: tuple[Any, ...]) -> bool:
    try:
        row = c.execute(query, params).fetchone()
    except psycopg.errors.UndefinedTable as exc:
        from .errors import StreamTableNotFound

        raise StreamTableNotFound(_msg(exc)) from None
    except psycopg.errors.InvalidParameterValue as exc:
        raise ConfigError(_msg(exc)) from None
    return bool(row and row[0])


def list_subscriptions(conn: Conn) -> list[dict[str, Any]]:
    """Every subscription: ``stream_table``, ``channel``, ``created_at``."""
    from psycopg.rows import dict_row

    with session(conn) as c:
        _install.require_installed(c)
        with c.cursor(row_factory=dict_row) as cur:
            return cur.execute("SELECT * FROM pgtrickle.list_subscriptions()").fetchall()


def sla_summary(conn: Conn, window_hours: int | None = None) -> list[dict[str, Any]]:
    """Per stream table over the last ``window_hours`` (default: setting ``sla_window_hours``):
    ``refreshes``, ``failures``, ``p50_ms``/``p99_ms`` refresh duration, ``freshness_lag``,
    ``error_rate`` and ``error_budget_remaining`` (against setting ``sla_target``)."""
    from psycopg.rows import dict_row

    with session(conn) as c:
        _install.require_installed(c)
        with c.cursor(row_factory=dict_row) as cur:
            return cur.execute(
                "SELECT * FROM pgtrickle.sla_summary(%s)", (window_hours,)
            ).fetchall()


def scheduler_status(conn: Conn) -> list[dict[str, Any]]:
    """The heartbeat rows of the schedulers serving this database (``alive`` when the heartbeat
    is recent), each with the leases it holds."""
    from .scheduler import leases

    with session(conn) as c:
        _install.require_installed(c)
        return leases.schedulers(c)
