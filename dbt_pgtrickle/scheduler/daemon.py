"""The scheduler daemon: keeps the stream tables of one database fresh.

One process serves one database. It holds three connections: ``listen`` (``LISTEN
pgtrickle_wake``; change capture notifies it with the changed source's stable name when a writing
transaction commits), ``work`` (catalog reads and refreshes, in the main thread) and, in the
:class:`Keeper` thread, one that renews the heartbeat row and this scheduler's leases while a long
refresh runs.

A *tick* reads the catalog (stream tables, dependencies, settings), imports what the Citus
workers' slots hold when a source is captured there (and only then), decides which stream tables
have changes pending (woken sources, or on a poll tick every stream table, both through
``pgtrickle.pending_stream_tables``, which reads each change buffer once) and are due
(:mod:`.schedule`; a duration schedule counts from the oldest pending change, whose age the
daemon bounds by when it learnt of the change), and refreshes them in dependency order
(:mod:`.dag`), each under its lease.
Between ticks it waits for a notification, the next due time or the poll interval, whichever comes
first. Refresh failures back off exponentially; non-retryable ones suspend the stream table after
``scheduler_max_failures``; a lost connection (a database restart) closes everything and
reconnects with backoff, without exiting.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .._version import __version__
from ..catalog import install as _install
from ..cdc.triggers import WAKE_CHANNEL
from ..citus import capture as citus_capture
from ..errors import ConfigError, PgTrickleError, is_retryable
from ..refresh import engine
from ..settings import all_settings
from . import leases
from .dag import Graph
from .metrics import Metrics
from .schedule import CALCULATED, INTERVAL, Schedule, budget_due, parse

log = logging.getLogger("dbt_pgtrickle.scheduler")

UTC = dt.timezone.utc
#: Upper bound of one wait slice, so a stop request is noticed promptly.
_WAIT_SLICE_S = 0.25
_RECONNECT_MAX_S = 10.0
#: How many recent refresh (per stream table) and tick durations estimate the next ones.
_RECENT = 5


class ConnectionLost(Exception):
    """The database connection broke (server restart, network); the daemon reconnects."""


@dataclass
class StreamTable:
    pgt_id: int
    schema: str
    name: str
    schedule: Schedule | None  # None: the stored schedule does not parse
    status: str
    last_refresh_at: dt.datetime | None
    consecutive_failures: int
    error: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def target(self) -> str:
        return sql.Identifier(self.schema, self.name).as_string(None)


@dataclass
class TickReport:
    """What one tick did (tests and the latency benchmark read it)."""

    refreshed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    probed: int = 0
    seconds: float = 0.0
    citus_imported: int = 0


def _broken(conn: psycopg.Connection[Any] | None) -> bool:
    return conn is None or conn.closed or conn.broken


def _no_prepared_statements(conn: psycopg.Connection[Any]) -> None:
    """psycopg prepares a statement run five times on one connection; PostgreSQL may then pick
    a generic plan, which for the pending probe and the change-window reads (their bounds are
    parameters) can be a scan of the whole buffer (a quiet probe took 47 ms instead of 0.6 ms).
    A long-lived scheduler connection would keep that plan, so every statement is planned
    with its values."""
    conn.prepare_threshold = None


def _connect(dsn: str, name: str) -> psycopg.Connection[Any]:
    try:
        conn = psycopg.connect(
            dsn, autocommit=True, application_name=f"pgtrickle-scheduler-{name}", connect_timeout=10
        )
    except psycopg.OperationalError as exc:
        raise ConnectionLost(str(exc).strip().splitlines()[0] if str(exc).strip() else "") from exc
    _no_prepared_statements(conn)
    if conn.info.server_version >= 140000:
        # A backend whose scheduler died (SIGKILL) stops its query within a second instead of
        # holding the stream table's lock until the query ends.
        conn.execute("SET client_connection_check_interval = 1000")
    return conn


class Keeper(threading.Thread):
    """Renews the heartbeat and the holder's leases every ``interval`` seconds on its own
    connection, so a long refresh in the main thread neither looks dead nor loses its lease."""

    def __init__(self, dsn: str, holder: str, lease_ms: int) -> None:
        super().__init__(name="pgtrickle-keeper", daemon=True)
        self.dsn, self.holder = dsn, holder
        self.lease_ms = lease_ms
        self.stopping = threading.Event()
        self.conn: psycopg.Connection[Any] | None = None

    @property
    def interval(self) -> float:
        return min(1.0, self.lease_ms / 3000.0)

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                if _broken(self.conn):
                    self.conn = _connect(self.dsn, "keeper")
                assert self.conn is not None
                leases.beat(self.conn, self.holder)
                leases.extend_all(self.conn, self.holder, self.lease_ms)
            except (ConnectionLost, psycopg.Error) as exc:
                log.debug("keeper: %s", exc)
                if self.conn is not None:
                    self.conn.close()
                self.conn = None

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        if self.conn is not None:
            self.conn.close()


class Scheduler:
    """The daemon. :meth:`run` loops until :meth:`stop` (or a signal handler calling it)."""

    def __init__(
        self,
        dsn: str,
        *,
        poll_interval_ms: int | None = None,
        metrics: Metrics | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.dsn = dsn
        self.poll_override = poll_interval_ms
        self.metrics = metrics or Metrics()
        self.metrics_port = metrics_port
        self.host = socket.gethostname()
        self.holder = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        self.work: psycopg.Connection[Any] | None = None
        self.listen: psycopg.Connection[Any] | None = None
        self.side: psycopg.Connection[Any] | None = None
        self.keeper: Keeper | None = None
        self.cfg: dict[str, Any] = {}
        self.dirty: set[int] = set()  # stream tables known to have pending changes
        self.not_before: dict[int, float] = {}  # pgt_id -> monotonic time (backoff, lease race)
        # stable names notified since the last tick -> monotonic time the wake-up arrived (or,
        # when it waited in the connection during a tick, the last time the queue was empty)
        self.woken: dict[str, float] = {}
        self.quiet_at = 0.0  # monotonic time the listen connection last held no notification
        # pgt_id of a pending stream table -> monotonic time at or before which its oldest
        # pending change committed (keys: those in ``dirty``)
        self.pending_since: dict[int, float] = {}
        self.last_poll_at: float | None = None
        self.citus_polled_at: float | None = None  # monotonic start of the last Citus poll
        self.refresh_s: dict[int, deque[float]] = {}  # recent refresh durations (s)
        self.tick_s: deque[float] = deque(maxlen=_RECENT)  # recent tick durations (s)
        self.next_poll = 0.0
        self.next_prune = 0.0
        self.next_gauges = 0.0
        self.flush_at: float | None = None
        self.wake_at = 0.0

    # -- lifecycle --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to stop: the refresh in flight finishes, no new one starts."""
        self.stopping.set()

    @property
    def poll_s(self) -> float:
        ms = self.poll_override or self.cfg.get("scheduler_poll_interval_ms", 5000)
        return float(ms) / 1000.0

    def run(self) -> None:
        """Serve the database until stopped, reconnecting after connection loss."""
        delay = 0.5
        try:
            while not self.stopping.is_set():
                try:
                    self._open()
                    delay = 0.5
                    self._loop()
                except ConnectionLost as exc:
                    log.warning(
                        "lost the database connection (%s); reconnecting in %.1f s", exc, delay
                    )
                    self._close(graceful=False)
                    self.stopping.wait(delay)
                    delay = min(delay * 2, _RECONNECT_MAX_S)
        finally:
            self._close(graceful=True)

    def _open(self) -> None:
        self.work = _connect(self.dsn, "work")
        self.listen = _connect(self.dsn, "listen")
        try:
            _install.require_installed(self.work)
            self.cfg = all_settings(self.work)
            self.listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(WAKE_CHANNEL)))
            leases.register(
                self.work,
                self.holder,
                pid=os.getpid(),
                host=self.host,
                version=__version__,
                poll_interval_ms=int(self.poll_s * 1000),
                metrics_port=self.metrics_port,
            )
            orphans = leases.fail_orphaned_refreshes(self.work)
        except psycopg.Error as exc:
            if _broken(self.work) or _broken(self.listen):
                raise ConnectionLost(str(exc)) from exc
            raise
        if orphans:
            log.warning(
                "marked %d refresh(es) left RUNNING by a stopped scheduler as FAILED", orphans
            )
        if self.keeper is None or not self.keeper.is_alive():
            self.keeper = Keeper(self.dsn, self.holder, int(self.cfg["scheduler_lease_ms"]))
            self.keeper.start()
        # After (re)connecting nothing is known: the first tick probes every stream table.
        self.next_poll = 0.0
        self.last_poll_at = None
        self.citus_polled_at = None
        self.quiet_at = time.monotonic()
        log.info("scheduler %s serving database %s", self.holder, self.work.info.dbname)

    def _close(self, *, graceful: bool) -> None:
        if graceful and self.keeper is not None:
            self.keeper.stop()
            self.keeper = None
        if graceful and not _broken(self.work):
            assert self.work is not None
            try:
                leases.release_all(self.work, self.holder)
                leases.unregister(self.work, self.holder)
            except psycopg.Error as exc:
                log.debug("unregister: %s", exc)
        for conn in (self.work, self.listen, self.side):
            if conn is not None:
                conn.close()
        self.work = self.listen = self.side = None

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.tick()
            except (psycopg.Error, PgTrickleError) as exc:
                if _broken(self.work):
                    raise ConnectionLost(str(exc)) from exc
                # A damaged catalog or a bug must not end the daemon: log, wait, tick again.
                log.error("tick failed: %s", exc)
                self.wake_at = time.monotonic() + min(self.poll_s, 5.0)
            if _broken(self.work):
                raise ConnectionLost("the work connection is closed")
            self._wait()

    # -- waiting ----------------------------------------------------------------------------------

    def _wait(self) -> None:
        """Wait for a wake-up notification, the next due time or the poll interval."""
        assert self.listen is not None
        deadline = min(self.wake_at, self.next_poll)
        while not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                slice_s = min(remaining, _WAIT_SLICE_S)
                asked = time.monotonic()
                notes = list(self.listen.notifies(timeout=slice_s, stop_after=1))
                back = time.monotonic()
                if not notes:
                    self.quiet_at = back
                    continue
                # A note that was waiting returns at once: it arrived after the queue was last
                # seen empty. One that returned after a wait arrived just now.
                arrived = back if back - asked > 0.002 else self.quiet_at
                # Take what else arrived in the same moment, then tick.
                notes += self.listen.notifies(timeout=0.0)
                self.quiet_at = time.monotonic()
                for note in notes:
                    self.woken.setdefault(note.payload, arrived)
                return
            except psycopg.Error as exc:
                raise ConnectionLost(str(exc)) from exc

    # -- one tick ---------------------------------------------------------------------------------

    def _load(self) -> tuple[dict[int, StreamTable], Graph, dict[str, set[int]], bool]:
        """The stream tables, their dependency graph, the readers of each source (by stable
        name) and whether any source is captured from Citus worker slots."""
        assert self.work is not None
        self.cfg = all_settings(self.work)
        tables: dict[int, StreamTable] = {}
        for pgt_id, schema, name, schedule, status, last, failures in self.work.execute(
            "SELECT pgt_id, pgt_schema, pgt_name, schedule, status, last_refresh_at, "
            "consecutive_failures FROM pgtrickle.pgt_stream_tables"
        ).fetchall():
            try:
                parsed: Schedule | None = parse(schedule)
                error = None
            except ConfigError as exc:
                parsed, error = None, str(exc)
            tables[pgt_id] = StreamTable(
                pgt_id, schema, name, parsed, status, last, failures, error
            )
        upstream: dict[int, set[int]] = {i: set() for i in tables}
        base: dict[int, set[tuple[str, str]]] = {i: set() for i in tables}
        readers: dict[str, set[int]] = {}
        citus_captured = False
        for pgt_id, stable, src_schema, src_name, up_id, captured in self.work.execute(
            "SELECT d.pgt_id, d.source_stable_name, d.source_schema, d.source_name, up.pgt_id, "
            "coalesce(t.cdc_mode = %s, false) FROM pgtrickle.pgt_dependencies d "
            "LEFT JOIN pgtrickle.pgt_stream_tables up "
            "ON up.pgt_schema = d.source_schema AND up.pgt_name = d.source_name "
            "LEFT JOIN pgtrickle.pgt_change_tracking t USING (source_stable_name)",
            (citus_capture.CDC_MODE,),
        ).fetchall():
            citus_captured = citus_captured or captured
            readers.setdefault(stable, set()).add(pgt_id)
            if up_id is not None:
                upstream[pgt_id].add(up_id)
            else:
                base[pgt_id].add((src_schema, src_name))
        return tables, Graph(upstream, base), readers, citus_captured

    def _poll_citus(self, report: TickReport) -> None:
        """Import what the Citus workers' slots hold (a failing node is skipped and counted;
        see citus/capture.py) and take the sources that got changes as woken, so their readers
        are probed and refreshed in this tick. No wake-up comes from the workers: a change
        found now committed after the previous poll began (the first poll: after the readers'
        last refresh)."""
        assert self.work is not None
        started = time.monotonic()
        polled = citus_capture.poll_all(self.work)
        since = self.citus_polled_at if self.citus_polled_at is not None else float("-inf")
        self.citus_polled_at = started
        report.citus_imported = polled.imported
        for stable in polled.changed:
            self.woken[stable] = min(self.woken.get(stable, since), since)

    def _probe(self, ids: Iterable[int] | None) -> set[int]:
        """The stream tables among ``ids`` (None: all) with changes pending (one probe per change
        buffer)."""
        assert self.work is not None
        wanted = None if ids is None else sorted(ids)
        if wanted == []:
            return set()
        rows = self.work.execute(
            "SELECT pgtrickle.pending_stream_tables(%s::bigint[])", (wanted,)
        ).fetchall()
        return {r[0] for r in rows}

    def _mark(self, ids: Iterable[int], since: float) -> None:
        """Record ``ids`` as pending, their oldest change committed at ``since`` or later (the
        earlier bound is kept for those pending already)."""
        for pgt_id in ids:
            self.dirty.add(pgt_id)
            self.pending_since.setdefault(pgt_id, since)

    def _expected_refresh_s(self, ids: Iterable[int]) -> float:
        """Expected time to refresh ``ids``: the longest of each one's last few refreshes (read
        from the refresh history the first time), summed."""
        assert self.work is not None
        missing = sorted(i for i in ids if i not in self.refresh_s)
        if missing:
            for pgt_id, durations in self.work.execute(
                "SELECT s.id, ARRAY(SELECT h.duration_ms / 1000.0 "
                "FROM pgtrickle.pgt_refresh_history h WHERE h.pgt_id = s.id "
                "AND h.status = 'COMPLETED' AND h.duration_ms IS NOT NULL "
                "ORDER BY h.started_at DESC LIMIT %s) FROM unnest(%s::bigint[]) AS s(id)",
                (_RECENT, missing),
            ).fetchall():
                self.refresh_s[pgt_id] = deque((float(d) for d in durations), maxlen=_RECENT)
        return sum(max(self.refresh_s[i], default=0.0) for i in ids)

    def _due(
        self,
        t: StreamTable,
        calculated: set[int],
        now: dt.datetime,
        now_mono: float,
    ) -> float | None:
        """Monotonic time at which pending stream table ``t`` is due (with the pending
        ``calculated`` tables refreshed on its behalf); None: not by itself."""
        assert t.schedule is not None
        if t.schedule.kind == INTERVAL:
            ids = {t.pgt_id} | (calculated & self.dirty)
            since = min(self.pending_since.get(i, now_mono) for i in ids)
            last = None
            if t.last_refresh_at is not None:
                last = now_mono - (now - t.last_refresh_at).total_seconds()
            return budget_due(
                t.schedule.seconds,
                since,
                last,
                self._expected_refresh_s(ids),
                max(self.tick_s, default=0.0),
            )
        due = t.schedule.next_due(t.last_refresh_at)
        if due is None:
            return None
        return now_mono + (due - now).total_seconds()

    def tick(self) -> TickReport:
        """Refresh every due stream table with pending changes, upstream first."""
        assert self.work is not None
        started = time.monotonic()
        report = TickReport()
        leases.beat(self.work, self.holder, tick=True)
        tables, graph, readers, citus_captured = self._load()
        if citus_captured:
            self._poll_citus(report)
        now_mono = time.monotonic()
        now = self._db_now()
        self.dirty &= set(tables)
        for gone in self.refresh_s.keys() - tables.keys():
            del self.refresh_s[gone]

        def floor(pgt_id: int, since: float) -> float:
            # A change still pending committed after the last refresh began (its snapshot).
            last = tables[pgt_id].last_refresh_at
            if last is None:
                return since
            return max(since, now_mono - (now - last).total_seconds())

        woken: dict[int, float] = {}
        for stable, arrived in self.woken.items():
            for pgt_id in readers.get(stable, ()):
                woken[pgt_id] = min(woken.get(pgt_id, arrived), arrived)
        self.woken.clear()
        # A wake-up may come from a change a refresh of this tick already consumed (a refresh
        # of an upstream stream table notifies too): probe before refreshing.
        for pgt_id in self._probe(woken.keys() - self.dirty):
            self._mark([pgt_id], floor(pgt_id, woken[pgt_id]))
        poll = now_mono >= self.next_poll
        active = {
            i for i, t in tables.items() if t.schedule is not None and t.status != "SUSPENDED"
        }
        if poll:
            # Every stream table not known to be pending: one probe per change buffer however
            # many there are. A change found now committed after the previous poll (which saw
            # none) or, on the first poll, after the last refresh.
            candidates = active - self.dirty
            earliest = self.last_poll_at if self.last_poll_at is not None else float("-inf")
            for pgt_id in self._probe(None) & candidates:
                self._mark([pgt_id], floor(pgt_id, earliest))
            report.probed = len(candidates)
            self.last_poll_at = now_mono
            self.next_poll = now_mono + self.poll_s
        self._maintenance(now_mono, poll, tables)
        report.seconds = time.monotonic() - started
        self.tick_s.append(report.seconds)
        self.metrics.tick(report.seconds)

        next_due: float = self.next_poll
        for pgt_id in graph.order:
            if self.stopping.is_set():
                break
            t = tables[pgt_id]
            calculated = _calculated_upstream(pgt_id, tables, graph)
            if pgt_id not in active or not (pgt_id in self.dirty or calculated & self.dirty):
                continue
            due = self._due(t, calculated, now, now_mono)
            if due is None:  # calculated: refreshed on behalf of its readers
                continue
            at = max(due, self.not_before.get(pgt_id, 0.0))
            if at > time.monotonic():
                next_due = min(next_due, at)
                continue
            group = graph.diamond(pgt_id)
            if group is not None:
                self._refresh_group(group, tables, graph, report)
            else:
                for up in graph.order:  # calculated upstream tables first, in order
                    if up in calculated and up in self.dirty and tables[up].status != "SUSPENDED":
                        self._refresh(tables[up], graph, report)
                if pgt_id in self.dirty:
                    self._refresh(tables[pgt_id], graph, report)
        for pgt_id, at in self.not_before.items():
            if pgt_id in self.dirty and at > time.monotonic():
                next_due = min(next_due, at)
        if self.flush_at is not None:
            next_due = min(next_due, self.flush_at)
        self.wake_at = next_due
        self.pending_since = {i: s for i, s in self.pending_since.items() if i in self.dirty}
        return report

    def _db_now(self) -> dt.datetime:
        assert self.work is not None
        row = self.work.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        value: dt.datetime = row[0]
        return value.astimezone(UTC)

    # -- refreshing -------------------------------------------------------------------------------

    def _refresh(self, t: StreamTable, graph: Graph, report: TickReport) -> bool:
        """Refresh one stream table under its lease; True when it succeeded."""
        assert self.work is not None
        key = leases.refresh_key(t.pgt_id)
        if not leases.acquire(self.work, key, self.holder, int(self.cfg["scheduler_lease_ms"])):
            self.not_before[t.pgt_id] = time.monotonic() + leases.conflict_backoff()
            return False
        self.metrics.lease(t.qualified, True)
        try:
            running = self.work.execute(
                "INSERT INTO pgtrickle.pgt_refresh_history (pgt_id, pgt_schema, pgt_name, "
                "started_at, action, status, initiated_by) VALUES (%s, %s, %s, "
                "clock_timestamp(), 'DIFFERENTIAL', 'RUNNING', %s) RETURNING refresh_id",
                (t.pgt_id, t.schema, t.name, f"scheduler:{self.holder}"),
            ).fetchone()
            assert running is not None
            try:
                result = engine.refresh(
                    self.work,
                    t.schema,
                    t.name,
                    initiated_by=f"scheduler:{self.holder}",
                    running_id=running[0],
                )
            except PgTrickleError as exc:
                if _broken(self.work):
                    raise ConnectionLost(str(exc)) from exc
                self._failed(t, exc, report)
                return False
            self.dirty.discard(t.pgt_id)
            self.pending_since.pop(t.pgt_id, None)
            self.not_before.pop(t.pgt_id, None)
            self.refresh_s.setdefault(t.pgt_id, deque(maxlen=_RECENT)).append(
                result.duration_ms / 1000.0
            )
            t.last_refresh_at = self._db_now()
            report.refreshed.append(t.qualified)
            changed = result.rows_inserted + result.rows_updated + result.rows_deleted
            self.metrics.refresh(
                t.qualified,
                result.action,
                result.duration_ms / 1000.0,
                result.rows_inserted,
                result.rows_updated,
                result.rows_deleted,
            )
            if changed:
                # Readers now have pending changes (their capture triggers fired as well).
                self._mark(graph.downstream.get(t.pgt_id, ()), time.monotonic())
                self.flush_at = time.monotonic() + self.cfg["notify_coalesce_ms"] / 1000.0
            log.info(
                "refreshed %s: %s, +%d ~%d -%d in %.1f ms",
                t.qualified,
                result.action,
                result.rows_inserted,
                result.rows_updated,
                result.rows_deleted,
                result.duration_ms,
            )
            return True
        finally:
            self.metrics.lease(t.qualified, False)
            if not _broken(self.work):
                leases.release(self.work, key, self.holder)

    def _failed(self, t: StreamTable, exc: PgTrickleError, report: TickReport) -> None:
        retryable = is_retryable(exc.sqlstate)
        failures = t.consecutive_failures + 1
        t.consecutive_failures = failures
        report.failed.append(t.qualified)
        self.metrics.failure(t.qualified, exc.sqlstate, retryable)
        if not retryable and failures >= int(self.cfg["scheduler_max_failures"]):
            assert self.work is not None
            self.work.execute(
                "UPDATE pgtrickle.pgt_stream_tables SET status = 'SUSPENDED', updated_at = now() "
                "WHERE pgt_id = %s",
                (t.pgt_id,),
            )
            t.status = "SUSPENDED"
            self.dirty.discard(t.pgt_id)
            log.error(
                "suspended %s after %d consecutive failures (SQLSTATE %s): %s; refresh it by hand "
                "once the cause is fixed to resume",
                t.qualified,
                failures,
                exc.sqlstate,
                exc,
            )
            return
        delay = backoff_seconds(
            failures, self.cfg["scheduler_retry_base_ms"], self.cfg["scheduler_retry_max_ms"]
        )
        self.not_before[t.pgt_id] = time.monotonic() + delay
        log.warning(
            "refresh of %s failed (%s, SQLSTATE %s): %s; retrying in %.1f s",
            t.qualified,
            "retryable" if retryable else "not retryable",
            exc.sqlstate,
            exc,
            delay,
        )

    def _refresh_group(
        self, group: Any, tables: dict[int, StreamTable], graph: Graph, report: TickReport
    ) -> None:
        """Refresh a diamond group while its shared base tables are held still (SHARE lock in a
        side transaction): every member then reflects the same state of those tables."""
        if _broken(self.side):
            self.side = _connect(self.dsn, "side")
        assert self.side is not None
        lock_ms = int(self.cfg["refresh_lock_timeout_ms"])
        try:
            with self.side.transaction():
                self.side.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{lock_ms}ms"))
                )
                self.side.execute(
                    sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
                        sql.SQL(", ").join(sql.Identifier(s, n) for s, n in group.shared_sources)
                    )
                )
                for member in group.members:
                    t = tables[member]
                    if t.status == "SUSPENDED":
                        continue
                    if (member == group.apex or self._probe([member])) and not self._refresh(
                        t, graph, report
                    ):
                        return  # the apex must not combine members of different versions
        except psycopg.errors.LockNotAvailable:
            apex = tables[group.apex]
            self.not_before[group.apex] = time.monotonic() + leases.conflict_backoff()
            log.info("writers hold the sources of %s; retrying shortly", apex.qualified)
        except psycopg.Error as exc:
            if _broken(self.side) or _broken(self.work):
                raise ConnectionLost(str(exc)) from exc
            raise

    # -- maintenance ------------------------------------------------------------------------------

    def _maintenance(self, now_mono: float, poll: bool, tables: dict[int, StreamTable]) -> None:
        assert self.work is not None
        if self.flush_at is not None and now_mono >= self.flush_at or poll:
            self.work.execute(
                "SELECT pgtrickle.flush_notifications(%s)", (self.cfg["notify_coalesce_ms"],)
            )
            self.flush_at = None
        if now_mono >= self.next_prune:
            self.next_prune = now_mono + self.cfg["history_prune_interval_ms"] / 1000.0
            self.prune_history()
        if self.metrics.wants_gauges and poll and now_mono >= self.next_gauges:
            self.next_gauges = now_mono + 5.0
            self._gauges(tables)

    def prune_history(self, max_batches: int = 20) -> int:
        """Delete history rows older than ``history_retention_days`` in batches of
        ``history_prune_batch`` (at most ``max_batches``), under the ``prune`` lease; also fail
        refreshes left RUNNING by dead schedulers. Returns rows deleted."""
        assert self.work is not None
        if not leases.acquire(
            self.work, leases.PRUNE_KEY, self.holder, int(self.cfg["scheduler_lease_ms"])
        ):
            return 0
        deleted = 0
        try:
            leases.fail_orphaned_refreshes(self.work)
            batch = int(self.cfg["history_prune_batch"])
            for _ in range(max_batches):
                cur = self.work.execute(
                    "DELETE FROM pgtrickle.pgt_refresh_history WHERE refresh_id IN ("
                    "SELECT refresh_id FROM pgtrickle.pgt_refresh_history "
                    "WHERE started_at < now() - make_interval(days => %s) "
                    "AND status <> 'RUNNING' ORDER BY started_at LIMIT %s)",
                    (int(self.cfg["history_retention_days"]), batch),
                )
                deleted += max(cur.rowcount, 0)
                if cur.rowcount < batch:
                    break
            self.work.execute(
                "DELETE FROM pgtrickle.pgt_scheduler "
                "WHERE last_beat_at < clock_timestamp() - interval '1 day'"
            )
        finally:
            leases.release(self.work, leases.PRUNE_KEY, self.holder)
        if deleted:
            log.info("pruned %d refresh history rows", deleted)
        return deleted

    def _gauges(self, tables: dict[int, StreamTable]) -> None:
        assert self.work is not None
        rows = self.work.execute(
            "SELECT pgt_schema || '.' || pgt_name, extract(epoch FROM freshness_lag), "
            "status = 'SUSPENDED' FROM pgtrickle.sla_summary() s "
            "JOIN pgtrickle.pgt_stream_tables st ON st.pgt_schema || '.' || st.pgt_name "
            "= s.stream_table"
        ).fetchall()
        pending = dict(
            self.work.execute(
                "SELECT d.pgt_id, sum(GREATEST(c.reltuples, 0))::bigint "
                "FROM pgtrickle.pgt_dependencies d JOIN pg_class c ON c.oid = "
                "to_regclass(format('%%I.%%I', 'pgtrickle_changes', 'changes_' || "
                "d.source_stable_name)) GROUP BY d.pgt_id"
            ).fetchall()
        )
        by_name = {t.qualified: i for i, t in tables.items()}
        self.metrics.gauges(
            [
                (
                    name,
                    float(lag) if lag is not None else None,
                    int(pending.get(by_name.get(name), 0) or 0),
                    bool(susp),
                )
                for name, lag, susp in rows
            ]
        )


def _calculated_upstream(pgt_id: int, tables: dict[int, StreamTable], graph: Graph) -> set[int]:
    """The ``calculated`` stream tables ``pgt_id`` reads, directly or through other calculated
    ones: they are refreshed on its behalf, just before it."""
    found: set[int] = set()
    stack = list(graph.upstream.get(pgt_id, ()))
    while stack:
        up = stack.pop()
        sched = tables[up].schedule
        if up not in found and sched is not None and sched.kind == CALCULATED:
            found.add(up)
            stack.extend(graph.upstream.get(up, ()))
    return found


def backoff_seconds(failures: int, base_ms: float, max_ms: float) -> float:
    """Delay before the next attempt after ``failures`` consecutive failures: ``base · 2^(n-1)``,
    capped at ``max``, with ±25% jitter."""
    exp = min(max(failures - 1, 0), 30)
    delay = min(float(base_ms) * (2**exp), float(max_ms)) / 1000.0
    return delay * random.uniform(0.75, 1.25)
