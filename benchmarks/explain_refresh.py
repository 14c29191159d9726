"""Where does the time of one refresh go? Plans of every statement, with ANALYZE.

    PYTHONPATH=. python benchmarks/explain_refresh.py --dsn "host=127.0.0.1 port=55432 user=postgres" \
        --shape projection --rows 200000 --change-fraction 0.01

Builds one source table of ``--rows`` rows and one stream table of the chosen shape (the shapes
of ``auto_threshold.py``) with ``--mode`` (DIFFERENTIAL or FULL), applies one change batch
(``_common.ChangeGenerator``), then refreshes it with ``auto_explain`` loaded into the session
(``log_analyze``, ``log_buffers``, ``log_nested_statements``; plans sent to the client as
NOTICEs), and prints the phase split and the plans of the statements slower than ``--min-ms``,
slowest first. Checks the stream table against its query afterwards. Needs a superuser (LOAD).
Timings here include the instrumentation overhead; use the other scripts for timings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
from auto_threshold import SHAPES  # noqa: E402

from dbt_pgtrickle import create_stream_table, install  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dsn", default=os.environ.get("PGTRICKLE_DSN", "host=127.0.0.1 user=postgres"))
    p.add_argument("--database", default="bench_explain")
    p.add_argument("--shape", choices=sorted(SHAPES), default="projection")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--change-fraction", type=float, default=0.01)
    p.add_argument("--mode", choices=("DIFFERENTIAL", "FULL"), default="DIFFERENTIAL")
    p.add_argument("--min-ms", type=float, default=1.0, help="print plans at least this slow")
    C.add_session_settings_option(p)
    p.add_argument("--json-out", default=None)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)

    dsn = C.create_database(args.dsn, args.database)
    conn = C.connect(dsn)
    try:
        install(conn)
        C.session_settings(conn, args.set)
        C.build_orders(conn, "orders", args.rows)
        C.vacuum_analyze(conn, "orders")
        query = SHAPES[args.shape].format(table="orders")
        create_stream_table(conn, "st", query, refresh_mode=args.mode)
        C.vacuum_analyze(conn, "st", *C.change_buffers(conn))
        gen = C.ChangeGenerator(args.rows)
        cs = gen.make(max(1, round(args.rows * args.change_fraction)))
        C.apply_changes(conn, "orders", cs)
        conn.execute("CHECKPOINT")
        info = C.explained_refresh(conn, "st", full=args.mode == "FULL")
        if "skipped" in info:
            raise SystemExit(info["skipped"])
        C.verify(conn, "st", query)
        print(
            f"{args.shape} ({args.mode}), {args.rows:,} rows, change batch {cs.counts}: "
            f"{info['action']}, rows_in {info['rows_in']}, instrumented wall "
            f"{info['wall_ms']:.1f} ms"
        )
        print(
            C.render_table(
                ["phase", "ms"],
                [
                    [k, f"{v:.1f}"]
                    for k, v in sorted(info["phases_ms"].items(), key=lambda kv: -kv[1])
                ],
            )
        )
        for plan in info["plans"]:
            if (plan["duration_ms"] or 0) < args.min_ms:
                continue
            print()
            print(f"--- {plan['duration_ms']:.1f} ms: {plan['query'][:300]}")
            print(plan["plan"])
        if args.json_out:
            with open(args.json_out, "w", encoding="utf-8") as fh:
                json.dump(
                    {"args": vars(args), "changes": cs.counts, **info}, fh, indent=2, default=str
                )
    finally:
        conn.close()
        if not args.keep:
            C.drop_database(args.dsn, args.database)
    return 0


if __name__ == "__main__":
    sys.exit(main())
