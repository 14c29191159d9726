"""Failures on a real cluster: a worker down, a crash between import and slot confirmation, a
worker removed and re-added with shards rebalanced onto it. Nothing lost, nothing twice."""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
import pytest

import dbt_pgtrickle as pgt
from dbt_pgtrickle.citus import capture
from dbt_pgtrickle.errors import PgTrickleError, is_retryable

AGG = "SELECT region, count(*) AS n, sum(amount) AS total FROM orders GROUP BY region"


def _equal(conn: psycopg.Connection[Any], name: str) -> None:
    result = pgt.verify_stream_table(conn, name)
    assert result["equal"], result


def _setup(c: psycopg.Connection[Any]) -> None:
    pgt.install(c)
    c.execute("CREATE TABLE orders (id bigint PRIMARY KEY, region int, amount numeric)")
    c.execute("SELECT create_distributed_table('orders', 'id')")
    c.execute("INSERT INTO orders SELECT g, g % 5, g FROM generate_series(1, 200) g")
    # DIFFERENTIAL: the tests assert that no recomputation was needed, which AUTO could choose
    # from measured durations.
    pgt.create_stream_table(c, "by_region", AGG, placement="local", refresh_mode="DIFFERENTIAL")


def _refresh_retrying(c: psycopg.Connection[Any], name: str) -> str:
    """Refresh as the scheduler does: a retryable failure is retried (after a worker restart,
    the session's cached Citus connection to it fails once)."""
    for _ in range(3):
        try:
            return pgt.refresh_stream_table(c, name).action
        except PgTrickleError as exc:
            if not is_retryable(exc.sqlstate):
                raise
    return pgt.refresh_stream_table(c, name).action


def _buffer_rows(c: psycopg.Connection[Any]) -> int:
    row = c.execute(
        "SELECT count(*) FROM pgtrickle_changes.changes_" + pgt.stable_name("public", "orders")
    ).fetchone()
    assert row is not None
    return int(row[0])


def _slot_state(c: psycopg.Connection[Any], port: int) -> tuple[int, bool]:
    row = c.execute(
        "SELECT consecutive_failures, flagged FROM pgtrickle.citus_status WHERE node_port = %s",
        (port,),
    ).fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def test_worker_down_is_skipped_counted_flagged_and_recovers(citus_db) -> None:
    worker = citus_db.cluster.workers[1]
    with citus_db.connect() as c, citus_db.connect() as listener:
        _setup(c)
        pgt.set_setting(c, "citus_worker_retry_ticks", 3)
        listener.execute("LISTEN pgtrickle_alert")
        c.execute("INSERT INTO orders SELECT g, g % 5, 1 FROM generate_series(201, 400) g")
        worker.stop()
        try:
            before = _buffer_rows(c)
            for tick in range(1, 4):
                report = capture.poll_all(c)
                assert report.failed_nodes == [f"127.0.0.1:{worker.port}"]
                assert _slot_state(c, worker.port) == (tick, tick >= 3)
            # the healthy worker kept flowing
            assert _buffer_rows(c) > before
            alerts = [n for n in listener.notifies(timeout=2, stop_after=1)]
            assert alerts and alerts[0].channel == "pgtrickle_alert"
            assert str(worker.port) in alerts[0].payload
            # a refresh cannot be exact without every worker: it fails, retryably
            with pytest.raises(PgTrickleError) as failed:
                pgt.refresh_stream_table(c, "by_region")
            assert is_retryable(failed.value.sqlstate), failed.value.sqlstate
        finally:
            worker.start()
        # the count is stored: a new session (a restarted daemon) sees it
        with citus_db.connect() as fresh:  # 3 ticks and the failed refresh's poll
            assert _slot_state(fresh, worker.port) == (4, True)
        capture.poll_all(c)
        assert _slot_state(c, worker.port) == (0, False)
        assert _refresh_retrying(c, "by_region") == "DIFFERENTIAL"
        _equal(c, "by_region")


def test_crash_between_import_and_confirm_neither_loses_nor_duplicates(
    citus_db, monkeypatch: pytest.MonkeyPatch
) -> None:
    with citus_db.connect() as c:
        _setup(c)
        c.execute("UPDATE orders SET amount = amount * 2 WHERE id % 3 = 0")
        c.execute("DELETE FROM orders WHERE id % 7 = 0")
        expected = 2 * 66 + 28  # 66 updates (old and new images), 28 deletes

        class Crash(Exception):
            pass

        def crash(*args: Any, **kwargs: Any) -> None:
            raise Crash

        # 1. the import transaction dies before its commit: nothing recorded, all stays in slots
        original_import = capture._import

        def import_then_crash(conn: psycopg.Connection[Any], *args: Any, **kwargs: Any) -> int:
            # on the importing connection (nodes are polled by threads on connections of their
            # own): the import's transaction becomes a savepoint of one that rolls back
            with conn.transaction():
                original_import(conn, *args, **kwargs)
                raise Crash

        monkeypatch.setattr(capture, "_import", import_then_crash)
        with pytest.raises(Crash):
            capture.poll_all(c)
        monkeypatch.undo()
        assert _buffer_rows(c) == 0
        # 2. the import commits, the process dies before confirming the slot
        monkeypatch.setattr(capture, "_advance", crash)
        with pytest.raises(Crash):
            capture.poll_all(c)
        monkeypatch.undo()
        imported = _buffer_rows(c)
        assert imported > 0
        # the next poll reads the unconfirmed changes again and skips what was imported
        capture.poll_all(c)
        assert _buffer_rows(c) == expected
        capture.poll_all(c)
        assert _buffer_rows(c) == expected
        assert pgt.refresh_stream_table(c, "by_region").action == "DIFFERENTIAL"
        _equal(c, "by_region")


def test_worker_removed_and_readded_with_rebalance(citus_db) -> None:
    worker = citus_db.cluster.workers[1]
    with citus_db.connect() as c:
        _setup(c)
        c.execute("SELECT citus_drain_node('127.0.0.1', %s)", (worker.port,))
        c.execute("SELECT citus_remove_node('127.0.0.1', %s)", (worker.port,))
        c.execute("INSERT INTO orders SELECT g, g % 5, 3 FROM generate_series(201, 300) g")
        capture.poll_all(c)  # the scheduler's tick: drains and drops the slot of the removed node
        assert c.execute(
            "SELECT count(*) FROM pgtrickle.pgt_worker_slots WHERE node_port = %s", (worker.port,)
        ).fetchone() == (0,)
        assert pgt.refresh_stream_table(c, "by_region").action == "DIFFERENTIAL"
        _equal(c, "by_region")
        c.execute("SELECT citus_add_node('127.0.0.1', %s)", (worker.port,))
        capture.poll_all(c)  # a tick before the rebalance gives the new node its slot
        c.execute("SELECT rebalance_table_shards('orders')")
        assert worker.shards_of(c, "orders") > 0  # the rebalance moved shards back
        c.execute("UPDATE orders SET amount = amount + 1 WHERE id % 4 = 0")
        c.execute("INSERT INTO orders SELECT g, g % 5, 4 FROM generate_series(301, 400) g")
        result = pgt.refresh_stream_table(c, "by_region")
        # the rows the shard moves copied are not changes: no recompute was needed
        assert result.action == "DIFFERENTIAL", result
        _equal(c, "by_region")


def test_coordinator_restart_while_a_lease_is_held(citus_db) -> None:
    """A scheduler held the refresh lease (and changes sat partly imported, partly in the worker
    slots) when the coordinator restarted: the lease outlives the restart until it expires, no
    other holder gets it before, and the next refresh is exact."""
    from dbt_pgtrickle.scheduler import leases

    with citus_db.connect() as c:
        _setup(c)
        pgt_id = c.execute(
            "SELECT pgt_id FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'by_region'"
        ).fetchone()[0]  # type: ignore[index]
        key = leases.refresh_key(pgt_id)
        assert leases.acquire(c, key, "scheduler-before-restart", 120_000)
        c.execute("UPDATE orders SET amount = amount + 5 WHERE id % 3 = 0")
        capture.poll_all(c)  # imported into the coordinator's buffer
        c.execute("DELETE FROM orders WHERE id % 5 = 0")  # still in the worker slots
    citus_db.cluster.coordinator.stop()
    citus_db.cluster.coordinator.start()
    with citus_db.connect() as c:
        assert not leases.acquire(c, key, "scheduler-after-restart", 60_000)
        row = c.execute(
            "SELECT lease_holder, lease_health FROM pgtrickle.citus_status LIMIT 1"
        ).fetchone()
        assert row == ("scheduler-before-restart", "held")
        # two minutes later (instead of waiting for them): the dead holder's lease has expired
        c.execute(
            "UPDATE pgtrickle.pgt_st_locks SET expires_at = clock_timestamp() - interval '1 s' "
            "WHERE lock_key = %s",
            (key,),
        )
        assert c.execute("SELECT lease_health FROM pgtrickle.citus_status LIMIT 1").fetchone() == (
            "expired",
        )
        assert leases.acquire(c, key, "scheduler-after-restart", 60_000)
        assert _refresh_retrying(c, "by_region") == "DIFFERENTIAL"
        leases.release(c, key, "scheduler-after-restart")
        _equal(c, "by_region")


def test_coordinator_crash_right_after_an_import_loses_nothing(
    citus_db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator crashes (immediate stop: no shutdown checkpoint, unflushed WAL lost) just
    after a node's slot was confirmed. The import was committed before the confirmation, and
    must have been durable then, although the test cluster runs ``synchronous_commit = off``:
    otherwise the crash takes the import back while the slot has moved past the changes."""
    coordinator = citus_db.cluster.coordinator
    with citus_db.connect() as c:
        _setup(c)
        pgt.set_setting(c, "citus_poll_concurrency", 1)
        c.execute("UPDATE orders SET amount = amount + 1 WHERE id % 4 = 0")
        c.execute("DELETE FROM orders WHERE id % 9 = 0")

        class Crash(Exception):
            pass

        original_advance = capture._advance
        crashed: list[bool] = []

        def advance_then_crash(*args: Any, **kwargs: Any) -> None:
            original_advance(*args, **kwargs)
            coordinator.crash()
            crashed.append(True)
            raise Crash

        monkeypatch.setattr(capture, "_advance", advance_then_crash)
        # the poll's cleanup on the dead connection fails too: poll_all logs that and returns
        with contextlib.suppress(Crash):
            capture.poll_all(c)
        monkeypatch.undo()
        assert crashed == [True]
    coordinator.start()
    with citus_db.connect() as c:
        assert _refresh_retrying(c, "by_region") == "DIFFERENTIAL"
        _equal(c, "by_region")
