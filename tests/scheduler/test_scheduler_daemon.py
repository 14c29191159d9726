"""The scheduler daemon as a real process: wake on change, DAG order, diamonds, stop, CLI."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from daemons import Daemon, heartbeat, wait_for

import dbt_pgtrickle as pgt
from dbt_pgtrickle.cli import EXIT_NOT_RUNNING, cli

pytestmark = pytest.mark.scheduler


def total(conn: psycopg.Connection[Any], table: str = "by_region") -> int:
    row = conn.execute(f"SELECT coalesce(sum(total), 0) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def test_change_is_visible_well_under_two_seconds_with_a_ten_second_poll(
    shop: psycopg.Connection[Any], dsn: str, spawn: Any
) -> None:
    pgt.create_stream_table(
        shop, "by_region", "SELECT region, sum(amount) AS total FROM orders GROUP BY region"
    )
    daemon: Daemon = spawn(dsn, "--poll-interval-ms", "10000")
    time.sleep(0.5)  # past the first (polling) tick
    latencies = []
    for i in range(5):
        before = total(shop)
        start = time.monotonic()
        shop.execute("INSERT INTO orders VALUES (%s, 'north', 1000)", (1000 + i,))
        wait_for(lambda b=before: total(shop) == b + 1000, 5, "the change in the stream table")
        latencies.append(time.monotonic() - start)
    assert max(latencies) < 1.0, latencies  # the poll interval is 10 s: this is the wake-up
    assert daemon.proc.poll() is None


def test_stream_tables_on_stream_tables_refresh_upstream_first(
    shop: psycopg.Connection[Any], dsn: str, spawn: Any
) -> None:
    pgt.create_stream_table(
        shop, "by_region", "SELECT region, sum(amount) AS total FROM orders GROUP BY region"
    )
    pgt.create_stream_table(shop, "grand", "SELECT sum(total) AS total FROM by_region")
    pgt.create_stream_table(
        shop, "top", "SELECT max(total) AS total FROM grand", schedule="calculated"
    )
    pgt.create_stream_table(shop, "report", "SELECT total FROM top WHERE total > 0")
    spawn(dsn, "--poll-interval-ms", "10000")
    shop.execute("INSERT INTO orders VALUES (500, 'east', 7)")
    expected = 90 * 91 // 2 + 7
    wait_for(lambda: total(shop, "report") == expected, 10, "the change at the end of the chain")
    rows = shop.execute(
        "SELECT pgt_name FROM pgtrickle.pgt_refresh_history WHERE initiated_by LIKE "
        "'scheduler:%%' AND action <> 'NO_DATA' ORDER BY refresh_id"
    ).fetchall()
    order = [r[0] for r in rows]
    assert order.index("by_region") < order.index("grand") < order.index("top")
    assert order.index("top") < order.index("report")


def test_diamond_never_mixes_upstream_versions(
    shop: psycopg.Connection[Any], dsn: str, spawn: Any
) -> None:
    """A → B, A → C, D reads B and C: D must always see B and C at the same version of A."""
    pgt.create_stream_table(shop, "b", "SELECT count(*) AS n FROM orders")
    pgt.create_stream_table(shop, "c", "SELECT sum(1) AS n FROM orders")
    pgt.create_stream_table(shop, "d", "SELECT b.n - c.n AS diff, b.n FROM b CROSS JOIN c")
    spawn(dsn, "--poll-interval-ms", "10000")
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        with psycopg.connect(dsn, autocommit=True) as w:
            i = 10_000
            while not stop.is_set() and i < 10_400:
                w.execute("INSERT INTO orders VALUES (%s, 'west', 1)", (i,))
                i += 1
                written[0] += 1
                time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    seen: set[int] = set()
    diffs: set[int] = set()
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            row = shop.execute("SELECT diff, n FROM d").fetchone()
            if row is not None:
                diffs.add(row[0])
                seen.add(row[1])
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert diffs == {0}, diffs
    assert len(seen) > 2, "the daemon should have refreshed d several times meanwhile"
    final = 90 + written[0]
    wait_for(lambda: shop.execute("SELECT n FROM d").fetchone() == (final,), 10, "the last version")


def test_sigterm_stops_gracefully(shop: psycopg.Connection[Any], dsn: str, spawn: Any) -> None:
    daemon: Daemon = spawn(dsn)
    assert heartbeat(shop, daemon.pid)
    assert daemon.stop() == 0
    assert not heartbeat(shop, daemon.pid)
    assert shop.execute("SELECT count(*) FROM pgtrickle.pgt_st_locks").fetchone() == (0,)


def test_cli_start_status_stop(
    shop: psycopg.Connection[Any], dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGTRICKLE_RUN_DIR", str(tmp_path))
    runner = CliRunner()
    status = runner.invoke(cli, ["--dsn", dsn, "scheduler", "status"])
    assert status.exit_code == EXIT_NOT_RUNNING, status.output
    assert "no scheduler" in status.stdout
    started = runner.invoke(cli, ["--dsn", dsn, "scheduler", "start"])
    pid = None
    try:
        assert started.exit_code == 0, started.output
        pid = int(started.stdout.split("pid ")[1].split(")")[0])
        assert (tmp_path / next(p.name for p in tmp_path.glob("*.pid"))).exists()
        again = runner.invoke(cli, ["--dsn", dsn, "scheduler", "start"])
        assert again.exit_code == 1 and "already runs" in again.stderr
        status = runner.invoke(cli, ["--dsn", dsn, "scheduler", "status", "--json"])
        assert status.exit_code == 0, status.output
        info = json.loads(status.stdout)
        assert [s["pid"] for s in info["schedulers"]] == [pid]
        assert info["schedulers"][0]["alive"] is True
        assert info["local_pid"] == pid
        assert pgt.scheduler_status(shop)[0]["pid"] == pid
        pgt.create_stream_table(
            shop, "by_region", "SELECT region, sum(amount) AS total FROM orders GROUP BY region"
        )
        shop.execute("INSERT INTO orders VALUES (999, 'north', 5)")
        wait_for(lambda: total(shop) == 90 * 91 // 2 + 5, 10, "a refresh by the daemon")
    finally:
        stopped = runner.invoke(cli, ["--dsn", dsn, "scheduler", "stop"])
        if pid is not None and stopped.exit_code != 0:
            os.kill(pid, 9)
    assert stopped.exit_code == 0, stopped.output
    assert f"pid {pid}" in stopped.stdout
    assert not list(tmp_path.glob("*.pid"))
    assert "serving database" in next(tmp_path.glob("*.log")).read_text()
    assert runner.invoke(cli, ["--dsn", dsn, "scheduler", "stop"]).stdout.startswith("no sched")
