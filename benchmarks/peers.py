"""What users would pick instead, in the same run (workload ``peers`` of the harness).

**pg_ivm** (when the extension is available on the server; it is not part of this project and is
not installed by it). The TPC-H corpus is loaded once and cloned into three databases: ``plain``
(nothing maintained), ``pgt`` (a stream table per query) and ``ivm`` (``pgivm.create_immv`` per
query). Each of the 22 queries is offered to pg_ivm; the ones it accepts are "the queries it
supports" and only those are created in ``pgt`` too. Then, identically in the three databases
(the mutation cycles are deterministic): ``cycles`` mutation cycles of ``fraction`` of the orders,
each timed as a whole (pg_ivm maintains its views inside these statements; pgtrickle only
captures), followed in ``pgt`` by a refresh of every stream table (timed), and then a batch
``UPDATE`` of ``batch_rows`` line items (discount and quantity), timed the same way. Every IMMV
and stream table is compared with its query at the end.

**dbt incremental model** (when dbt-core and dbt-postgres are installed). A throwaway dbt project
in a temporary directory, over ``events(id, customer_id, amount, status, updated_at)`` with
``dbt_rows`` rows and two incremental models (``materialized='incremental'``,
``incremental_strategy='merge'``, ``unique_key``) — the usual ``updated_at`` high-water-mark
pattern:

* ``inc_events``: ``SELECT id, customer_id, amount, status, updated_at FROM events WHERE status
  <> 'cancelled'`` (new and updated rows since the last run are merged);
* ``inc_by_customer``: per-customer ``count(*)``, ``sum(amount)`` recomputed for the customers of
  rows changed since the last run;

and two stream tables of the same queries. A change batch (1% of rows: inserts, amount updates,
updates that move a row to another customer, cancellations, deletes; writers set
``updated_at = now()`` as the pattern requires) is then applied; ``dbt run`` (timed, wall clock
of the process and dbt's own per-model ``execution_time``) and the refresh of the stream tables
(timed). Both are compared with their queries: the count of rows that differ is what the
incremental model gets wrong (deletes are never propagated; cancelled rows stay; a customer that
lost rows keeps its old totals).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from benchmarks import _common as C
from benchmarks.tpch import datagen, load_queries, mutations
from benchmarks.tpch_refresh import corpus_database
from benchmarks.write_path import create_immv, pg_ivm_ready, preload_pg_ivm
from dbt_pgtrickle import create_stream_table, install, refresh_stream_table

BATCH_UPDATE = (
    "UPDATE lineitem SET l_discount = 0.10 - l_discount, l_quantity = l_quantity + 1 "
    "WHERE (l_orderkey, l_linenumber) IN (SELECT l_orderkey, l_linenumber FROM lineitem "
    "ORDER BY l_orderkey, l_linenumber LIMIT %s)"
)


def _diff_count(conn: psycopg.Connection[Any], table: str, query: str) -> int:
    """Rows by which ``table`` (its columns named like the query's) differs from ``query``."""
    cur = conn.execute(sql.SQL("SELECT * FROM ({}) q LIMIT 0").format(sql.SQL(query)))
    assert cur.description is not None
    cols = sql.SQL(", ").join(sql.Identifier(d.name) for d in cur.description)
    t = sql.SQL("SELECT {} FROM {}").format(cols, sql.Identifier(table))
    q = sql.SQL("SELECT {} FROM ({}) q").format(cols, sql.SQL(query))
    n = conn.execute(
        sql.SQL(
            "SELECT (SELECT count(*) FROM ({} EXCEPT ALL {}) a) + "
            "(SELECT count(*) FROM ({} EXCEPT ALL {}) b)"
        ).format(t, q, q, t)
    ).fetchone()
    return int(n[0])  # type: ignore[index]


# --------------------------------------------------------------------------------------------
# pg_ivm on the TPC-H corpus


def ivm_tpch(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    scale, fraction = float(p["scale"]), float(p["fraction"])
    names = {v: ctx.scratch_name(f"peers_{v}") for v in ("plain", "pgt", "ivm")}
    base_dsn, data = corpus_database(
        ctx.admin_dsn,
        scale,
        1,
        names["plain"],
        cache=bool(p.get("cache_data", True)),
        log=ctx.log,
    )
    dsns = {"plain": base_dsn}
    try:
        with psycopg.connect(ctx.admin_dsn, autocommit=True) as admin:
            for v in ("pgt", "ivm"):
                admin.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                        sql.Identifier(names[v]), sql.Identifier(names["plain"])
                    )
                )
                dsns[v] = C.with_dbname(ctx.admin_dsn, names[v])
        preload_pg_ivm(ctx.admin_dsn, names["ivm"])
        queries = load_queries()
        conns = {v: C.connect(d) for v, d in dsns.items()}
        ivm, pgt_conn = conns["ivm"], conns["pgt"]
        version = pg_ivm_ready(ivm)
        supported: dict[str, float] = {}
        rejected: dict[str, str] = {}
        for name, q in queries.items():
            try:
                t0 = time.perf_counter()
                with ivm.transaction():
                    create_immv(ivm, f"ivm_{name}", q.sql)
                supported[name] = time.perf_counter() - t0
            except psycopg.Error as exc:
                rejected[name] = (exc.diag.message_primary or str(exc)).strip()
        ctx.log(f"  pg_ivm {version} accepts {sorted(supported)}")
        install(pgt_conn)
        create_s: dict[str, float] = {}
        for name in supported:
            t0 = time.perf_counter()
            create_stream_table(pgt_conn, queries[name].stream_table, queries[name].sql)
            create_s[name] = time.perf_counter() - t0
        for c in conns.values():
            datagen.analyze(c)
        sizes = datagen.Sizes.at(scale)
        mutators = {v: mutations.Mutator(c, sizes, seed=11) for v, c in conns.items()}
        cyc: dict[str, list[float]] = {v: [] for v in conns}
        refresh: list[float] = []
        modes = {}
        for i in range(int(p["cycles"])):
            for v, c in conns.items():
                c.execute("CHECKPOINT")
                t0 = time.perf_counter()
                mutators[v].cycle(fraction)
                cyc[v].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for name in supported:
                r = refresh_stream_table(pgt_conn, queries[name].stream_table)
                modes.setdefault(name, set()).add(r.action)
            refresh.append(time.perf_counter() - t0)
            ctx.log(
                f"  pg_ivm cycle {i + 1}: " + ", ".join(f"{v} {t[-1]:.2f}s" for v, t in cyc.items())
            )
        batch: dict[str, float] = {}
        rows = int(p["batch_rows"])
        for v, c in conns.items():
            c.execute("CHECKPOINT")
            t0 = time.perf_counter()
            n = c.execute(BATCH_UPDATE, (rows,)).rowcount
            batch[v] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for name in supported:
            refresh_stream_table(pgt_conn, queries[name].stream_table)
        batch["pgt_refresh"] = time.perf_counter() - t0
        checks = {}
        for name in supported:
            checks[f"ivm_{name}"] = _diff_count(ivm, f"ivm_{name}", queries[name].sql)
            checks[queries[name].stream_table] = _diff_count(
                pgt_conn, queries[name].stream_table, queries[name].sql
            )
        for c in conns.values():
            c.close()
    finally:
        for v in ("plain", "pgt", "ivm"):
            C.drop_database(ctx.admin_dsn, names[v])
    return {
        "pg_ivm": version,
        "scale": scale,
        "fraction": fraction,
        "data": data,
        "supported": sorted(supported),
        "rejected": rejected,
        "immv_create_s": supported,
        "stream_table_create_s": create_s,
        "stream_table_actions": {k: sorted(v) for k, v in modes.items()},
        "cycle_s": {v: C.summary(t) for v, t in cyc.items()},
        "cycle_samples_s": cyc,
        "pgt_refresh_s": C.summary(refresh),
        "batch_update_rows": n,
        "batch_update_s": batch,
        "rows_differing_from_query": checks,
    }


# --------------------------------------------------------------------------------------------
# dbt incremental models


DBT_MODELS = {
    "inc_events": (
        "{{ config(materialized='incremental', unique_key='id', "
        "incremental_strategy='merge') }}\n"
        "SELECT id, customer_id, amount, status, updated_at FROM {{ source('app', 'events') }}\n"
        "WHERE status <> 'cancelled'\n"
        "{% if is_incremental() %}\n"
        "  AND updated_at > (SELECT coalesce(max(updated_at), '-infinity') FROM {{ this }})\n"
        "{% endif %}\n"
    ),
    "inc_by_customer": (
        "{{ config(materialized='incremental', unique_key='customer_id', "
        "incremental_strategy='merge') }}\n"
        "SELECT customer_id, count(*) AS n, sum(amount) AS total, max(updated_at) AS updated_at\n"
        "FROM {{ source('app', 'events') }}\n"
        "WHERE status <> 'cancelled'\n"
        "{% if is_incremental() %}\n"
        "  AND customer_id IN (SELECT customer_id FROM {{ source('app', 'events') }}\n"
        "    WHERE updated_at > (SELECT coalesce(max(updated_at), '-infinity') FROM {{ this }}))\n"
        "{% endif %}\n"
        "GROUP BY customer_id\n"
    ),
}
#: the same queries, as stream tables (and as the truth the models are compared with)
PLAIN = {
    "inc_events": "SELECT id, customer_id, amount, status, updated_at FROM events "
    "WHERE status <> 'cancelled'",
    "inc_by_customer": "SELECT customer_id, count(*) AS n, sum(amount) AS total, "
    "max(updated_at) AS updated_at FROM events WHERE status <> 'cancelled' GROUP BY customer_id",
}
#: columns compared (the aggregate's max(updated_at) is left out: it is bookkeeping)
COMPARE = {
    "inc_events": "SELECT id, customer_id, amount, status FROM {}",
    "inc_by_customer": "SELECT customer_id, n, total FROM {}",
}


def _dbt_project(root: Path, dsn: str) -> None:
    params = conninfo_to_dict(dsn)
    (root / "models").mkdir(parents=True)
    (root / "dbt_project.yml").write_text(
        "name: pgt_bench_peer\nversion: '1.0'\nconfig-version: 2\nprofile: pgt_bench_peer\n"
        "model-paths: ['models']\n"
    )
    (root / "profiles.yml").write_text(
        textwrap.dedent(
            f"""\
            pgt_bench_peer:
              target: bench
              outputs:
                bench:
                  type: postgres
                  host: "{params.get("host", "127.0.0.1")}"
                  port: {int(params.get("port", 5432))}
                  user: "{params.get("user", "postgres")}"
                  password: "{params.get("password", "")}"
                  dbname: "{params["dbname"]}"
                  schema: public
                  threads: 1
            """
        )
    )
    (root / "models" / "sources.yml").write_text(
        "version: 2\nsources:\n  - name: app\n    schema: public\n    tables:\n"
        "      - name: events\n"
    )
    for name, body in DBT_MODELS.items():
        (root / "models" / f"{name}.sql").write_text(body)


def _dbt_run(root: Path) -> dict[str, Any]:
    cmd = [
        sys.executable, "-c", "from dbt.cli.main import cli; cli()", "run",
        "--project-dir", str(root), "--profiles-dir", str(root), "--no-use-colors",
    ]  # fmt: skip
    env = dict(os.environ, DBT_SEND_ANONYMOUS_USAGE_STATS="false", DO_NOT_TRACK="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-15:])
        raise RuntimeError(f"dbt run failed (exit {proc.returncode}):\n{tail}")
    results = json.loads((root / "target" / "run_results.json").read_text())
    per_model = {r["unique_id"].split(".")[-1]: r["execution_time"] for r in results["results"]}
    return {"wall_s": wall, "model_s": per_model}


def dbt_incremental(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    try:
        import dbt.adapters.postgres  # noqa: F401
        from dbt.cli.main import cli  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"dbt-core/dbt-postgres not importable: {exc}"}
    rows = int(p["dbt_rows"])
    dsn = ctx.scratch_database("peers_dbt")
    try:
        conn = C.connect(dsn)
        install(conn)
        conn.execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, customer_id int NOT NULL, "
            "amount numeric(12,2) NOT NULL, status text NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO events SELECT g, 1 + g %% %s, (g %% 1000) / 10.0, "
            "(ARRAY['new','paid','shipped'])[1 + g %% 3], now() - interval '1 day' "
            "FROM generate_series(1, %s) g",
            (max(10, rows // 20), rows),
        )
        conn.execute("VACUUM ANALYZE events")
        out: dict[str, Any] = {"rows": rows, "models": sorted(DBT_MODELS)}
        with tempfile.TemporaryDirectory(prefix="pgt-bench-dbt-") as tmp:
            root = Path(tmp)
            _dbt_project(root, dsn)
            out["dbt_initial_run"] = _dbt_run(root)
            for name, q in PLAIN.items():
                create_stream_table(conn, f"st_{name}", q, refresh_mode="DIFFERENTIAL")
            rng = random.Random(5)
            n = max(5, rows // 100)
            ids = rng.sample(range(1, rows + 1), 4 * n)
            upd, move, cancel, dele = (ids[i * n : (i + 1) * n] for i in range(4))
            customers = max(10, rows // 20)
            with conn.transaction():
                conn.execute(
                    "INSERT INTO events SELECT g, 1 + g %% %s, 5, 'new', now() "
                    "FROM generate_series(%s::bigint, %s::bigint) g",
                    (customers, rows + 1, rows + n),
                )
                conn.execute(
                    "UPDATE events SET amount = amount + 1, updated_at = now() WHERE id = ANY(%s)",
                    (upd,),
                )
                conn.execute(
                    "UPDATE events SET customer_id = 1 + (customer_id + 7) %% %s, "
                    "updated_at = now() WHERE id = ANY(%s)",
                    (customers, move),
                )
                conn.execute(
                    "UPDATE events SET status = 'cancelled', updated_at = now() WHERE id = ANY(%s)",
                    (cancel,),
                )
                conn.execute("DELETE FROM events WHERE id = ANY(%s)", (dele,))
            out["change_batch"] = {
                "inserted": n, "amount_updated": n, "moved_customer": n, "cancelled": n,
                "deleted": n,
            }  # fmt: skip
            out["dbt_incremental_run"] = _dbt_run(root)
        refresh: dict[str, float] = {}
        for name in PLAIN:
            t0 = time.perf_counter()
            refresh_stream_table(conn, f"st_{name}")
            refresh[name] = time.perf_counter() - t0
        out["stream_table_refresh_s"] = refresh
        plain: dict[str, float] = {}
        for name, q in PLAIN.items():
            plain[name] = C.timed_plain_query(conn, q)
        out["plain_query_s"] = plain
        wrong: dict[str, Any] = {}
        for name in PLAIN:
            truth = COMPARE[name].format(f"({PLAIN[name]}) q")
            for label, table in (("dbt", name), ("stream_table", f"st_{name}")):
                mine = COMPARE[name].format(sql.Identifier(table).as_string(conn))
                n_wrong = conn.execute(
                    f"SELECT (SELECT count(*) FROM ({mine} EXCEPT ALL {truth}) a) + "
                    f"(SELECT count(*) FROM ({truth} EXCEPT ALL {mine}) b)"
                ).fetchone()[0]  # type: ignore[index]
                wrong.setdefault(name, {})[label] = int(n_wrong)
        out["rows_differing_from_query"] = wrong
        conn.close()
    finally:
        ctx.drop_database("peers_dbt")
    return out


def run_workload(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with psycopg.connect(ctx.admin_dsn, autocommit=True) as admin:
        has_ivm = admin.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_ivm'"
        ).fetchone()
    if has_ivm:
        ctx.log("  peers: pg_ivm on the TPC-H corpus")
        out["pg_ivm"] = ivm_tpch(ctx, p)
    else:
        out["pg_ivm"] = {"skipped": "the pg_ivm extension is not available on this server"}
    ctx.log("  peers: dbt incremental models")
    out["dbt"] = dbt_incremental(ctx, p)
    return out
