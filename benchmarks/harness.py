"""One command for every benchmark: ``python -m benchmarks run`` and ``python -m benchmarks report``.

``run`` executes the workloads of a profile against the server named by ``--dsn`` (a superuser
DSN; each workload works in scratch databases of its own and drops them), writes one JSON file per
workload into ``--results`` (default ``benchmarks/results/``) and regenerates the generated tables
of ``--docs`` (default ``docs/BENCHMARK.md``) from every harness JSON in that directory.
``report`` only regenerates the tables from the JSON files.

Profiles (``--profile``):

* ``smoke`` — tiny sizes, seconds; exercised by ``tests/db/test_benchmark_harness.py`` so the
  harness keeps working. Its numbers mean nothing.
* ``standard`` — TPC-H corpus at scale factor 0.1 (change rates 0.1%, 1%, 10%), write path with
  100,000-row statements, the daemon with 1,000 stream tables, peers.
* ``full`` — ``standard`` plus the TPC-H corpus at scale factor 1.

Every JSON records the machine (CPU model, cores, memory, load), PostgreSQL, Python and library
versions, the git state of the measured runtime, server and runtime settings, the parameters, and
every sample, so the tables can be recomputed. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import _common as C

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
DOCS = REPO / "docs" / "BENCHMARK.md"
WORKLOADS = ("tpch", "write_path", "daemon", "peers")
HARNESS_FORMAT = 1

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "tpch": {
            "scales": [0.002],
            "fractions": [0.01],
            "repeats": 2,
            "queries": ["q01", "q04", "q06", "q13"],
            "verify": "all",
            "cache_data": False,
            "profiles": 1,
        },
        "write_path": {"base_rows": 2000, "bulk_rows": 1000, "single_rows": 20, "repeats": 2},
        "daemon": {
            "write_rate": 20.0,
            "latency_seconds": 2.0,
            "schedule": "1s",
            "tick_tables": 20,
            "chain_depth": 3,
            "fanout": 4,
            "propagation_repeats": 2,
        },
        "peers": {
            "scale": 0.002,
            "fraction": 0.01,
            "cycles": 1,
            "batch_rows": 500,
            "dbt_rows": 500,
        },
    },
    "standard": {
        "tpch": {
            "scales": [0.1],
            "fractions": [0.001, 0.01, 0.1],
            "repeats": 3,
            "queries": None,
            "verify": "all",
            "cache_data": True,
            "profiles": 3,
            "diff_timeout_s": 120,
        },
        "write_path": {
            "base_rows": 1_000_000,
            "bulk_rows": 100_000,
            "single_rows": 300,
            "repeats": 3,
        },
        "daemon": {
            "write_rate": 20.0,
            "latency_seconds": 60.0,
            "schedule": "1s",
            "tick_tables": 1000,
            "chain_depth": 10,
            "fanout": 60,
            "propagation_repeats": 20,
        },
        "peers": {
            "scale": 0.1,
            "fraction": 0.01,
            "cycles": 3,
            "batch_rows": 100_000,
            "dbt_rows": 200_000,
        },
    },
}
PROFILES["full"] = copy.deepcopy(PROFILES["standard"])
PROFILES["full"]["tpch"].update(scales=[0.1, 1.0], repeats=5)


@dataclass
class Context:
    """What a workload gets: the server, where artifacts go, and a logger."""

    admin_dsn: str
    results_dir: Path
    profile: str
    session_settings: list[str] = field(default_factory=list)
    pgtrickle_settings: list[str] = field(default_factory=list)

    def log(self, msg: str) -> None:
        C.log(msg)

    def scratch_database(self, suffix: str) -> str:
        """Create (or recreate) a scratch database and return its DSN; with runtime settings
        (``--pgtrickle-set``), pgtrickle is installed there and they are stored."""
        dsn = C.create_database(self.admin_dsn, self.scratch_name(suffix))
        if self.pgtrickle_settings:
            from dbt_pgtrickle import install, set_setting

            with psycopg.connect(dsn, autocommit=True) as conn:
                install(conn)
                for item in self.pgtrickle_settings:
                    name, _, value = item.partition("=")
                    set_setting(conn, name.strip(), value.strip())
        return dsn

    def scratch_name(self, suffix: str) -> str:
        return f"pgt_bench_{suffix}"

    def drop_database(self, suffix: str) -> None:
        C.drop_database(self.admin_dsn, self.scratch_name(suffix))


def environment(admin_dsn: str) -> dict[str, Any]:
    """Machine, versions and server settings (no paths of this machine)."""
    from importlib import metadata

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        env: dict[str, Any] = {
            "machine": C.machine_info(),
            "versions": C.versions(conn),
            "server_settings": C.server_settings(conn),
        }
        row = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_ivm'"
        ).fetchone()
        env["versions"]["pg_ivm_available"] = row[0] if row else None
    for dist in ("dbt-core", "dbt-postgres"):
        try:
            env["versions"][dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env["versions"][dist] = None
    return env


def _runner(name: str) -> Callable[[Context, dict[str, Any]], dict[str, Any]]:
    if name == "tpch":
        from benchmarks import tpch_refresh

        return tpch_refresh.run_workload
    if name == "write_path":
        from benchmarks import write_path

        return write_path.run_workload
    if name == "daemon":
        from benchmarks import scheduler_latency

        return scheduler_latency.run_workload
    if name == "peers":
        from benchmarks import peers

        return peers.run_workload
    raise SystemExit(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")


def jobs(
    workloads: list[str], params: dict[str, dict[str, Any]], tag: str = ""
) -> list[tuple[str, str, dict[str, Any]]]:
    """``(workload, result file stem, parameters)``; the TPC-H corpus runs once per scale.
    ``tag`` is appended to the stems (``tpch_sf0.1-jit_off``)."""
    tag = f"-{tag}" if tag else ""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for w in workloads:
        p = params[w]
        if w == "tpch":
            for scale in p["scales"]:
                out.append((w, f"tpch_sf{scale:g}{tag}", {**p, "scale": scale}))
        else:
            out.append((w, f"{w}{tag}", dict(p)))
    return out


def _floats(text: str | None) -> list[float] | None:
    return [float(x) for x in text.split(",") if x.strip()] if text else None


def resolve_params(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    params = copy.deepcopy(PROFILES[args.profile])
    tp = params["tpch"]
    if args.scales:
        tp["scales"] = _floats(args.scales)
    if args.fractions:
        tp["fractions"] = _floats(args.fractions)
    if args.repeats:
        counts = [int(x) for x in args.repeats.split(",") if x.strip()]
        tp["repeats"] = counts[0] if len(counts) == 1 else counts
        if len(counts) > 1 and len(counts) != len(tp["fractions"]):
            raise SystemExit("--repeats: one count, or one per change rate of --fractions")
    if args.queries:
        tp["queries"] = [q.strip() for q in args.queries.split(",") if q.strip()]
    if args.verify:
        tp["verify"] = args.verify
    if args.no_cache:
        tp["cache_data"] = False
    if args.profiles is not None:
        tp["profiles"] = args.profiles
    if args.diff_timeout_s is not None:
        tp["diff_timeout_s"] = args.diff_timeout_s
    return params


def run(args: argparse.Namespace) -> int:
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    params = resolve_params(args)
    ctx = Context(args.dsn, results_dir, args.profile, args.set or [], args.pgtrickle_set or [])
    failed: list[str] = []
    for workload, stem, p in jobs(workloads, params, args.tag):
        ctx.log(f"=== {stem} ({args.profile})")
        started = time.time()
        env = environment(args.dsn)
        try:
            results = _runner(workload)(ctx, p)
            error = results.get("error_summary")  # measured, but something failed or differed
            if error:
                failed.append(f"{stem}: {error}")
        except Exception as exc:  # recorded, and the run goes on with the next workload
            if args.fail_fast:
                raise
            results, error = {}, f"{type(exc).__name__}: {exc}"
            failed.append(f"{stem}: {error}")
            ctx.log(f"{stem} FAILED: {error}")
        report = {
            "harness": HARNESS_FORMAT,
            "workload": workload,
            "name": stem,
            "tag": args.tag or None,
            "profile": args.profile,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "runtime_s": round(time.time() - started, 1),
            **env,
            "loadavg_at_end": list(os.getloadavg()),
            "params": p,
            "session_settings": ctx.session_settings,
            "pgtrickle_settings": ctx.pgtrickle_settings,
            "error": error,
            "results": results,
        }
        path = results_dir / f"{stem}.json"
        path.write_text(json.dumps(report, indent=1, default=str, sort_keys=False) + "\n")
        ctx.log(f"wrote {path.name}")
    if args.docs != "-":
        from benchmarks import report as R

        R.regenerate(results_dir, Path(args.docs))
        ctx.log(f"regenerated the tables of {Path(args.docs).name}")
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run workloads, write JSON, regenerate docs tables")
    r.add_argument("--dsn", required=True, help="superuser DSN of the server to measure")
    r.add_argument("--profile", choices=sorted(PROFILES), default="standard")
    r.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset")
    r.add_argument("--results", default=str(RESULTS_DIR), help="directory of the JSON files")
    r.add_argument("--docs", default=str(DOCS), help="markdown file to regenerate ('-': none)")
    r.add_argument("--scales", help="TPC-H scale factors, e.g. 0.1,1 (overrides the profile)")
    r.add_argument("--fractions", help="TPC-H change rates, e.g. 0.001,0.01,0.1")
    r.add_argument(
        "--repeats", help="TPC-H mutation cycles per change rate: one count or one per rate (2,2,1)"
    )
    r.add_argument("--queries", help="TPC-H subset, e.g. q01,q05")
    r.add_argument(
        "--verify",
        choices=("all", "first", "none"),
        help="TPC-H exactness check after every refresh, after the first repeat only, or never",
    )
    r.add_argument(
        "--profiles",
        type=int,
        help="TPC-H: how many of the slowest differential refreshes to "
        "profile under auto_explain (0: none)",
    )
    r.add_argument("--no-cache", action="store_true", help="load TPC-H data afresh every time")
    r.add_argument(
        "--diff-timeout-s",
        type=float,
        help="cap one statement of a TPC-H differential refresh (refresh_statement_timeout_ms); "
        "a refresh cut off counts as the cap, shown as ≥",
    )
    r.add_argument(
        "--tag", default="", help="suffix of the result file names, e.g. jit_off (a variant run)"
    )
    r.add_argument("--fail-fast", action="store_true", help="stop at the first failing workload")
    C.add_session_settings_option(r)
    r.add_argument(
        "--pgtrickle-set",
        action="append",
        metavar="NAME=VALUE",
        help="dbt-pgtrickle setting stored in the workloads' scratch databases (write_path, "
        "daemon, peers' dbt part), e.g. change_buffer_unlogged=on (repeatable)",
    )
    rep = sub.add_parser("report", help="regenerate the docs tables from the JSON files")
    rep.add_argument("--results", default=str(RESULTS_DIR))
    rep.add_argument("--docs", default=str(DOCS))
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    from benchmarks import report as R

    R.regenerate(Path(args.results), Path(args.docs))
    return 0
