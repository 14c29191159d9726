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
        --concurrency 4 [--variant direct|dblink]

``--variant dblink`` imports the same changes the other way the issue names: from the
coordinator, one statement per batch and node, ``INSERT INTO <buffer> SELECT … FROM dblink(node,
'SELECT … FROM pg_logical_slot_peek_changes(…)')``, the node's position recorded in the same
transaction, then the slot advanced through dblink after the commit (the same import-then-confirm
order). SQL cannot decode ``pgoutput``'s binary messages, so that variant reads a ``test_decoding``
slot of its own on each node and parses its text lines on the node with string functions
written for this benchmark's table (``bigint``, ``integer`` and ``numeric`` columns, inserts
only): an optimistic stand-in for a general decoder. Rows go into a copy of the stream table's
change buffer (same columns, defaults and BRIN index), which the run then compares with the
source table. It needs the ``dblink`` extension on the coordinator (``CREATE EXTENSION dblink``,
done by the run) and ``test_decoding`` on the nodes (PostgreSQL contrib).

"Cycle" latencies, in both variants, are per node and batch from the start of the peek to the
slot advance (the direct variant also reports the coordinator import transaction alone as
"batch").

Prints one JSON object (changes, seconds, changes/s, batches, p50/p99 batch and cycle
milliseconds).
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
from psycopg.conninfo import make_conninfo

import dbt_pgtrickle as pgt
from dbt_pgtrickle.citus import capture
from dbt_pgtrickle.naming import CHANGES_SCHEMA, buffer_table, replication_slot, stable_name


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


#: The slot of the dblink variant on each node (``test_decoding``).
DBLINK_SLOT = "pgtrickle_bench_dblink"
#: Runs on the node: the batch's lines as rows; a change row carries its transaction's commit
#: position (``end_lsn``) so the coordinator can skip transactions imported before.
_REMOTE_PEEK = """
SELECT c.lsn::text, max(c.lsn) FILTER (WHERE starts_with(c.data, 'COMMIT'))
         OVER (PARTITION BY c.xid::text)::text AS end_lsn,
       CASE WHEN a[3] = 'INSERT:' THEN 'INSERT' END,
       split_part(a[4], ':', 2), split_part(a[5], ':', 2), split_part(a[6], ':', 2)
FROM pg_logical_slot_peek_changes({slot}, NULL, {batch}, 'include-xids', '1',
     'skip-empty-xacts', '1', 'only-local', '1') AS c,
LATERAL (SELECT CASE WHEN starts_with(c.data, 'table citus_bench.orders')
                THEN string_to_array(c.data, ' ') END AS a) AS p
"""
_DBLINK_IMPORT = """
WITH r AS (
  SELECT * FROM dblink(%(node)s, %(remote)s)
    AS t(lsn pg_lsn, end_lsn pg_lsn, action text, id bigint, region int, amount numeric)
), ins AS (
  INSERT INTO citus_bench.dblink_buffer (__pgt_action, __pgt_w, id, region, amount)
  SELECT 'I', 1, id, region, amount FROM r
  WHERE action = 'INSERT' AND end_lsn > %(done)s::pg_lsn
  RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM r), (SELECT max(end_lsn)::text FROM r)
"""


def _dblink_import(
    c: psycopg.Connection[Any], node_dsns: list[str], batch: int
) -> tuple[int, int, list[float], list[float]]:
    """Import every change of the dblink slots, node after node; (changes, batches, batch ms,
    cycle ms). The node's position lives in a coordinator table written in the import's
    transaction."""
    remote = _REMOTE_PEEK.format(slot=f"'{DBLINK_SLOT}'", batch=int(batch))
    imported = 0
    batches: list[float] = []
    cycles: list[float] = []
    c.execute("CREATE TABLE citus_bench.dblink_position (node text PRIMARY KEY, lsn pg_lsn)")
    for node in node_dsns:
        c.execute("INSERT INTO citus_bench.dblink_position VALUES (%s, '0/0')", (node,))
        # Decoding reads flushed WAL only; the direct variant waits for the flush too
        # (capture._flushed_target).
        with psycopg.connect(node, autocommit=True) as w, w.transaction():
            w.execute("SET LOCAL synchronous_commit = on")
            w.execute("SELECT pg_current_xact_id()")
        while True:
            t0 = time.perf_counter()
            with c.transaction():
                c.execute("SET LOCAL synchronous_commit = on")
                done = c.execute(
                    "SELECT lsn::text FROM citus_bench.dblink_position WHERE node = %s FOR UPDATE",
                    (node,),
                ).fetchone()[0]  # type: ignore[index]
                written, lines, last = c.execute(
                    _DBLINK_IMPORT, {"node": node, "remote": remote, "done": done}
                ).fetchone()  # type: ignore[misc]
                if last is not None:
                    c.execute(
                        "UPDATE citus_bench.dblink_position SET lsn = %s WHERE node = %s",
                        (last, node),
                    )
            t1 = time.perf_counter()
            if not lines:
                break
            c.execute(
                "SELECT * FROM dblink(%s, format('SELECT * FROM pg_replication_slot_advance(%%L, %%L)', "
                "%s::text, %s::text)) AS t(slot name, lsn pg_lsn)",
                (node, DBLINK_SLOT, last),
            )
            imported += int(written)
            batches.append((t1 - t0) * 1000)
            cycles.append((time.perf_counter() - t0) * 1000)
            if lines < batch:
                break
    return imported, len(batches), batches, cycles


def run(
    dsn: str,
    changes: int,
    workers: int,
    txn_rows: int,
    batch: int,
    concurrency: int = 4,
    variant: str = "direct",
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
        # host, port, database, user only: dblink runs the server's libpq, which may not know
        # every option the client's libpq reports
        node_dsns = [
            make_conninfo(host=name, port=port, dbname=c.info.dbname, user=c.info.user)
            for name, port in nodes[:workers]
        ]
        if variant == "dblink":
            c.execute("CREATE EXTENSION IF NOT EXISTS dblink")
            c.execute(
                sql.SQL("CREATE TABLE citus_bench.dblink_buffer (LIKE {} INCLUDING ALL)").format(
                    sql.Identifier(
                        CHANGES_SCHEMA, buffer_table(stable_name("citus_bench", "orders"))
                    )
                )
            )
            for node in node_dsns:
                with psycopg.connect(node, autocommit=True) as w:
                    w.execute(
                        "SELECT pg_create_logical_replication_slot(%s, 'test_decoding')",
                        (DBLINK_SLOT,),
                    )
        for start in range(1, changes + 1, txn_rows):
            end = min(changes, start + txn_rows - 1)
            c.execute(
                "INSERT INTO citus_bench.orders SELECT g, g %% 10, g FROM generate_series(%s::bigint, %s::bigint) g",
                (start, end),
            )
        decode_s = _decode_only(node_dsns, variant, stable_name("citus_bench", "orders"))
        if variant == "dblink":
            t0 = time.perf_counter()
            imported, count, batches, cycles = _dblink_import(c, node_dsns, batch)
            seconds = time.perf_counter() - t0
            transactions = None
            diff = c.execute(
                "SELECT count(*) FROM ((SELECT id, region, amount FROM citus_bench.dblink_buffer "
                "EXCEPT ALL SELECT * FROM citus_bench.orders) UNION ALL (SELECT * FROM "
                "citus_bench.orders EXCEPT ALL SELECT id, region, amount "
                "FROM citus_bench.dblink_buffer)) d"
            ).fetchone()
            action, exact = None, diff == (0,)
            for node in node_dsns:
                with psycopg.connect(node, autocommit=True) as w:
                    w.execute("SELECT pg_drop_replication_slot(%s)", (DBLINK_SLOT,))
        else:
            imported, transactions, count, batches, cycles, seconds = _direct_import(c)
            action = pgt.refresh_stream_table(c, "citus_bench.by_region").action
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
            "variant": variant,
            "poll_concurrency": concurrency if variant == "direct" else 1,
            "changes": imported,
            "worker_transactions": transactions,
            "seconds": round(seconds, 3),
            "changes_per_second": round(imported / seconds) if seconds else None,
            "batches": count,
            "batch_ms_p50": round(_percentile(batches, 0.5), 1),
            "batch_ms_p99": round(_percentile(batches, 0.99), 1),
            "batch_ms_mean": round(statistics.fmean(batches), 1) if batches else None,
            "cycle_ms_p50": round(_percentile(cycles, 0.5), 1),
            "cycle_ms_p99": round(_percentile(cycles, 0.99), 1),
            "node_decode_only_seconds": round(decode_s, 3),
            "refresh_action": action,
            "exact": exact,
        }


def _decode_only(node_dsns: list[str], variant: str, stable: str) -> float:
    """Seconds the nodes take to decode their slots' changes (peeked and counted on each node,
    before the import, in the variant's plugin and options): the part of an import neither
    variant can avoid."""
    total = 0.0
    for node in node_dsns:
        with psycopg.connect(node, autocommit=True) as w:
            with w.transaction():
                w.execute("SET LOCAL synchronous_commit = on")
                w.execute("SELECT pg_current_xact_id()")
            t0 = time.perf_counter()
            if variant == "dblink":
                w.execute(
                    "SELECT count(*) FROM pg_logical_slot_peek_changes(%s, NULL, NULL, "
                    "'include-xids', '1', 'skip-empty-xacts', '1', 'only-local', '1')",
                    (DBLINK_SLOT,),
                )
            else:
                slot = replication_slot(stable)
                w.execute(
                    "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
                    "'proto_version', '1', 'publication_names', %s)",
                    (slot, slot),
                )
            total += time.perf_counter() - t0
    return total


def _direct_import(
    c: psycopg.Connection[Any],
) -> tuple[int, int, int, list[float], list[float], float]:
    """The runtime's import (``poll_source``), timed: (changes, worker transactions, batches,
    import transaction ms, cycle ms, seconds)."""
    batches: list[float] = []
    cycles: list[float] = []
    last: dict[int, float] = {}
    imported_since: dict[int, bool] = {}
    original_import, original_advance = capture._import, capture._advance

    def timed_import(*args: Any, **kwargs: Any) -> int:
        t0 = time.perf_counter()
        try:
            return original_import(*args, **kwargs)
        finally:
            batches.append((time.perf_counter() - t0) * 1000)
            imported_since[args[2]] = True

    def timed_advance(*args: Any, **kwargs: Any) -> None:
        original_advance(*args, **kwargs)
        node_id, now = args[3], time.perf_counter()
        if imported_since.pop(node_id, False):
            cycles.append((now - last.get(node_id, t0)) * 1000)
        last[node_id] = now

    capture._import = timed_import  # type: ignore[assignment]
    capture._advance = timed_advance  # type: ignore[assignment]
    try:
        (src,) = [s for s in capture.citus_sources(c) if s.schema == "citus_bench"]
        t0 = time.perf_counter()
        report = capture.poll_source(c, src, strict=True)
        seconds = time.perf_counter() - t0
    finally:
        capture._import, capture._advance = original_import, original_advance  # type: ignore[assignment]
    return report.imported, report.transactions, len(batches), batches, cycles, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--txn-rows", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--variant", choices=("direct", "dblink"), default="direct")
    args = parser.parse_args(argv)
    result = run(
        args.dsn,
        args.changes,
        args.workers,
        args.txn_rows,
        args.batch,
        args.concurrency,
        args.variant,
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
