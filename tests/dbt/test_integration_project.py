"""The integration_tests/ dbt project, driven end to end against a real database while its
sources change: seed → run → test → mutate with SQL → refresh → test (equality, DIFFERENTIAL in
the history) → mutate → run (dependents see fresh data) → change a model's SQL → config changes
under each on_configuration_change → switch materializations → broken capture healed →
--full-refresh → a plain postgres profile refused → drop-all.

One test on purpose: every dbt command costs seconds, and each step builds on the state the
previous one left.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dbt_support import (
    DbtProject,
    DbtResult,
    copy_integration_project,
    profile_target,
    write_profile,
)
from psycopg import sql

from dbt_pgtrickle.scheduler import process

pytestmark = pytest.mark.dbt

PROFILE = "pgtrickle_integration_tests"
SCHEMA = "analytics"
STREAM_TABLES = {
    "big_orders",
    "customer_orders",
    "customer_totals",
    "orders_by_status",
    "product_prices",
    "ranked_orders",
    "region_revenue",
}

MUTATION_1 = """
insert into analytics.customers values (7, 'Gus', 'east'), (8, 'Hana', 'north');
insert into analytics.orders values (41, 7, 250.00, 'new'), (42, 1, 12.50, 'paid'),
                                    (43, 2, 180.00, 'refunded');
update analytics.orders set amount = amount + 100 where id in (5, 6);
update analytics.orders set status = 'paid' where id = 4;
delete from analytics.orders where id in (7, 8);
update analytics.orders set id = 1003 where id = 3;
update analytics.customers set region = 'west' where id = 2;
"""

MUTATION_2 = """
update analytics.customers set id = 70 where id = 7;
update analytics.orders set customer_id = 70 where customer_id = 7;
delete from analytics.orders where status = 'refunded';
delete from analytics.orders where customer_id = 5;
insert into analytics.orders select 100 + g, 1 + g % 6, 42.00 + g, 'new' from generate_series(1, 5) g;
update analytics.orders set amount = 99.99 where id = 10;
"""


def query(dsn: str, text: str | sql.Composable, *params: Any) -> list[tuple[Any, ...]]:
    """Run SQL on a connection of its own; the rows of the last statement (if it has any)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text, params or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def history(dsn: str, name: str) -> list[tuple[str, str]]:
    """(action, initiated_by) of every refresh of a stream table, oldest first."""
    return [
        (r[0], r[1])
        for r in query(
            dsn,
            "select action, initiated_by from pgtrickle.pgt_refresh_history "
            "where pgt_schema = %s and pgt_name = %s order by refresh_id",
            SCHEMA,
            name,
        )
    ]


def printed_json(result: DbtResult) -> Any:
    """The JSON document a run-operation printed (``--args '{format: json}'``)."""
    for line in result.lines:
        if line.lstrip().startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON printed; log:\n{result.log}")


def passed(result: DbtResult) -> int:
    """The PASS count of dbt's closing line, after checking it reports no failure."""
    done = [line for line in result.lines if line.startswith("Done. PASS=")]
    assert done, result.log
    counts = dict(part.split("=") for part in done[-1].removeprefix("Done. ").split())
    assert counts["ERROR"] == "0" and counts.get("WARN", "0") == "0", done[-1]
    return int(counts["PASS"])


def test_integration_project_with_changing_sources(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = f"pgt_reader_{uuid.uuid4().hex[:8]}"
    query(dsn, sql.SQL("create role {}").format(sql.Identifier(reader)))
    monkeypatch.setenv(process.RUN_DIR_ENV, str(tmp_path / "run"))
    commands: list[str] = []
    try:
        _scenario(dsn, tmp_path, reader, commands)
    finally:
        print(f"{len(commands)} dbt commands:", *commands, sep="\n  ")
        process.stop(dsn, timeout=30, force=True)  # a scheduler left by a failed step
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(reader)))
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(reader)))


def _scenario(dsn: str, tmp_path: Path, reader: str, commands: list[str]) -> None:
    project_dir = copy_integration_project(tmp_path)
    profiles = write_profile(tmp_path / "profiles", PROFILE, profile_target(dsn, schema=SCHEMA))
    project = DbtProject(project_dir, profiles, commands)
    base_vars = {"reader_role": reader}

    def dbt(*args: str, expect: bool = True, **vars: Any) -> DbtResult:
        return project.dbt(*args, "--vars", json.dumps({**base_vars, **vars}), expect=expect)

    # -- build and test -------------------------------------------------------------------
    project.dbt("deps")
    assert passed(dbt("seed")) == 3
    assert passed(dbt("run")) == 8
    first_tests = passed(dbt("test"))
    assert first_tests == 22

    registered = {r[0] for r in query(dsn, "select pgt_name from pgtrickle.pgt_stream_tables")}
    assert registered == STREAM_TABLES
    assert query(dsn, "select has_table_privilege(%s, 'analytics.big_orders', 'select')", reader)[
        0
    ][0]
    assert query(dsn, "select obj_description('analytics.orders_by_status'::regclass)") == [
        ("Orders and revenue per order status.",)
    ]
    constraints = {
        r[0]
        for r in query(
            dsn,
            "select contype from pg_constraint where conrelid = 'analytics.big_orders'::regclass",
        )
    }
    assert {"p", "c"} <= constraints
    model_indexes = "select count(*) from pg_indexes where tablename = 'orders_by_status' and indexname like '%%__pgt_ix_%%'"
    assert query(dsn, model_indexes) == [(1,)]

    # -- a rerun with nothing changed is a no-op ------------------------------------------
    rerun = dbt("run")
    assert passed(rerun) == 8
    assert sum("STREAM TABLE UNCHANGED" in line for line in rerun.lines) == 7, rerun.log
    assert query(
        dsn,
        "select initiated_by, count(*) from pgtrickle.pgt_refresh_history "
        "where initiated_by in ('create', 'alter') group by 1",
    ) == [("create", 7)]

    # -- sources change; refresh through the run-operation; test --------------------------
    query(dsn, MUTATION_1)
    refreshed = dbt("run-operation", "pgtrickle_refresh_all", "--args", "{format: json}")
    actions = {row["name"]: row["action"] for row in printed_json(refreshed)["refreshed"]}
    assert set(actions) == {f"{SCHEMA}.{n}" for n in STREAM_TABLES}
    assert actions[f"{SCHEMA}.orders_by_status"] == "DIFFERENTIAL"
    assert actions[f"{SCHEMA}.product_prices"] == "NO_DATA"
    assert passed(dbt("test", "--exclude", "top_regions_is_fresh")) == first_tests - 1
    assert history(dsn, "orders_by_status")[-1] == ("DIFFERENTIAL", "dbt")

    one = dbt("run-operation", "pgtrickle_refresh", "--args", "{model_name: orders_by_status}")
    assert any("NO_DATA" in line for line in one.lines), one.log

    # -- sources change again; `dbt run` refreshes before building dependents -------------
    query(dsn, MUTATION_2)
    assert passed(dbt("run")) == 8
    assert passed(dbt("test")) == first_tests  # includes top_regions_is_fresh
    assert history(dsn, "orders_by_status")[-1] == ("DIFFERENTIAL", "dbt")

    status = printed_json(dbt("run-operation", "pgtrickle_status", "--args", "{format: json}"))
    assert {s["name"] for s in status["stream_tables"]} == STREAM_TABLES
    assert all(s["status"] == "ACTIVE" for s in status["stream_tables"])
    assert "scheduler" in status
    table = dbt("run-operation", "pgtrickle_status")
    assert any("orders_by_status" in line and "DIFFERENTIAL" in line for line in table.lines)
    explained = printed_json(
        dbt(
            "run-operation",
            "pgtrickle_explain",
            "--args",
            "{model_name: orders_by_status, format: json}",
        )
    )
    assert explained["effective_mode"] == "DIFFERENTIAL"
    assert dbt("run-operation", "pgtrickle_check_cdc_health").success
    sla = printed_json(
        dbt("run-operation", "pgtrickle_sla_summary", "--args", "{window_hours: 1, format: json}")
    )
    by_name = {row["stream_table"].split(".")[-1]: row for row in sla["sla"]}
    assert by_name["orders_by_status"]["refreshes"] >= 2
    assert by_name["orders_by_status"]["failures"] == 0

    # -- a model's SQL changes: altered in place (built beside, swapped) -------------------
    model = project_dir / "models" / "orders_by_status.sql"
    model.write_text(
        model.read_text().replace(
            "max(amount) as largest", "max(amount) as largest, avg(amount) as average"
        )
    )
    altered = dbt("run", "-s", "orders_by_status")
    assert any("ALTER STREAM TABLE" in line for line in altered.lines), altered.log
    assert history(dsn, "orders_by_status")[-2:] == [("FULL", "alter"), ("NO_DATA", "dbt")]
    assert query(dsn, model_indexes) == [(1,)]  # the configured index survives the swap
    assert passed(dbt("test", "-s", "orders_by_status")) >= 4
    query(dsn, "update analytics.orders set amount = amount * 2 where id = 1")
    dbt("run-operation", "pgtrickle_refresh", "--args", "{model_name: orders_by_status}")
    assert history(dsn, "orders_by_status")[-1] == ("DIFFERENTIAL", "dbt")
    assert passed(dbt("test", "-s", "orders_by_status")) >= 4

    # -- config changes under each on_configuration_change --------------------------------
    schedule = (
        "select schedule from pgtrickle.pgt_stream_tables where pgt_name = 'orders_by_status'"
    )
    failed = dbt(
        "run",
        "-s",
        "orders_by_status",
        expect=False,
        orders_by_status_schedule="5m",
        on_configuration_change="fail",
    )
    assert (
        "on_configuration_change is 'fail'" in failed.log and "schedule: '1m' -> '5m'" in failed.log
    )
    kept = dbt(
        "run",
        "-s",
        "orders_by_status",
        orders_by_status_schedule="5m",
        on_configuration_change="continue",
    )
    assert "kept as it is" in kept.log
    assert query(dsn, schedule) == [("1m",)]
    dbt("run", "-s", "orders_by_status", orders_by_status_schedule="5m")
    assert query(dsn, schedule) == [("5m",)]
    invalid = dbt("run", "-s", "orders_by_status", expect=False, orders_by_status_mode="SOMETIMES")
    assert "invalid refresh_mode 'SOMETIMES'; allowed: AUTO, DIFFERENTIAL, FULL" in invalid.log

    # -- switching materializations both ways ---------------------------------------------
    def is_stream_table(name: str) -> bool:
        return bool(
            query(dsn, "select 1 from pgtrickle.pgt_stream_tables where pgt_name = %s", name)
        )

    dbt("run", "-s", "big_orders", big_orders_materialized="table")
    assert not is_stream_table("big_orders")
    assert query(dsn, "select count(*) > 0 from analytics.big_orders") == [(True,)]
    dbt("run", "-s", "big_orders", big_orders_materialized="view")
    assert query(
        dsn, "select relkind from pg_class where oid = 'analytics.big_orders'::regclass"
    ) == [("v",)]
    back = dbt("run", "-s", "big_orders")
    assert any("CREATE STREAM TABLE" in line for line in back.lines), back.log
    assert is_stream_table("big_orders")
    assert passed(dbt("test", "-s", "big_orders")) >= 2

    # -- a source replaced under a stream table: detected, capture reinstalled, recomputed ---
    dbt("seed", "--full-refresh", "-s", "products")
    broken = dbt("run-operation", "pgtrickle_check_cdc_health", expect=False)
    assert "change capture is broken for analytics.products" in broken.log
    dbt("run", "-s", "product_prices")
    repaired = query(
        dsn,
        "select action, fallback_reason from pgtrickle.pgt_refresh_history "
        "where pgt_name = 'product_prices' order by refresh_id desc limit 1",
    )
    assert repaired[0][0] == "FULL" and "reinstalled" in repaired[0][1], repaired
    dbt("run-operation", "pgtrickle_check_cdc_health")
    query(dsn, "insert into analytics.products values ('e-5', 'Easel', 77.00)")
    dbt("run-operation", "pgtrickle_refresh", "--args", "{model_name: product_prices}")
    assert history(dsn, "product_prices")[-1] == ("DIFFERENTIAL", "dbt")

    # -- --full-refresh recomputes every stream table in place ---------------------------
    full = dbt("run", "--full-refresh")
    assert passed(full) == 8
    assert all(history(dsn, name)[-1] == ("FULL", "dbt") for name in STREAM_TABLES)
    assert passed(dbt("test")) == first_tests

    # -- a plain postgres profile is refused with directions ------------------------------
    postgres_profiles = write_profile(
        tmp_path / "postgres_profile", PROFILE, profile_target(dsn, "postgres", schema=SCHEMA)
    )
    refused = project.dbt(
        "run",
        "-s",
        "orders_by_status",
        "--no-partial-parse",
        "--target-path",
        str(tmp_path / "postgres_target"),
        expect=False,
        profiles_dir=postgres_profiles,
    )
    assert "needs the dbt-pgtrickle adapter" in refused.log and "type: pgtrickle" in refused.log

    # -- the scheduler daemon, started and stopped from dbt --------------------------------
    started = printed_json(
        dbt("run-operation", "pgtrickle_scheduler", "--args", "{action: start, format: json}")
    )
    assert started["started"] and any(s["alive"] for s in started["schedulers"])
    status = printed_json(dbt("run-operation", "pgtrickle_status", "--args", "{format: json}"))
    assert status["scheduler"][0]["pid"] == started["started"]
    stopped = printed_json(
        dbt("run-operation", "pgtrickle_scheduler", "--args", "{action: stop, format: json}")
    )
    assert stopped["stopped"] == started["started"]
    assert not any(s["alive"] for s in stopped["schedulers"])

    # -- drop everything ------------------------------------------------------------------
    dropped = printed_json(dbt("run-operation", "pgtrickle_drop_all", "--args", "{format: json}"))
    assert {d["name"] for d in dropped["dropped"]} == {f"{SCHEMA}.{n}" for n in STREAM_TABLES}
    assert query(dsn, "select count(*) from pgtrickle.pgt_stream_tables") == [(0,)]
    assert query(dsn, "select count(*) from pgtrickle.pgt_change_tracking") == [(0,)]
    assert query(dsn, "select to_regclass('analytics.orders_by_status')") == [(None,)]
