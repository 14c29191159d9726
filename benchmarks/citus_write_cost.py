"""Citus write cost: what a stream table reading a distributed table costs its writers.

Needs a Citus coordinator with its workers added (``--dsn``, a superuser; every node needs
``wal_level = logical`` and ``citus.enable_change_data_capture = on``). In a scratch schema it
creates three identical distributed tables of ``--rows`` rows:

* ``plain`` — nothing reads it;
* ``full_identity`` — ``REPLICA IDENTITY FULL`` only (what capture sets on a source);
* ``watched`` — read by a stream table (``REPLICA IDENTITY FULL``, a publication and a logical
  replication slot on every worker; no trigger anywhere).

Then, ``--repeats`` times and in rotating order, it times a ``--rows``-row INSERT, UPDATE of every
row and DELETE of every row through the coordinator on each table, and sums the WAL the
statement wrote on the workers (``pg_current_wal_insert_lsn`` before and after). The slots are not
read while the statements run (decoding is paid when they are polled; see ``citus_import.py``).

    python benchmarks/citus_write_cost.py --dsn "host=… dbname=…" --rows 100000 --repeats 3

Prints one JSON object: per table and statement, every sample and the median milliseconds and
worker WAL bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import psycopg
from psycopg import sql

import dbt_pgtrickle as pgt

TABLES = ("plain", "full_identity", "watched")
STATEMENTS = {
    "insert": "INSERT INTO {t} SELECT g, g %% 10, g FROM generate_series(1, %(rows)s) g",
    "update": "UPDATE {t} SET amount = amount + 1",
    "delete": "DELETE FROM {t}",
}


def _worker_lsns(workers: list[psycopg.Connection[Any]]) -> list[int]:
    out = []
    for w in workers:
        row = w.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        out.append(int(row[0]))
    return out


def run(dsn: str, rows: int, repeats: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as c:
        pgt.install(c)
        nodes = c.execute(
            "SELECT nodename, nodeport FROM pg_dist_node WHERE groupid <> 0 AND isactive "
            "ORDER BY nodeid"
        ).fetchall()
        c.execute("DROP SCHEMA IF EXISTS citus_bench_w CASCADE")
        c.execute("CREATE SCHEMA citus_bench_w")
        for name in TABLES:
            t = sql.Identifier("citus_bench_w", name)
            c.execute(
                sql.SQL(
                    "CREATE TABLE {} (id bigint PRIMARY KEY, region int, amount numeric)"
                ).format(t)
            )
            c.execute("SELECT create_distributed_table(%s, 'id')", (t.as_string(c),))
        c.execute("ALTER TABLE citus_bench_w.full_identity REPLICA IDENTITY FULL")
        pgt.create_stream_table(
            c,
            "citus_bench_w.by_region",
            "SELECT region, count(*) AS n, sum(amount) AS total FROM citus_bench_w.watched "
            "GROUP BY region",
            placement="local",
        )
        params = dict(c.info.get_parameters())
        if c.info.password:
            params["password"] = c.info.password
        workers = [
            psycopg.connect(**dict(params, host=host, port=str(port)), autocommit=True)
            for host, port in nodes
        ]
        samples: dict[str, dict[str, list[dict[str, float]]]] = {
            t: {s: [] for s in STATEMENTS} for t in TABLES
        }
        try:
            for r in range(repeats):
                order = TABLES[r % len(TABLES) :] + TABLES[: r % len(TABLES)]
                for stmt, text in STATEMENTS.items():  # insert, update, delete: each table
                    for name in order:
                        before = _worker_lsns(workers)
                        t0 = time.perf_counter()
                        c.execute(
                            sql.SQL(text).format(t=sql.Identifier("citus_bench_w", name)),
                            {"rows": rows},
                        )
                        ms = (time.perf_counter() - t0) * 1000
                        wal = sum(a - b for a, b in zip(_worker_lsns(workers), before, strict=True))
                        samples[name][stmt].append({"ms": round(ms, 1), "worker_wal_bytes": wal})
            refresh = pgt.refresh_stream_table(c, "citus_bench_w.by_region")
            exact = pgt.verify_stream_table(c, "citus_bench_w.by_region")["equal"]
        finally:
            for w in workers:
                w.close()
        pgt.drop_stream_table(c, "citus_bench_w.by_region")
        c.execute("DROP SCHEMA citus_bench_w CASCADE")
        version = c.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'citus'"
        ).fetchone()
        summary = {
            name: {
                stmt: {
                    "ms_median": statistics.median(x["ms"] for x in runs),
                    "worker_wal_bytes_median": statistics.median(
                        x["worker_wal_bytes"] for x in runs
                    ),
                    "samples": runs,
                }
                for stmt, runs in by_stmt.items()
            }
            for name, by_stmt in samples.items()
        }
        return {
            "citus": version[0] if version else None,
            "server_version": c.info.server_version,
            "workers": len(nodes),
            "rows": rows,
            "repeats": repeats,
            "tables": summary,
            "refresh_action_after": refresh.action,
            "exact_after_refresh": exact,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    json.dump(run(args.dsn, args.rows, args.repeats), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
