"""Leases between daemons, SIGKILL takeover, failures and suspension, database restarts."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from daemons import Daemon, heartbeat, wait_for

import dbt_pgtrickle as pgt
from dbt_pgtrickle.embedded import Cluster

pytestmark = pytest.mark.scheduler

SLOW = "SELECT count(*) AS n FROM orders CROSS JOIN pg_sleep(1.5)"


def lease_holder(conn: psycopg.Connection[Any], pgt_id: int) -> str | None:
    row = conn.execute(
        "SELECT holder FROM pgtrickle.pgt_st_locks WHERE lock_key = %s AND expires_at > now()",
        (f"refresh:{pgt_id}",),
    ).fetchone()
    return row[0] if row else None


def test_two_daemons_share_work_and_survive_a_sigkill(
    shop: psycopg.Connection[Any], dsn: str, spawn: Any
) -> None:
    pgt.set_setting(shop, "scheduler_lease_ms", 2000)
    pgt.create_stream_table(shop, "quick", "SELECT region, count(*) AS n FROM orders GROUP BY 1")
    slow = pgt.create_stream_table(shop, "slow", SLOW)
    slow_id = shop.execute("SELECT pgt_id FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'slow'")
    pgt_id = slow_id.fetchone()[0]  # type: ignore[index]
    assert slow["status"] == "ACTIVE"
    daemons: dict[int, Daemon] = {}
    for _ in range(2):
        d = spawn(dsn, "--poll-interval-ms", "10000")
        daemons[d.pid] = d
    for i in range(3):
        shop.execute("INSERT INTO orders VALUES (%s, 'north', 1)", (2000 + i,))
        time.sleep(0.2)
    holder = wait_for(lambda: lease_holder(shop, pgt_id), 10, "a lease on the slow table")
    victim = int(holder.split(":")[-2])
    assert victim in daemons
    daemons[victim].kill()
    killed_at = time.monotonic()
    survivor = next(p for p in daemons if p != victim)

    def taken_over() -> bool:
        row = shop.execute(
            "SELECT count(*) FROM pgtrickle.pgt_refresh_history WHERE pgt_id = %s "
            "AND status = 'COMPLETED' AND initiated_by LIKE %s AND started_at > now() - "
            "make_interval(secs => %s)",
            (pgt_id, f"scheduler:%:{survivor}:%", time.monotonic() - killed_at + 0.5),
        ).fetchone()
        return bool(row and row[0])

    wait_for(taken_over, 20, "the surviving daemon to refresh the slow table")
    takeover = time.monotonic() - killed_at
    # lease 2 s + the dead backend noticing its client (1 s) + one refresh (1.5 s), with margin
    assert takeover < 12, takeover
    assert shop.execute("SELECT n FROM slow").fetchone() == (93,)
    # the refresh the victim left RUNNING is marked failed (on the survivor's next pruning
    # round or a restart); do it now through a fresh daemon start
    spawn(dsn, "--poll-interval-ms", "10000")
    wait_for(
        lambda: (
            shop.execute(
                "SELECT count(*) FROM pgtrickle.pgt_refresh_history WHERE status = 'RUNNING'"
            ).fetchone()
            == (0,)
        ),
        10,
        "no RUNNING refresh left",
    )
    failed = shop.execute(
        "SELECT count(*) FROM pgtrickle.pgt_refresh_history WHERE status = 'FAILED' "
        "AND initiated_by LIKE %s AND error_message LIKE '%%stopped before it finished%%'",
        (f"scheduler:%:{victim}:%",),
    ).fetchone()
    assert failed == (1,)
    # never two refreshes of one stream table at once
    overlaps = shop.execute(
        "SELECT count(*) FROM pgtrickle.pgt_refresh_history a "
        "JOIN pgtrickle.pgt_refresh_history b ON a.pgt_id = b.pgt_id "
        "AND a.refresh_id < b.refresh_id AND a.status = 'COMPLETED' AND b.status = 'COMPLETED' "
        "AND tstzrange(a.started_at, a.ended_at) && tstzrange(b.started_at, b.ended_at)"
    ).fetchone()
    assert overlaps == (0,)
    print(f"takeover after SIGKILL: {takeover:.2f} s (lease 2 s, refresh 1.5 s)")


FAILING = """
CREATE TABLE fail_mode (code text);
CREATE FUNCTION boom(v int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE c text;
BEGIN
    SELECT code INTO c FROM fail_mode LIMIT 1;
    IF c IS NOT NULL THEN
        RAISE EXCEPTION 'boom %', c USING ERRCODE = c;
    END IF;
    RETURN v;
END $$;
"""


def st_row(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    return next(r for r in pgt.status(conn) if r["name"] == name)


def test_failures_back_off_and_suspend_only_when_not_retryable(
    shop: psycopg.Connection[Any], dsn: str, spawn: Any
) -> None:
    shop.execute(FAILING)
    pgt.set_setting(shop, "scheduler_retry_base_ms", 100)
    pgt.set_setting(shop, "scheduler_retry_max_ms", 400)
    pgt.set_setting(shop, "scheduler_max_failures", 3)
    pgt.create_stream_table(shop, "guarded", "SELECT id, boom(amount) AS x FROM orders")
    spawn(dsn, "--poll-interval-ms", "300")
    # retryable (serialization failure): retried again and again, never suspended
    shop.execute("INSERT INTO fail_mode VALUES ('40001')")
    shop.execute("INSERT INTO orders VALUES (3000, 'east', 1)")
    wait_for(lambda: st_row(shop, "guarded")["consecutive_failures"] >= 5, 20, "retries")
    assert st_row(shop, "guarded")["status"] == "ERROR"
    # not retryable (raise_exception, class P0): suspended after 3 consecutive failures
    shop.execute("UPDATE fail_mode SET code = 'P0001'")
    shop.execute("UPDATE pgtrickle.pgt_stream_tables SET consecutive_failures = 0")
    wait_for(lambda: st_row(shop, "guarded")["status"] == "SUSPENDED", 20, "suspension")
    row = st_row(shop, "guarded")
    assert "boom P0001" in row["last_error"]
    assert row["consecutive_failures"] == 3
    time.sleep(1.0)  # suspended: no more attempts
    assert st_row(shop, "guarded")["consecutive_failures"] == 3
    # fixed and refreshed by hand: active again, and the daemon takes over once more
    shop.execute("DELETE FROM fail_mode")
    pgt.refresh_stream_table(shop, "guarded")
    assert st_row(shop, "guarded")["status"] == "ACTIVE"
    shop.execute("INSERT INTO orders VALUES (3001, 'east', 1)")
    wait_for(
        lambda: shop.execute("SELECT count(*) FROM guarded").fetchone() == (92,),
        10,
        "the daemon refreshing the resumed table",
    )


def test_daemon_reconnects_after_a_database_restart(
    own_server: tuple[Cluster, str], spawn: Any
) -> None:
    cluster, dsn = own_server
    with psycopg.connect(dsn, autocommit=True) as conn:
        pgt.install(conn)
        conn.execute("CREATE TABLE src (id int PRIMARY KEY, v int)")
        pgt.create_stream_table(conn, "agg", "SELECT sum(v) AS s FROM src")
    daemon: Daemon = spawn(dsn, "--poll-interval-ms", "1000")
    port = cluster.running_port()
    cluster.stop(timeout=60)
    time.sleep(1.0)
    assert daemon.proc.poll() is None, daemon.output()
    cluster.start(port, timeout=60)
    with psycopg.connect(dsn, autocommit=True) as conn:
        wait_for(lambda: heartbeat(conn, daemon.pid), 30, "the daemon to reconnect", step=0.2)
        conn.execute("INSERT INTO src VALUES (1, 41)")
        wait_for(
            lambda: conn.execute("SELECT s FROM agg").fetchone() == (41,),
            15,
            "a refresh after the restart",
        )
    assert daemon.proc.poll() is None
    assert "lost the database connection" in daemon.output()
