"""Write-path cost of change capture: the same statements on a table without and with capture.

Workload ``write_path`` of the harness. Identical tables ``wp_plain`` (no capture), ``wp_capture``
(read by a DIFFERENTIAL stream table, so its statement-level capture triggers write every change
into a change buffer) and, when the pg_ivm extension is available, ``wp_ivm`` (read by a pg_ivm
IMMV, maintained inside each statement), all
``(id bigint primary key, grp int, amount numeric(12,2), note text, updated_at timestamptz)``
with an index on ``grp`` and ``base_rows`` rows. The stream table and the IMMV are the same
``SELECT grp, count(*) AS n, sum(amount) AS total FROM … GROUP BY grp`` (100 groups).

Measured per repeat, variants interleaved (single rows) or in rotated order (bulk), each statement
in its own autocommit transaction, so its time includes the commit:

* ``single_insert`` / ``single_update``: ``single_rows`` one-row statements per variant;
  p50/p99 latency;
* ``bulk_insert``: ``INSERT … SELECT FROM generate_series`` of ``bulk_rows`` new rows;
* ``bulk_update``: ``UPDATE`` of those ``bulk_rows`` rows (amount and group change);
* ``bulk_delete``: ``DELETE`` of those rows.

The change buffer is logged unless the run stores the setting ``change_buffer_unlogged``
(``--pgtrickle-set change_buffer_unlogged=on``; recorded in the results). Before every bulk
statement the change buffer is drained (a refresh, timed separately as the
deferred cost capture leaves to the refresh) and a ``CHECKPOINT`` runs. Reported per statement:
median time per variant, the ratio capture/plain (the write amplification of capture; median of
the per-repeat ratios) and ivm/plain, the WAL bytes each statement wrote and, when the server runs
on this machine, the server process's CPU time per statement and its capture/plain ratio (far
less sensitive than the wall time to other jobs on a shared machine).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg
from psycopg import sql

from benchmarks import _common as C
from dbt_pgtrickle import create_stream_table, get_setting, install, refresh_stream_table

QUERY = "SELECT grp, count(*) AS n, sum(amount) AS total FROM {t} GROUP BY grp"
BULK = ("bulk_insert", "bulk_update", "bulk_delete")


def pg_ivm_ready(conn: psycopg.Connection[Any]) -> str | None:
    """Create the pg_ivm extension if it is available; returns its version, or None."""
    row = conn.execute(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_ivm'"
    ).fetchone()
    if row is None:
        return None
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_ivm")
    return str(
        conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_ivm'").fetchone()[0]  # type: ignore[index]
    )


def create_immv(conn: psycopg.Connection[Any], name: str, query: str) -> None:
    """``pgivm.create_immv`` (pg_ivm ≥ 1.10 keeps its functions in schema ``pgivm``)."""
    has_schema = conn.execute(
        "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE p.proname = 'create_immv' AND n.nspname = 'pgivm'"
    ).fetchone()
    fn = "pgivm.create_immv" if has_schema else "create_immv"
    conn.execute(sql.SQL("SELECT " + fn + "(%s, %s)"), (name, query))


def preload_pg_ivm(admin_dsn: str, dbname: str) -> None:
    """pg_ivm must be loaded in every session that writes (its end-of-transaction hooks); new
    sessions of ``dbname`` get it through ``session_preload_libraries``."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET session_preload_libraries = 'pg_ivm'").format(
                sql.Identifier(dbname)
            )
        )


def build(conn: psycopg.Connection[Any], table: str, rows: int) -> None:
    t = sql.Identifier(table)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(t))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, grp int NOT NULL, amount numeric(12,2) "
            "NOT NULL, note text, updated_at timestamptz NOT NULL DEFAULT now())"
        ).format(t)
    )
    conn.execute(sql.SQL("CREATE INDEX ON {} (grp)").format(t))
    conn.execute(
        sql.SQL(
            "INSERT INTO {} SELECT g, g %% 100, (g %% 1000) / 10.0, 'row ' || g, "
            "timestamptz '2025-01-01' + g * interval '1 second' FROM generate_series(1, %s) g"
        ).format(t),
        (rows,),
    )


def backend_cpu_ns(conn: psycopg.Connection[Any], pid: int) -> int | None:
    """CPU time the server process of ``conn`` has run so far (``/proc/<pid>/schedstat``, ns),
    or None when the server is not on this machine. The capture triggers run in that process,
    so a statement's difference is its server CPU time, which the load of other processes on
    a shared machine barely changes (unlike the wall time)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wal_lsn(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()[0])  # type: ignore[index]


def run_workload(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    base, bulk = int(p["base_rows"]), int(p["bulk_rows"])
    single, repeats = int(p["single_rows"]), int(p["repeats"])
    db = ctx.scratch_name("write_path")
    dsn = ctx.scratch_database("write_path")
    try:
        with psycopg.connect(dsn, autocommit=True) as setup:
            install(setup)
            unlogged = bool(get_setting(setup, "change_buffer_unlogged"))
            ivm_version = pg_ivm_ready(setup)
        if ivm_version:
            preload_pg_ivm(ctx.admin_dsn, db)
        conn = C.connect(dsn)
        C.session_settings(conn, ctx.session_settings)
        variants = ["plain", "capture"] + (["ivm"] if ivm_version else [])
        tables = {v: f"wp_{v}" for v in variants}
        for t in tables.values():
            build(conn, t, base)
        create_stream_table(
            conn, "wp_capture_agg", QUERY.format(t="wp_capture"), refresh_mode="DIFFERENTIAL"
        )
        if ivm_version:
            create_immv(conn, "wp_ivm_agg", QUERY.format(t="wp_ivm"))
        C.vacuum_analyze(conn, *tables.values())
        single_ms: dict[str, dict[str, list[float]]] = {
            k: {v: [] for v in variants} for k in ("single_insert", "single_update")
        }
        bulk_ms: dict[str, dict[str, list[float]]] = {k: {v: [] for v in variants} for k in BULK}
        wal: dict[str, dict[str, list[int]]] = {k: {v: [] for v in variants} for k in BULK}
        cpu_ms: dict[str, dict[str, list[float]]] = {k: {v: [] for v in variants} for k in BULK}
        backend = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
        refresh_ms: dict[str, list[float]] = {k: [] for k in BULK}
        next_id = base + 1
        for rep in range(repeats):
            ctx.log(f"  write path repeat {rep + 1}/{repeats}")
            # single-row statements, variants interleaved row by row
            for i in range(single):
                k = next_id + i
                order = variants[i % len(variants) :] + variants[: i % len(variants)]
                for v in order:
                    t = sql.Identifier(tables[v])
                    t0 = time.perf_counter()
                    conn.execute(
                        sql.SQL(
                            "INSERT INTO {} (id, grp, amount, note) VALUES (%s, %s, 1, 'x')"
                        ).format(t),
                        (k, k % 100),
                    )
                    single_ms["single_insert"][v].append((time.perf_counter() - t0) * 1000)
                for v in order:
                    t = sql.Identifier(tables[v])
                    t0 = time.perf_counter()
                    conn.execute(
                        sql.SQL("UPDATE {} SET amount = amount + 1 WHERE id = %s").format(t),
                        (1 + (k * 7919) % base,),
                    )
                    single_ms["single_update"][v].append((time.perf_counter() - t0) * 1000)
            next_id += single
            refresh_stream_table(conn, "wp_capture_agg")
            lo, hi = next_id, next_id + bulk - 1
            next_id += bulk
            statements = {
                "bulk_insert": (
                    "INSERT INTO {} (id, grp, amount, note) SELECT g, g %% 100, (g %% 1000) / 10.0, "
                    "'bulk ' || g FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g"
                ),
                "bulk_update": (
                    "UPDATE {} SET amount = amount + 1, grp = (grp + 1) %% 100 "
                    "WHERE id BETWEEN %(lo)s AND %(hi)s"
                ),
                "bulk_delete": "DELETE FROM {} WHERE id BETWEEN %(lo)s AND %(hi)s",
            }
            for kind in BULK:
                order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
                for v in order:
                    conn.execute("CHECKPOINT")
                    before = wal_lsn(conn)
                    cpu0 = backend_cpu_ns(conn, backend)
                    t0 = time.perf_counter()
                    cur = conn.execute(
                        sql.SQL(statements[kind]).format(sql.Identifier(tables[v])),
                        {"lo": lo, "hi": hi},
                    )
                    bulk_ms[kind][v].append((time.perf_counter() - t0) * 1000)
                    cpu1 = backend_cpu_ns(conn, backend)
                    if cpu0 is not None and cpu1 is not None:
                        cpu_ms[kind][v].append((cpu1 - cpu0) / 1e6)
                    wal[kind][v].append(wal_lsn(conn) - before)
                    if cur.rowcount != bulk:
                        raise RuntimeError(f"{kind} on {tables[v]} touched {cur.rowcount} rows")
                t0 = time.perf_counter()
                refresh_stream_table(conn, "wp_capture_agg")
                refresh_ms[kind].append((time.perf_counter() - t0) * 1000)
            C.vacuum_analyze(conn, *tables.values(), *C.change_buffers(conn))
        # exactness: the stream table and the IMMV equal their queries
        C.verify(conn, "wp_capture_agg", QUERY.format(t="wp_capture"))
        checks = {"wp_capture_agg": "equal"}
        if ivm_version:
            n_bad = conn.execute(
                "SELECT count(*) FROM ((SELECT grp, n, total FROM wp_ivm_agg EXCEPT ALL "
                + QUERY.format(t="wp_ivm")
                + ") UNION ALL ("
                + QUERY.format(t="wp_ivm")
                + " EXCEPT ALL SELECT grp, n, total FROM wp_ivm_agg)) d"
            ).fetchone()[0]  # type: ignore[index]
            checks["wp_ivm_agg"] = "equal" if n_bad == 0 else f"{n_bad} rows differ"
        conn.close()
    finally:
        ctx.drop_database("write_path")
    out: dict[str, Any] = {
        "variants": variants,
        "pg_ivm": ivm_version,
        "base_rows": base,
        "bulk_rows": bulk,
        "change_buffer_unlogged": unlogged,
        "stream_table_query": QUERY.format(t="wp_capture"),
        "checks": checks,
        "single": {},
        "bulk": {},
    }
    for kind, per in single_ms.items():
        out["single"][kind] = {v: C.distribution(ms) for v, ms in per.items()}
        p50 = out["single"][kind]
        out["single"][kind]["capture_over_plain_p50"] = p50["capture"]["p50"] / p50["plain"]["p50"]
        if ivm_version:
            out["single"][kind]["ivm_over_plain_p50"] = p50["ivm"]["p50"] / p50["plain"]["p50"]
    for kind, per in bulk_ms.items():
        e: dict[str, Any] = {v: C.summary(ms) for v, ms in per.items()}
        e["samples_ms"] = per
        e["wal_bytes"] = {v: statistics.median(b) for v, b in wal[kind].items()}
        e["refresh_after_ms"] = C.summary(refresh_ms[kind])
        e["capture_over_plain"] = statistics.median(
            c / pl for c, pl in zip(per["capture"], per["plain"], strict=True)
        )
        cpu = cpu_ms[kind]
        if all(len(cpu[v]) == len(per[v]) for v in variants):
            e["server_cpu_ms"] = {v: C.summary(ms) for v, ms in cpu.items()}
            e["capture_over_plain_cpu"] = statistics.median(
                c / pl for c, pl in zip(cpu["capture"], cpu["plain"], strict=True)
            )
        if ivm_version:
            e["ivm_over_plain"] = statistics.median(
                c / pl for c, pl in zip(per["ivm"], per["plain"], strict=True)
            )
        out["bulk"][kind] = e
    return out
