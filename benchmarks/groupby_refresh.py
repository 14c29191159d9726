"""Differential vs full refresh of a GROUP BY stream table after a small change.

    PYTHONPATH=. python benchmarks/groupby_refresh.py --dsn "host=127.0.0.1 port=55432 user=postgres" \
        --rows 1000000 --change-fraction 0.01 --repeats 5 --json-out benchmarks/results/groupby_refresh.json

Setup (in a scratch database, dropped at the end unless ``--keep``):

* two identical source tables ``orders_d`` and ``orders_f`` of ``--rows`` rows (built once with
  ``generate_series``, copied, ``VACUUM ANALYZE``);
* ``st_groupby_diff`` on ``orders_d`` with ``refresh_mode='DIFFERENTIAL'`` and
  ``st_groupby_full`` on ``orders_f`` with ``refresh_mode='FULL'``, same query shape::

      select region, status, count(*) as n, sum(amount) as revenue, avg(qty) as avg_qty
      from orders_x group by region, status

  Each stream table has its own source copy, hence its own change buffer: each refresh pays
  for consuming and cleaning up its own buffer rows, as it would in a deployment with one
  stream table per source. (With one shared source, the buffer rows are deleted only by the
  second of the two refreshes, which would charge that one for both.)

Per repeat: one batch of ``change-fraction × rows`` changed rows (40% updates — half move rows
between (region, status) groups, half change amount/qty — 30% inserts, 30% deletes), applied as
the same four statements to both copies; ``CHECKPOINT``; then, in an order rotated per repeat,

* (a) ``refresh_stream_table(conn, 'st_groupby_diff')`` — differential;
* (b) ``refresh_stream_table(conn, 'st_groupby_full', full=True)`` — full recompute;
* (c) the plain query, ``CREATE TEMP TABLE x AS <query>`` on ``orders_f``;

then both stream tables are checked against the query (symmetric ``EXCEPT ALL`` on the visible
columns); a mismatch aborts the run. Each refresh's wall time is also split into phases from
the statements the runtime sends (see ``_common.TimedConnection``). After the timed repeats one
more batch is refreshed with ``auto_explain`` loaded (plans reported as NOTICEs, with ANALYZE
timing) so the JSON holds the actual plans of the delta query and the full recompute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

from dbt_pgtrickle import create_stream_table, install  # noqa: E402

QUERY = (
    "select region, status, count(*) as n, sum(amount) as revenue, avg(qty) as avg_qty "
    "from {table} group by region, status"
)
DIFF, FULL, PLAIN = "differential refresh", "full refresh", "plain query (CTAS)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--dsn",
        default=os.environ.get("PGTRICKLE_DSN", "host=127.0.0.1 user=postgres"),
        help="superuser DSN of the server (a scratch database is created on it)",
    )
    p.add_argument("--database", default="bench_groupby", help="scratch database name")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--change-fraction", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=5)
    C.add_session_settings_option(p)
    p.add_argument("--json-out", default=None, help="write the results as JSON to this path")
    p.add_argument("--no-explain", action="store_true", help="skip the auto_explain pass")
    p.add_argument("--keep", action="store_true", help="keep the scratch database")
    return p.parse_args(argv)


def auto_explain_pass(
    conn: C.TimedConnection, gen: C.ChangeGenerator, n_change: int
) -> dict[str, Any]:
    """One more batch, refreshed with auto_explain reporting every plan (with ANALYZE) as a
    NOTICE. Not used for the timings (the instrumentation adds overhead)."""
    cs = gen.make(n_change)
    C.apply_changes(conn, "orders_d", cs)
    C.apply_changes(conn, "orders_f", cs)
    conn.execute("CHECKPOINT")
    out: dict[str, Any] = {}
    for label, name, full in ((DIFF, "st_groupby_diff", False), (FULL, "st_groupby_full", True)):
        info = C.explained_refresh(conn, name, full=full)
        if "skipped" in info:
            return info
        info["plans"] = [p for p in info["plans"] if (p["duration_ms"] or 0) >= 1.0]
        out[label] = info
    C.verify(conn, "st_groupby_diff", QUERY.format(table="orders_d"))
    C.verify(conn, "st_groupby_full", QUERY.format(table="orders_f"))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    machine = C.machine_info()
    dsn = C.create_database(args.dsn, args.database)
    conn = C.connect(dsn)
    try:
        return run(args, conn, dsn, machine, started)
    finally:
        conn.close()
        if not args.keep:
            C.drop_database(args.dsn, args.database)


def run(
    args: argparse.Namespace,
    conn: C.TimedConnection,
    dsn: str,
    machine: dict[str, Any],
    started: float,
) -> int:
    install(conn)
    C.session_settings(conn, args.set)
    C.log(f"building orders_d with {args.rows:,} rows and its copy orders_f")
    t0 = time.perf_counter()
    C.build_orders(conn, "orders_d", args.rows)
    C.clone_table(conn, "orders_d", "orders_f")
    C.vacuum_analyze(conn, "orders_d", "orders_f")
    build_s = time.perf_counter() - t0
    q_diff, q_full = QUERY.format(table="orders_d"), QUERY.format(table="orders_f")
    t0 = time.perf_counter()
    create_stream_table(conn, "st_groupby_diff", q_diff, refresh_mode="DIFFERENTIAL")
    create_diff_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    create_stream_table(conn, "st_groupby_full", q_full, refresh_mode="FULL")
    create_full_s = time.perf_counter() - t0
    C.vacuum_analyze(conn, "st_groupby_diff", "st_groupby_full")
    groups = C.verify(conn, "st_groupby_diff", q_diff)
    C.verify(conn, "st_groupby_full", q_full)
    C.log(f"built in {build_s:.1f}s; stream tables created ({groups} groups)")

    gen = C.ChangeGenerator(args.rows)
    n_change = round(args.rows * args.change_fraction)
    samples: dict[str, list[float]] = {DIFF: [], FULL: [], PLAIN: []}
    phase_samples: dict[str, list[dict[str, float]]] = {DIFF: [], FULL: []}
    engine_ms: dict[str, list[float]] = {DIFF: [], FULL: []}
    repeats: list[dict[str, Any]] = []
    for r in range(args.repeats):
        cs = gen.make(n_change)
        done_d = C.apply_changes(conn, "orders_d", cs)
        done_f = C.apply_changes(conn, "orders_f", cs)
        if done_d != done_f or done_d != cs.counts:
            raise SystemExit(f"change batch applied unevenly: {cs.counts} {done_d} {done_f}")
        conn.execute("CHECKPOINT")
        order = [DIFF, FULL, PLAIN]
        order = order[r % 3 :] + order[: r % 3]
        rep: dict[str, Any] = {"repeat": r + 1, "order": order, "changes": done_d}
        for what in order:
            if what == PLAIN:
                wall = C.timed_plain_query(conn, q_full)
                rep[what] = {"wall_ms": wall * 1000}
            else:
                name, full = (
                    ("st_groupby_diff", False) if what == DIFF else ("st_groupby_full", True)
                )
                wall, result, ph = C.timed_refresh(conn, name, full=full)
                rep[what] = {
                    "wall_ms": wall * 1000,
                    "engine_duration_ms": result.duration_ms,
                    "action": result.action,
                    "rows_in": result.rows_in,
                    "rows_inserted": result.rows_inserted,
                    "rows_updated": result.rows_updated,
                    "rows_deleted": result.rows_deleted,
                    "phases_ms": ph,
                }
                phase_samples[what].append(ph)
                engine_ms[what].append(result.duration_ms)
            samples[what].append(wall)
        C.verify(conn, "st_groupby_diff", q_diff)
        C.verify(conn, "st_groupby_full", q_full)
        rep["verified"] = True
        repeats.append(rep)
        C.log(
            f"repeat {r + 1}/{args.repeats}: diff {C.ms(samples[DIFF][-1])} ms "
            f"({rep[DIFF]['action']}, rows_in {rep[DIFF]['rows_in']}), "
            f"full {C.ms(samples[FULL][-1])} ms ({rep[FULL]['action']}), "
            f"plain {C.ms(samples[PLAIN][-1])} ms — verified"
        )

    explain = {} if args.no_explain else auto_explain_pass(conn, gen, n_change)

    stats = {k: C.summary(v) for k, v in samples.items()}
    ratios = [f / d for f, d in zip(samples[FULL], samples[DIFF], strict=True)]
    plain_ratios = [p / d for p, d in zip(samples[PLAIN], samples[DIFF], strict=True)]
    phase_median = {
        k: {
            label: statistics.median(p.get(label, 0.0) for p in v)
            for label in sorted({lab for p in v for lab in p})
        }
        for k, v in phase_samples.items()
    }

    rows = []
    for what in (DIFF, FULL, PLAIN):
        s = stats[what]
        actions = sorted({rep[what].get("action", "-") for rep in repeats})
        rows_in = [rep[what]["rows_in"] for rep in repeats if "rows_in" in rep[what]]
        rows.append(
            [
                what,
                C.ms(s["median"]),
                C.ms(s["min"]),
                C.ms(s["max"]),
                ",".join(actions),
                int(statistics.median(rows_in)) if rows_in else "-",
            ]
        )
    print()
    print(
        f"orders: {args.rows:,} rows; change batch: {n_change:,} rows "
        f"({args.change_fraction:.2%}; {cs.counts}); {args.repeats} repeats; {groups} groups"
    )
    print(
        C.render_table(["measurement", "median ms", "min ms", "max ms", "action", "rows_in"], rows)
    )
    print()
    print(
        f"full/differential: median of per-repeat ratios {statistics.median(ratios):.2f}x "
        f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x); ratio of medians "
        f"{stats[FULL]['median'] / stats[DIFF]['median']:.2f}x"
    )
    print(f"plain query/differential: median {statistics.median(plain_ratios):.2f}x")
    print()
    labels = sorted({lab for v in phase_median.values() for lab in v})
    print(
        C.render_table(
            ["phase (median ms)", "differential", "full"],
            [
                [
                    lab,
                    f"{phase_median[DIFF].get(lab, 0):.1f}",
                    f"{phase_median[FULL].get(lab, 0):.1f}",
                ]
                for lab in labels
            ],
        )
    )
    if explain and "skipped" not in explain:
        print()
        for what, info in explain.items():
            print(f"auto_explain ({what}, instrumented wall {info['wall_ms']:.1f} ms):")
            for p in info["plans"][:4]:
                print(f"  {p['duration_ms']:9.1f} ms  {p['query'][:110]}")

    report = {
        **C.report_header("groupby_refresh", started, machine, conn),
        "conditions": {
            "session_settings": args.set or [],
            "rows": args.rows,
            "change_fraction": args.change_fraction,
            "changed_rows_per_batch": n_change,
            "change_mix": cs.counts,
            "repeats": args.repeats,
            "groups": groups,
            "query": QUERY,
            "source_layout": "two identical copies (orders_d, orders_f), same changes applied",
            "between_change_and_measurement": "CHECKPOINT",
            "measurement_order": "rotated per repeat (see repeats[].order)",
            "build_s": build_s,
            "create_stream_table_s": {"differential": create_diff_s, "full": create_full_s},
            "source_table_size": conn.execute(
                "SELECT pg_size_pretty(pg_total_relation_size('orders_d'))"
            ).fetchone()[0],
        },
        "summary_ms": {
            k: {m: v * 1000 if m != "n" else v for m, v in s.items()} for k, s in stats.items()
        },
        "engine_duration_ms_median": {k: statistics.median(v) for k, v in engine_ms.items()},
        "ratio_full_over_differential": {
            "median_of_ratios": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
            "ratio_of_medians": stats[FULL]["median"] / stats[DIFF]["median"],
        },
        "ratio_plain_over_differential_median": statistics.median(plain_ratios),
        "phases_median_ms": phase_median,
        "repeats": repeats,
        "auto_explain": explain,
    }
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, default=str)
        C.log(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
