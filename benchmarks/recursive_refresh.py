"""Differential vs full refresh of a WITH RECURSIVE stream table (ancestor/descendant closure).

    PYTHONPATH=. python benchmarks/recursive_refresh.py --dsn "host=127.0.0.1 user=postgres" \
        --nodes 100000 --repeats 3 --json-out benchmarks/results/recursive_refresh.json

Setup (scratch database, dropped at the end unless ``--keep``): ``node(id int primary key,
parent int)`` with ``--nodes`` nodes forming a tree (node i's parent is i / 8, so about six
levels), an index on ``parent``, and one DIFFERENTIAL stream table::

    with recursive r(anc, id) as (select parent, id from node where parent is not null
      union select r.anc, n.id from r join node n on n.parent = r.id) select anc, id from r

Per repeat, each change below is applied, then the stream table is refreshed and its wall time
recorded: inserting 10 leaves, deleting those leaves, moving one leaf, moving a subtree of about
73 nodes to another parent and back. Then one full refresh per repeat. After the last repeat the
stream table is compared with the query (symmetric ``EXCEPT ALL``); a mismatch aborts the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

from dbt_pgtrickle import create_stream_table, install, refresh_stream_table  # noqa: E402

QUERY = (
    "with recursive r(anc, id) as (select parent, id from node where parent is not null "
    "union select r.anc, n.id from r join node n on n.parent = r.id) select anc, id from r"
)


def changes(nodes: int) -> list[tuple[str, str]]:
    leaf = nodes - 1
    return [
        (
            "insert 10 leaves",
            f"INSERT INTO node SELECT {nodes} + i, {nodes // 20} + i FROM generate_series(1, 10) i",
        ),
        ("delete 10 leaves", f"DELETE FROM node WHERE id > {nodes}"),
        (
            "move a leaf",
            f"UPDATE node SET parent = CASE parent WHEN 7 THEN 6 ELSE 7 END WHERE id = {leaf}",
        ),
        (
            "move a subtree",
            "UPDATE node SET parent = CASE parent WHEN 3 THEN 187 ELSE 3 END WHERE id = 1500",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dsn", default=os.environ.get("PGTRICKLE_DSN", "host=127.0.0.1 user=postgres"))
    p.add_argument("--database", default="bench_recursive")
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json-out", default=None)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    machine = C.machine_info()
    dsn = C.create_database(args.dsn, args.database)
    conn = C.connect(dsn)
    try:
        install(conn)
        conn.execute("CREATE TABLE node (id int PRIMARY KEY, parent int)")
        conn.execute("CREATE INDEX ON node (parent)")
        conn.execute(
            "INSERT INTO node SELECT i, CASE WHEN i > 1 THEN i / 8 END "
            "FROM generate_series(1, %s) i",
            (args.nodes,),
        )
        C.vacuum_analyze(conn, "node")
        t0 = time.perf_counter()
        create_stream_table(conn, "st_closure", QUERY, refresh_mode="DIFFERENTIAL")
        create_s = time.perf_counter() - t0
        C.vacuum_analyze(conn, "st_closure")
        facts = conn.execute("SELECT count(*) FROM st_closure").fetchone()[0]  # type: ignore[index]
        C.log(f"{args.nodes:,} nodes, {facts:,} facts, created in {create_s:.1f}s")
        refresh_stream_table(conn, "st_closure")  # compiles and caches the plan
        samples: dict[str, list[float]] = {label: [] for label, _ in changes(args.nodes)}
        samples["full refresh"] = []
        for _ in range(args.repeats):
            for label, statement in changes(args.nodes):
                conn.execute(statement)
                t0 = time.perf_counter()
                result = refresh_stream_table(conn, "st_closure")
                samples[label].append(time.perf_counter() - t0)
                assert result.action == "DIFFERENTIAL", (label, result)
            t0 = time.perf_counter()
            refresh_stream_table(conn, "st_closure", full=True)
            samples["full refresh"].append(time.perf_counter() - t0)
        C.verify(conn, "st_closure", QUERY)
        rows = [[label, C.ms(C.summary(v)["median"]), len(v)] for label, v in samples.items()]
        print(C.render_table(["refresh after", "median ms", "n"], rows))
        if args.json_out:
            out = {
                "benchmark": "recursive_refresh",
                "machine": machine,
                "versions": C.versions(conn),
                "parameters": {"nodes": args.nodes, "repeats": args.repeats, "facts": facts},
                "create_s": create_s,
                "samples_s": samples,
                "median_ms": {k: C.summary(v)["median"] * 1000 for k, v in samples.items()},
            }
            with open(args.json_out, "w") as f:
                json.dump(out, f, indent=2, default=str)
        return 0
    finally:
        conn.close()
        if not args.keep:
            C.drop_database(args.dsn, args.database)


if __name__ == "__main__":
    sys.exit(main())
