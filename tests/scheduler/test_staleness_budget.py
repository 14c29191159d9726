"""Duration schedules are staleness budgets (docs/scheduler.md): due by the age of the oldest
pending change, never back to back. In-process ticks against a real database, and a real daemon
process under continuous writes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from daemons import wait_for

import dbt_pgtrickle as pgt
from dbt_pgtrickle.scheduler.daemon import Scheduler

HOUR = 3600.0


@pytest.fixture
def daemon(shop: psycopg.Connection[Any], dsn: str) -> Iterator[Scheduler]:
    """A scheduler in this process over stream table ``by_id`` (schedule 1 h) whose first tick
    found nothing pending; polling every hour, so only the wake-ups set by a test count."""
    pgt.create_stream_table(shop, "by_id", "SELECT id, amount FROM orders", schedule="1h")
    scheduler = Scheduler(dsn, poll_interval_ms=int(HOUR * 1000))
    scheduler._open()
    try:
        assert scheduler.tick().refreshed == []
        yield scheduler
    finally:
        scheduler._close(graceful=True)


def last_refresh(conn: psycopg.Connection[Any], minutes_ago: float) -> None:
    conn.execute(
        "UPDATE pgtrickle.pgt_stream_tables SET last_refresh_at = now() - make_interval("
        "secs => %s) WHERE pgt_name = 'by_id'",
        (minutes_ago * 60,),
    )


def change(conn: psycopg.Connection[Any], daemon: Scheduler, minutes_ago: float) -> None:
    """Insert a row into ``orders``; the daemon learnt of it ``minutes_ago``."""
    conn.execute("INSERT INTO orders SELECT max(id) + 1, 'north', 1 FROM orders")
    daemon.woken = {pgt.stable_name("public", "orders"): time.monotonic() - minutes_ago * 60}


def test_a_change_is_refreshed_before_its_budget_runs_out(
    shop: psycopg.Connection[Any], daemon: Scheduler
) -> None:
    # last refresh 59 min ago, change 58.5 min old: the budget (1 h, less the 5% safety
    # share and the expected refresh and tick times) is spent, although an hour since the last
    # refresh has not passed yet
    last_refresh(shop, 59)
    change(shop, daemon, 58.5)
    assert daemon.tick().refreshed == ["public.by_id"]
    assert pgt.refresh_stream_table(shop, "by_id").action == "NO_DATA"


def test_a_fresh_change_waits_for_its_budget(
    shop: psycopg.Connection[Any], daemon: Scheduler
) -> None:
    last_refresh(shop, 59)
    change(shop, daemon, 0)
    before = time.monotonic()
    assert daemon.tick().refreshed == []
    # it wakes up when the change's budget, less the lead, is spent: about 57 min from now
    assert before + 0.9 * HOUR < daemon.wake_at < before + 0.95 * HOUR
    assert daemon.tick().refreshed == []  # still pending: the change keeps its age
    assert daemon.pending_since


def test_a_change_older_than_the_last_refresh_counts_from_that_refresh(
    shop: psycopg.Connection[Any], daemon: Scheduler
) -> None:
    # The wake-up is 2 h old but the stream table was refreshed 10 min ago: whatever is still
    # pending committed after that refresh began.
    last_refresh(shop, 10)
    change(shop, daemon, 120)
    assert daemon.tick().refreshed == []


def test_half_the_budget_separates_a_long_refresh_from_the_next(
    shop: psycopg.Connection[Any], daemon: Scheduler
) -> None:
    # Refreshes of by_id take 50 min (history); the last began 70 min ago, so it ended about
    # 20 min ago. The change's budget is spent (65 min old), but half the budget (30 min) has
    # not passed since the refresh ended: not due yet.
    shop.execute(
        "INSERT INTO pgtrickle.pgt_refresh_history (pgt_id, pgt_schema, pgt_name, started_at, "
        "ended_at, action, status, duration_ms) SELECT pgt_id, 'public', 'by_id', now(), now(), "
        "'DIFFERENTIAL', 'COMPLETED', 3000000 FROM pgtrickle.pgt_stream_tables"
    )
    last_refresh(shop, 70)
    change(shop, daemon, 65)
    assert daemon.tick().refreshed == []
    last_refresh(shop, 81)  # ended 31 min ago
    assert daemon.tick().refreshed == ["public.by_id"]


def test_continuous_writes_never_refresh_back_to_back(
    shop: psycopg.Connection[Any], dsn: str, spawn: Any
) -> None:
    """A refresh taking most of a 400 ms budget (a FULL refresh calling a 250 ms function)
    under a writer committing every 10 ms: the budget alone would start the next refresh as
    soon as the previous one ended; half the budget (200 ms) separates them."""
    shop.execute(
        "CREATE FUNCTION slow_total(n bigint) RETURNS bigint LANGUAGE sql IMMUTABLE "
        "AS 'SELECT n FROM (SELECT pg_sleep(0.25)) s'"
    )
    pgt.create_stream_table(
        shop,
        "slow",
        "SELECT slow_total(sum(amount)) AS total FROM orders",
        schedule="400ms",
        refresh_mode="FULL",
    )
    spawn(dsn, "--poll-interval-ms", "60000")
    stop = threading.Event()

    def write() -> None:
        with psycopg.connect(dsn, autocommit=True) as w:
            k = 1000
            while not stop.is_set():
                w.execute("INSERT INTO orders VALUES (%s, 'east', 1)", (k,))
                k += 1
                time.sleep(0.01)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(5)
    stop.set()
    writer.join(timeout=30)
    expected = shop.execute("SELECT sum(amount) FROM orders").fetchone()
    wait_for(
        lambda: shop.execute("SELECT total FROM slow").fetchone() == expected,
        20,
        "the last change in the stream table",
    )
    rows = shop.execute(
        "SELECT started_at, duration_ms / 1000.0 FROM pgtrickle.pgt_refresh_history "
        "WHERE pgt_name = 'slow' AND initiated_by LIKE 'scheduler:%' AND status = 'COMPLETED' "
        "ORDER BY started_at"
    ).fetchall()
    assert len(rows) >= 3, rows
    # The expected refresh time is the longest of the last five, so at least the previous
    # refresh's own: the next one starts no earlier than half the budget (200 ms) after it
    # (less 20 ms for converting between the daemon's and the database's clocks). A busy loop
    # would start it a tick (a few ms) after the previous one ended.
    spacing = [
        (b[0] - a[0]).total_seconds() - float(a[1]) for a, b in zip(rows, rows[1:], strict=False)
    ]
    assert min(spacing) > 0.18, spacing
