"""Where does a differential refresh stop being cheaper than a full recompute?

    PYTHONPATH=. python benchmarks/auto_threshold.py --dsn "host=127.0.0.1 port=55432 user=postgres" \
        --rows 200000 --repeats 3 --json-out benchmarks/results/auto_threshold.json

For each query shape, two stream tables over two identical copies of an ``orders`` table of
``--rows`` rows: one ``refresh_mode='DIFFERENTIAL'``, one ``refresh_mode='FULL'``. For each change
fraction (ascending) and repeat, one batch of ``fraction × rows`` changed rows (40% updates,
30% inserts, 30% deletes; see ``_common.ChangeGenerator``) is applied identically to both copies;
``CHECKPOINT``; then ``refresh_stream_table`` of the differential one and
``refresh_stream_table(full=True)`` of the full one are timed, in an order alternating per repeat;
both are checked against the query (symmetric ``EXCEPT ALL``; a mismatch aborts); then
``VACUUM (ANALYZE)`` of sources, stream tables and change buffers (untimed; it stands for an
autovacuum that keeps up, so batches do not inherit each other's dead rows).

The crossover of a shape is the change fraction where ``full / differential`` falls to 1,
interpolated log-linearly between the two measured fractions around it. ``auto_full_threshold``
compares *pending change-buffer rows* with the sources' row estimate, and an UPDATE writes two
buffer rows (old and new image), so the crossover is also given in that unit
(``rows_in / source rows``), which is what the setting should be compared with.

Shapes:

* ``groupby``: ``select region, status, count(*), sum(amount), avg(qty) ... group by region, status``
  (105 groups; a full recompute is one scan + hash aggregate, the stream table is tiny);
* ``projection``: ``select id, customer_id, region, amount ... where status <> 'cancelled' and
  amount >= 50`` (keyed by the primary key; ~72% of rows qualify);
* ``distinct``: ``select distinct customer_id, status ...`` (~85% of rows are distinct pairs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

from dbt_pgtrickle import create_stream_table, install  # noqa: E402

SHAPES = {
    "groupby": (
        "select region, status, count(*) as n, sum(amount) as revenue, avg(qty) as avg_qty "
        "from {table} group by region, status"
    ),
    "projection": (
        "select id, customer_id, region, amount from {table} "
        "where status <> 'cancelled' and amount >= 50"
    ),
    "distinct": "select distinct customer_id, status from {table}",
}
DEFAULT_FRACTIONS = "0.001,0.01,0.02,0.05,0.1,0.2,0.4"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--dsn",
        default=os.environ.get("PGTRICKLE_DSN", "host=127.0.0.1 user=postgres"),
        help="superuser DSN of the server (a scratch database is created on it)",
    )
    p.add_argument("--database", default="bench_threshold", help="scratch database name")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument(
        "--fractions",
        default=DEFAULT_FRACTIONS,
        help=f"comma-separated change fractions (default {DEFAULT_FRACTIONS})",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of shapes")
    C.add_session_settings_option(p)
    p.add_argument("--json-out", default=None)
    p.add_argument(
        "--from-json",
        action="append",
        metavar="PATH",
        help="do not run: re-print the tables and threshold analysis of saved JSON results "
        "(repeatable; shapes of several runs are combined)",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch database")
    return p.parse_args(argv)


def crossover(points: list[tuple[float, float]]) -> dict[str, Any]:
    """``points`` = (x, full/diff ratio), x ascending. The first x where the ratio falls below 1
    after being ≥ 1, log-log interpolated; or a bound when it never crosses in range."""
    if not points:
        return {"kind": "none"}
    if points[0][1] < 1:
        return {
            "kind": "below_range",
            "value": points[0][0],
            "text": f"< {points[0][0]:.2%} (differential already slower)",
        }
    for (x0, r0), (x1, r1) in zip(points, points[1:], strict=False):
        if r0 >= 1 > r1:
            lx0, lx1, lr0, lr1 = math.log(x0), math.log(x1), math.log(r0), math.log(r1)
            x = math.exp(lx0 + (lx1 - lx0) * (0 - lr0) / (lr1 - lr0))
            return {"kind": "crossing", "value": x, "between": [x0, x1], "text": f"≈ {x:.1%}"}
    return {
        "kind": "above_range",
        "value": points[-1][0],
        "text": f"> {points[-1][0]:.0%} (differential cheaper everywhere measured)",
    }


def interp_log(points: list[tuple[float, float]], x: float) -> float:
    """Log-log interpolation of ``points`` (x ascending) at ``x``, clamped to the measured range."""
    if x <= points[0][0]:
        return points[0][1]
    if x >= points[-1][0]:
        return points[-1][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= x <= x1:
            f = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return math.exp(math.log(y0) + f * (math.log(y1) - math.log(y0)))
    return points[-1][1]


CANDIDATES = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.40)


def threshold_analysis(results: dict[str, Any]) -> dict[str, Any]:
    """Worst-case slowdown of a global ``auto_full_threshold`` t (in its own unit, pending buffer
    rows / source rows), per shape: AUTO refreshes differentially up to t and fully above it, so
    a shape with crossover c pays ``1/r(t)`` when t > c (differential kept too long) and ``r(t)``
    when t < c (full chosen too early), r = full/differential interpolated log-log. The
    recommended t minimises the largest slowdown over the shapes (minimax), on a 0.01 grid."""
    curves = {
        s: [(e["pending_ratio"], e["ratio_full_over_diff"]) for e in r["fractions"]]
        for s, r in results.items()
    }

    def worst(t: float) -> dict[str, float]:
        out = {}
        for s, pts in curves.items():
            r = interp_log(pts, t)
            out[s] = max(r, 1 / r)
        return out

    grid = [round(0.01 * i, 2) for i in range(1, 61)]
    best = min(grid, key=lambda t: (max(worst(t).values()), t))
    return {
        "unit": "pending change-buffer rows / source rows (what auto_full_threshold compares)",
        "candidates": {f"{t:.2f}": worst(t) for t in CANDIDATES},
        "minimax_threshold": best,
        "minimax_worst_slowdown": max(worst(best).values()),
    }


def print_report(results: dict[str, Any], analysis: dict[str, Any]) -> None:
    for shape, res in results.items():
        print()
        print(
            f"{shape}: {res['query'].format(table='orders')}  "
            f"({res['stream_table_rows_at_start']:,} stream-table rows)"
        )
        print(
            C.render_table(
                [
                    "change",
                    "rows_in",
                    "pending/rows",
                    "diff ms (med)",
                    "full ms (med)",
                    "plain ms (med)",
                    "full/diff",
                    "diff min–max",
                    "full min–max",
                ],
                [
                    [
                        f"{e['fraction']:.1%}",
                        f"{e['rows_in_median']:.0f}",
                        f"{e['pending_ratio']:.3f}",
                        f"{e['diff_median_ms']:.1f}",
                        f"{e['full_median_ms']:.1f}",
                        f"{e['plain_median_ms']:.1f}",
                        f"{e['ratio_full_over_diff']:.2f}x",
                        f"{min(e['diff_ms']):.0f}–{max(e['diff_ms']):.0f}",
                        f"{min(e['full_ms']):.0f}–{max(e['full_ms']):.0f}",
                    ]
                    for e in res["fractions"]
                ],
            )
        )
        print(
            f"crossover: change fraction {res['crossover_change_fraction'].get('text')}; "
            f"pending buffer rows / source rows {res['crossover_pending_ratio'].get('text')}"
        )
    print()
    print(
        C.render_table(
            ["shape", "crossover (change fraction)", "crossover (pending rows / source rows)"],
            [
                [
                    s,
                    r["crossover_change_fraction"].get("text"),
                    r["crossover_pending_ratio"].get("text"),
                ]
                for s, r in results.items()
            ],
        )
    )

    print()
    print(
        f"auto_full_threshold (unit: {analysis['unit']}): worst-case slowdown vs the better "
        "action, per shape"
    )
    shapes = list(results)
    print(
        C.render_table(
            ["threshold", *shapes, "worst"],
            [
                [t, *(f"{w[s]:.2f}x" for s in shapes), f"{max(w.values()):.2f}x"]
                for t, w in analysis["candidates"].items()
            ],
        )
    )
    print(
        f"minimax threshold: {analysis['minimax_threshold']:.2f} "
        f"(worst slowdown {analysis['minimax_worst_slowdown']:.2f}x)"
    )


def report_from_json(paths: list[str]) -> int:
    """Re-print (and re-analyse) saved runs; shapes of several runs are combined, each labelled
    with its row count when the runs differ in size."""
    results: dict[str, Any] = {}
    runs = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            runs.append(json.load(fh))
    sizes = {r["conditions"]["rows"] for r in runs}
    for run_ in runs:
        for shape, res in run_["shapes"].items():
            key = shape if len(sizes) == 1 else f"{shape}@{run_['conditions']['rows']:,}"
            results[key] = res
    print_report(results, threshold_analysis(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return report_from_json(args.from_json)
    started = time.time()
    machine = C.machine_info()
    dsn = C.create_database(args.dsn, args.database)
    conn = C.connect(dsn)
    try:
        return run(args, conn, machine, started)
    finally:
        conn.close()
        if not args.keep:
            C.drop_database(args.dsn, args.database)


def run(
    args: argparse.Namespace, conn: C.TimedConnection, machine: dict[str, Any], started: float
) -> int:
    fractions = sorted(float(f) for f in args.fractions.split(","))
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = set(shapes) - set(SHAPES)
    if unknown:
        raise SystemExit(f"unknown shapes: {', '.join(sorted(unknown))}")
    install(conn)
    C.session_settings(conn, args.set)
    C.log(f"building the base table ({args.rows:,} rows)")
    C.build_orders(conn, "orders_base", args.rows)
    results: dict[str, Any] = {}
    for shape in shapes:
        src_d, src_f = f"{shape}_src_d", f"{shape}_src_f"
        st_d, st_f = f"{shape}_st_diff", f"{shape}_st_full"
        C.clone_table(conn, "orders_base", src_d)
        C.clone_table(conn, "orders_base", src_f)
        C.vacuum_analyze(conn, src_d, src_f)
        q_d, q_f = SHAPES[shape].format(table=src_d), SHAPES[shape].format(table=src_f)
        create_stream_table(conn, st_d, q_d, refresh_mode="DIFFERENTIAL")
        create_stream_table(conn, st_f, q_f, refresh_mode="FULL")
        housekeeping = [src_d, src_f, st_d, st_f]
        C.vacuum_analyze(conn, *housekeeping, *C.change_buffers(conn))
        st_rows = C.verify(conn, st_d, q_d)
        C.verify(conn, st_f, q_f)
        C.log(f"{shape}: stream tables created ({st_rows:,} rows)")
        gen = C.ChangeGenerator(args.rows)
        per_fraction = []
        for frac in fractions:
            n_change = max(1, round(args.rows * frac))
            diff_s, full_s, plain_s, rows_in, reltuples, phases_d, phases_f = (
                [],
                [],
                [],
                [],
                [],
                [],
                [],
            )
            actions: set[str] = set()
            for r in range(args.repeats):
                cs = gen.make(n_change)
                done_d = C.apply_changes(conn, src_d, cs)
                done_f = C.apply_changes(conn, src_f, cs)
                if done_d != done_f or done_d != cs.counts:
                    raise SystemExit(
                        f"change batch applied unevenly: {cs.counts} {done_d} {done_f}"
                    )
                reltuples.append(
                    conn.execute(
                        "SELECT reltuples FROM pg_class WHERE oid = %s::regclass", (src_d,)
                    ).fetchone()[0]
                )
                conn.execute("CHECKPOINT")
                order = ["diff", "full"] if r % 2 == 0 else ["full", "diff"]
                for what in order:
                    if what == "diff":
                        wall, res, ph = C.timed_refresh(conn, st_d)
                        diff_s.append(wall)
                        phases_d.append(ph)
                        rows_in.append(res.rows_in)
                        actions.add(res.action)
                    else:
                        wall, res, ph = C.timed_refresh(conn, st_f, full=True)
                        full_s.append(wall)
                        phases_f.append(ph)
                plain_s.append(C.timed_plain_query(conn, q_f))
                C.verify(conn, st_d, q_d)
                C.verify(conn, st_f, q_f)
                C.vacuum_analyze(conn, *housekeeping, *C.change_buffers(conn))
            md, mf = statistics.median(diff_s), statistics.median(full_s)
            entry = {
                "fraction": frac,
                "changed_rows": n_change,
                "change_mix": cs.counts,
                "rows_in_median": statistics.median(rows_in),
                "pending_ratio": statistics.median(rows_in) / statistics.median(reltuples),
                "actions": sorted(actions),
                "diff_ms": [s * 1000 for s in diff_s],
                "full_ms": [s * 1000 for s in full_s],
                "plain_ms": [s * 1000 for s in plain_s],
                "diff_median_ms": md * 1000,
                "full_median_ms": mf * 1000,
                "plain_median_ms": statistics.median(plain_s) * 1000,
                "ratio_full_over_diff": mf / md,
                "diff_phases_median_ms": _median_phases(phases_d),
                "full_phases_median_ms": _median_phases(phases_f),
            }
            per_fraction.append(entry)
            C.log(
                f"{shape} {frac:.1%}: diff {md * 1000:.1f} ms, full {mf * 1000:.1f} ms, "
                f"full/diff {mf / md:.2f}x (rows_in {entry['rows_in_median']:.0f}) — verified"
            )
        results[shape] = {
            "query": SHAPES[shape],
            "stream_table_rows_at_start": st_rows,
            "fractions": per_fraction,
            "crossover_change_fraction": crossover(
                [(e["fraction"], e["ratio_full_over_diff"]) for e in per_fraction]
            ),
            "crossover_pending_ratio": crossover(
                [(e["pending_ratio"], e["ratio_full_over_diff"]) for e in per_fraction]
            ),
        }

    analysis = threshold_analysis(results)
    print_report(results, analysis)

    report = {
        **C.report_header("auto_threshold", started, machine, conn),
        "conditions": {
            "session_settings": args.set or [],
            "rows": args.rows,
            "fractions": fractions,
            "repeats": args.repeats,
            "change_mix": "40% updates (half move group, half amount/qty), 30% inserts, 30% deletes",
            "source_layout": "per shape two identical copies, same changes applied to both",
            "before_measurement": "CHECKPOINT",
            "after_measurement": "VACUUM (ANALYZE) sources, stream tables, change buffers",
            "measurement_order": "alternating diff-first / full-first per repeat",
        },
        "shapes": results,
        "threshold_analysis": analysis,
    }
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, default=str)
        C.log(f"wrote {args.json_out}")
    return 0


def _median_phases(samples: list[dict[str, float]]) -> dict[str, float]:
    labels = sorted({lab for p in samples for lab in p})
    return {lab: statistics.median(p.get(lab, 0.0) for p in samples) for lab in labels}


if __name__ == "__main__":
    sys.exit(main())
