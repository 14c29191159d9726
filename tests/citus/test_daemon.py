"""The scheduler daemon on a real cluster: the tick that imports a worker's changes refreshes their
readers; chaos with the real daemon process while writers write (a worker crashed mid-poll, the
coordinator crashed while a refresh lease is held, a worker drained, removed and re-added); node
churn while many stream tables refresh (``PGTRICKLE_CITUS_SCALE``). Each ends, once the writers
stop and the daemon catches up, with every stream table equal to its query."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import _pgtrickle_tests_daemons as daemons  # tests/scheduler/daemons.py, loaded by conftest.py
import psycopg

import dbt_pgtrickle as pgt
from dbt_pgtrickle.scheduler.daemon import Scheduler

AGG = "SELECT region, count(*) AS n, sum(amount) AS total FROM orders GROUP BY region"
STREAM_TABLES = {
    # distributed source, local stream table
    "by_region": (AGG, "local"),
    # distributed and reference sources
    "by_name": (
        "SELECT r.name, count(*) AS n, sum(o.amount) AS total FROM orders o "
        "JOIN regions r ON r.id = o.region GROUP BY r.name",
        "local",
    ),
    # a distributed stream table
    "big_orders": ("SELECT id, region, amount FROM orders WHERE amount > 150", "distributed"),
    # a reference source alone, reference stream table
    "region_names": ("SELECT id, upper(name) AS name FROM regions", "reference"),
}
#: Every daemon in this file polls this often (ms): Citus imports happen on ticks.
POLL_MS = "300"
CONVERGE_S = 240.0


def _setup(c: psycopg.Connection[Any]) -> None:
    pgt.install(c)
    # 4 shards (and the distributed stream table co-located with them): a drain or a rebalance
    # moves each shard by logical replication, a few seconds apiece on this machine.
    c.execute("SET citus.shard_count = 4")
    c.execute("CREATE TABLE orders (id bigint PRIMARY KEY, region int, amount numeric)")
    c.execute("SELECT create_distributed_table('orders', 'id')")
    c.execute("INSERT INTO orders SELECT g, g % 7, g FROM generate_series(1, 300) g")
    c.execute("CREATE TABLE regions (id int PRIMARY KEY, name text)")
    c.execute("SELECT create_reference_table('regions')")
    c.execute("INSERT INTO regions SELECT g, 'region ' || g FROM generate_series(0, 5) g")
    for name, (query, placement) in STREAM_TABLES.items():
        pgt.create_stream_table(c, name, query, placement=placement)


class Writers:
    """Threads writing through the coordinator until stopped: inserts, updates (also of the
    grouping column, to NULL amounts), deletes, multi-statement transactions, reference-table
    changes. A failed statement (a node down, the coordinator restarting) is dropped and the
    writer reconnects; the oracle is the query itself, so what was lost does not matter."""

    def __init__(self, dsn: str, count: int = 2, *, tables: list[str] | None = None) -> None:
        self.dsn = dsn
        self.tables = tables
        self.stopping = threading.Event()
        self.committed = [0] * count
        self.failed = [0] * count
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)
        ]

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60)

    def _statements(self, rng: random.Random, i: int, n: int) -> list[tuple[str, tuple[Any, ...]]]:
        new_id = 1_000_000 * (i + 1) + n
        some = rng.randint(1, 300 + 50 * n // 10)
        if self.tables is not None:  # the scale test's sources
            t = psycopg.sql.Identifier(rng.choice(self.tables)).as_string(None)
            return rng.choice(
                [
                    [(f"INSERT INTO {t} VALUES (%s, %s, %s)", (new_id, n % 11, n % 97))],
                    [(f"UPDATE {t} SET v = v + 1, g = g + 1 WHERE id %% 50 = %s", (n % 50,))],
                    [(f"DELETE FROM {t} WHERE id = %s", (some,))],
                ]
            )
        return rng.choice(
            [
                [("INSERT INTO orders VALUES (%s, %s, %s)", (new_id, n % 9, n % 400))],
                [("UPDATE orders SET amount = amount + 7 WHERE id %% 37 = %s", (n % 37,))],
                [("UPDATE orders SET region = %s, amount = NULL WHERE id = %s", (n % 8, some))],
                [("DELETE FROM orders WHERE id = %s", (some,))],
                [
                    ("INSERT INTO orders VALUES (%s, 1, 1)", (new_id,)),
                    ("UPDATE orders SET region = region + 1 WHERE id = %s", (some,)),
                    ("DELETE FROM orders WHERE id = %s", (some + 1,)),
                ],
                [("UPDATE regions SET name = %s WHERE id = %s", (f"r{n}", n % 7))],
                [
                    ("DELETE FROM regions WHERE id = 6", ()),
                    ("INSERT INTO regions VALUES (6, %s)", (f"six {n}",)),
                ],
            ]
        )

    def _run(self, i: int) -> None:
        rng = random.Random(1000 + i)
        conn: psycopg.Connection[Any] | None = None
        n = 0
        while not self.stopping.is_set():
            n += 1
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = psycopg.connect(self.dsn, connect_timeout=5)
                with conn.transaction():
                    for statement, params in self._statements(rng, i, n):
                        conn.execute(statement, params)
                self.committed[i] += 1
            except psycopg.Error:
                self.failed[i] += 1
                time.sleep(0.05)
            time.sleep(0.005)
        if conn is not None:
            conn.close()


def _differences(c: psycopg.Connection[Any], names: list[str]) -> dict[str, Any]:
    out = {}
    for name in names:
        result = pgt.verify_stream_table(c, name)
        if not result["equal"]:
            out[name] = result
    return out


def converge(
    dsn: str, names: list[str], daemon: Any, timeout: float = CONVERGE_S
) -> tuple[float, int]:
    """Wait (bounded) until the daemon made every stream table equal to its query and nothing is
    pending; (seconds it took, refreshes the daemon ran since the writers stopped)."""
    started = time.monotonic()
    last: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as c:
        first = c.execute("SELECT coalesce(max(refresh_id), 0) FROM pgtrickle.pgt_refresh_history")
        since = first.fetchone()[0]  # type: ignore[index]
        while time.monotonic() - started < timeout:
            try:
                pending = c.execute("SELECT count(*) FROM pgtrickle.pending_stream_tables()")
                if pending.fetchone() == (0,):
                    last = _differences(c, names)
                    if not last:
                        refreshes = c.execute(
                            "SELECT count(*) FROM pgtrickle.pgt_refresh_history "
                            "WHERE refresh_id > %s",
                            (since,),
                        ).fetchone()
                        return time.monotonic() - started, int(refreshes[0])  # type: ignore[index]
            except psycopg.Error as exc:  # a node may still be recovering
                last = {"error": str(exc)}
            time.sleep(1.0)
    tail = daemon.output()[-6000:]
    raise AssertionError(f"not converged after {timeout} s: {last}\ndaemon log tail:\n{tail}")


def caught_up(
    dsn: str, writers: Writers, daemon: Any, names: list[str], timeout: float = CONVERGE_S
) -> tuple[float, int]:
    """After the writers stopped (having written): :func:`converge`, and no stream table was
    suspended on the way."""
    assert sum(writers.committed) > 50, writers.committed
    seconds, refreshes = converge(dsn, names, daemon, timeout)
    with psycopg.connect(dsn, autocommit=True) as c:
        statuses = c.execute("SELECT pgt_name, status FROM pgtrickle.pgt_stream_tables").fetchall()
    assert {s for _, s in statuses} == {"ACTIVE"}, statuses
    return seconds, refreshes


def _admin(c: psycopg.Connection[Any], statement: str, *params: Any) -> int:
    """Run a Citus node operation, again when Citus's deadlock detection cancelled it (a shard
    move's locks against a refresh's); returns how many times it was cancelled."""
    for cancelled in range(10):
        try:
            t0 = time.monotonic()
            c.execute(statement, params)
            print(f"{statement}: {time.monotonic() - t0:.1f} s after {cancelled} cancellations")
            return cancelled
        except psycopg.errors.DeadlockDetected:
            time.sleep(0.5)
    raise AssertionError(f"{statement} was cancelled 10 times")


def _slots_on(c: psycopg.Connection[Any], port: int) -> int:
    row = c.execute(
        "SELECT count(*) FROM pgtrickle.pgt_worker_slots WHERE node_port = %s", (port,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def _wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    return daemons.wait_for(predicate, timeout, what, step=0.005)


# -- the tick -------------------------------------------------------------------------------------


def test_the_tick_that_imports_changes_refreshes_their_readers(citus_db) -> None:
    """Workers send no wake-up: the tick's own poll marks the readers of the sources it imported
    into as pending, so they refresh in that tick rather than after the next poll interval."""
    with citus_db.connect() as c:
        _setup(c)
        daemon = Scheduler(citus_db.dsn, poll_interval_ms=3_600_000)
        daemon._open()
        try:
            daemon.tick()  # the first tick probes everything; nothing is pending
            c.execute("UPDATE orders SET amount = amount + 1 WHERE id % 10 = 1")
            report = daemon.tick()  # not a poll tick: only the import tells it
            assert report.citus_imported == 60  # 30 updates: old and new rows
            assert sorted(report.refreshed) == [
                "public.big_orders",
                "public.by_name",
                "public.by_region",
            ]
            assert daemon.tick().refreshed == []
        finally:
            daemon._close(graceful=True)
        for name in STREAM_TABLES:
            assert pgt.verify_stream_table(c, name)["equal"], name


# -- chaos with the daemon process ------------------------------------------------------------------


def test_daemon_worker_crashed_mid_poll_and_restarted(citus_db, spawn_daemon) -> None:
    worker = citus_db.cluster.workers[1]
    with citus_db.connect() as c:
        _setup(c)
    daemon = spawn_daemon(citus_db.dsn, "--poll-interval-ms", POLL_MS)
    with Writers(citus_db.dsn) as writers:
        time.sleep(3)
        # the daemon reading this worker's slot, caught in the act
        with citus_db.connect(citus_db.worker_dsn(1)) as w:
            _wait_until(
                lambda: w.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE "
                    "'%pg_logical_slot_peek_binary_changes%' AND pid <> pg_backend_pid()"
                ).fetchone(),
                60,
                "a poll on the worker",
            )
            worker.crash()
        time.sleep(4)  # writes to the other worker and the coordinator go on
        worker.start()
        time.sleep(4)
        writers.stop()
    seconds, refreshes = caught_up(citus_db.dsn, writers, daemon, list(STREAM_TABLES))
    with citus_db.connect() as c:
        failures = c.execute(
            "SELECT max(consecutive_failures) FROM pgtrickle.citus_status"
        ).fetchone()
        assert failures == (0,)
    print(f"worker crash: converged in {seconds:.1f} s, {refreshes} refreshes, {writers.committed}")


def test_daemon_coordinator_crashed_while_a_lease_is_held(citus_db, spawn_daemon) -> None:
    """The daemon process survives the coordinator's crash (it reconnects) and takes its own
    lease back; the writers' two-phase commits cut short are recovered by Citus."""
    coordinator = citus_db.cluster.coordinator
    with citus_db.connect() as c:
        _setup(c)
    daemon = spawn_daemon(citus_db.dsn, "--poll-interval-ms", POLL_MS)
    with Writers(citus_db.dsn) as writers:
        time.sleep(3)
        with citus_db.connect() as c:
            holder = _wait_until(
                lambda: c.execute(
                    "SELECT holder FROM pgtrickle.pgt_st_locks WHERE lock_key LIKE 'refresh:%%' "
                    "AND holder LIKE %s",
                    (f"%:{daemon.pid}:%",),
                ).fetchone(),
                60,
                "a refresh lease held by the daemon",
            )
            coordinator.crash()
        time.sleep(2)
        coordinator.start()
        time.sleep(6)
        writers.stop()
    assert daemon.proc.poll() is None, daemon.output()[-3000:]
    seconds, refreshes = caught_up(citus_db.dsn, writers, daemon, list(STREAM_TABLES))
    assert refreshes > 0
    with citus_db.connect() as c:
        # the same daemon still serves the database (same holder, heartbeat renewed)
        assert daemons.heartbeat(c, daemon.pid)
    assert "lost the database connection" in daemon.output()
    print(f"coordinator crash ({holder[0]}): converged in {seconds:.1f} s, {refreshes} refreshes")


def test_daemon_worker_drained_removed_and_readded(citus_db, spawn_daemon) -> None:
    """Citus removes a node only once no distributed shard is placed on it: the worker is
    drained first (its shards moved to the other worker, writes going on), removed (its
    reference placements go with it), added back and the shards rebalanced onto it."""
    worker = citus_db.cluster.workers[1]
    with citus_db.connect() as c:
        _setup(c)
    daemon = spawn_daemon(citus_db.dsn, "--poll-interval-ms", POLL_MS)
    with Writers(citus_db.dsn) as writers, citus_db.connect() as admin:
        time.sleep(2)
        cancelled = _admin(admin, "SELECT citus_drain_node('127.0.0.1', %s)", worker.port)
        cancelled += _admin(admin, "SELECT citus_remove_node('127.0.0.1', %s)", worker.port)
        # the daemon's next ticks drain and drop the removed node's slot
        _wait_until(
            lambda: _slots_on(admin, worker.port) == 0, 60, "the removed node's slot dropped"
        )
        time.sleep(2)
        cancelled += _admin(admin, "SELECT citus_add_node('127.0.0.1', %s)", worker.port)
        _wait_until(lambda: _slots_on(admin, worker.port), 60, "a slot on the re-added node")
        cancelled += _admin(admin, "SELECT rebalance_table_shards('orders')")
        assert worker.shards_of(admin, "orders") > 0  # the rebalance moved shards back
        time.sleep(3)
        writers.stop()
    seconds, refreshes = caught_up(citus_db.dsn, writers, daemon, list(STREAM_TABLES))
    print(
        f"drain/remove/re-add: converged in {seconds:.1f} s, {refreshes} refreshes, node "
        f"operations cancelled by deadlock detection {cancelled} times"
    )


# -- many stream tables ----------------------------------------------------------------------------

SCALE_ENV = "PGTRICKLE_CITUS_SCALE"
SOURCES = 4


def test_node_churn_while_many_stream_tables_refresh(citus_db, spawn_daemon) -> None:
    """``PGTRICKLE_CITUS_SCALE`` stream tables (default 12) on 4 distributed sources, refreshed
    by the daemon while writers write and a worker crashes and restarts."""
    count = int(os.environ.get(SCALE_ENV, "12"))
    worker = citus_db.cluster.workers[0]
    tables = [f"src{i}" for i in range(SOURCES)]
    names = [f"st{i:04d}" for i in range(count)]
    with citus_db.connect() as c:
        pgt.install(c)
        for t in tables:
            table = psycopg.sql.Identifier(t)
            c.execute(
                psycopg.sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, g int, v int)").format(
                    table
                )
            )
            c.execute("SELECT create_distributed_table(%s, 'id')", (t,))
            c.execute(
                psycopg.sql.SQL(
                    "INSERT INTO {} SELECT g, g % 11, g % 97 FROM generate_series(1, 500) g"
                ).format(table)
            )
        started = time.monotonic()
        for i, name in enumerate(names):
            source = tables[i % SOURCES]
            # a few shapes, each stream table its own constant
            shape = i % 3
            if shape == 0:
                query = f"SELECT g % {2 + i % 5} AS k, count(*) AS n, sum(v) AS s FROM {source} GROUP BY 1"
            elif shape == 1:
                query = f"SELECT id, g, v FROM {source} WHERE v > {i % 90}"
            else:
                query = f"SELECT g, max(v) AS top, count(*) AS n FROM {source} WHERE id % {2 + i % 7} = 0 GROUP BY g"
            pgt.create_stream_table(c, name, query, placement="local")
        created_s = time.monotonic() - started
    daemon = spawn_daemon(citus_db.dsn, "--poll-interval-ms", "1000")
    with Writers(citus_db.dsn, tables=tables) as writers:
        time.sleep(5)
        worker.crash()
        time.sleep(5)
        worker.start()
        time.sleep(10)
        writers.stop()
    seconds, refreshes = caught_up(
        citus_db.dsn, writers, daemon, names, timeout=max(CONVERGE_S, 3.0 * count)
    )
    with citus_db.connect() as c:
        history = dict(
            c.execute(
                "SELECT status, count(*) FROM pgtrickle.pgt_refresh_history GROUP BY 1"
            ).fetchall()
        )
    print(
        f"{count} stream tables: refresh history {history}; created in {created_s:.1f} s, "
        f"converged {seconds:.1f} s after "
        f"the writers stopped, {refreshes} refreshes, writers {writers.committed} committed / "
        f"{writers.failed} failed"
    )
