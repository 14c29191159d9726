"""The refresh engine: one refresh of one stream table, in one REPEATABLE READ transaction.

Order inside the transaction:

1. ``LOCK TABLE <stream table> IN EXCLUSIVE MODE`` (readers go on; other refreshes wait). LOCK takes
   no snapshot, so the snapshot below is taken after the previous refresh committed.
2. ``pg_current_snapshot()`` becomes the new frontier; every read below uses that one snapshot.
3. The change window of each source: rows whose ``xid8`` is not visible in the previous frontier
   (rows visible to us are committed before our snapshot). A writer that began before the previous
   refresh and committed after it is therefore consumed exactly once, with no look at
   ``pg_stat_activity``.
4. Pick the action (NO_DATA without running any delta query, FULL, or DIFFERENTIAL), apply it,
   store the new frontier and a history row, commit.

After the commit, buffer rows every consumer has seen are deleted in a short READ COMMITTED
statement (in REPEATABLE READ, two refreshes deleting the same shared buffer rows would fail with
serialization errors; deletion is idempotent and does not affect what any refresh consumes).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..catalog import records
from ..catalog.lookup import DatabaseLookup, describe_table
from ..cdc import unlogged
from ..cdc.triggers import XID_KEY, repair_capture, sources_missing_capture, xid_key_bound
from ..citus import capture as citus_capture
from ..citus import tables as citus_tables
from ..dvm import compiler
from ..dvm.operators import join, recursive
from ..dvm.operators.scan import changes_relation
from ..errors import LockNotAvailable, PgTrickleError, RefreshError, SourceError
from ..naming import CHANGES_SCHEMA, buffer_table
from ..settings import all_settings
from . import budget, plan_cache, storage
from ._tx import repeatable_read

FULL = "FULL"
DIFFERENTIAL = "DIFFERENTIAL"
NO_DATA = "NO_DATA"


@dataclass
class RefreshResult:
    """What one refresh did."""

    name: str
    action: str
    rows_in: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0
    duration_ms: float = 0.0
    fallback_reason: str | None = None
    refresh_id: int | None = None
    # After the commit, the buffer rows every reader has consumed are deleted: by the refresh
    # that consumes them last, for all readers (not in duration_ms).
    cleanup_rows: int = 0
    cleanup_ms: float = 0.0


@dataclass
class _Source:
    schema: str
    name: str
    stable: str
    captured: bool
    columns: list[str]
    #: Its change rows this refresh, as copied into its window (only those the delta can use):
    #: what AUTO compares with earlier refreshes and the history records as rows_in.
    pending: int = 0
    #: The rows of its window after change rows that undo each other cancelled
    #: (:func:`_consolidate`): what the delta reads. Not compared across refreshes: whether a
    #: window is consolidated varies from refresh to refresh.
    window_rows: int = 0
    types: dict[str, str] = field(default_factory=dict)  # column -> format_type()
    unlogged: bool = False  # its change buffer is UNLOGGED (see cdc/unlogged.py)
    lagging_peer: bool = False  # another reader of its buffer is behind (see _window)
    windowed: bool = False  # its change window is materialised (see _materialise_windows)


def _target(rec: records.StreamTableRecord) -> sql.Identifier:
    return sql.Identifier(rec.pgt_schema, rec.pgt_name)


def target_text(conn: psycopg.Connection[Any], schema: str, name: str) -> str:
    return sql.Identifier(schema, name).as_string(conn)


def compile_for(
    conn: psycopg.Connection[Any], rec: records.StreamTableRecord
) -> compiler.DeltaPlan:
    """Compile the stream table's defining query against the database as it is now (inside a
    transaction, a cached plan is reused while its sources' definitions are unchanged; see
    :mod:`.plan_cache`)."""
    target = target_text(conn, rec.pgt_schema, rec.pgt_name)

    def compile_now(lookup: DatabaseLookup) -> compiler.DeltaPlan:
        names = describe_query(conn, rec.defining_query)
        return compiler.compile_query(rec.defining_query, lookup, names, target)

    return plan_cache.compiled(conn, rec.defining_query, target, compile_now)


def describe_query(conn: psycopg.Connection[Any], query: str) -> list[str]:
    """Output column names of ``query`` as PostgreSQL reports them (validates the SQL, too)."""
    cur = conn.execute(sql.SQL("SELECT * FROM ({}) AS __pgt_q LIMIT 0").format(sql.SQL(query)))
    return [d.name for d in cur.description or []]


def _sources(conn: psycopg.Connection[Any], pgt_id: int) -> list[_Source]:
    rows = conn.execute(
        sql.SQL(
            "SELECT d.source_schema, d.source_name, d.source_stable_name, "
            "t.source_stable_name IS NOT NULL, coalesce(t.captured_columns, '[]'::jsonb), {}, "
            "EXISTS (SELECT 1 FROM pgtrickle.pgt_dependencies o JOIN pgtrickle.pgt_stream_tables "
            "s USING (pgt_id) WHERE o.source_stable_name = d.source_stable_name AND o.pgt_id <> "
            "d.pgt_id AND (s.frontier IS NULL OR pg_snapshot_xmax(s.frontier) < "
            "pg_snapshot_xmax((SELECT frontier FROM pgtrickle.pgt_stream_tables "
            "WHERE pgt_id = d.pgt_id)))) "
            "FROM pgtrickle.pgt_dependencies d LEFT JOIN pgtrickle.pgt_change_tracking t "
            "USING (source_stable_name) WHERE d.pgt_id = %s ORDER BY 1, 2"
        ).format(unlogged.BUFFER_IS_UNLOGGED),
        (pgt_id,),
    ).fetchall()
    return [
        _Source(
            r[0],
            r[1],
            r[2],
            r[3],
            [c["name"] for c in r[4]],
            types={c["name"]: c.get("type", "") for c in r[4]},
            unlogged=r[5],
            lagging_peer=r[6],
        )
        for r in rows
    ]


def _window(src: _Source) -> sql.Composed:
    """WHERE clause selecting the change window of ``src`` (parameter: previous frontier).

    When another reader of the buffer is behind (``src.lagging_peer``), the buffer still holds
    rows this stream table consumed, and the condition is repeated on the expression of the
    buffer's BRIN index so the read skips their pages. Otherwise the buffer holds about the
    window only: a plain scan reads it, without converting each row's xid for the index
    (0.1 µs a row a statement, as much as the BRIN index saved the writer)."""
    bound = (
        sql.SQL(" AND {}").format(xid_key_bound("b", sql.SQL("%(f)s::pg_snapshot")))
        if src.lagging_peer
        else sql.SQL("")
    )
    return sql.SQL(
        "FROM {} AS b WHERE b.__pgt_xid >= pg_snapshot_xmin(%(f)s::pg_snapshot){} "
        "AND NOT pg_visible_in_snapshot(b.__pgt_xid, %(f)s::pg_snapshot)"
    ).format(sql.Identifier(CHANGES_SCHEMA, buffer_table(src.stable)), bound)


def refresh(
    conn: psycopg.Connection[Any],
    schema: str,
    name: str,
    *,
    full: bool = False,
    initiated_by: str = "api",
    running_id: int | None = None,
    _reason: str | None = None,
) -> RefreshResult:
    """Refresh one stream table; raises :class:`RefreshError` (history records the failure).

    ``running_id``: a ``RUNNING`` history row the caller (the scheduler) wrote beforehand; it is
    completed in place, in the refresh transaction, instead of a new row being added. After a
    refresh that changed rows, subscribers are notified (see :func:`_queue_notification`).
    """
    started = time.perf_counter()
    started_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
    settings = all_settings(conn)  # one query for every setting this refresh reads
    lock_ms = settings["refresh_lock_timeout_ms"]
    timeout_ms = settings["refresh_statement_timeout_ms"]
    threshold = settings["auto_full_threshold"]
    page_cost = settings["refresh_random_page_cost"]
    rec = records.get(conn, schema, name)
    try:
        repaired = _repair_missing_capture(conn, rec)
    except PgTrickleError as exc:
        _record_failure(conn, rec, started_at, started, FULL, None, exc, initiated_by, running_id)
        raise
    if repaired and not _reason:
        _reason = (
            f"change capture on {', '.join(repaired)} was gone (table dropped and created "
            "again?); reinstalled and recomputed"
        )
    action = FULL if full else DIFFERENTIAL
    reason: str | None = None
    citus_sources = citus_capture.citus_sources(conn, rec.pgt_id) if rec.citus_captured else []
    try:
        with repeatable_read(conn):
            # Small statistics samples: the temporary tables analysed below are read once.
            settings_sql = [
                sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{lock_ms}ms")),
                sql.SQL("SET LOCAL default_statistics_target = 10"),
            ]
            if page_cost:
                settings_sql.append(
                    sql.SQL("SET LOCAL random_page_cost = {}").format(sql.Literal(str(page_cost)))
                )
            if timeout_ms:
                settings_sql.append(
                    sql.SQL("SET LOCAL statement_timeout = {}").format(
                        sql.Literal(f"{timeout_ms}ms")
                    )
                )
            # One round trip (no parameters: the simple protocol allows several statements;
            # SET takes no snapshot).
            conn.execute(sql.SQL("; ").join(settings_sql))
            lock = sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(_target(rec))
            if rec.placement != "local":  # Citus: on the coordinator only (see the function)
                lock = citus_capture.on_coordinator_only(lock)
            try:
                conn.execute(lock)
            except psycopg.errors.LockNotAvailable:
                raise LockNotAvailable(
                    f"stream table {rec.qualified} is being refreshed or altered by another "
                    "session; try again later",
                    sqlstate="55P03",
                ) from None
            if citus_sources:  # before the snapshot: import the workers' changes up to now
                citus_capture.prepare_refresh(conn, citus_sources)
            frontier = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]  # type: ignore[index]
            rec = records.get(conn, schema, name)  # re-read in our snapshot
            sources = _sources(conn, rec.pgt_id)
            lost = [f"{s.schema}.{s.name}" for s in sources if s.unlogged]
            if lost and unlogged.rearm(conn, rec.pgt_id):  # a crash emptied the buffers
                full, _reason = True, _reason or unlogged.reset_reason(lost)
            compiled: list[compiler.DeltaPlan] = []
            action, reason, rows_in, budget_ms = _choose(
                conn,
                rec,
                sources,
                full,
                threshold,
                settings["auto_cost_floor_ms"],
                settings["auto_diff_budget"],
                windows_plan(conn, rec, sources, full, compiled),
            )
            if action == DIFFERENTIAL:
                # A delta is many small joins: JIT compiling it costs more than it saves (up
                # to seconds for a wide inclusion–exclusion expansion).
                differential_sql: list[sql.Composable] = [sql.SQL("SET LOCAL jit = off")]
                cache_mb = settings["refresh_effective_cache_size_mb"]
                if cache_mb:
                    differential_sql.append(
                        sql.SQL("SET LOCAL effective_cache_size = {}").format(
                            sql.Literal(f"{cache_mb}MB")
                        )
                    )
                conn.execute(sql.SQL("; ").join(differential_sql))
            reason = _reason or reason
            result = RefreshResult(rec.qualified, action, rows_in=rows_in, fallback_reason=reason)
            if action == FULL:
                _apply_full(conn, rec, result)
            elif action == DIFFERENTIAL:
                # Citus: the workers' statements are not bounded by a savepoint here.
                local = rec.placement == "local" and not citus_sources
                deadline = budget.Deadline(budget_ms, timeout_ms) if budget_ms and local else None
                try:
                    plan = compiled[0] if compiled and compiled[0].differential else None
                    _attempt_differential(conn, rec, plan, sources, result, deadline)
                except compiler.TooManyChangedInputs as exc:
                    result.action, result.fallback_reason = FULL, str(exc)
                    _apply_full(conn, rec, result)
            conn.execute(
                "UPDATE pgtrickle.pgt_stream_tables SET frontier = %s::pg_snapshot, "
                "status = 'ACTIVE', needs_full = false, last_refresh_at = now(), "
                "last_error = NULL, last_error_sqlstate = NULL, consecutive_failures = 0, "
                "updated_at = now() WHERE pgt_id = %s",
                (frontier, rec.pgt_id),
            )
            result.duration_ms = (time.perf_counter() - started) * 1000
            result.refresh_id = _history(
                conn,
                rec,
                started_at,
                result,
                "COMPLETED",
                initiated_by,
                rec.frontier,
                frontier,
                running_id=running_id,
            )
            queued = _queue_notification(conn, rec, result)
    except PgTrickleError as exc:
        _record_failure(
            conn, rec, started_at, started, action, reason, exc, initiated_by, running_id
        )
        raise
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc)
        retry_reason = None
        if action == DIFFERENTIAL and exc.sqlstate == "42P01" and CHANGES_SCHEMA in message:
            # A hidden table of the plan (a stage, a backing table) does not exist: the stream
            # table was created by an earlier version that did not keep it. The full refresh
            # creates it; nothing is checked on the normal path.
            retry_reason = f"{message} (created by an earlier version); created and recomputed"
        elif action == DIFFERENTIAL and (exc.sqlstate or "").startswith("22"):
            # A data exception (division by zero, bad cast, …) inside the delta: the delta
            # evaluates expressions on old images and on old/new row combinations that the
            # query itself never sees together. Recompute instead, saying why.
            retry_reason = f"differential refresh raised {exc.sqlstate} ({message}); recomputed"
        if retry_reason is not None:
            return refresh(
                conn,
                schema,
                name,
                full=True,
                initiated_by=initiated_by,
                running_id=running_id,
                _reason=retry_reason,
            )
        err = RefreshError(
            f"refresh of {rec.qualified} failed: {message}",
            sqlstate=exc.sqlstate,
        )
        _record_failure(
            conn, rec, started_at, started, action, reason, err, initiated_by, running_id
        )
        raise err from exc
    if queued:
        conn.execute(
            "SELECT pgtrickle.flush_notifications(%s, %s)",
            (settings["notify_coalesce_ms"], rec.pgt_id),
        )
    cleaning = time.perf_counter()
    result.cleanup_rows = cleanup_buffers(conn, [s.stable for s in sources if s.captured])
    result.cleanup_ms = (time.perf_counter() - cleaning) * 1000
    return result


def _repair_missing_capture(
    conn: psycopg.Connection[Any], rec: records.StreamTableRecord
) -> list[str]:
    """Reinstall the capture of sources that lost their triggers; returns their names. A source
    that no longer exists at all is an error naming it."""
    repaired = []
    for src_schema, src_name, exists in sources_missing_capture(conn, rec.pgt_id):
        if not exists:
            raise SourceError(
                f"source {src_schema}.{src_name} of stream table {rec.qualified} no longer "
                "exists; create it again (the next refresh recomputes) or drop the stream table"
            )
        repair_capture(conn, describe_table(conn, src_schema, src_name))
        repaired.append(f"{src_schema}.{src_name}")
    return repaired


def _queue_notification(
    conn: psycopg.Connection[Any], rec: records.StreamTableRecord, result: RefreshResult
) -> bool:
    """Queue a subscription notification for a refresh that changed rows (in its transaction).

    The NOTIFY itself is sent right after the commit by ``pgtrickle.flush_notifications``, at
    most once per ``notify_coalesce_ms`` per stream table with the sums of the refreshes since
    the previous one; the scheduler sends the trailing one of a burst. Returns whether queued.
    """
    if not (result.rows_inserted or result.rows_updated or result.rows_deleted):
        return False
    cur = conn.execute(
        "INSERT INTO pgtrickle.pgt_notify_queue (refresh_id, pgt_id, rows_inserted, "
        "rows_updated, rows_deleted) SELECT %s, %s, %s, %s, %s WHERE EXISTS "
        "(SELECT 1 FROM pgtrickle.pgt_subscriptions WHERE pgt_id = %s)",
        (
            result.refresh_id,
            rec.pgt_id,
            result.rows_inserted,
            result.rows_updated,
            result.rows_deleted,
            rec.pgt_id,
        ),
    )
    return cur.rowcount > 0


#: AUTO recomputes when a differential refresh is estimated at more than this share of a full
#: one (the saving would not pay for the risk of a wrong estimate) ...
_WORTH_IT = 0.8
#: ... and otherwise gives the differential refresh its estimate times this as its budget (at
#: most a full refresh's time, so a wrong estimate costs at most twice a full refresh). At 1.25
#: the timings of like-sized TPC-H refreshes at SF 1, which vary by up to 1.5x on a shared
#: machine, cancelled refreshes 5x cheaper than a full one (Q07: 270 ms against a budget of
#: 223 ms and a 1.2 s full refresh), and the ones after them recomputed.
_MARGIN = 2.0
#: An estimate for more than this many times the change rows of the measured refresh is an
#: extrapolation: above the threshold it is tried with the budget of an unmeasured refresh.
_EXTRAPOLATION = 2.0
#: A change this large relative to a cancelled attempt's counts as as large (cycles of about the
#: same size vary by a few percent; a retry would be cancelled again).
_SAME_SIZE = 0.8


def windows_plan(
    conn: psycopg.Connection[Any],
    rec: records.StreamTableRecord,
    sources: list[_Source],
    full: bool,
    compiled: list[compiler.DeltaPlan],
) -> Callable[[], compiler.DeltaPlan | None] | None:
    """``plan_of`` for :func:`_choose` when the refresh may be differential (every source
    captured, not FULL by mode, request or mark), else None. It compiles the plan only once a
    change window is found non-empty (a refresh with no changes locks no source) and appends
    it to ``compiled``, kept for the delta."""
    if full or rec.needs_full or rec.effective_mode == FULL:
        return None
    if not all(s.captured for s in sources):
        return None

    def plan_of() -> compiler.DeltaPlan | None:
        compiled.append(compile_for(conn, rec))
        return compiled[0] if compiled[0].differential else None

    return plan_of


def _choose(
    conn: psycopg.Connection[Any],
    rec: records.StreamTableRecord,
    sources: list[_Source],
    full: bool,
    threshold: float,
    cost_floor_ms: float = 50.0,
    budget_fraction: float = 0.0,
    plan_of: Callable[[], compiler.DeltaPlan | None] | None = None,
) -> tuple[str, str | None, int, float | None]:
    """The action for this refresh, why (when not the obvious one), pending change rows (also
    stored per source in ``src.pending``) and, for an AUTO differential refresh, its time budget
    in ms (:mod:`.budget`; None: unbounded).

    ``plan_of``: given when the refresh may be differential (every source captured, not FULL
    by mode, request or mark); it returns the differential plan, or None. Then the non-empty
    change windows are materialised and counted in one read of each buffer
    (:func:`_materialise_windows`) instead of counted first and read again; nothing is compiled
    when every window is empty."""
    truncated: list[str] = []
    captured = [src for src in sources if src.captured]
    total: float | None = None
    if rec.frontier is not None and captured:
        live = _probe_windows(conn, rec, captured) if plan_of is not None else captured
        plan = plan_of() if plan_of is not None and live else None
        made = None
        if plan is not None:
            cap = None
            if rec.requested_mode == "AUTO" and threshold < 1.0:
                total = _estimated_rows(conn, sources)
                if total > 0:  # past it AUTO recomputes: the windows are not needed
                    cap = int(threshold * total) + 1
            made = _materialise_windows(conn, rec, live, plan, cap)
        truncated = made if made is not None else _count_windows(conn, rec, live) if live else []
    pending = sum(src.pending for src in captured)
    if full:
        return FULL, "full refresh requested", pending, None
    if rec.frontier is None:
        return FULL, "not populated yet", pending, None
    if truncated:
        return FULL, f"source {', '.join(truncated)} was truncated", pending, None
    if rec.needs_full:
        return FULL, "marked for a full refresh", pending, None
    uncaptured = [f"{s.schema}.{s.name}" for s in sources if not s.captured]
    if uncaptured:
        return FULL, f"changes of {', '.join(uncaptured)} are not captured", pending, None
    if not any(src.window_rows for src in captured):  # none, or all filtered or cancelled
        return NO_DATA, None, 0, None
    if rec.effective_mode == FULL:
        return FULL, rec.fallback_reason or "refresh mode FULL", pending, None
    if rec.requested_mode != "AUTO" or threshold >= 1.0:
        return DIFFERENTIAL, None, pending, None
    if total is None:
        total = _estimated_rows(conn, sources)
    if total > 0 and pending / total > threshold:
        return (
            FULL,
            f"{pending} changed rows are {pending / total:.1%} of about {total:.0f} source "
            f"rows, above auto_full_threshold {threshold:.0%}",
            pending,
            None,
        )
    costs = _measured_costs(conn, rec.pgt_id)
    if costs.full_ms is None:
        return DIFFERENTIAL, None, pending, None
    # Before the floor: a cancelled attempt leaves no differential measurement, and the floor
    # would then let the next as large refresh run unbounded (also when it is tried again).
    as_large = costs.over_rows is not None and pending >= _SAME_SIZE * costs.over_rows
    # At most 1.25 times the cancelled change: a retry gets a larger budget. A much larger one is
    # retried half as often, with the first budget (the smaller change did not fit it).
    like_sized = costs.over_rows is not None and pending * _SAME_SIZE <= costs.over_rows
    if as_large and not costs.retry_due(like_sized):
        return (
            FULL,
            f"the last differential attempt, with {costs.over_rows} change rows, passed its time "
            f"budget; {pending} change rows now",
            pending,
            None,
        )
    estimate = (
        costs.diff_ms * pending / costs.diff_rows
        if costs.diff_ms is not None and costs.diff_rows
        else None
    )
    # A like-sized differential choice that recomputed (not extrapolated: at most twice the
    # change rows) and cost more than 80% of a full refresh.
    recomputes = (
        costs.recomputed
        and estimate is not None
        and pending <= _EXTRAPOLATION * costs.diff_rows
        and estimate > _WORTH_IT * costs.full_ms
    )
    if (
        not as_large
        and costs.full_ms < cost_floor_ms
        and (estimate or 0) < cost_floor_ms
        and not recomputes
    ):
        # Either choice is cheap: not worth judging, unless the differential choice recomputes
        # anyway (TPC-H Q22 at SF 0.1: its differential refreshes recompute because its scalar
        # subquery's value changes, 1.2 times a full refresh of 40-50 ms). Judging every cheap
        # refresh by its measured costs sent small stream tables to FULL on timings at the
        # level of noise, which rewrites every row (a test of notifications saw 0 rows updated
        # where 1 row changed). Past the floor the estimate is judged even for a cheap full
        # refresh (a 10x larger change than the last measured one). It extrapolates the fixed
        # cost of a small refresh too, so a stream table whose full refresh takes a few ms may
        # recompute where a differential refresh would also be cheap.
        return DIFFERENTIAL, None, pending, None
    # No minimum (such as the cost floor): at TPC-H SF 0.1, where many differential refreshes
    # take about as long as a full one (40-150 ms), a 50 ms minimum made a cancelled attempt
    # cost 1.5-2 full refreshes (Q04, Q14, Q15, Q16 at 10%: 1.58-1.77x; Q08, Q11 at 0.1%: 1.44x
    # and 1.33x) where a fifth of the full refresh had cost 1.2. Not a larger budget for a much
    # larger change than the one cancelled (TPC-H SF 0.1: Q09's attempt at 10% after one
    # cancelled at 1% got 0.4 of the last full refresh, 208 ms, and cost 1.66 times that
    # cycle's full refresh).
    budget_ms = _attempt_fraction(budget_fraction, costs.overs if like_sized else 0)
    budget_ms *= costs.full_ms
    if estimate is not None:
        assert costs.diff_ms is not None
        if estimate > _WORTH_IT * costs.full_ms:
            if (
                budget_fraction
                and pending > _EXTRAPOLATION * costs.diff_rows
                and costs.diff_ms < budget_ms
            ):
                # Far beyond the measured change the per-row extrapolation also multiplies the
                # fixed cost (TPC-H SF 0.1 from 0.1% to 1%: 14 of 21 queries recomputed although
                # the differential refresh was faster), and a recompute measures nothing new. So
                # try as if nothing were known: a cancelled attempt costs budget_fraction of a
                # full refresh, one that finishes is measured at this size. Not when the smaller
                # change measured took longer than that budget: a larger change is not cheaper,
                # so the attempt would be cancelled, a budget spent for nothing (TPC-H Q14 at
                # SF 0.1 from 0.1% to 1%: 6 ms of budget against 21 ms measured at 0.1%).
                return DIFFERENTIAL, None, pending, budget_ms
            return (
                FULL,
                f"estimated differential refresh {estimate:.0f} ms ({pending} change rows at "
                f"the rate of the last one: {costs.diff_ms:.0f} ms for {costs.diff_rows}) above "
                f"{_WORTH_IT:.0%} of the last full refresh ({costs.full_ms:.0f} ms)",
                pending,
                None,
            )
        # A measured cost: the attempt gets its estimate with a margin. The fixed fraction
        # alone would cancel every differential refresh between it and the full cost.
        budget_ms = max(budget_ms, min(_MARGIN * estimate, costs.full_ms))
    # An attempt cancelled at its budget plus the recompute after it cost at most
    # (1 + budget_fraction) full refreshes; a retry at most 1.8; one with a measured estimate at
    # most 2.
    return DIFFERENTIAL, None, pending, budget_ms if budget_fraction else None


def _attempt_fraction(budget_fraction: float, overs: int) -> float:
    """The share of a full refresh an AUTO differential attempt may take when nothing measured
    says more: ``budget_fraction``, doubled for each attempt cancelled in a row before it (the
    caller passes 0 for a change more than 1.25 times as large as the last of them), up to
    :data:`_WORTH_IT`. With one fixed fraction a differential refresh that costs more than it
    (and less than a full refresh) was cancelled at every retry and never measured: at TPC-H
    SF 1 and 1% of the orders changed, Q02, Q04 and Q14 kept recomputing in 0.3-1.2 s what a
    differential refresh did in 0.24-0.51 of that time. A retry waits 2^n full refreshes
    (:meth:`_Costs.retry_due`), so the tries still cost at most ``budget_fraction`` of a full
    refresh per refresh on average; a single one at most 1.8 times a full refresh."""
    if not budget_fraction:
        return 0.0
    return max(budget_fraction, min(budget_fraction * 2**overs, _WORTH_IT))


def _count_windows(
    conn: psycopg.Connection[Any], rec: records.StreamTableRecord, captured: list[_Source]
) -> list[str]:
    """Count each source's change window (``src.pending``); returns the truncated sources."""
    # One statement for every source's window (a round trip each adds up on wide joins).
    counts = conn.execute(
        sql.SQL(" UNION ALL ").join(
            sql.SQL(
                "SELECT {}::int, count(*), coalesce(bool_or(b.__pgt_action = 'T'), false) {}"
            ).format(sql.Literal(i), _window(src))
            for i, src in enumerate(captured)
        ),
        {"f": rec.frontier},
    ).fetchall()
    truncated = []
    for i, n, was_truncated in counts:
        captured[i].pending = captured[i].window_rows = n
        if was_truncated:
            truncated.append(f"{captured[i].schema}.{captured[i].name}")
    return truncated


def _probe_windows(
    conn: psycopg.Connection[Any], rec: records.StreamTableRecord, captured: list[_Source]
) -> list[_Source]:
    """The sources whose change window is not empty (one statement of existence probes)."""
    probes = conn.execute(
        sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {}::int WHERE EXISTS (SELECT {})").format(sql.Literal(i), _window(src))
            for i, src in enumerate(captured)
        ),
        {"f": rec.frontier},
    ).fetchall()
    return [captured[i] for (i,) in probes]


def _materialise_windows(
    conn: psycopg.Connection[Any],
    rec: records.StreamTableRecord,
    live: list[_Source],
    plan: compiler.DeltaPlan,
    cap: int | None,
) -> list[str] | None:
    """Materialise the (non-empty) change windows of ``live`` as the differential refresh reads
    them, each counted by its creation (``src.pending``, ``src.windowed``); returns the
    truncated sources, or None (nothing left behind) when a window reached ``cap`` rows.

    Only the change rows the delta can use are copied and counted: those that meet what the
    query requires of their table alone (:func:`_window_filter`). A refresh whose windows are
    all empty that way is NO_DATA; its frontier still moves past the rows left out.

    A TRUNCATE's marker row (weight 0) is copied too: a truncated source is recomputed, so no
    delta reads it."""
    made: list[_Source] = []
    for src in live:
        columns = _window_columns(plan, src)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        relevant = _window_filter(plan, src)
        cur = conn.execute(
            sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT b.__pgt_w, {} {}{}{}").format(
                sql.Identifier(changes_relation(src.stable)),
                cols,
                _window(src),
                sql.SQL("") if relevant is None else sql.SQL(relevant),
                sql.SQL("") if cap is None else sql.SQL(" LIMIT {}").format(sql.Literal(cap)),
            ),
            {"f": rec.frontier},
        )
        src.pending = src.window_rows = cur.rowcount
        src.windowed = True
        made.append(src)
        if cap is not None and cur.rowcount >= cap:
            for src in made:
                conn.execute(
                    sql.SQL("DROP TABLE {}").format(sql.Identifier(changes_relation(src.stable)))
                )
                src.pending = src.window_rows = 0
                src.windowed = False
            return None
        _consolidate(conn, plan, src, columns)
    marked = conn.execute(
        sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {}::int WHERE EXISTS (SELECT FROM {} WHERE __pgt_w = 0)").format(
                sql.Literal(i), sql.Identifier(changes_relation(src.stable))
            )
            for i, src in enumerate(made)
        )
    ).fetchall()
    return [f"{made[i].schema}.{made[i].name}" for (i,) in marked]


#: Types whose equality is identity (equal values look and behave the same), so two change rows
#: with equal values of them are the same row: integers, dates and times, booleans, UUIDs, and
#: numerics with a declared scale (an unconstrained numeric keeps 1.0 and 1.00 apart in display
#: only). Text types are left out: a nondeterministic collation makes 'a' equal to 'A'.
_IDENTITY_TYPE = re.compile(
    r"(smallint|integer|bigint|oid|date|boolean|uuid|numeric\(\d+,\d+\)"
    r"|(timestamp|time)(\(\d\))? with(out)? time zone)"
)
#: Consolidation per (compiled plan, source), as :data:`_window_columns_memo` keys its entries:
#: the plan (a cached plan is specific to its stream table, database and catalog; holding it
#: keeps its id from being reused), refreshes since the last try, and the share of the window's
#: rows that cancelled then. A source whose rows cancelled less than _CONSOLIDATE_WORTH is tried
#: again every _CONSOLIDATE_RETRY refreshes only. (TPC-H SF 1 at 1%, side by side: Q03's
#: `lineitem` window, 41,000 rows of which 36% cancelled, refreshed in 400-427 against 333-377
#: ms without; Q13's `customer` window, all cancelled, 620-635 against 754-762 ms.)
_consolidated: dict[tuple[int, str], tuple[compiler.DeltaPlan, int, float]] = {}
_CONSOLIDATE_WORTH = 0.5
_CONSOLIDATE_RETRY = 8


def _consolidate(
    conn: psycopg.Connection[Any],
    plan: compiler.DeltaPlan,
    src: _Source,
    columns: list[str],
) -> None:
    """Cancel the change rows of ``src``'s materialised window that undo each other: an update
    that changed no column the window holds (TPC-H's customer updates change the segment,
    nation and balance, of which Q13 reads none; its order updates change no column Q09 reads),
    an insert deleted again. Equal rows are summed into their net weight, which becomes as many
    rows of weight ±1 (the delta rules count rows of weight ±1); the window then holds the same
    signed multiset, so every delta over it is the same, with fewer rows to probe with.

    Grouping costs about 1-2 µs a row, a delta term a few to tens of µs per window row it
    drives, so it is done only when the last try for this stream table found at least half of
    this source's window rows cancelling (and when nothing is known), and only over types whose
    equality is identity (:data:`_IDENTITY_TYPE`)."""
    key = (id(plan), src.stable)
    entry = _consolidated.get(key)
    since, share = (entry[1], entry[2]) if entry is not None and entry[0] is plan else (0, 1.0)
    if share < _CONSOLIDATE_WORTH and since + 1 < _CONSOLIDATE_RETRY:
        _consolidated[key] = (plan, since + 1, share)
        return
    if src.pending < 2 or not all(_IDENTITY_TYPE.fullmatch(src.types.get(c, "")) for c in columns):
        return
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    window = sql.Identifier(changes_relation(src.stable))
    cur = conn.execute(
        sql.SQL(
            "WITH d AS (DELETE FROM {w} WHERE __pgt_w <> 0 RETURNING __pgt_w, {c}) "
            "INSERT INTO {w} (__pgt_w, {c}) SELECT sign(g.__pgt_s)::smallint, {c} FROM "
            "(SELECT sum(d.__pgt_w) AS __pgt_s, {c} FROM d GROUP BY {c}) AS g "
            "CROSS JOIN LATERAL generate_series(1, abs(g.__pgt_s)) WHERE g.__pgt_s <> 0"
        ).format(w=window, c=cols)
    )
    kept = max(cur.rowcount, 0)
    if len(_consolidated) > 4096:
        _consolidated.clear()
    _consolidated[key] = (plan, 0, 1.0 - kept / src.pending)
    src.window_rows = kept


#: The reason of a differential refresh that recomputed because a scalar subquery's value
#: changed (:func:`_differential`): for AUTO a cost of choosing DIFFERENTIAL, not a full refresh.
SCALAR_RECOMPUTE_REASON = (
    "the value of a scalar subquery changed, so every row compared with it changes; "
    "recomputed from the maintained subqueries"
)


@dataclass
class _Costs:
    """What the history says of a stream table's refresh costs (see :func:`_measured_costs`)."""

    full_ms: float | None  # the last full refresh or population (not a budget fallback)
    diff_ms: float | None  # the last differential refresh that consumed changes
    diff_rows: int  # its change rows
    over_rows: int | None  # change rows of a later differential attempt over its budget
    #: Full refreshes since that attempt.
    fulls_since: int = 0
    #: Whether that differential refresh recomputed (a scalar subquery's value changed).
    recomputed: bool = False
    #: Differential attempts over budget in a row since the last differential refresh.
    overs: int = 0

    def retry_due(self, like_sized: bool) -> bool:
        """Whether the attempt over budget is old enough to try again: the full refreshes since
        it are at least 2^n (at most :data:`_RETRY_AFTER_MAX`), n being the attempts over budget
        in a row, plus one for a change more than 1.25 times as large as the last of them
        (TPC-H SF 1: Q22's retry at 1% after an attempt at 0.1% cancelled, with ten times the
        change rows and the same budget, was cancelled again, 1.24 times a full refresh)."""
        wait = min(2 ** (self.overs + (0 if like_sized else 1)), _RETRY_AFTER_MAX)
        return self.fulls_since >= wait


#: Refreshes read for the costs, NO_DATA ones left out: enough for a run of cancelled attempts
#: and the recomputes between them (2 + 4 + … + 64) ...
_HISTORY = 200
#: ... among at most this many of the newest history entries (bounded: the history index).
_HISTORY_SCAN = 2000
#: Most refreshes that follow a differential attempt over its budget before AUTO tries again.
_RETRY_AFTER_MAX = 64


def _measured_costs(conn: psycopg.Connection[Any], pgt_id: int) -> _Costs:
    """The costs among the stream table's last :data:`_HISTORY` completed refreshes that were not
    NO_DATA (a stream table whose changes are mostly irrelevant to it, left out of its windows,
    has runs of NO_DATA refreshes that would push its measurements out of reach).

    A differential attempt cancelled over its budget is remembered until a differential refresh
    finishes, but is not final: once 2 full refreshes followed it (those as large, and any
    other), AUTO tries again; each further cancellation in a row doubles the wait (2, 4, 8 … 64
    refreshes). A record that never expired sent every later refresh to FULL although the
    attempt's conditions (a disturbed machine, a backlog) had passed: TPC-H Q09 at SF 1 kept
    recomputing in 3.8 s what a differential refresh did in 0.6 s. Each try gets twice the
    budget of the one before (:func:`_attempt_fraction`), ever more rarely."""
    # A refresh that chose DIFFERENTIAL and recomputed because a scalar subquery's value changed
    # measures the differential choice (its maintained subqueries and the recomputation), not a
    # full refresh: TPC-H Q22 at SF 0.1 did so on every change, about 1.2 times a full refresh,
    # and without a differential measurement AUTO never judged it.
    rows = conn.execute(
        "SELECT action, duration_ms, rows_in, (action = 'DIFFERENTIAL' OR scalar) "
        "AND rows_in > 0, action = 'FULL' AND starts_with(coalesce(fallback_reason, ''), %s), "
        "scalar FROM (SELECT started_at, action, duration_ms, rows_in, fallback_reason, status, "
        "action = 'FULL' AND fallback_reason IS NOT DISTINCT FROM %s AS scalar "
        "FROM pgtrickle.pgt_refresh_history WHERE pgt_id = %s "
        "ORDER BY started_at DESC LIMIT %s) AS h WHERE status = 'COMPLETED' AND "
        "duration_ms IS NOT NULL AND action <> 'NO_DATA' ORDER BY started_at DESC LIMIT %s",
        (budget.BUDGET_REASON, SCALAR_RECOMPUTE_REASON, pgt_id, _HISTORY_SCAN, _HISTORY),
    ).fetchall()
    full_ms = next(
        (
            float(ms)
            for action, ms, _, _, over, scalar in rows
            if action == FULL and not over and not scalar
        ),
        None,
    )
    diff = next(
        ((float(ms), int(n), bool(sc)) for _, ms, n, is_diff, _, sc in rows if is_diff), None
    )
    diff_ms, diff_rows, recomputed_diff = diff if diff is not None else (None, 0, False)
    # Newest first: the full refreshes since the last attempt over budget, and the attempts over
    # budget in a row before it since the last differential refresh.
    since = next((i for i, row in enumerate(rows) if row[3] or row[4]), None)
    if since is None or not rows[since][4]:
        return _Costs(full_ms, diff_ms, diff_rows, None, recomputed=recomputed_diff)
    overs = 0
    for row in rows[since:]:
        if row[3]:
            break
        overs += row[4]
    return _Costs(
        full_ms,
        diff_ms,
        diff_rows,
        int(rows[since][2]),
        sum(row[0] == FULL for row in rows[:since]),
        recomputed_diff,
        overs,
    )


def _estimated_rows(conn: psycopg.Connection[Any], sources: list[_Source]) -> float:
    """Planner estimate of the sources' total row count (0 when never analysed)."""
    row = conn.execute(
        "SELECT sum(greatest(c.reltuples, 0)) FROM unnest(%s::text[]) AS u(r) "
        "JOIN pg_class c ON c.oid = to_regclass(u.r)",
        ([sql.Identifier(src.schema, src.name).as_string(conn) for src in sources],),
    ).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


def _columns(plan: compiler.DeltaPlan) -> list[str]:
    return plan.storage_columns


def _apply_full(
    conn: psycopg.Connection[Any], rec: records.StreamTableRecord, result: RefreshResult
) -> None:
    plan = compile_for(conn, rec)
    storage.create_missing_internal_tables(conn, plan)  # created by an earlier version: recomputed
    for stage in plan.stages:  # innermost first: each reads only stages before it
        if stage.plan.topk is not None:
            _recompute(conn, stage.plan.topk.backing, stage.plan.topk.inner)
        _recompute(conn, stage.name, stage.plan)
    for statement in recursive.populate(plan.recursive) if plan.recursive else []:
        conn.execute(sql.SQL(statement))
    if plan.backing is not None:
        _recompute(conn, *plan.backing)
    _rewrite(conn, rec, plan, result)
    # Fresh statistics: the next differential refresh joins its delta to these tables through
    # their row-id index (a stale or missing estimate made a 219-row delete scan 525,000 rows).
    if rec.placement == "local":  # Citus refuses it here (see storage._build_storage)
        conn.execute(sql.SQL("ANALYZE {}").format(_target(rec)))


class _OldInputs:
    """Indexes the change windows a join's telescoping terms read as old inputs
    (:func:`~..dvm.operators.join.old_inputs`, the same order as the terms) on the columns the
    terms probe them by (``join_index_columns``), each window once."""

    def __init__(self, readers: list[compiler.DeltaPlan]) -> None:
        self.columns = compiler.merge_columns(p.join_index_columns for p in readers)
        self.blocks = [inputs for p in readers for inputs in p.join_blocks]
        self.done: set[str] = set()

    def index(self, conn: psycopg.Connection[Any], sizes: dict[str, int]) -> None:
        """Index the windows that terms read as old now that ``sizes`` (the changed inputs so
        far, with their window sizes) are known."""
        for block in self.blocks:
            for stable in sorted(join.old_inputs(block, sizes) - self.done):
                self.done.add(stable)
                window = sql.Identifier(changes_relation(stable))
                for cols in self.columns.get(stable, []):
                    storage.create_index(conn, window, cols)


def _index_window(
    conn: psycopg.Connection[Any], stable: str, probes: list[tuple[str, ...]]
) -> None:
    """Index a change window on the columns correlated lookups probe, then analyse it."""
    window = sql.Identifier(changes_relation(stable))
    for probed in probes:
        storage.create_index(conn, window, probed)
    conn.execute(sql.SQL("ANALYZE {}").format(window))


def _recompute(conn: psycopg.Connection[Any], name: str, plan: compiler.DeltaPlan) -> None:
    """Replace the rows of a hidden table (in the changes schema) by its plan's full query."""
    table = sql.Identifier(CHANGES_SCHEMA, name)
    _replace_rows(conn, table, plan)
    conn.execute(sql.SQL("ANALYZE {}").format(table))


def _replace_rows(
    conn: psycopg.Connection[Any], table: sql.Identifier, plan: compiler.DeltaPlan
) -> tuple[int, int]:
    """Delete every row of ``table`` and insert ``plan.full_sql`` (MVCC-safe: readers keep
    seeing the old rows until commit); returns (rows deleted, rows inserted)."""
    deleted = conn.execute(sql.SQL("DELETE FROM {}").format(table)).rowcount
    inserted = conn.execute(
        sql.SQL("INSERT INTO {} ({}) {}").format(
            table,
            sql.SQL(", ").join(sql.Identifier(c) for c in _columns(plan)),
            sql.SQL(plan.full_sql),
        )
    ).rowcount
    return max(deleted, 0), max(inserted, 0)


def _attempt_differential(
    conn: psycopg.Connection[Any],
    rec: records.StreamTableRecord,
    plan: compiler.DeltaPlan | None,
    sources: list[_Source],
    result: RefreshResult,
    deadline: budget.Deadline | None,
) -> None:
    """The differential refresh, within ``deadline`` when there is one: past it, everything
    the attempt did is rolled back and the query is recomputed (same snapshot), saying why."""
    if deadline is None:
        _apply_differential(conn, rec, plan, sources, result)
        return
    try:
        with conn.transaction():  # a savepoint: an attempt over budget leaves nothing behind
            _apply_differential(conn, rec, plan, sources, result, deadline)
    except budget.OverBudget:
        pass
    except psycopg.errors.QueryCanceled as exc:
        if not deadline.is_ours(exc):
            raise
    else:
        deadline.disarm(conn)
        return
    # The savepoint's rollback restored the user's statement_timeout.
    result.rows_inserted = result.rows_updated = result.rows_deleted = 0
    result.action = FULL
    result.fallback_reason = (
        f"{budget.BUDGET_REASON} of {deadline.budget_ms:.0f} ms (auto_diff_budget of the last "
        f"full refresh) with {result.rows_in} change rows; recomputed"
    )
    _apply_full(conn, rec, result)


def _apply_differential(
    conn: psycopg.Connection[Any],
    rec: records.StreamTableRecord,
    plan: compiler.DeltaPlan | None,
    sources: list[_Source],
    result: RefreshResult,
    deadline: budget.Deadline | None = None,
) -> None:
    """The delta of ``plan`` (the one :func:`_choose` materialised the change windows for;
    None: the query is not maintainable differentially) applied to the stream table."""
    if plan is None:
        raise RefreshError(f"stream table {rec.qualified} cannot be refreshed differentially")
    changed = [src for src in sources if src.window_rows]
    unread = [f"{src.schema}.{src.name}" for src in changed if not src.windowed]
    if unread:  # _choose copies every non-empty window of a refresh that may be differential
        raise RefreshError(f"internal error: no change window of {', '.join(unread)}")
    readers = [plan, *(stage.plan for stage in plan.stages)]
    probes = compiler.merge_columns(p.change_index_columns for p in readers)
    for src in changed:
        budget.arm(conn, deadline)
        _index_window(conn, src.stable, probes.get(src.stable, []))
    # Window sizes order a join's telescoping terms (Citus sources keep inclusion–exclusion:
    # their tables cannot be unioned with a temporary table of the coordinator).
    telescoping = rec.placement == "local" and not rec.citus_captured
    sizes = {src.stable: src.window_rows for src in changed}
    old_inputs = _OldInputs(readers) if telescoping else None
    if old_inputs is not None:
        old_inputs.index(conn, sizes)
    changed_stables = {src.stable for src in changed}

    def changed_now() -> set[str]:
        return compiler.Changed(changed_stables, sizes) if telescoping else set(changed_stables)

    for stage in plan.stages:
        if not stage.plan.inputs & changed_stables:
            continue
        rows = _refresh_stage(conn, stage, changed_now(), deadline)
        if rows:
            _index_window(conn, stage.stable, probes.get(stage.stable, []))
            changed_stables.add(stage.stable)
            sizes[stage.stable] = rows
            if old_inputs is not None:
                old_inputs.index(conn, sizes)
    if not (plan.inputs or plan.source_stables) & changed_stables:
        return  # the changes did not reach what the query reads (e.g. a stage kept its rows)
    scalars = [s for s in plan.stages if s.broadcast and s.stable in changed_stables & plan.inputs]
    if scalars and rec.requested_mode == "AUTO" and plan.backing is None and not plan.recursive:
        # A scalar subquery's value changed: its delta re-evaluates every row compared with it,
        # against the old and the new value, which costs more than one recomputation. The
        # stages are current, so the query is recomputed from them.
        result.action = FULL
        result.fallback_reason = SCALAR_RECOMPUTE_REASON
        _rewrite(conn, rec, plan, result)
        return
    budget.arm(conn, deadline)
    for statement in plan.prepare_for(changed_stables):
        conn.execute(sql.SQL(statement))
    budget.arm(conn, deadline)
    delta_sql = plan.delta_for(changed_now())
    apply = sql.Identifier("__pgt_apply")
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS {}").format(
            apply,
            sql.SQL(delta_sql),
        )
    )
    # Statistics make the planner join the (small) delta to the stream table through its
    # row-id index instead of scanning the whole stream table.
    conn.execute(sql.SQL("ANALYZE {}").format(apply))
    budget.arm(conn, deadline)
    if plan.counted is not None:
        # A set operation: the per-branch counts go to the backing table, the copies (the
        # apply table's __pgt_w) to the stream table below.
        _apply_delta(
            conn,
            plan.counted.inner,
            sql.Identifier(CHANGES_SCHEMA, plan.counted.backing),
            apply,
            RefreshResult(result.name, DIFFERENTIAL),
            deadline=deadline,
        )
    if plan.topk is None:
        on_citus = rec.placement != "local"
        _apply_delta(conn, plan, _target(rec), apply, result, rec if on_citus else None, deadline)
        return
    # TopK: the delta goes to the backing table; the top rows are re-read only if it changed.
    inner = RefreshResult(result.name, DIFFERENTIAL)
    _apply_delta(conn, plan.topk.inner, _backing(plan), apply, inner, deadline=deadline)
    if inner.rows_inserted or inner.rows_updated or inner.rows_deleted:
        _rewrite(conn, rec, plan, result)


def _refresh_stage(
    conn: psycopg.Connection[Any],
    stage: compiler.Stage,
    changed: set[str],
    deadline: budget.Deadline | None = None,
) -> int:
    """Apply a stage's delta to its table and leave what changed there as the stage's change
    window (old rows weighted -1, new rows +1) for the plans reading it. Returns the window's
    row count, 0 when the stage's rows did not change (no window)."""
    table = sql.Identifier(CHANGES_SCHEMA, stage.name)
    apply = sql.Identifier(f"__pgt_apply_{stage.stable}")
    window = sql.Identifier(changes_relation(stage.stable))
    budget.arm(conn, deadline)
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS {}").format(
            apply, sql.SQL(stage.plan.delta_for(changed))
        )
    )
    conn.execute(sql.SQL("ANALYZE {}").format(apply))
    columns = [c.name for c in stage.source.columns]
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    if stage.plan.topk is not None:
        return _refresh_topk_stage(conn, stage, table, apply, window, cols, deadline)
    result = RefreshResult(stage.name, DIFFERENTIAL)
    budget.arm(conn, deadline)
    if stage.plan.strategy in compiler.KEYED_STRATEGIES:
        # The window comes out of the keyed apply's one join with the stage table.
        _apply_keyed(
            conn, stage.plan, table, apply, result, window=(window, columns), deadline=deadline
        )
        return result.rows_inserted + 2 * result.rows_updated + result.rows_deleted
    touched = sql.SQL("{} IN (SELECT {} FROM {})").format(
        sql.Identifier(stage.key), sql.Identifier(stage.key), apply
    )
    old = conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT (-1)::smallint AS __pgt_w, {} "
            "FROM {} WHERE {}"
        ).format(window, cols, table, touched)
    ).rowcount
    _apply_delta(conn, stage.plan, table, apply, result, deadline=deadline)
    if not (result.rows_inserted or result.rows_updated or result.rows_deleted):
        conn.execute(sql.SQL("DROP TABLE {}").format(window))
        return 0
    new = conn.execute(
        sql.SQL("INSERT INTO {} SELECT 1::smallint, {} FROM {} WHERE {}").format(
            window, cols, table, touched
        )
    ).rowcount
    return max(old, 0) + max(new, 0)


def _refresh_topk_stage(
    conn: psycopg.Connection[Any],
    stage: compiler.Stage,
    table: sql.Identifier,
    apply: sql.Identifier,
    window: sql.Identifier,
    cols: sql.Composable,
    deadline: budget.Deadline | None,
) -> int:
    """A stage with ``ORDER BY … LIMIT``: the delta goes to its backing table; if that
    changed, the top rows are re-read and the change window is all old rows (−1) and all new
    ones (+1) — at most twice the limit. Returns the window's row count (0: unchanged)."""
    topk = stage.plan.topk
    assert topk is not None
    budget.arm(conn, deadline)
    inner = RefreshResult(stage.name, DIFFERENTIAL)
    _apply_delta(
        conn,
        topk.inner,
        sql.Identifier(CHANGES_SCHEMA, topk.backing),
        apply,
        inner,
        deadline=deadline,
    )
    if not (inner.rows_inserted or inner.rows_updated or inner.rows_deleted):
        return 0
    old = conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT (-1)::smallint AS __pgt_w, {} FROM {}"
        ).format(window, cols, table)
    ).rowcount
    _replace_rows(conn, table, stage.plan)
    new = conn.execute(
        sql.SQL("INSERT INTO {} SELECT 1::smallint, {} FROM {}").format(window, cols, table)
    ).rowcount
    return max(old, 0) + max(new, 0)


#: Window columns per (plan, source), for plans the plan cache keeps (the plan is kept with its
#: entry so its id is not reused while the entry exists).
_window_columns_memo: dict[
    tuple[int, str, tuple[str, ...]], tuple[compiler.DeltaPlan, list[str]]
] = {}


def _window_columns(plan: compiler.DeltaPlan, src: _Source) -> list[str]:
    """The columns of ``src``'s change window that the refresh's statements can read.

    Rendered SQL always quotes identifiers, so a column whose quoted name occurs in no
    statement reading the window is never read; leaving it out makes the window (and its
    ANALYZE) narrower: a wide source whose query reads a few columns (TPC-H ``lineitem``) has
    a window a third as wide. The statements: the delta (and preparation) of the plan and of
    each stage when only ``src`` changed; each term of a larger change reads an alias's
    window through the same column references."""
    key = (id(plan), src.stable, tuple(src.columns))
    memo = _window_columns_memo.get(key)
    if memo is not None and memo[0] is plan:
        return memo[1]
    readers: list[str] = []
    try:
        for p in [plan, *(stage.plan for stage in plan.stages)]:
            if src.stable not in p.inputs | p.source_stables:
                continue
            readers.extend(p.prepare_for({src.stable}))
            readers.append(p.delta_for({src.stable}))
    except Exception:  # noqa: BLE001 - any doubt: the whole window
        return src.columns
    used = [c for c in src.columns if any('"' + c.replace('"', '""') + '"' in r for r in readers)]
    columns = used or src.columns[:1]
    if len(_window_columns_memo) > 4096:
        _window_columns_memo.clear()
    _window_columns_memo[key] = (plan, columns)
    return columns


def _window_filter(plan: compiler.DeltaPlan, src: _Source) -> str | None:
    """`` AND (condition)`` that every change row of ``src`` the refresh can use meets, over the
    buffer's alias ``b`` (:attr:`~..dvm.compiler.DeltaPlan.window_filters`): when every plan
    of the refresh that reads the window (the stream table's and its stages') gives one, their
    OR; otherwise None (the whole window). It reads the buffer's columns, kept in the window
    or not, and is escaped for the statement's parameters (``LIKE '%x'``)."""
    filters: list[str] = []
    for p in [plan, *(stage.plan for stage in plan.stages)]:
        if src.stable not in (p.inputs or p.source_stables):
            continue
        condition = p.window_filters.get(src.stable)
        if condition is None:
            return None
        filters.append(condition)
    if not filters:
        return None
    assert compiler.BUFFER_ALIAS == "b"  # the alias _window gives the buffer
    condition = " AND (b.__pgt_w = 0 OR " + " OR ".join(dict.fromkeys(filters)) + ")"
    return condition.replace("%", "%%")


def _backing(plan: compiler.DeltaPlan) -> sql.Identifier:
    assert plan.topk is not None
    return sql.Identifier(CHANGES_SCHEMA, plan.topk.backing)


def _rewrite(
    conn: psycopg.Connection[Any],
    rec: records.StreamTableRecord,
    plan: compiler.DeltaPlan,
    result: RefreshResult,
) -> None:
    """Replace the stream table's rows by ``plan.full_sql``. For TopK that is the top rows of
    the backing table, read in order through its index."""
    result.rows_deleted, result.rows_inserted = _replace_rows(conn, _target(rec), plan)


def _apply_delta(
    conn: psycopg.Connection[Any],
    plan: compiler.DeltaPlan,
    target: sql.Identifier,
    apply: sql.Identifier,
    result: RefreshResult,
    citus_rec: records.StreamTableRecord | None = None,
    deadline: budget.Deadline | None = None,
) -> None:
    """Apply the delta rows in ``apply`` to ``target`` by the plan's strategy (for a Citus
    reference or distributed stream table, ``citus_rec``, by Citus-safe statements)."""
    if plan.strategy in compiler.KEYED_STRATEGIES:
        _apply_keyed(conn, plan, target, apply, result, citus_rec, deadline=deadline)
    elif plan.strategy == compiler.WINDOW_PARTITIONS:
        _apply_partitions(conn, plan, target, apply, result)
    else:
        _apply_multiset(conn, plan, target, apply, result)


#: Names of the temporary tables of matched rows (dropped at commit; one per keyed apply).
_matched_names = itertools.count()


def _apply_keyed(
    conn: psycopg.Connection[Any],
    plan: compiler.DeltaPlan,
    target: sql.Identifier,
    apply: sql.Identifier,
    result: RefreshResult,
    citus_rec: records.StreamTableRecord | None = None,
    window: tuple[sql.Identifier, list[str]] | None = None,
    deadline: budget.Deadline | None = None,
) -> None:
    """Apply keyed delta rows (one per row id; ``__pgt_keep`` false: delete) to ``target``.

    ``window``: a change window to create of what changed in ``target`` (old rows weighted −1,
    new rows +1) over the given columns of it, for the plans reading a stage.

    Locally the apply table is joined with ``target`` once, into a temporary table of the
    matched rows' ctids (they stay put until the commit: the stream table is locked, and a
    stage or backing table is written only by this refresh). The counts, the DELETE of rows
    that go and the UPDATE of rows whose values change address rows by ctid (TID scans), and
    the INSERT takes the unmatched rows: no second join with the table, as MERGE and the
    counts before it needed. Rows are updated, not deleted and inserted again, so foreign keys
    and triggers a user put on a stream table see what they would see with MERGE."""
    cols = [c for c in _columns(plan) if c != "__pgt_row_id"]
    # A row whose stored values already equal the new ones is left alone (no dead tuple, no
    # trigger row for downstream stream tables). Compared as text so every type works, even
    # those without an equality operator.
    changed = sql.SQL("ROW({})::text IS DISTINCT FROM ROW({})::text").format(
        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in cols),
        sql.SQL(", ").join(sql.SQL("d.{}").format(sql.Identifier(c)) for c in cols),
    )
    if citus_rec is not None:
        counts = conn.execute(
            sql.SQL(
                "SELECT count(*) FILTER (WHERE d.__pgt_keep AND t.__pgt_row_id IS NULL), "
                "count(*) FILTER (WHERE d.__pgt_keep AND t.__pgt_row_id IS NOT NULL AND "
                "{changed}), count(*) FILTER (WHERE NOT d.__pgt_keep AND t.__pgt_row_id IS NOT "
                "NULL) FROM {d} AS d LEFT JOIN {t} AS t ON t.__pgt_row_id = d.__pgt_row_id"
            ).format(d=apply, t=target, changed=changed)
        ).fetchone()
        assert counts is not None
        result.rows_inserted, result.rows_updated, result.rows_deleted = counts
        citus_tables.apply_keyed_delta(
            conn, _columns(plan), target, apply, citus_rec.distribution_column
        )
        return
    matched = sql.Identifier(f"__pgt_matched_{next(_matched_names)}")
    kept = [
        sql.SQL("d.__pgt_row_id")
        if c == "__pgt_row_id"
        else sql.SQL("t.{}").format(sql.Identifier(c))
        for c in (window[1] if window else [])
    ]
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE {m} ON COMMIT DROP AS SELECT t.ctid AS __pgt_ctid, "
            "d.__pgt_row_id AS __pgt_rid, d.__pgt_keep, {changed} AS __pgt_changed{kept} "
            "FROM {d} AS d JOIN {t} AS t ON t.__pgt_row_id = d.__pgt_row_id"
        ).format(
            m=matched,
            d=apply,
            t=target,
            changed=changed,
            kept=sql.SQL("").join(sql.SQL(", ") + k for k in kept),
        )
    )
    counts = conn.execute(
        sql.SQL(
            "SELECT (SELECT count(*) FROM {d} WHERE __pgt_keep) - count(*) FILTER (WHERE "
            "__pgt_keep), count(*) FILTER (WHERE __pgt_keep AND __pgt_changed), count(*) "
            "FILTER (WHERE NOT __pgt_keep) FROM {m}"
        ).format(d=apply, m=matched)
    ).fetchone()
    assert counts is not None
    result.rows_inserted, result.rows_updated, result.rows_deleted = counts
    if not any(counts):
        return

    def by_ctid(condition: str) -> sql.Composed:
        return sql.SQL("{}.ctid = ANY(ARRAY(SELECT __pgt_ctid FROM {} WHERE {}))").format(
            sql.Identifier("t"), matched, sql.SQL(condition)
        )

    if result.rows_deleted:
        budget.arm(conn, deadline)
        conn.execute(
            sql.SQL("DELETE FROM {} AS t WHERE {}").format(target, by_ctid("NOT __pgt_keep"))
        )
    if result.rows_updated:
        budget.arm(conn, deadline)
        conn.execute(
            sql.SQL(
                "UPDATE {t} AS t SET {sets} FROM {d} AS d WHERE {rows} "
                "AND d.__pgt_row_id = t.__pgt_row_id"
            ).format(
                t=target,
                d=apply,
                rows=by_ctid("__pgt_keep AND __pgt_changed"),
                sets=sql.SQL(", ").join(
                    sql.SQL("{} = d.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in cols
                ),
            )
        )
    if result.rows_inserted:
        budget.arm(conn, deadline)
        conn.execute(
            sql.SQL(
                "INSERT INTO {t} (__pgt_row_id, {cols}) SELECT d.__pgt_row_id, {vals} FROM {d} "
                "AS d WHERE d.__pgt_keep AND NOT EXISTS (SELECT FROM {m} AS m WHERE "
                "m.__pgt_rid = d.__pgt_row_id)"
            ).format(
                t=target,
                d=apply,
                m=matched,
                cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
                vals=sql.SQL(", ").join(sql.SQL("d.{}").format(sql.Identifier(c)) for c in cols),
            )
        )
    if window is None:
        return
    name, columns = window
    wcols = sql.SQL(", ").join(
        sql.SQL("__pgt_rid AS __pgt_row_id") if c == "__pgt_row_id" else sql.Identifier(c)
        for c in columns
    )
    budget.arm(conn, deadline)
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE {w} ON COMMIT DROP AS SELECT (-1)::smallint AS __pgt_w, {wcols} "
            "FROM {m} WHERE NOT __pgt_keep OR __pgt_changed"
        ).format(w=name, wcols=wcols, m=matched)
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO {w} SELECT 1::smallint, {dcols} FROM {d} AS d WHERE d.__pgt_keep AND "
            "NOT EXISTS (SELECT FROM {m} AS m WHERE m.__pgt_rid = d.__pgt_row_id AND NOT "
            "m.__pgt_changed)"
        ).format(
            w=name,
            dcols=sql.SQL(", ").join(sql.SQL("d.{}").format(sql.Identifier(c)) for c in columns),
            d=apply,
            m=matched,
        )
    )


def _apply_partitions(
    conn: psycopg.Connection[Any],
    plan: compiler.DeltaPlan,
    target: sql.Identifier,
    apply: sql.Identifier,
    result: RefreshResult,
) -> None:
    """Replace the rows of every touched window partition by their recomputation."""
    cur = conn.execute(
        sql.SQL("DELETE FROM {t} WHERE __pgt_part IN (SELECT DISTINCT __pgt_part FROM {d})").format(
            t=target, d=apply
        )
    )
    result.rows_deleted = max(cur.rowcount, 0)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in _columns(plan))
    cur = conn.execute(
        sql.SQL(
            "INSERT INTO {t} ({cols}) SELECT {cols} FROM {d} WHERE __pgt_row_id IS NOT NULL"
        ).format(t=target, d=apply, cols=cols)
    )
    result.rows_inserted = max(cur.rowcount, 0)


def _apply_multiset(
    conn: psycopg.Connection[Any],
    plan: compiler.DeltaPlan,
    target: sql.Identifier,
    apply: sql.Identifier,
    result: RefreshResult,
) -> None:
    cur = conn.execute(
        sql.SQL(
            "DELETE FROM {t} WHERE ctid = ANY(ARRAY("
            "SELECT x.ctid FROM (SELECT s.ctid, s.__pgt_row_id, row_number() OVER "
            "(PARTITION BY s.__pgt_row_id) AS rn FROM {t} AS s WHERE s.__pgt_row_id IN "
            "(SELECT __pgt_row_id FROM {d} WHERE __pgt_w < 0)) AS x "
            "JOIN {d} AS d ON d.__pgt_row_id = x.__pgt_row_id AND x.rn <= -d.__pgt_w))"
        ).format(t=target, d=apply)
    )
    result.rows_deleted = max(cur.rowcount, 0)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in _columns(plan))
    cur = conn.execute(
        sql.SQL(
            "INSERT INTO {t} ({cols}) SELECT {dcols} FROM {d} AS d "
            "CROSS JOIN LATERAL generate_series(1, d.__pgt_w) WHERE d.__pgt_w > 0"
        ).format(
            t=target,
            d=apply,
            cols=cols,
            dcols=sql.SQL(", ").join(
                sql.SQL("d.{}").format(sql.Identifier(c)) for c in _columns(plan)
            ),
        )
    )
    result.rows_inserted = max(cur.rowcount, 0)


def _history(
    conn: psycopg.Connection[Any],
    rec: records.StreamTableRecord,
    started_at: Any,
    result: RefreshResult,
    status: str,
    initiated_by: str,
    frontier_before: str | None,
    frontier_after: str | None,
    sqlstate: str | None = None,
    message: str | None = None,
    running_id: int | None = None,
) -> int:
    values = (
        result.action,
        status,
        result.rows_in,
        result.rows_inserted,
        result.rows_updated,
        result.rows_deleted,
        result.duration_ms,
        result.fallback_reason,
        sqlstate,
        message,
        frontier_before,
        frontier_after,
    )
    if running_id is not None:
        row = conn.execute(
            "UPDATE pgtrickle.pgt_refresh_history SET ended_at = clock_timestamp(), action = %s, "
            "status = %s, rows_in = %s, rows_inserted = %s, rows_updated = %s, "
            "rows_deleted = %s, duration_ms = %s, fallback_reason = %s, sqlstate = %s, "
            "error_message = %s, frontier_before = %s, frontier_after = %s "
            "WHERE refresh_id = %s RETURNING refresh_id",
            (*values, running_id),
        ).fetchone()
        if row is not None:
            return int(row[0])
    row = conn.execute(
        "INSERT INTO pgtrickle.pgt_refresh_history (pgt_id, pgt_schema, pgt_name, started_at, "
        "initiated_by, ended_at, action, status, rows_in, rows_inserted, rows_updated, "
        "rows_deleted, duration_ms, fallback_reason, sqlstate, error_message, frontier_before, "
        "frontier_after) VALUES (%s, %s, %s, %s, %s, clock_timestamp(), %s, %s, %s, %s, %s, %s, "
        "%s, %s, %s, %s, %s, %s) RETURNING refresh_id",
        (rec.pgt_id, rec.pgt_schema, rec.pgt_name, started_at, initiated_by, *values),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _record_failure(
    conn: psycopg.Connection[Any],
    rec: records.StreamTableRecord,
    started_at: Any,
    started: float,
    action: str,
    reason: str | None,
    exc: PgTrickleError,
    initiated_by: str,
    running_id: int | None = None,
) -> None:
    """Write the failed refresh to history and the stream table's row (own transaction)."""
    result = RefreshResult(
        rec.qualified,
        action,
        duration_ms=(time.perf_counter() - started) * 1000,
        fallback_reason=reason,
    )
    try:
        with conn.transaction():
            _history(
                conn,
                rec,
                started_at,
                result,
                "FAILED",
                initiated_by,
                rec.frontier,
                None,
                exc.sqlstate,
                str(exc),
                running_id=running_id,
            )
            conn.execute(
                "UPDATE pgtrickle.pgt_stream_tables SET status = 'ERROR', last_error = %s, "
                "last_error_sqlstate = %s, consecutive_failures = consecutive_failures + 1, "
                "updated_at = now() "
                "WHERE pgt_id = %s",
                (str(exc), exc.sqlstate, rec.pgt_id),
            )
    except psycopg.Error:
        pass  # the connection itself is broken; the caller sees the original error


def cleanup_buffers(conn: psycopg.Connection[Any], stables: list[str]) -> int:
    """Delete buffer rows that every consumer's frontier has seen. Returns rows deleted.

    ``conn`` is in autocommit mode: each DELETE is its own short READ COMMITTED transaction."""
    if not stables:
        return 0
    consumers: dict[str, list[str | None]] = {}
    for stable, frontier in conn.execute(
        "SELECT d.source_stable_name, st.frontier::text FROM pgtrickle.pgt_dependencies d "
        "JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) "
        "WHERE d.source_stable_name = ANY(%s::text[])",
        (stables,),
    ).fetchall():
        consumers.setdefault(stable, []).append(frontier)
    deleted = 0
    for stable in stables:
        frontiers = consumers.get(stable)
        if not frontiers or any(f is None for f in frontiers):
            continue
        conds = sql.SQL(" AND ").join(
            sql.SQL("pg_visible_in_snapshot(__pgt_xid, {}::pg_snapshot)").format(sql.Literal(f))
            for f in frontiers
        )
        # A row visible in a snapshot has an xid below its xmax. With readers at different
        # frontiers, newer rows wait for the slowest one: the bound on the BRIN index's
        # expression lets the scan skip their ranges (with one frontier, all rows go).
        xmaxs = sql.SQL(", ").join(
            sql.SQL("pg_snapshot_xmax({}::pg_snapshot)").format(sql.Literal(f)) for f in frontiers
        )
        bound = (
            sql.SQL(" AND {} < (least({})::text)::bigint").format(sql.SQL(XID_KEY), xmaxs)
            if len(set(frontiers)) > 1
            else sql.SQL("")
        )
        cur = conn.execute(
            sql.SQL("DELETE FROM {} WHERE __pgt_xid < least({}){} AND {}").format(
                sql.Identifier(CHANGES_SCHEMA, buffer_table(stable)), xmaxs, bound, conds
            )
        )
        deleted += max(cur.rowcount, 0)
    return deleted
