"""Citus change import: changes imported per second and per-batch import latency.

Needs a Citus coordinator with its workers added (``--dsn``; the role must be allowed to create
replication slots on every node, and every node needs ``wal_level = logical`` and
``citus.enable_change_data_capture = on``). In a scratch schema it creates a distributed
``orders`` table on ``--workers`` of the workers (the others get ``shouldhaveshards = false``
for the run), a stream table over it (which creates the replication slots), commits
``--changes`` row changes through the coordinator in transactions of ``--txn-rows`` rows, and
then times the import of all of them from the workers' slots into the coordinator's change
buffer (``dbt_pgtrickle.citus.capture.poll_source``), batch by batch
(``citus_poll_batch_changes`` decoded messages per batch: peek, decode, COPY, coordinator commit,
slot advance), polling up to ``--concurrency`` nodes at a time (``citus_poll_concurrency``).

    python benchmarks/citus_import.py --dsn "host=… dbname=…" --changes 100000 --workers 2 \
        --concurrency 4

Prints one JSON object (changes, seconds, changes/s, batches, p50/p99 batch milliseconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import psycopg

import dbt_pgtrickle as pgt
from dbt_pgtrickle.citus import capture


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def run(
    dsn: str, changes: int, workers: int, txn_rows: int, batch: int, concurrency: int = 4
) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as c:
        pgt.install(c)
        pgt.set_setting(c, "citus_poll_batch_changes", batch)
        pgt.set_setting(c, "citus_poll_concurrency", concurrency)
        nodes = c.execute(
            "SELECT nodename, nodeport FROM pg_dist_node WHERE groupid <> 0 AND isactive "
            "ORDER BY nodeid"
        ).fetchall()
        if len(nodes) < workers:
            raise SystemExit(f"--workers {workers}: the cluster has {len(nodes)} workers")
        for i, (name, port) in enumerate(nodes):
            c.execute(
                "SELECT citus_set_node_property(%s, %s, 'shouldhaveshards', %s)",
                (name, port, i < workers),
            )
        c.execute("DROP SCHEMA IF EXISTS citus_bench CASCADE")
        c.execute("CREATE SCHEMA citus_bench")
        c.execute(
            "CREATE TABLE citus_bench.orders (id bigint PRIMARY KEY, region int, amount numeric)"
        )
        c.execute("SELECT create_distributed_table('citus_bench.orders', 'id')")
        pgt.create_stream_table(
            c,
            "citus_bench.by_region",
            "SELECT region, count(*) AS n, sum(amount) AS total FROM citus_bench.orders "
            "GROUP BY region",
            placement="local",
        )
        for start in range(1, changes + 1, txn_rows):
            end = min(changes, start + txn_rows - 1)
            c.execute(
                "INSERT INTO citus_bench.orders SELECT g, g %% 10, g FROM generate_series(%s::bigint, %s::bigint) g",
                (start, end),
            )
        batches: list[float] = []
        original_import = capture._import

        def timed_import(*args: Any, **kwargs: Any) -> int:
            t0 = time.perf_counter()
            try:
                return original_import(*args, **kwargs)
            finally:
                batches.append((time.perf_counter() - t0) * 1000)

        capture._import = timed_import  # type: ignore[assignment]
        try:
            (src,) = [s for s in capture.citus_sources(c) if s.schema == "citus_bench"]
            t0 = time.perf_counter()
            report = capture.poll_source(c, src, strict=True)
            seconds = time.perf_counter() - t0
        finally:
            capture._import = original_import  # type: ignore[assignment]
        refresh = pgt.refresh_stream_table(c, "citus_bench.by_region")
        exact = pgt.verify_stream_table(c, "citus_bench.by_region")["equal"]
        pgt.drop_stream_table(c, "citus_bench.by_region")
        c.execute("DROP SCHEMA citus_bench CASCADE")
        for name, port in nodes:
            c.execute(
                "SELECT citus_set_node_property(%s, %s, 'shouldhaveshards', true)", (name, port)
            )
        version = c.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'citus'"
        ).fetchone()
        return {
            "citus": version[0] if version else None,
            "server_version": c.info.server_version,
            "workers": workers,
            "poll_concurrency": concurrency,
            "changes": report.imported,
            "worker_transactions": report.transactions,
            "seconds": round(seconds, 3),
            "changes_per_second": round(report.imported / seconds) if seconds else None,
            "batches": len(batches),
            "batch_ms_p50": round(_percentile(batches, 0.5), 1),
            "batch_ms_p99": round(_percentile(batches, 0.99), 1),
            "batch_ms_mean": round(statistics.fmean(batches), 1) if batches else None,
            "refresh_action": refresh.action,
            "exact_after_refresh": exact,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--txn-rows", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    result = run(args.dsn, args.changes, args.workers, args.txn_rows, args.batch, args.concurrency)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
