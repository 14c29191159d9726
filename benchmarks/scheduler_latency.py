"""Scheduler daemon measurements (workload ``daemon`` of the harness).

Each measurement runs in a scratch database of its own, with a real daemon process
(``python -m dbt_pgtrickle.cli scheduler run``) where one is needed:

1. **change-to-visible latency under a steady write rate**: a writer commits single-row inserts
   into ``src`` at ``write_rate`` per second for ``latency_seconds``; the stream table
   ``SELECT id, v FROM src`` has the schedule ``schedule`` (1 s); an observer polls
   ``max(id)`` of the stream table every 2 ms. Latency of a row = first observation that shows it
   minus the end of its commit; p50/p99/max.
2. **zero-change tick cost**: an in-process scheduler over ``tick_tables`` idle stream tables (on
   10 sources): median/p99 of a polling tick (catalog read + pending probe of every stream table)
   and of a wake-up tick for one source — the work the daemon does when nothing changed.
3. **propagation**: a chain ``src → c1 → … → c{chain_depth}`` and a fan-out of ``fanout`` stream
   tables over one source (no schedule: refreshed as soon as a change commits). Per repeat one
   single-row insert into the source; time until the row is visible at the end of the chain, and
   in every member of the fan-out.

The stand-alone CLI (``python benchmarks/scheduler_latency.py --dsn …``) also measures the commit
rate of concurrent writers with the wake NOTIFY on and off.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

import dbt_pgtrickle as pgt  # noqa: E402
from benchmarks import _common as C  # noqa: E402
from dbt_pgtrickle.scheduler.daemon import Scheduler  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Daemon:
    """A scheduler daemon process for one database (stopped with SIGTERM, by its pid)."""

    def __init__(self, dsn: str, poll_interval_ms: int | None = None) -> None:
        self.dsn = dsn
        self.poll = poll_interval_ms
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Daemon:
        env = dict(os.environ, PGTRICKLE_DSN=self.dsn, PYTHONPATH=str(REPO))
        cmd = [sys.executable, "-m", "dbt_pgtrickle.cli", "scheduler", "run"]
        if self.poll:
            cmd += ["--poll-interval-ms", str(self.poll)]
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while not conn.execute("SELECT 1 FROM pgtrickle.pgt_scheduler").fetchone():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the scheduler daemon did not start")
                time.sleep(0.05)
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------------------------
# 1. change-to-visible latency


def steady_latency(dsn: str, rate: float, seconds: float, schedule: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE src (id bigint PRIMARY KEY, v int NOT NULL)")
        pgt.create_stream_table(
            conn, "lat_st", "SELECT id, v FROM src", schedule=schedule, refresh_mode="DIFFERENTIAL"
        )
    committed: dict[int, float] = {}
    seen: dict[int, float] = {}
    stop = threading.Event()

    def observe() -> None:
        last = 0
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.is_set():
                top = c.execute("SELECT coalesce(max(id), 0) FROM lat_st").fetchone()[0]  # type: ignore[index]
                now = time.monotonic()
                for k in range(last + 1, top + 1):
                    seen[k] = now
                last = max(last, top)
                time.sleep(0.002)

    with Daemon(dsn):
        watcher = threading.Thread(target=observe, daemon=True)
        watcher.start()
        with psycopg.connect(dsn, autocommit=True) as w:
            n = max(1, round(rate * seconds))
            start = time.monotonic()
            for k in range(1, n + 1):
                target = start + (k - 1) / rate
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                w.execute("INSERT INTO src VALUES (%s, 1)", (k,))
                committed[k] = time.monotonic()
        deadline = time.monotonic() + 30
        while len(seen) < len(committed) and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        watcher.join(timeout=10)
        with psycopg.connect(dsn, autocommit=True) as c:
            refreshes = c.execute(
                "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) "
                "FROM pgtrickle.pgt_refresh_history WHERE pgt_name = 'lat_st' "
                "AND status = 'COMPLETED' AND action IN ('DIFFERENTIAL', 'FULL')"
            ).fetchone()
    missing = [k for k in committed if k not in seen]
    lat = [(seen[k] - committed[k]) * 1000 for k in committed if k in seen]
    return {
        "schedule": schedule,
        "write_rate_per_s": rate,
        "seconds": seconds,
        "changes": len(committed),
        "not_visible_within_30s": len(missing),
        "latency_ms": C.distribution(lat) if lat else None,
        "refreshes": refreshes[0] if refreshes else None,
        "refresh_duration_p50_ms": refreshes[1] if refreshes else None,
    }


# --------------------------------------------------------------------------------------------
# 2. idle tick cost


def tick_cost(dsn: str, count: int, ticks: int = 15) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in range(10):
            conn.execute(f"CREATE TABLE IF NOT EXISTS t{s} (id int PRIMARY KEY, g int, v int)")
            conn.execute(
                f"INSERT INTO t{s} SELECT i, i % 5, i FROM generate_series(1, 100) i "
                "ON CONFLICT DO NOTHING"
            )
        have = conn.execute("SELECT count(*) FROM pgtrickle.pgt_stream_tables").fetchone()[0]  # type: ignore[index]
        t0 = time.perf_counter()
        for i in range(have, count):
            pgt.create_stream_table(
                conn, f"st_{i}", f"SELECT g, count(*) AS n FROM t{i % 10} GROUP BY g"
            )
        create_s = time.perf_counter() - t0
        conn.execute("VACUUM ANALYZE")
    daemon = Scheduler(dsn, poll_interval_ms=10000)
    daemon._open()
    try:
        polls, wakes = [], []
        stable = pgt.stable_name("public", "t0")
        for _ in range(ticks):
            daemon.next_poll = 0.0
            polls.append(daemon.tick().seconds * 1000)
            daemon.woken = {stable: time.monotonic()}
            wakes.append(daemon.tick().seconds * 1000)
    finally:
        daemon._close(graceful=True)
    return {
        "stream_tables": count,
        "create_s": create_s,
        "poll_tick_ms": C.distribution(polls),
        "wake_tick_ms": C.distribution(wakes),
    }


# --------------------------------------------------------------------------------------------
# 3. propagation through a chain and a fan-out


def _wait_until(conn: psycopg.Connection[Any], query: sql.Composable, args: Any) -> float:
    start = time.monotonic()
    deadline = start + 60
    while not conn.execute(query, args).fetchone()[0]:  # type: ignore[index]
        if time.monotonic() > deadline:
            raise RuntimeError("change not visible within 60 s")
        time.sleep(0.002)
    return time.monotonic()


def propagation(dsn: str, depth: int, fanout: int, repeats: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE chain_src (id bigint PRIMARY KEY, v int NOT NULL)")
        conn.execute("CREATE TABLE fan_src (id bigint PRIMARY KEY, v int NOT NULL)")
        prev = "chain_src"
        for i in range(1, depth + 1):
            pgt.create_stream_table(conn, f"chain_{i}", f"SELECT id, v FROM {prev}")
            prev = f"chain_{i}"
        for i in range(1, fanout + 1):
            pgt.create_stream_table(conn, f"fan_{i}", f"SELECT id, v + {i} AS v FROM fan_src")
        last = sql.Identifier(f"chain_{depth}")
        chain_q = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE id = %s)").format(last)
        fan_q = sql.SQL("SELECT ({}) = %(n)s").format(
            sql.SQL(" + ").join(
                sql.SQL("(SELECT count(*) FROM {} WHERE id = %(k)s)").format(
                    sql.Identifier(f"fan_{i}")
                )
                for i in range(1, fanout + 1)
            )
        )
        chain_ms, fan_ms = [], []
        with Daemon(dsn):
            for k in range(1, repeats + 1):
                conn.execute("INSERT INTO chain_src VALUES (%s, 1)", (k,))
                t0 = time.monotonic()
                chain_ms.append((_wait_until(conn, chain_q, (k,)) - t0) * 1000)
                time.sleep(0.05)
                conn.execute("INSERT INTO fan_src VALUES (%s, 1)", (k,))
                t0 = time.monotonic()
                fan_ms.append((_wait_until(conn, fan_q, {"k": k, "n": fanout}) - t0) * 1000)
                time.sleep(0.05)
        for i in range(1, depth + 1):
            C.verify(conn, f"chain_{i}", "SELECT id, v FROM chain_src")
    return {
        "chain_depth": depth,
        "fanout": fanout,
        "repeats": repeats,
        "chain_end_visible_ms": C.distribution(chain_ms),
        "fanout_all_visible_ms": C.distribution(fan_ms),
    }


# --------------------------------------------------------------------------------------------
# the workload


def run_workload(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in ("latency", "tick", "propagation"):
        dsn = ctx.scratch_database(f"daemon_{part}")
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                pgt.install(conn)
            ctx.log(f"  daemon: {part}")
            if part == "latency":
                out[part] = steady_latency(
                    dsn, float(p["write_rate"]), float(p["latency_seconds"]), p["schedule"]
                )
            elif part == "tick":
                out[part] = tick_cost(dsn, int(p["tick_tables"]))
            else:
                out[part] = propagation(
                    dsn, int(p["chain_depth"]), int(p["fanout"]), int(p["propagation_repeats"])
                )
        finally:
            ctx.drop_database(f"daemon_{part}")
    return out


def notify_cost(dsn: str, writers: int, seconds: float) -> dict[str, float]:
    """Commits per second of ``writers`` threads inserting single rows, wake NOTIFY on / off."""
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
    from benchmarks.harness import Context

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", required=True, help="superuser DSN")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--tables", type=int, default=1000)
    parser.add_argument("--writers", type=int, default=8)
    args = parser.parse_args()
    ctx = Context(args.dsn, Path("benchmarks/results"), "adhoc")
    res = run_workload(
        ctx,
        {
            "write_rate": args.rate,
            "latency_seconds": args.seconds,
            "schedule": "1s",
            "tick_tables": args.tables,
            "chain_depth": 10,
            "fanout": 60,
            "propagation_repeats": 20,
        },
    )
    for k, v in res.items():
        print(k, v)
    dsn = ctx.scratch_database("daemon_notify")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            pgt.install(conn)
        print("wake NOTIFY cost:", notify_cost(dsn, args.writers, 5.0))
    finally:
        ctx.drop_database("daemon_notify")


if __name__ == "__main__":
    main()
