"""TPC-H corpus: differential refresh vs full recompute vs REFRESH MATERIALIZED VIEW, per query.

Workload ``tpch`` of the harness (``python -m benchmarks run --workloads tpch``), also runnable on
its own (``python benchmarks/tpch_refresh.py --dsn … --scales 0.1``).

For one scale factor: a scratch database with the corpus of ``benchmarks/tpch`` (schema, pure-SQL
data, ``VACUUM ANALYZE``; with ``cache_data`` the loaded data is kept in a template database
``pgt_bench_tpch_tpl_…`` fingerprinted by the generator's source, and cloned for each run), then
per query

* a stream table ``tpch_qNN`` (``refresh_mode='AUTO'``; the stored ``auto_full_threshold`` is 1 so
  that every refresh that *can* be differential is, and the differential time is always measured;
  queries the compiler cannot maintain fall back to FULL, and the tables say so),
* a materialized view ``mv_qNN`` of the same query, with a unique index on the query's key
  columns where one can be built (then ``REFRESH MATERIALIZED VIEW CONCURRENTLY`` is timed too).

For each change rate and each repeat: one mutation cycle (``benchmarks/tpch/mutations.py``),
``VACUUM ANALYZE`` of the change buffers, ``CHECKPOINT``, and for every query, in an order rotated
per repeat:

1. what AUTO *would* choose with the shipped default ``auto_full_threshold`` — the engine's own
   decision function (``refresh.engine._choose``) evaluated on the pending changes, which
   it copies into temporary tables as a differential refresh does (filtered to the rows the
   delta can use, so that they count as the history's do), dropped right after;
2. ``refresh_stream_table(tpch_qNN)`` — the differential refresh consuming the cycle (timed,
   without the change-buffer cleanup after its commit: the refresh that consumes a buffer's rows
   last deletes them for all 22 readers, in a rotated order; that time is recorded per refresh
   as ``cleanup_s`` and reported per cycle), then the exactness check
   (``benchmarks/tpch/oracle.py``; a mismatch aborts the run);
3. in a rotated order: ``refresh_stream_table(tpch_qNN, full=True)`` (full recompute of the same
   stream table), ``REFRESH MATERIALIZED VIEW`` and ``… CONCURRENTLY``.

AUTO's time for a cycle is the full recompute time when AUTO would recompute, and the
differential time when it would refresh differentially — unless that is longer than the time
budget AUTO would give the attempt (the one ``_choose`` returns: ``auto_diff_budget`` of the
last full refresh, more after cancelled attempts or with a measured estimate), where the
engine cancels the attempt and recomputes: then the budget plus the full recompute time. The
test against the budget uses the engine's own duration of the refresh (``RefreshResult.
duration_ms``, before the commit and the buffer cleanup, which the budget does not cover), not
the wall time. So
AUTO/full is measured side by side (the cancelled attempt itself is modelled, not run: the
differential refresh of the cycle runs unbounded so its time is always known). The refresh
history is then made what AUTO would have left (``replay_auto``): the differential refresh's
row is removed when AUTO would have recomputed, and becomes a budget fallback when AUTO would
have cancelled it, so the next cycle's decision reads what the engine would read.

At the end, one more cycle at the largest change rate, and the ``profiles`` slowest differential
queries are refreshed once more under ``auto_explain`` (ANALYZE, BUFFERS, nested statements); the
plans go to ``<results>/profiles/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from benchmarks import _common as C  # noqa: E402
from benchmarks.tpch import UNIQUE_KEYS, Query, datagen, load_queries, mutations  # noqa: E402
from benchmarks.tpch.oracle import mismatches  # noqa: E402
from dbt_pgtrickle import (  # noqa: E402
    PgTrickleError,
    create_stream_table,
    explain_stream_table,
    install,
    refresh_stream_table,
    set_setting,
)

KINDS = ("diff", "full", "mv", "mvc")


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# --------------------------------------------------------------------------------------------
# the data, cached in a template database


def corpus_fingerprint() -> str:
    h = hashlib.sha256()
    for path in (Path(datagen.__file__), datagen.HERE / "schema.sql"):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _template_name(scale: float, seed: int) -> str:
    return f"pgt_bench_tpch_tpl_sf{scale:g}_s{seed}".replace(".", "_")


def corpus_database(
    admin_dsn: str,
    scale: float,
    seed: int,
    target: str,
    *,
    cache: bool,
    log: Any,
    matviews: dict[str, Query] | None = None,
) -> tuple[str, dict[str, Any]]:
    """A database ``target`` holding the loaded, analysed corpus; returns its DSN and how it
    was made (``load_s`` of the generator, or ``clone_s`` of a cached template). With
    ``matviews`` (and ``cache``) the clone comes from :func:`matview_template` and already holds
    the materialized views of those queries."""
    if not cache:
        dsn = C.create_database(admin_dsn, target)
        with psycopg.connect(dsn, autocommit=True) as conn:
            t, _ = timed(lambda: datagen.load(conn, scale, seed=seed))
        return dsn, {"load_s": t, "cached": False}
    tpl = _template_name(scale, seed)
    fp = corpus_fingerprint()
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        row = admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (tpl,),
        ).fetchone()
    info: dict[str, Any] = {"cached": True, "template_fingerprint": fp}
    if row is None or row[0] != fp:
        log(f"SF {scale:g}: loading the corpus into template {tpl}")
        tdsn = C.create_database(admin_dsn, tpl)
        with psycopg.connect(tdsn, autocommit=True) as conn:
            t, _ = timed(lambda: datagen.load(conn, scale, seed=seed))
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(tpl), fp))
        info["load_s"] = t
    if matviews:
        tpl = matview_template(admin_dsn, scale, seed, matviews, log)
        info["matviews_from_template"] = True
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target))
        )
        t, _ = timed(
            lambda: admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(target), sql.Identifier(tpl)
                )
            )
        )
    info["clone_s"] = t
    return C.with_dbname(admin_dsn, target), info


def _query_fingerprint(q: Query) -> str:
    return hashlib.sha256(q.sql.encode()).hexdigest()[:16]


def matview_template(
    admin_dsn: str, scale: float, seed: int, queries: dict[str, Query], log: Any
) -> str:
    """A template database ``…_mv``: the cached corpus plus a materialized view (with its
    unique index) per query, each commented with the fingerprint of its query text and rebuilt
    when the text changed. The data never changes in a template, so the views are fresh."""
    base = _template_name(scale, seed)
    tpl = f"{base}_mv"
    fp = corpus_fingerprint()
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        row = admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (tpl,),
        ).fetchone()
        if row is None or row[0] != fp:
            log(f"SF {scale:g}: copying template {base} to {tpl}")
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(tpl))
            )
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(tpl), sql.Identifier(base)
                )
            )
            admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(tpl), fp))
    with psycopg.connect(C.with_dbname(admin_dsn, tpl), autocommit=True) as conn:
        for q in queries.values():
            mv = f"mv_{q.name}"
            have = conn.execute(
                "SELECT obj_description(to_regclass(%s), 'pg_class')", (mv,)
            ).fetchone()
            if have and have[0] == _query_fingerprint(q):
                continue
            log(f"SF {scale:g}: materialized view {mv} in {tpl}")
            conn.execute(sql.SQL("DROP MATERIALIZED VIEW IF EXISTS {}").format(sql.Identifier(mv)))
            build_matview(conn, q)
            conn.execute(
                sql.SQL("COMMENT ON MATERIALIZED VIEW {} IS {}").format(
                    sql.Identifier(mv), _query_fingerprint(q)
                )
            )
        conn.execute("VACUUM ANALYZE")
    return tpl


# --------------------------------------------------------------------------------------------
# per query objects


def build_matview(conn: psycopg.Connection[Any], q: Query) -> dict[str, Any]:
    """``mv_qNN`` of the query, with a unique index on its key where one can be built; an
    existing one (cloned from :func:`matview_template`) is described, not rebuilt."""
    mv = f"mv_{q.name}"
    keys = UNIQUE_KEYS.get(q.name)
    info: dict[str, Any] = {"name": mv, "unique_index": None, "concurrently": False}
    if conn.execute("SELECT to_regclass(%s)", (mv,)).fetchone()[0] is not None:  # type: ignore[index]
        unique = conn.execute(
            "SELECT 1 FROM pg_index WHERE indrelid = to_regclass(%s) AND indisunique", (mv,)
        ).fetchone()
        if unique:
            info.update(unique_index=list(keys or ()), concurrently=True)
        info["prebuilt"] = True
        return info
    conn.execute(
        sql.SQL("CREATE MATERIALIZED VIEW {} AS {}").format(sql.Identifier(mv), sql.SQL(q.sql))
    )
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


def default_auto_threshold() -> float:
    from dbt_pgtrickle.settings import REGISTRY

    return float(REGISTRY["auto_full_threshold"].default)


def auto_choice(
    conn: psycopg.Connection[Any], name: str, threshold: float
) -> tuple[str, str, float | None]:
    """What a refresh in AUTO mode would do now with ``threshold`` and the shipped cost
    settings (read-only, the engine's own decision function), and the time budget in seconds
    of a differential choice. ``("?", reason, None)`` if the engine's internals changed shape."""
    try:
        from dbt_pgtrickle.catalog import records
        from dbt_pgtrickle.refresh import engine
        from dbt_pgtrickle.settings import REGISTRY

        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            schema, rel = records.split_name(name)
            rec = records.get(conn, schema, rel)
            sources = engine._sources(conn, rec.pgt_id)
            action, reason, _, budget_ms = engine._choose(
                conn,
                rec,
                sources,
                False,
                threshold,
                float(REGISTRY["auto_cost_floor_ms"].default),
                float(REGISTRY["auto_diff_budget"].default),
                # As the engine does: the windows are copied (and counted) as a differential
                # refresh reads them, filtered to the rows it can use, so the pending rows
                # compare with the history's (a window counted whole would not).
                engine.windows_plan(conn, rec, sources, False, []),
            )
        return action, reason or "", None if budget_ms is None else budget_ms / 1000
    except Exception as exc:  # the benchmark must not break on a refactored engine
        return "?", f"could not evaluate AUTO's choice: {type(exc).__name__}: {exc}", None


# --------------------------------------------------------------------------------------------
# the workload


def run_workload(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    scale = float(p["scale"])
    seed = int(p.get("seed", 1))
    target = ctx.scratch_name(f"tpch_sf{scale:g}".replace(".", "_"))
    queries = load_queries(p.get("queries") or None)
    with_mv = p.get("matview", True)
    dsn, data_info = corpus_database(
        ctx.admin_dsn,
        scale,
        seed,
        target,
        cache=bool(p.get("cache_data")),
        log=ctx.log,
        matviews=queries if with_mv else None,
    )
    out: dict[str, Any] = {"scale": scale, "data": data_info, "runs": []}
    try:
        conn = C.connect(dsn)
        out["session_settings"] = C.session_settings(conn, ctx.session_settings)
        out["table_rows"] = datagen.table_counts(conn)
        ctx.log(f"SF {scale:g}: {out['table_rows']}")
        install(conn)
        set_setting(conn, "auto_full_threshold", 1)
        threshold = float(p.get("auto_threshold") or default_auto_threshold())
        out["auto_threshold_evaluated"] = threshold
        # The change rate is the share of orders a cycle changes in total (mutations.KINDS kinds
        # of change); results without this key drew the rate once per kind.
        out["mutation_mix"] = "orders_total"
        plans: dict[str, dict[str, Any]] = {}
        out["errors"] = errors = []
        for name, q in list(queries.items()):
            try:
                t_create, _ = timed(
                    lambda q=q: create_stream_table(
                        conn, q.stream_table, q.sql, refresh_mode="AUTO"
                    )
                )
            except PgTrickleError as exc:  # recorded; the other queries are still measured
                errors.append(f"{name}: create_stream_table failed: {exc}")
                del queries[name]
                continue
            ex = explain_stream_table(conn, q.stream_table, "json")
            plans[name] = {
                "effective_mode": ex["effective_mode"],
                "strategy": ex.get("strategy"),
                "fallback_reason": ex.get("fallback_reason"),
                "create_s": t_create,
                "matview": build_matview(conn, q) if with_mv else None,
            }
        out["queries"] = plans
        C.vacuum_analyze(conn, *[q.stream_table for q in queries.values()])
        out["runtime_settings"] = C.runtime_settings(conn)
        mutator = mutations.Mutator(conn, datagen.Sizes.at(scale), seed=int(p.get("mseed", 7)))
        verify = p.get("verify", "all")
        for fraction in p["fractions"]:
            out["runs"].append(
                run_fraction(
                    ctx, conn, queries, plans, mutator, fraction, p, threshold, verify, errors
                )
            )
        n_prof = int(p.get("profiles", 0))
        if n_prof and out["runs"]:
            out["profiles"] = profile_slowest(ctx, conn, queries, mutator, out, n_prof)
        conn.close()
    finally:
        if not p.get("keep"):
            C.drop_database(ctx.admin_dsn, target)
    if out.get("errors"):
        out["error_summary"] = "; ".join(out["errors"])[:2000]
    return out


def run_fraction(
    ctx: Any,
    conn: C.TimedConnection,
    queries: dict[str, Query],
    plans: dict[str, dict[str, Any]],
    mutator: mutations.Mutator,
    fraction: float,
    p: dict[str, Any],
    threshold: float,
    verify: str,
    errors: list[str],
) -> dict[str, Any]:
    """One change rate; failures and mismatches go to ``errors`` (the run goes on; the harness
    reports the workload as failed)."""
    samples: dict[str, dict[str, list[Any]]] = {
        n: {
            k: []
            for k in (
                *KINDS,
                "action",
                "rows_in",
                "auto",
                "auto_reason",
                "auto_budget",
                "diff_engine",
                "cleanup",
            )
        }
        for n in queries
    }
    cycles = []
    names = list(queries)
    repeats = repeats_for(p, fraction)
    timeout_ms = round(float(p.get("diff_timeout_s") or 0) * 1000)
    for rep in range(repeats):
        t_mut, stats = timed(lambda: mutator.cycle(fraction))
        cycles.append({"seconds": t_mut, "rows": stats.rows, "orders": stats.orders_touched})
        C.vacuum_analyze(conn, *C.change_buffers(conn))
        conn.execute("CHECKPOINT")
        ctx.log(
            f"  SF change rate {fraction:g} repeat {rep + 1}/{repeats}: "
            f"{stats.total} source rows changed in {t_mut:.1f}s"
        )
        check = verify == "all" or (verify == "first" and rep == 0)
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            q = queries[name]
            s = samples[name]
            choice, why, budget_s = auto_choice(conn, q.stream_table, threshold)
            s["auto"].append(choice)
            s["auto_reason"].append(why)
            s["auto_budget"].append(budget_s)
            if timeout_ms:
                set_setting(conn, "refresh_statement_timeout_ms", timeout_ms)
            try:
                wall, result = timed(lambda q=q: refresh_stream_table(conn, q.stream_table))
            except PgTrickleError as exc:
                # slower than the cap: recorded as censored; the full recompute below consumes
                # the cycle's changes. Any other failure is recorded as an error.
                timeout = getattr(exc, "sqlstate", None) == "57014"
                if not timeout:
                    errors.append(f"{name}: refresh at change rate {fraction:g} failed: {exc}")
                s["diff"].append(None)
                s["diff_engine"].append(None)
                s["cleanup"].append(None)
                s["action"].append("TIMEOUT" if timeout else "ERROR")
                s["rows_in"].append(None)
                check_this = False
            else:
                # Without the buffer cleanup after the commit: the refresh that consumes a
                # buffer's rows last deletes them for every reader (reported per cycle apart).
                s["diff"].append(wall - result.cleanup_ms / 1000)
                s["cleanup"].append(result.cleanup_ms / 1000)
                # the engine's own time (before the commit and the buffer cleanup), which is
                # what AUTO's budget bounds
                s["diff_engine"].append(result.duration_ms / 1000)
                replay_auto(conn, result.refresh_id, choice, budget_s, result.duration_ms / 1000)
                s["action"].append(result.action)
                s["rows_in"].append(result.rows_in)
                check_this = check
            finally:
                if timeout_ms:
                    set_setting(conn, "refresh_statement_timeout_ms", 0)
            if check_this:
                bad = mismatches(conn, q)
                if bad:
                    errors.append(
                        f"MISMATCH {name} at change rate {fraction:g} differs from its query: "
                        f"{bad[:3]}"
                    )
                    C.log(errors[-1])
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
            # AUTO's attempt modelled as cancelled recomputed in the same refresh (the row
            # replay_auto left), so this cycle's timed full refresh is not one AUTO would have
            # made: its history row goes, or it would count toward AUTO's wait before trying
            # again, which then came one cycle earlier than in a deployment.
            cancelled = (
                s["action"][-1] not in ("TIMEOUT", "ERROR")
                and choice == "DIFFERENTIAL"
                and over_budget(s["diff_engine"][-1], budget_s)
            )
            k = rep % len(steps)
            for label, fn in steps[k:] + steps[:k]:
                seconds, out = timed(fn)
                s[label].append(seconds)
                if label == "full" and cancelled:
                    conn.execute(
                        "DELETE FROM pgtrickle.pgt_refresh_history WHERE refresh_id = %s",
                        (out.refresh_id,),
                    )
    report: dict[str, Any] = {"fraction": fraction, "cycles": cycles, "queries": {}}
    for name, s in samples.items():
        s["cap_s"] = [timeout_ms / 1000 if timeout_ms else None]
        report["queries"][name] = summarize_query(s)
    return report


def repeats_for(p: dict[str, Any], fraction: float) -> int:
    """``repeats`` is one count, or one per change rate (``[2, 2, 1]``)."""
    r = p["repeats"]
    if isinstance(r, list):
        return int(r[list(p["fractions"]).index(fraction)])
    return int(r)


def over_budget(engine_s: float | None, budget: float | None) -> bool:
    """Whether a differential refresh that took ``engine_s`` inside the engine (the budget
    covers that part; the commit and the buffer cleanup after it are outside) passes the
    budget AUTO would give it."""
    return budget is not None and engine_s is not None and engine_s > budget


def replay_auto(
    conn: psycopg.Connection[Any],
    refresh_id: int | None,
    choice: str,
    budget: float | None,
    engine_s: float | None,
) -> None:
    """Make the refresh history what AUTO would have left, so the next cycle's decision reads
    it: the cycle's differential refresh runs unbounded to be timed, but AUTO would not have run
    it (it recomputed: the row goes) or would have cancelled it at its budget (the row becomes
    the engine's budget fallback, whose change rows send the next as large refresh to FULL)."""
    if refresh_id is None:
        return
    from dbt_pgtrickle.refresh import budget as engine_budget

    if choice == "FULL":
        conn.execute(
            "DELETE FROM pgtrickle.pgt_refresh_history WHERE refresh_id = %s", (refresh_id,)
        )
    elif choice == "DIFFERENTIAL" and over_budget(engine_s, budget):
        conn.execute(
            "UPDATE pgtrickle.pgt_refresh_history SET action = 'FULL', fallback_reason = %s "
            "WHERE refresh_id = %s",
            (f"{engine_budget.BUDGET_REASON} (modelled by the benchmark)", refresh_id),
        )


def auto_seconds(
    choice: str, diff: float, full: float, budget: float | None, engine_s: float | None
) -> float:
    """AUTO's time in one cycle: the full recompute, the differential refresh, or a
    differential attempt cancelled at its budget followed by the full recompute."""
    if choice != "DIFFERENTIAL":
        return full
    return budget + full if over_budget(engine_s, budget) else diff


def summarize_query(s: dict[str, list[Any]]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "actions": s["action"],
        "rows_in": s["rows_in"],
        "auto_choice": s["auto"],
        "auto_reason": sorted({r for r in s["auto_reason"] if r}),
        "samples_s": {k: s[k] for k in KINDS},
        "cleanup_s": s.get("cleanup") or [],
    }
    # a differential refresh cut off by the cap counts as the cap (a lower bound)
    cap = s.get("cap_s", [None])[0]
    censored = sum(1 for v, a in zip(s["diff"], s["action"], strict=True) if a == "TIMEOUT")
    s = {
        **s,
        "diff": [cap if a == "TIMEOUT" else v for v, a in zip(s["diff"], s["action"], strict=True)],
    }
    entry["diff_censored"] = censored
    entry["samples_s"]["diff"] = s["diff"]
    # AUTO's time per cycle: the variant it would have run; a differential refresh longer than
    # its budget is cancelled there and followed by the full recompute
    budgets = s.get("auto_budget") or [None] * len(s["auto"])
    # a timed-out refresh ran at least the cap inside the engine
    engine = [
        cap if a == "TIMEOUT" else e
        for e, a in zip(s.get("diff_engine") or s["diff"], s["action"], strict=True)
    ]
    auto = [
        auto_seconds(choice, d, f, b, e)
        for d, f, choice, b, e in zip(s["diff"], s["full"], s["auto"], budgets, engine, strict=True)
        if choice in ("DIFFERENTIAL", "FULL") and d is not None
    ]
    entry["auto_budget_s"] = budgets
    entry["diff_engine_s"] = engine
    entry["auto_over_budget"] = sum(
        1
        for c, b, e in zip(s["auto"], budgets, engine, strict=True)
        if c == "DIFFERENTIAL" and over_budget(e, b)
    )
    s["diff"] = [v for v in s["diff"] if v is not None]  # failed refreshes have no time
    for k in KINDS:
        entry[f"{k}_ms"] = C.summary([v * 1000 for v in s[k]]) if s[k] else None
    entry["auto_ms"] = C.summary([v * 1000 for v in auto]) if auto else None
    if s["diff"] and s["full"]:
        ratios = [f / d for d, f in zip(s["diff"], s["full"], strict=False) if d > 0]
        entry["full_over_diff"] = entry["full_ms"]["median"] / entry["diff_ms"]["median"]
        entry["full_over_diff_per_cycle"] = ratios
    if auto and s["full"]:
        entry["auto_over_full"] = entry["auto_ms"]["median"] / entry["full_ms"]["median"]
        entry["auto_over_full_worst_cycle"] = max(
            (a / f for a, f in zip(auto, s["full"], strict=False) if f > 0), default=None
        )
    if s["mv"] and s["diff"]:
        entry["mv_over_diff"] = entry["mv_ms"]["median"] / entry["diff_ms"]["median"]
    return entry


def profile_slowest(
    ctx: Any,
    conn: C.TimedConnection,
    queries: dict[str, Query],
    mutator: mutations.Mutator,
    out: dict[str, Any],
    n: int,
) -> list[dict[str, Any]]:
    """One more cycle at the largest change rate; the ``n`` slowest differential queries of the
    1% run (or the last run) refreshed under ``auto_explain``; plans written to files."""
    runs = out["runs"]
    run = next((r for r in runs if abs(r["fraction"] - 0.01) < 1e-9), runs[-1])
    diff_q = [
        (e["diff_ms"]["median"], name)
        for name, e in run["queries"].items()
        if "DIFFERENTIAL" in e["actions"]
    ]
    chosen = [name for _, name in sorted(diff_q, reverse=True)[:n]]
    if not chosen:
        return []
    fraction = run["fraction"]
    mutator.cycle(fraction)
    C.vacuum_analyze(conn, *C.change_buffers(conn))
    conn.execute("CHECKPOINT")
    prof_dir = ctx.results_dir / "profiles"
    prof_dir.mkdir(parents=True, exist_ok=True)
    done = []
    scale = out["scale"]
    for name in chosen:
        q = queries[name]
        ex = C.explained_refresh(conn, q.stream_table)
        if "skipped" in ex:
            done.append({"query": name, **ex})
            continue
        stem = f"tpch_sf{scale:g}_{fraction:g}_{name}"
        lines = [
            f"-- {name} at SF {scale:g}, change rate {fraction:.2%}: one differential refresh "
            f"under auto_explain (ANALYZE, BUFFERS, nested statements)",
            f"-- wall {ex['wall_ms']:.1f} ms (instrumented), action {ex['action']}, "
            f"rows_in {ex['rows_in']}",
            "-- phases (ms): "
            + ", ".join(
                f"{k} {v:.1f}" for k, v in sorted(ex["phases_ms"].items(), key=lambda i: -i[1])
            ),
            "",
        ]
        for i, pl in enumerate(ex["plans"]):  # slowest first
            if (pl["duration_ms"] or 0) < 1.0 and i >= 5:  # all under 1 ms at toy scales
                continue
            lines += [f"-- {pl['duration_ms']:.1f} ms", pl["query"], pl["plan"], ""]
        (prof_dir / f"{stem}.txt").write_text("\n".join(lines) + "\n")
        top = ex["plans"][0] if ex["plans"] else None
        done.append(
            {
                "query": name,
                "file": f"profiles/{stem}.txt",
                "wall_ms": ex["wall_ms"],
                "action": ex["action"],
                "rows_in": ex["rows_in"],
                "phases_ms": ex["phases_ms"],
                "slowest_statement_ms": top["duration_ms"] if top else None,
                "slowest_statement": (top["query"][:300] if top else None),
                "jit_ms": sum(
                    float(m)
                    for pl in ex["plans"]
                    for m in re.findall(r"Timing: Generation .*?Total ([\d.]+) ms", pl["plan"])
                ),
                "temp_spill": any(
                    "temp read" in pl["plan"] or "temp written" in pl["plan"] for pl in ex["plans"]
                ),
            }
        )
    return done  # the other stream tables never consume this cycle: nothing runs after it


# --------------------------------------------------------------------------------------------
# stand-alone use


def print_run(scale: float, plans: dict[str, dict[str, Any]], run: dict[str, Any]) -> None:
    headers = [
        "query",
        "mode",
        "action",
        "diff ms",
        "full ms",
        "matview ms",
        "conc. ms",
        "full/diff",
        "AUTO",
        "AUTO/full",
    ]
    rows = []
    for name, e in run["queries"].items():

        def med(key: str, e: dict[str, Any] = e) -> str:
            return f"{e[key]['median']:.1f}" if e.get(key) else "—"

        rows.append(
            [
                name,
                plans[name]["effective_mode"],
                "/".join(sorted(set(e["actions"]))),
                med("diff_ms"),
                med("full_ms"),
                med("mv_ms"),
                med("mvc_ms"),
                f"{e['full_over_diff']:.2f}" if "full_over_diff" in e else "—",
                "/".join(sorted(set(e["auto_choice"]))),
                f"{e['auto_over_full']:.2f}" if "auto_over_full" in e else "—",
            ]
        )
    print(f"\n### SF {scale:g}, change rate {run['fraction']:.2%} (medians)\n")
    print(C.render_table(headers, rows))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.harness import Context

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dsn", required=True, help="superuser DSN of the server (any database)")
    ap.add_argument("--scales", default="0.1")
    ap.add_argument("--fractions", default="0.01")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--queries", default="")
    ap.add_argument("--verify", choices=("all", "first", "none"), default="all")
    ap.add_argument("--no-matview", action="store_true")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--profiles", type=int, default=0)
    ap.add_argument("--diff-timeout-s", type=float, default=0.0)
    ap.add_argument("--json-out")
    ap.add_argument("--keep", action="store_true")
    C.add_session_settings_option(ap)
    a = ap.parse_args(argv)
    ctx = Context(a.dsn, Path("benchmarks/results"), "adhoc", a.set or [])
    report: dict[str, Any] = {"benchmark": "tpch_refresh", "scales": []}
    for scale in (float(x) for x in a.scales.split(",") if x):
        p = {
            "scale": scale,
            "fractions": [float(x) for x in a.fractions.split(",") if x],
            "repeats": a.repeats,
            "queries": [x.strip() for x in a.queries.split(",") if x.strip()] or None,
            "verify": a.verify,
            "matview": not a.no_matview,
            "cache_data": not a.no_cache,
            "profiles": a.profiles,
            "diff_timeout_s": a.diff_timeout_s,
            "keep": a.keep,
        }
        res = run_workload(ctx, p)
        report["scales"].append(res)
        for run in res["runs"]:
            print_run(scale, res["queries"], run)
        if a.json_out:
            Path(a.json_out).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
