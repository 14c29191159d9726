"""Scheduler measurements: change-to-visible latency, idle tick cost, wake NOTIFY commit cost.

    python benchmarks/scheduler_latency.py --dsn 'host=127.0.0.1 port=55432 user=postgres'

Creates (and drops) a database ``pgt_sched_bench``. Three measurements:

1. **latency**: a daemon process (poll interval 10 s, so only the wake-up counts) serves one
   aggregate stream table; N single-row inserts, each followed by polling the stream table every
   millisecond until the row's effect is visible; p50/p99 of commit-to-visible.
2. **tick cost**: an in-process scheduler over 100 and 1,000 idle stream tables (on 10 sources);
   median time of a polling tick (catalog read + pending probe of every stream table) and of a
   wake-up tick for one source.
3. **notify cost**: W writer threads committing single-row inserts into a captured source for
   S seconds, with the wake NOTIFY on and off (``SET pgtrickle.wake = off``); commits per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

import dbt_pgtrickle as pgt
from dbt_pgtrickle.scheduler.daemon import Scheduler

DB = "pgt_sched_bench"
REPO = Path(__file__).resolve().parents[1]


def fresh_db(admin_dsn: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB}")
    dsn = make_conninfo(admin_dsn, dbname=DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        pgt.install(conn)
    return dsn


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency(dsn: str, changes: int) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE src (id int PRIMARY KEY, g int, v int)")
        conn.execute("INSERT INTO src SELECT i, i % 10, 1 FROM generate_series(1, 100000) i")
        pgt.create_stream_table(conn, "agg", "SELECT g, sum(v) AS s FROM src GROUP BY g")
        env = dict(os.environ, PGTRICKLE_DSN=dsn, PYTHONPATH=str(REPO))
        proc = subprocess.Popen(
            [sys.executable, "-m", "dbt_pgtrickle.cli", "scheduler", "run"]
            + ["--poll-interval-ms", "10000"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(os.environ.get("PGTRICKLE_BENCH_LOG", os.devnull), "w"),  # noqa: SIM115
        )
        try:
            deadline = time.monotonic() + 30
            while not conn.execute("SELECT 1 FROM pgtrickle.pgt_scheduler").fetchone():
                if time.monotonic() > deadline:
                    raise RuntimeError("the daemon did not start")
                time.sleep(0.05)
            time.sleep(0.5)
            samples = []
            for i in range(changes):
                before = conn.execute("SELECT s FROM agg WHERE g = 0").fetchone()[0]  # type: ignore[index]
                start = time.monotonic()
                conn.execute("INSERT INTO src VALUES (%s, 0, 1)", (200000 + i,))
                limit = start + 10
                while conn.execute("SELECT s FROM agg WHERE g = 0").fetchone()[0] == before:  # type: ignore[index]
                    if time.monotonic() > limit:
                        raise RuntimeError("change not visible within 10 s")
                    time.sleep(0.001)
                samples.append((time.monotonic() - start) * 1000)
                time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {
        "p50_ms": statistics.median(samples),
        "p99_ms": pct(samples, 0.99),
        "max_ms": max(samples),
    }


def tick_cost(dsn: str, count: int) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in range(10):
            conn.execute(f"CREATE TABLE IF NOT EXISTS t{s} (id int PRIMARY KEY, g int, v int)")
            conn.execute(
                f"INSERT INTO t{s} SELECT i, i % 5, i FROM generate_series(1, 100) i "
                "ON CONFLICT DO NOTHING"
            )
        have = conn.execute("SELECT count(*) FROM pgtrickle.pgt_stream_tables").fetchone()[0]  # type: ignore[index]
        for i in range(have, count):
            pgt.create_stream_table(
                conn, f"st_{i}", f"SELECT g, count(*) AS n FROM t{i % 10} GROUP BY g"
            )
    daemon = Scheduler(dsn, poll_interval_ms=10000)
    daemon._open()
    try:
        polls, wakes = [], []
        stable = pgt.stable_name("public", "t0")
        for _ in range(15):
            daemon.next_poll = 0.0
            polls.append(daemon.tick().seconds * 1000)
            daemon.woken = {stable}
            wakes.append(daemon.tick().seconds * 1000)
    finally:
        daemon._close(graceful=True)
    return {"poll_tick_ms": statistics.median(polls), "wake_tick_ms": statistics.median(wakes)}


def notify_cost(dsn: str, writers: int, seconds: float) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE w (id bigserial PRIMARY KEY, v int)")
        pgt.create_stream_table(conn, "w_count", "SELECT count(*) AS n FROM w")
    out: dict[str, float] = {}
    for wake in ("on", "off"):
        counts = [0] * writers
        stop = threading.Event()

        def write(
            k: int, wake: str = wake, stop: threading.Event = stop, counts: list[int] = counts
        ) -> None:
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute(f"SET pgtrickle.wake = {wake}")
                while not stop.is_set():
                    c.execute("INSERT INTO w (v) VALUES (1)")
                    counts[k] += 1

        threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        out[f"commits_per_s_wake_{wake}"] = sum(counts) / seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="host=127.0.0.1 port=55432 user=postgres dbname=postgres")
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tables", default="100,1000")
    args = parser.parse_args()
    dsn = fresh_db(args.dsn)
    try:
        print("latency (commit to visible, poll 10 s):", latency(dsn, args.changes), flush=True)
        for n in (int(x) for x in args.tables.split(",")):
            print(f"idle tick with {n} stream tables:", tick_cost(dsn, n), flush=True)
        print(
            f"wake NOTIFY cost ({args.writers} writers):",
            notify_cost(dsn, args.writers, args.seconds),
            flush=True,
        )
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


if __name__ == "__main__":
    main()
