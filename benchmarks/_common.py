"""Shared helpers of the benchmark scripts (not a public module; scripts import it by path).

* environment capture (machine, versions, server and runtime settings) for the JSON reports;
* a scratch database per run, dropped at the end;
* the ``orders`` source table (built with ``generate_series`` in SQL) and a deterministic change
  generator that applies the *same* change set to several identical copies of a table;
* a connection class that times every statement the runtime sends, so a refresh's wall time
  can be split into phases (change-window scan, delta query, keyed apply, buffer cleanup, ...);
* exactness check of a stream table against its defining query (symmetric EXCEPT ALL);
* small statistics and table-printing helpers.
"""

from __future__ import annotations

import os
import platform
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import dbt_pgtrickle

# --------------------------------------------------------------------------------------------
# environment


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def machine_info() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    models = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": models[0].strip() if models else platform.processor() or None,
        "memory_gib": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def versions(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    import sqlglot

    return {
        "postgresql": conn.execute("SELECT version()").fetchone()[0],  # type: ignore[index]
        "server_version_num": conn.info.server_version,
        "python": sys.version.split()[0],
        "psycopg": psycopg.__version__,
        "libpq": psycopg.pq.version(),
        "sqlglot": sqlglot.__version__,
        "dbt_pgtrickle": dbt_pgtrickle.__version__,
        # the runtime code measured is what was imported when the run started
        "runtime_source_at_start": RUNTIME_SOURCE_AT_IMPORT,
    }


def runtime_source_state(pkg_dir: str) -> dict[str, Any]:
    """Git commit of the measured runtime and whether its files differ from it (the working
    tree may hold other people's uncommitted edits; those are what was measured)."""
    import hashlib
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(
            ["git", "-C", pkg_dir, *a], capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "HEAD")
    if not head:
        return {"git": None}
    diff = git("diff", "HEAD", "--", ".")
    return {
        "git_head": head,
        "modified_files": git("diff", "HEAD", "--name-only", "--", ".").splitlines(),
        "untracked_files": git(
            "ls-files", "--others", "--exclude-standard", "--", "."
        ).splitlines(),
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
    }


SERVER_SETTINGS = (
    "shared_buffers",
    "work_mem",
    "maintenance_work_mem",
    "effective_cache_size",
    "max_parallel_workers_per_gather",
    "jit",
    "random_page_cost",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "autovacuum",
)


RUNTIME_SOURCE_AT_IMPORT = runtime_source_state(os.path.dirname(dbt_pgtrickle.__file__))


def add_session_settings_option(parser: Any) -> None:
    """The ``--set NAME=VALUE`` option every benchmark script takes."""
    parser.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="server setting for the benchmark session, e.g. random_page_cost=1.1 "
        "(repeatable; shown in the JSON's server_settings)",
    )


def report_header(
    name: str, started: float, machine: dict[str, Any], conn: psycopg.Connection[Any]
) -> dict[str, Any]:
    """What every results JSON starts with: the run, the machine, versions and settings."""
    return {
        "benchmark": name,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "runtime_s": time.time() - started,
        "machine": {**machine, "loadavg_at_end": list(os.getloadavg())},
        "versions": versions(conn),
        "server_settings": server_settings(conn),
        "pgtrickle_settings": runtime_settings(conn),
    }


def server_settings(conn: psycopg.Connection[Any]) -> dict[str, str]:
    rows = conn.execute(
        "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
        (list(SERVER_SETTINGS),),
    ).fetchall()
    return dict(rows)


def runtime_settings(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    from dbt_pgtrickle.settings import all_settings

    return all_settings(conn)


# --------------------------------------------------------------------------------------------
# connections and scratch databases


class TimedConnection(psycopg.Connection[Any]):
    """A psycopg connection that, while ``record`` is a list, appends ``(sql_text, seconds)``
    for every ``execute`` (the runtime sends all its statements through ``Connection.execute``).
    """

    record: list[tuple[str, float]] | None = None

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        rec = self.record
        if rec is None:
            return super().execute(query, params, **kwargs)
        t0 = time.perf_counter()
        try:
            return super().execute(query, params, **kwargs)
        finally:
            elapsed = time.perf_counter() - t0
            text = query if isinstance(query, str) else query.as_string(self)
            rec.append((text, elapsed))


def session_settings(
    conn: psycopg.Connection[Any], assignments: list[str] | None
) -> dict[str, str]:
    """Apply ``NAME=VALUE`` server settings to the session (the runtime refreshes on this same
    connection, so they hold inside its transactions). Returns what was set."""
    out: dict[str, str] = {}
    for item in assignments or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects NAME=VALUE, got {item!r}")
        conn.execute("SELECT set_config(%s, %s, false)", (name.strip(), value.strip()))
        out[name.strip()] = value.strip()
    return out


def with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


def create_database(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_dbname(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def connect(dsn: str) -> TimedConnection:
    return TimedConnection.connect(dsn, autocommit=True, application_name="pgtrickle-bench")


# --------------------------------------------------------------------------------------------
# the source table

N_REGIONS = 20  # plus NULL for ~5% of rows
STATUSES = ("new", "paid", "shipped", "returned", "cancelled")
N_CUSTOMERS = 20_000


def build_orders(conn: psycopg.Connection[Any], table: str, rows: int, seed: float = 0.42) -> None:
    """``table(id bigint primary key, customer_id int, region text, status text,
    amount numeric(12,2), qty int, created_at timestamptz)`` with ``rows`` rows (ids 1..rows)."""
    t = sql.Identifier(table)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, customer_id int NOT NULL, region text, "
            "status text NOT NULL, amount numeric(12,2) NOT NULL, qty int NOT NULL, "
            "created_at timestamptz NOT NULL)"
        ).format(t)
    )
    with conn.transaction():
        conn.execute("SELECT setseed(%s)", (seed,))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT g, 1 + (random() * {})::int % {}, "
                "CASE WHEN random() < 0.05 THEN NULL "
                "ELSE 'region_' || lpad(((random() * 1000)::int % {})::text, 2, '0') END, "
                "(ARRAY[{}])[1 + (random() * 1000)::int % {}], "
                "round((random() * 500)::numeric, 2), 1 + (random() * 1000)::int % 10, "
                "timestamptz '2024-01-01' + g * interval '1 second' "
                "FROM generate_series(1, {}) AS g"
            ).format(
                t,
                sql.Literal(N_CUSTOMERS * 10),
                sql.Literal(N_CUSTOMERS),
                sql.Literal(N_REGIONS),
                sql.SQL(", ").join(sql.Literal(s) for s in STATUSES),
                sql.Literal(len(STATUSES)),
                sql.Literal(rows),
            )
        )


def clone_table(conn: psycopg.Connection[Any], src: str, dst: str) -> None:
    """An identical copy (same rows, same physical order, same primary key)."""
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(dst)))
    conn.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
            sql.Identifier(dst), sql.Identifier(src)
        )
    )
    conn.execute(
        sql.SQL("INSERT INTO {} SELECT * FROM {} ORDER BY id").format(
            sql.Identifier(dst), sql.Identifier(src)
        )
    )


def vacuum_analyze(conn: psycopg.Connection[Any], *tables: str) -> None:
    for t in tables:
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.SQL(t)))


def change_buffers(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
        "WHERE schemaname = 'pgtrickle_changes'"
    ).fetchall()
    return [r[0] for r in rows]


# --------------------------------------------------------------------------------------------
# deterministic change sets


@dataclass
class ChangeSet:
    """One batch of source changes: identical statements are applied to every copy."""

    move: tuple[list[int], list[str | None], list[str]] = ([], [], [])  # id, region, status
    amount: tuple[list[int], list[Decimal], list[int]] = ([], [], [])  # id, amount, qty
    inserts: list[tuple[int, int, str | None, str, Decimal, int]] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "update_move_group": len(self.move[0]),
            "update_amount_qty": len(self.amount[0]),
            "insert": len(self.inserts),
            "delete": len(self.deletes),
        }

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class ChangeGenerator:
    """Draws change sets over the live ids of a table built by :func:`build_orders`.

    Mix of a batch of ``n`` changed rows: 40% updates (half move the row to another
    (region, status) group, half change amount and qty), 30% inserts, 30% deletes. Updated and
    deleted ids are distinct live rows, so the table size stays constant on average.
    """

    def __init__(self, rows: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.live = list(range(1, rows + 1))
        self.next_id = rows + 1

    def _region(self) -> str | None:
        if self.rng.random() < 0.05:
            return None
        return f"region_{self.rng.randrange(N_REGIONS):02d}"

    def make(self, n: int) -> ChangeSet:
        n_upd, n_ins = round(n * 0.4), round(n * 0.3)
        n_del = n - n_upd - n_ins
        rng = self.rng
        picked = rng.sample(range(len(self.live)), n_upd + n_del)
        upd_ids = [self.live[i] for i in picked[:n_upd]]
        del_idx = sorted(picked[n_upd:], reverse=True)
        deletes = []
        for i in del_idx:  # swap-remove, highest index first so lower indices stay valid
            deletes.append(self.live[i])
            self.live[i] = self.live[-1]
            self.live.pop()
        half = n_upd // 2
        move_ids, amt_ids = upd_ids[:half], upd_ids[half:]
        move = (
            move_ids,
            [self._region() for _ in move_ids],
            [rng.choice(STATUSES) for _ in move_ids],
        )
        amount = (
            amt_ids,
            [Decimal(rng.randrange(0, 50000)) / 100 for _ in amt_ids],
            [rng.randrange(1, 11) for _ in amt_ids],
        )
        inserts = []
        for _ in range(n_ins):
            i = self.next_id
            self.next_id += 1
            self.live.append(i)
            inserts.append(
                (
                    i,
                    rng.randrange(1, N_CUSTOMERS + 1),
                    self._region(),
                    rng.choice(STATUSES),
                    Decimal(rng.randrange(0, 50000)) / 100,
                    rng.randrange(1, 11),
                )
            )
        return ChangeSet(move, amount, inserts, sorted(deletes))


def apply_changes(conn: psycopg.Connection[Any], table: str, cs: ChangeSet) -> dict[str, int]:
    """Apply ``cs`` to ``table`` in one transaction (4 set-based statements); returns the
    affected row counts as PostgreSQL reports them."""
    t = sql.Identifier(table)
    done: dict[str, int] = {}
    with conn.transaction():
        cur = conn.execute(
            sql.SQL(
                "UPDATE {} AS o SET region = u.region, status = u.status "
                "FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS u(id, region, status) "
                "WHERE o.id = u.id"
            ).format(t),
            cs.move,
        )
        done["update_move_group"] = cur.rowcount
        cur = conn.execute(
            sql.SQL(
                "UPDATE {} AS o SET amount = u.amount, qty = u.qty "
                "FROM unnest(%s::bigint[], %s::numeric[], %s::int[]) AS u(id, amount, qty) "
                "WHERE o.id = u.id"
            ).format(t),
            cs.amount,
        )
        done["update_amount_qty"] = cur.rowcount
        cols: list[Any] = list(zip(*cs.inserts, strict=True)) if cs.inserts else [[]] * 6
        cur = conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT id, customer_id, region, status, amount, qty, "
                "timestamptz '2025-01-01' + id * interval '1 second' "
                "FROM unnest(%s::bigint[], %s::int[], %s::text[], %s::text[], %s::numeric[], "
                "%s::int[]) AS u(id, customer_id, region, status, amount, qty)"
            ).format(t),
            [list(c) for c in cols],
        )
        done["insert"] = cur.rowcount
        cur = conn.execute(
            sql.SQL("DELETE FROM {} WHERE id = ANY(%s::bigint[])").format(t), (cs.deletes,)
        )
        done["delete"] = cur.rowcount
    return done


# --------------------------------------------------------------------------------------------
# exactness


class MismatchError(AssertionError):
    pass


def visible_columns(conn: psycopg.Connection[Any], schema: str, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
        "AND NOT attisdropped AND attname NOT LIKE '\\_\\_pgt\\_%%' ORDER BY attnum",
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchall()
    return [r[0] for r in rows]


def verify(conn: psycopg.Connection[Any], st: str, query: str, schema: str = "public") -> int:
    """Raise :class:`MismatchError` unless the visible columns of ``st`` equal ``query`` as
    multisets (symmetric EXCEPT ALL). Returns the row count of the stream table."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in visible_columns(conn, schema, st))
    target = sql.Identifier(schema, st)
    q = sql.SQL(query)
    diff = sql.SQL(
        "(SELECT 'only in stream table' AS side, {cols} FROM {t} "
        " EXCEPT ALL SELECT 'only in stream table', * FROM ({q}) AS __q) "
        "UNION ALL "
        "(SELECT 'only in query', * FROM ({q}) AS __q "
        " EXCEPT ALL SELECT 'only in query', {cols} FROM {t})"
    ).format(cols=cols, t=target, q=q)
    with conn.transaction():
        rows = conn.execute(sql.SQL("SELECT * FROM ({}) AS d LIMIT 20").format(diff)).fetchall()
        n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()[0]  # type: ignore[index]
    if rows:
        sample = "\n  ".join(repr(r) for r in rows)
        raise MismatchError(
            f"stream table {schema}.{st} does not equal its query (first differing rows):\n  "
            f"{sample}"
        )
    return int(n)


# --------------------------------------------------------------------------------------------
# phases of a refresh, from the statements the runtime sent

_PHASES = (
    (re.compile(r"^SELECT 0::int, count\(\*\), coalesce\(bool_or"), "count change window (choose)"),
    (
        re.compile(r'^SELECT 0::int WHERE EXISTS \(SELECT FROM "pgtrickle_changes"'),
        "probe change windows",
    ),
    (re.compile(r'^SELECT 0::int WHERE EXISTS \(SELECT FROM "__pgt_changes_'), "truncation check"),
    (
        re.compile(r'^CREATE TEMP TABLE "__pgt_changes_\w+" ON COMMIT DROP AS SELECT \(-1\)'),
        "stage window",
    ),
    (re.compile(r'^INSERT INTO "__pgt_changes_'), "stage window"),
    (re.compile(r'^CREATE TEMP TABLE "__pgt_changes_'), "materialise change window"),
    (re.compile(r'^CREATE TEMP TABLE "__pgt_apply_'), "stage delta query"),
    (re.compile(r'^CREATE TEMP TABLE "__pgt_matched_'), "keyed apply: join with the table"),
    (re.compile(r"^SELECT \(SELECT count\(\*\) FROM "), "keyed apply: row counts"),
    (re.compile(r'^DELETE FROM .* WHERE "t"\.ctid = ANY\(ARRAY\('), "keyed apply: delete"),
    (re.compile(r'^UPDATE .* WHERE "t"\.ctid = ANY\(ARRAY\('), "keyed apply: update"),
    (re.compile(r"^INSERT INTO .* AS d WHERE d\.__pgt_keep AND NOT EXISTS"), "keyed apply: insert"),
    (re.compile(r'^ANALYZE "__pgt_changes_'), "analyze change window"),
    (re.compile(r'^ANALYZE "__pgt_apply"'), "analyze apply table"),
    (re.compile(r'^CREATE TEMP TABLE "__pgt_apply"'), "delta query"),
    (re.compile(r"^DELETE FROM .* WHERE ctid = ANY"), "multiset delete"),
    (re.compile(r"^INSERT INTO .* CROSS JOIN LATERAL generate_series"), "multiset insert"),
    (re.compile(r'^DELETE FROM "pgtrickle_changes"'), "buffer cleanup"),
    (re.compile(r"^SELECT \* FROM \(.*\) AS __pgt_q LIMIT 0", re.S), "describe query"),
    (re.compile(r'^DELETE FROM "(?!pgtrickle)'), "full: delete all rows"),
    (re.compile(r'^INSERT INTO "(?!pgtrickle)'), "full: insert query result"),
    (re.compile(r"^COMMIT"), "commit"),
)


def classify(text: str) -> str:
    for pattern, label in _PHASES:
        if pattern.search(text):
            return label
    return "other statements (catalog, locks, settings)"


def phases(record: list[tuple[str, float]], wall_s: float) -> dict[str, float]:
    """Milliseconds per phase; ``client (Python, sqlglot compile, round trips)`` is the rest."""
    out: dict[str, float] = {}
    for text, secs in record:
        label = classify(text.lstrip())
        out[label] = out.get(label, 0.0) + secs * 1000
    out["client-side (Python: sqlglot compile etc.)"] = wall_s * 1000 - sum(out.values())
    return out


def timed_refresh(
    conn: TimedConnection, name: str, *, full: bool = False
) -> tuple[float, Any, dict[str, float]]:
    """``refresh_stream_table`` wall time (s), its result, and its phase split (ms)."""
    from dbt_pgtrickle import refresh_stream_table

    conn.record = []
    t0 = time.perf_counter()
    try:
        result = refresh_stream_table(conn, name, full=full)
    finally:
        wall = time.perf_counter() - t0
        record, conn.record = conn.record, None
    return wall, result, phases(record, wall)


def explained_refresh(conn: TimedConnection, name: str, *, full: bool = False) -> dict[str, Any]:
    """One refresh with ``auto_explain`` reporting the plan of every statement (with ANALYZE,
    BUFFERS and nested statements) to the client as a NOTICE. The instrumentation slows the
    refresh down; use it to see *where* time goes, not for the timings themselves.

    Returns ``{"wall_ms", "action", "rows_in", "phases_ms", "plans": [{"duration_ms", "query",
    "plan"}, ...]}`` with plans sorted by duration, or ``{"skipped": reason}``."""
    notices: list[str] = []

    def handler(diag: Any) -> None:
        if diag.message_primary and "Query Text:" in diag.message_primary:
            notices.append(diag.message_primary)

    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.Error as exc:  # not installed, or not a superuser
        return {"skipped": f"auto_explain could not be loaded: {exc}"}
    for setting, value in (
        ("auto_explain.log_min_duration", "0"),
        ("auto_explain.log_analyze", "on"),
        ("auto_explain.log_buffers", "on"),
        ("auto_explain.log_timing", "on"),
        ("auto_explain.log_nested_statements", "on"),
        ("auto_explain.log_level", "notice"),
    ):
        conn.execute(
            sql.SQL("SET {} = {}").format(sql.Identifier(*setting.split(".")), sql.Literal(value))
        )
    conn.add_notice_handler(handler)
    try:
        wall, result, ph = timed_refresh(conn, name, full=full)
    finally:
        conn.remove_notice_handler(handler)
        conn.execute("SET auto_explain.log_min_duration = -1")
    plans: list[dict[str, Any]] = []
    for text in notices:
        head, _, rest = text.partition("\n")
        m = re.search(r"duration:\s*([\d.]+)\s*ms", head)
        query, _, plan = rest.partition("\n")
        plans.append(
            {
                "duration_ms": float(m.group(1)) if m else None,
                "query": query.replace("Query Text:", "").strip(),
                "plan": plan,
            }
        )
    plans.sort(key=lambda p: -(p["duration_ms"] or 0.0))
    return {
        "wall_ms": wall * 1000,
        "action": result.action,
        "rows_in": result.rows_in,
        "phases_ms": ph,
        "plans": plans,
    }


def timed_plain_query(conn: psycopg.Connection[Any], query: str) -> float:
    """Wall time of ``CREATE TEMP TABLE x AS <query>`` (the temp table is dropped after)."""
    t0 = time.perf_counter()
    conn.execute(sql.SQL("CREATE TEMP TABLE __bench_plain AS {}").format(sql.SQL(query)))
    wall = time.perf_counter() - t0
    conn.execute("DROP TABLE __bench_plain")
    return wall


# --------------------------------------------------------------------------------------------
# statistics and output


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def distribution(values: list[float]) -> dict[str, float]:
    """p50 (median), p99, max, mean and count of latency samples."""
    return {
        "p50": statistics.median(values),
        "p99": percentile(values, 0.99),
        "max": max(values),
        "mean": statistics.fmean(values),
        "n": len(values),
    }


def render_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table (also readable on a terminal)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    return "\n".join([line, sep, *body])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
