"""TPC-H corpus: differential refresh vs full recompute vs REFRESH MATERIALIZED VIEW, per query.

For each scale factor (``--scales``) the script creates a scratch database, loads the corpus of
``benchmarks/tpch`` (schema, pure-SQL data, ``VACUUM ANALYZE``), and per query creates

* a stream table ``tpch_qNN`` (``refresh_mode='AUTO'``; ``auto_full_threshold`` set by
  ``--auto-full-threshold``, default 1 = never switch to FULL for cost reasons),
* a materialized view ``mv_qNN`` of the same query, with a unique index on the query's key
  columns where one can be built (then ``REFRESH MATERIALIZED VIEW CONCURRENTLY`` is timed too).

Then for each change rate (``--fractions``) and each of ``--repeats`` repeats: one mutation cycle
(``benchmarks/tpch/mutations.py``: ~fraction of the orders updated, deleted and inserted with
their line items, plus the same fraction of customers, parts, suppliers and partsupp updated),
``CHECKPOINT``, and for every query, in an order rotated per repeat:

1. ``refresh_stream_table(tpch_qNN)`` — the differential refresh consuming the cycle's changes
   (or a FULL one for queries that fall back; the action is recorded), then the exactness check
   (``benchmarks/tpch/oracle.py``; a mismatch aborts the run);
2. in a rotated order: ``refresh_stream_table(tpch_qNN, full=True)`` (full recompute of the same
   stream table after the same changes), ``REFRESH MATERIALIZED VIEW mv_qNN`` and, when possible,
   ``REFRESH MATERIALIZED VIEW CONCURRENTLY mv_qNN``.

The 22 stream tables share one change buffer per source; buffer rows are deleted by the refresh
of the last consumer, so rotating the query order spreads that cost. Reports median/min/max
per measurement and the ratio full/differential; ``--json-out`` writes every sample with machine,
versions and settings.

    PYTHONPATH=. python benchmarks/tpch_refresh.py --dsn "$DSN" --scales 0.1 \\
        --fractions 0.001,0.01,0.1 --repeats 5 --json-out benchmarks/results/tpch_refresh_sf0.1.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common as C  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from benchmarks.tpch import UNIQUE_KEYS, Query, datagen, load_queries, mutations  # noqa: E402
from benchmarks.tpch.oracle import mismatches  # noqa: E402
from dbt_pgtrickle import (  # noqa: E402
    create_stream_table,
    explain_stream_table,
    install,
    set_setting,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dsn", required=True, help="superuser DSN of the server (any database)")
    p.add_argument("--scales", default="0.1", help="comma-separated scale factors (0.1,1)")
    p.add_argument("--fractions", default="0.01", help="comma-separated change rates")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--queries", default="", help="comma-separated subset, e.g. q01,q03")
    p.add_argument("--seed", type=int, default=7, help="seed of the mutation cycles")
    p.add_argument("--auto-full-threshold", type=float, default=1.0)
    p.add_argument("--no-matview", action="store_true", help="skip the materialized views")
    p.add_argument("--no-verify", action="store_true", help="skip the exactness checks")
    p.add_argument("--set", action="append", help="NAME=VALUE server setting for the session")
    p.add_argument("--json-out")
    p.add_argument("--keep", action="store_true", help="keep the scratch database")
    return p.parse_args(argv)


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def build_matview(conn: psycopg.Connection[Any], q: Query) -> dict[str, Any]:
    mv = f"mv_{q.name}"
    conn.execute(
        sql.SQL("CREATE MATERIALIZED VIEW {} AS {}").format(sql.Identifier(mv), sql.SQL(q.sql))
    )
    keys = UNIQUE_KEYS.get(q.name)
    info: dict[str, Any] = {"name": mv, "unique_index": None, "concurrently": False}
    if keys:
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("CREATE UNIQUE INDEX {} ON {} ({})").format(
                        sql.Identifier(f"{mv}_key"),
                        sql.Identifier(mv),
                        sql.SQL(", ").join(sql.Identifier(k) for k in keys),
                    )
                )
            info["unique_index"] = list(keys)
            info["concurrently"] = True
        except psycopg.Error as exc:
            info["unique_index_error"] = str(exc).strip().splitlines()[0]
    return info


def run_scale(
    args: argparse.Namespace, scale: float, fractions: list[float], names: list[str] | None
) -> dict[str, Any]:
    db = f"pgt_bench_tpch_{os.getpid()}"
    dsn = C.create_database(args.dsn, db)
    out: dict[str, Any] = {"scale": scale, "database": db, "runs": []}
    try:
        conn = C.connect(dsn)
        out["session_settings"] = C.session_settings(conn, args.set)
        C.log(f"SF {scale}: loading data")
        t_load, sizes = timed(lambda: datagen.load(conn, scale, seed=1))
        out["sizes"] = vars(sizes)
        out["table_rows"] = datagen.table_counts(conn)
        out["load_s"] = t_load
        C.log(f"SF {scale}: {out['table_rows']} in {t_load:.1f}s")
        install(conn)
        set_setting(conn, "auto_full_threshold", args.auto_full_threshold)
        queries = load_queries(names)
        plans: dict[str, dict[str, Any]] = {}
        for name, q in queries.items():
            t_create, _ = timed(
                lambda q=q: create_stream_table(conn, q.stream_table, q.sql, refresh_mode="AUTO")
            )
            ex = explain_stream_table(conn, q.stream_table, "json")
            plans[name] = {
                "effective_mode": ex["effective_mode"],
                "strategy": ex["strategy"],
                "fallback_reason": ex["fallback_reason"],
                "create_s": t_create,
                "matview": None if args.no_matview else build_matview(conn, q),
            }
        out["queries"] = plans
        C.vacuum_analyze(conn, *[q.stream_table for q in queries.values()])
        datagen.analyze(conn)
        out["runtime_settings"] = C.runtime_settings(conn)
        mutator = mutations.Mutator(conn, sizes, seed=args.seed)
        for fraction in fractions:
            out["runs"].append(run_fraction(args, conn, queries, plans, mutator, fraction))
        conn.close()
    finally:
        if not args.keep:
            C.drop_database(args.dsn, db)
    return out


def run_fraction(
    args: argparse.Namespace,
    conn: C.TimedConnection,
    queries: dict[str, Query],
    plans: dict[str, dict[str, Any]],
    mutator: mutations.Mutator,
    fraction: float,
) -> dict[str, Any]:
    from dbt_pgtrickle import refresh_stream_table

    samples: dict[str, dict[str, list[Any]]] = {
        n: {"diff": [], "full": [], "mv": [], "mvc": [], "action": [], "rows_in": []}
        for n in queries
    }
    cycles = []
    names = list(queries)
    for rep in range(args.repeats):
        t_mut, stats = timed(lambda: mutator.cycle(fraction))
        cycles.append({"seconds": t_mut, "rows": stats.rows, "orders": stats.orders_touched})
        C.vacuum_analyze(conn, *C.change_buffers(conn))
        conn.execute("CHECKPOINT")
        C.log(
            f"  fraction {fraction:g} repeat {rep + 1}/{args.repeats}: "
            f"{stats.total} source rows changed in {t_mut:.1f}s"
        )
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            q = queries[name]
            s = samples[name]
            wall, result = timed(lambda q=q: refresh_stream_table(conn, q.stream_table))
            s["diff"].append(wall)
            s["action"].append(result.action)
            s["rows_in"].append(result.rows_in)
            if not args.no_verify:
                bad = mismatches(conn, q)
                if bad:
                    raise C.MismatchError(f"{name} differs from its query: {bad}")
            mv = plans[name]["matview"]
            steps: list[tuple[str, Any]] = [
                ("full", lambda q=q: refresh_stream_table(conn, q.stream_table, full=True))
            ]
            if mv is not None:
                ident = sql.Identifier(mv["name"])
                steps.append(
                    (
                        "mv",
                        lambda i=ident: conn.execute(
                            sql.SQL("REFRESH MATERIALIZED VIEW {}").format(i)
                        ),
                    )
                )
                if mv["concurrently"]:
                    steps.append(
                        (
                            "mvc",
                            lambda i=ident: conn.execute(
                                sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {}").format(i)
                            ),
                        )
                    )
            k = rep % len(steps)
            for label, fn in steps[k:] + steps[:k]:
                s[label].append(timed(fn)[0])
    report: dict[str, Any] = {"fraction": fraction, "cycles": cycles, "queries": {}}
    for name, s in samples.items():
        entry: dict[str, Any] = {
            "actions": s["action"],
            "rows_in": s["rows_in"],
            "samples_s": {k: s[k] for k in ("diff", "full", "mv", "mvc")},
        }
        for k in ("diff", "full", "mv", "mvc"):
            entry[f"{k}_ms"] = (
                {key: v * 1000 if key != "n" else v for key, v in C.summary(s[k]).items()}
                if s[k]
                else None
            )
        if s["diff"] and s["full"]:
            entry["full_over_diff"] = entry["full_ms"]["median"] / entry["diff_ms"]["median"]
        report["queries"][name] = entry
    return report


def print_run(scale: float, plans: dict[str, dict[str, Any]], run: dict[str, Any]) -> None:
    headers = [
        "query",
        "mode",
        "refresh action",
        "diff ms",
        "full ms",
        "matview ms",
        "matview conc. ms",
        "full/diff",
    ]
    rows = []
    for name, e in run["queries"].items():

        def med(key: str, e: dict[str, Any] = e) -> str:
            return f"{e[key]['median']:.1f}" if e.get(key) else "—"

        actions = sorted(set(e["actions"]))
        rows.append(
            [
                name,
                plans[name]["effective_mode"],
                "/".join(actions),
                med("diff_ms"),
                med("full_ms"),
                med("mv_ms"),
                med("mvc_ms"),
                f"{e['full_over_diff']:.2f}" if "full_over_diff" in e else "—",
            ]
        )
    print(f"\n### SF {scale}, change rate {run['fraction']:.2%} (medians)\n")
    print(C.render_table(headers, rows))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scales = [float(x) for x in args.scales.split(",") if x]
    fractions = [float(x) for x in args.fractions.split(",") if x]
    names = [x.strip() for x in args.queries.split(",") if x.strip()] or None
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        env = {
            "machine": C.machine_info(),
            "versions": C.versions(admin),
            "server_settings": C.server_settings(admin),
        }
    report: dict[str, Any] = {
        "benchmark": "tpch_refresh",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": vars(args),
        **env,
        "scales": [],
    }
    for scale in scales:
        result = run_scale(args, scale, fractions, names)
        report["scales"].append(result)
        for run in result["runs"]:
            print_run(scale, result["queries"], run)
        if args.json_out:  # written after every scale, so a long run keeps what it measured
            with open(args.json_out, "w", encoding="utf-8") as fh:
                json.dump(report, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
