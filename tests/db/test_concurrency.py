"""Refreshes racing with each other and with writers stay exact."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg

import dbt_pgtrickle as pgt
from dbt_pgtrickle.errors import LockNotAvailable, is_retryable

QUERY = "select g, count(*) as n, sum(v) as s, min(v) as lo from src group by g"


def test_parallel_refreshes_and_writers_end_exact(conn: psycopg.Connection[Any], dsn: str) -> None:
    pgt.install(conn)
    pgt.set_setting(conn, "auto_full_threshold", 1)
    conn.execute("CREATE TABLE src (id int PRIMARY KEY, g int, v int)")
    conn.execute("INSERT INTO src SELECT i, i % 5, i FROM generate_series(1, 500) i")
    pgt.create_stream_table(conn, "st", QUERY, refresh_mode="DIFFERENTIAL")
    pgt.create_stream_table(conn, "st_ids", "select id, v from src where v % 3 = 0")
    stop = time.monotonic() + 6.0
    errors: list[BaseException] = []
    actions: list[str] = []

    def writer(seed: int) -> None:
        rnd = random.Random(seed)
        with psycopg.connect(dsn, autocommit=True) as c:
            for _ in range(400):  # bounded
                if time.monotonic() > stop:
                    break
                k = rnd.randint(1, 700)
                with c.transaction():
                    c.execute(
                        "INSERT INTO src VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE "
                        "SET g = EXCLUDED.g, v = src.v + 1",
                        (k, rnd.randint(0, 6), rnd.randint(-50, 50)),
                    )
                    if rnd.random() < 0.3:
                        c.execute("DELETE FROM src WHERE id = %s", (rnd.randint(1, 700),))
                    if rnd.random() < 0.2:
                        time.sleep(0.01)  # keep a transaction open across a refresh

    def refresher() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            for _ in range(200):  # bounded
                if time.monotonic() > stop:
                    break
                for name in ("st", "st_ids"):
                    try:
                        actions.append(pgt.refresh_stream_table(c, name).action)
                    except LockNotAvailable as exc:
                        assert is_retryable(exc.sqlstate)
                    except BaseException as exc:
                        errors.append(exc)
                        return

    threads = [threading.Thread(target=writer, args=(s,)) for s in (1, 2)]
    threads += [threading.Thread(target=refresher) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert "DIFFERENTIAL" in actions
    pgt.refresh_stream_table(conn, "st")
    pgt.refresh_stream_table(conn, "st_ids")
    assert (
        conn.execute(
            f"(SELECT g, n, s, lo FROM st EXCEPT ALL {QUERY}) UNION ALL ({QUERY} EXCEPT ALL "
            "SELECT g, n, s, lo FROM st)"
        ).fetchall()
        == []
    )
    assert (
        conn.execute(
            "(SELECT id, v FROM st_ids EXCEPT ALL SELECT id, v FROM src WHERE v % 3 = 0) UNION ALL "
            "(SELECT id, v FROM src WHERE v % 3 = 0 EXCEPT ALL SELECT id, v FROM st_ids)"
        ).fetchall()
        == []
    )
    leftover = conn.execute(
        "SELECT count(*) FROM pgtrickle_changes.changes_" + pgt.stable_name("public", "src")
    ).fetchone()
    assert leftover == (0,)  # every consumer has seen everything: the buffer is empty


def test_lock_timeout_is_a_retryable_error(conn: psycopg.Connection[Any], dsn: str) -> None:
    pgt.install(conn)
    pgt.set_setting(conn, "refresh_lock_timeout_ms", 100)
    conn.execute("CREATE TABLE src (id int PRIMARY KEY)")
    pgt.create_stream_table(conn, "st", "select id from src")
    with psycopg.connect(dsn) as holder:
        holder.execute("LOCK TABLE st IN EXCLUSIVE MODE")
        try:
            pgt.refresh_stream_table(conn, "st")
        except LockNotAvailable as exc:
            assert exc.sqlstate == "55P03" and is_retryable(exc.sqlstate)
            assert "another session" in str(exc)
        else:
            raise AssertionError("refresh did not time out on the lock")
        holder.rollback()
    assert pgt.refresh_stream_table(conn, "st").action == "NO_DATA"
