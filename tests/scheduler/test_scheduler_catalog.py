"""History pruning, subscriptions, sla_summary and metrics (in-process, no daemon process)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import dbt_pgtrickle as pgt
from dbt_pgtrickle.cli import cli
from dbt_pgtrickle.errors import ConfigError, StreamTableNotFound
from dbt_pgtrickle.scheduler.daemon import Scheduler
from dbt_pgtrickle.scheduler.metrics import NAMES, PrometheusMetrics
from dbt_pgtrickle.settings import REGISTRY

AGG = "SELECT region, sum(amount) AS total FROM orders GROUP BY region"


def history(conn: psycopg.Connection[Any], rows: list[tuple[str, str, float]]) -> None:
    """Insert history rows of stream table ``by_region``: (age interval, status, duration ms)."""
    pgt_id = conn.execute("SELECT pgt_id FROM pgtrickle.pgt_stream_tables").fetchone()[0]  # type: ignore[index]
    for age, status, ms in rows:
        conn.execute(
            "INSERT INTO pgtrickle.pgt_refresh_history (pgt_id, pgt_schema, pgt_name, "
            "started_at, ended_at, action, status, duration_ms) VALUES (%s, 'public', "
            "'by_region', now() - %s::interval, now() - %s::interval, 'DIFFERENTIAL', %s, %s)",
            (pgt_id, age, age, status, ms),
        )


def test_history_is_pruned_by_age_in_bounded_batches(
    shop: psycopg.Connection[Any], dsn: str
) -> None:
    pgt.create_stream_table(shop, "by_region", AGG)
    history(shop, [("20 days", "COMPLETED", 1.0)] * 23 + [("1 day", "COMPLETED", 1.0)] * 4)
    pgt.set_setting(shop, "history_prune_batch", 5)
    daemon = Scheduler(dsn)
    daemon.work = psycopg.connect(dsn, autocommit=True)
    try:
        daemon.cfg = pgt.list_settings(shop)
        statements: list[str] = []
        daemon.work.add_notice_handler(lambda _n: None)
        original = daemon.work.execute

        def counting(query: Any, params: Any = None, **kw: Any) -> Any:
            if "DELETE FROM pgtrickle.pgt_refresh_history" in str(query):
                statements.append(str(query))
            return original(query, params, **kw)

        daemon.work.execute = counting  # type: ignore[method-assign]
        assert daemon.prune_history(max_batches=3) == 15  # bounded: 3 batches of 5
        assert daemon.prune_history(max_batches=3) == 8
        assert daemon.prune_history(max_batches=3) == 0
        assert len(statements) == 3 + 2 + 1
    finally:
        daemon.work.close()
    left = shop.execute("SELECT count(*) FROM pgtrickle.pgt_refresh_history").fetchone()
    assert left == (4 + 1,)  # the recent rows and the creation's own row
    plan = shop.execute(
        "EXPLAIN SELECT refresh_id FROM pgtrickle.pgt_refresh_history "
        "WHERE started_at < now() - interval '14 days' ORDER BY started_at LIMIT 5"
    ).fetchall()
    assert "pgt_refresh_history_started_at_idx" in " ".join(r[0] for r in plan)


def listen(dsn: str, channel: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
    return conn


def received(
    conn: psycopg.Connection[Any], timeout: float = 0.5, stop_after: int | None = None
) -> list[dict[str, Any]]:
    notes = conn.notifies(timeout=timeout, stop_after=stop_after)
    return [json.loads(n.payload) for n in notes]


def test_subscriptions_notify_after_refresh_and_coalesce_bursts(
    shop: psycopg.Connection[Any], dsn: str
) -> None:
    pgt.create_stream_table(shop, "by_region", AGG)
    assert pgt.subscribe(shop, "by_region", "Region Feed") is True
    assert pgt.subscribe(shop, "public.by_region", "Region Feed") is False
    shop.execute("SELECT pgtrickle.subscribe('by_region', 'plain')")  # SQL, any client
    assert [(s["stream_table"], s["channel"]) for s in pgt.list_subscriptions(shop)] == [
        ("public.by_region", "Region Feed"),
        ("public.by_region", "plain"),
    ]
    with pytest.raises(StreamTableNotFound):
        pgt.subscribe(shop, "nope", "x")
    with pytest.raises(ConfigError):
        pgt.subscribe(shop, "by_region", "x" * 64)
    pgt.set_setting(shop, "notify_coalesce_ms", 60000)
    feed = listen(dsn, "Region Feed")
    try:
        assert pgt.refresh_stream_table(shop, "by_region").action == "NO_DATA"
        assert received(feed) == []  # nothing changed: no notification
        shop.execute("INSERT INTO orders VALUES (100, 'north', 5), (101, 'moon', 1)")
        result = pgt.refresh_stream_table(shop, "by_region")
        (first,) = received(feed, 5, stop_after=1)
        assert first == {
            "name": "public.by_region",
            "refresh_id": result.refresh_id,
            "inserted": 1,
            "updated": 1,
            "deleted": 0,
            "refreshes": 1,
        }
        # a burst inside the window: held back, then sent once with the sums
        ids = []
        for i in range(3):
            shop.execute("INSERT INTO orders VALUES (%s, 'south', 1)", (200 + i,))
            ids.append(pgt.refresh_stream_table(shop, "by_region").refresh_id)
        assert received(feed, 0.2) == []
        assert shop.execute("SELECT pgtrickle.flush_notifications(60000)").fetchone() == (0,)
        # the window over (here: a window of 0), the trailing notification carries the sums
        assert shop.execute("SELECT pgtrickle.flush_notifications(0)").fetchone() == (1,)
        (burst,) = received(feed, 5, stop_after=1)
        assert burst["refresh_id"] == ids[-1]
        assert (burst["updated"], burst["refreshes"]) == (3, 3)
    finally:
        feed.close()
    assert pgt.unsubscribe(shop, "by_region", "Region Feed") is True
    assert pgt.unsubscribe(shop, "by_region", "Region Feed") is False
    runner = CliRunner()
    out = runner.invoke(cli, ["--dsn", dsn, "subscribe", "by_region", "cli_feed"])
    assert out.exit_code == 0 and "subscribed cli_feed" in out.stdout, out.output
    out = runner.invoke(cli, ["--dsn", dsn, "subscriptions", "--json"])
    assert {s["channel"] for s in json.loads(out.stdout)} == {"cli_feed", "plain"}
    out = runner.invoke(cli, ["--dsn", dsn, "unsubscribe", "by_region", "cli_feed"])
    assert out.exit_code == 0 and "unsubscribed" in out.stdout


def test_sla_summary_on_real_history_rows(shop: psycopg.Connection[Any], dsn: str) -> None:
    pgt.create_stream_table(shop, "by_region", AGG)
    shop.execute("DELETE FROM pgtrickle.pgt_refresh_history")
    rows = [("50 minutes", "COMPLETED", float(ms)) for ms in range(1, 101)]
    rows += [("2 hours", "FAILED", 5.0)] * 2 + [("3 days", "FAILED", 1.0)] * 50
    rows += [("1 minute", "RUNNING", 0.0)]
    history(shop, rows)
    (sla,) = pgt.sla_summary(shop)
    assert sla["stream_table"] == "public.by_region"
    assert (sla["refreshes"], sla["failures"]) == (102, 2)  # 3-day-old rows are outside 24 h
    assert sla["p50_ms"] == pytest.approx(50.5)
    assert sla["p99_ms"] == pytest.approx(99.01)
    assert sla["error_rate"] == pytest.approx(2 / 102)
    assert sla["error_budget_remaining"] == 0  # 1.96% failed, above the 1% budget
    assert sla["freshness_lag"].total_seconds() == 0  # nothing pending
    shop.execute("INSERT INTO orders VALUES (100, 'north', 5)")
    (sla,) = pgt.sla_summary(shop)
    assert sla["freshness_lag"].total_seconds() > 0
    pgt.set_setting(shop, "sla_target", 0.9)
    (sla,) = pgt.sla_summary(shop, window_hours=100)
    assert (sla["refreshes"], sla["failures"]) == (152, 52)
    assert sla["error_budget_remaining"] == 0
    pgt.set_setting(shop, "sla_target", 0.95)
    (sla,) = pgt.sla_summary(shop)
    assert sla["error_budget_remaining"] == pytest.approx(1 - (2 / 102) / 0.05)
    (sla,) = pgt.sla_summary(shop, window_hours=1)
    assert sla["refreshes"] == 100 and sla["error_budget_remaining"] == 1.0
    out = CliRunner().invoke(cli, ["--dsn", dsn, "sla", "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)[0]["refreshes"] == 102, out.output


def test_sql_defaults_match_the_settings_registry(shop: psycopg.Connection[Any]) -> None:
    src = shop.execute(
        "SELECT prosrc FROM pg_proc WHERE proname = 'sla_summary' "
        "AND pronamespace = 'pgtrickle'::regnamespace"
    ).fetchone()[0]  # type: ignore[index]
    assert f"name = 'sla_window_hours'), {REGISTRY['sla_window_hours'].default})" in src
    assert f"name = 'sla_target'), {REGISTRY['sla_target'].default})" in src


def test_metrics_endpoint_serves_the_documented_names(
    shop: psycopg.Connection[Any], dsn: str
) -> None:
    pgt.create_stream_table(shop, "by_region", AGG)
    metrics = PrometheusMetrics(0)
    daemon = Scheduler(dsn, metrics=metrics)
    try:
        daemon._open()
        shop.execute("INSERT INTO orders VALUES (100, 'north', 5)")
        report = daemon.tick()
        assert report.refreshed == ["public.by_region"]
        daemon.next_gauges = 0.0
        daemon.next_poll = 0.0
        daemon.tick()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port()}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        daemon._close(graceful=True)
        metrics.close()
    for name in NAMES:
        assert name in text, name
    assert (
        'pgtrickle_refreshes_total{action="DIFFERENTIAL",stream_table="public.by_region"} 1.0'
        in text
    )


def test_alter_rejects_a_cycle(shop: psycopg.Connection[Any]) -> None:
    pgt.create_stream_table(shop, "by_region", AGG)
    pgt.create_stream_table(shop, "grand", "SELECT sum(total) AS total FROM by_region")
    with pytest.raises(ConfigError, match="cycle"):
        pgt.alter_stream_table(shop, "by_region", query="SELECT total AS region FROM grand")
    with pytest.raises(ConfigError, match="cycle"):
        pgt.alter_stream_table(shop, "grand", query="SELECT count(*) AS total FROM grand")
    assert pgt.refresh_order(shop) == [("public", "by_region"), ("public", "grand")]


def test_upgrade_teaches_old_capture_functions_to_wake(conn: psycopg.Connection[Any]) -> None:
    from dbt_pgtrickle.catalog.install import install

    install(conn, target_version=2)
    conn.execute(
        "CREATE TABLE pgtrickle_changes.changes_0123456789abcdef (x int);"
        "CREATE FUNCTION pgtrickle_changes.capture_0123456789abcdef_ins() RETURNS trigger "
        "LANGUAGE plpgsql AS $$BEGIN INSERT INTO pgtrickle_changes.changes_0123456789abcdef "
        "VALUES (1); RETURN NULL; END$$"
    )
    install(conn)
    src = conn.execute(
        "SELECT prosrc FROM pg_proc WHERE proname = 'capture_0123456789abcdef_ins'"
    ).fetchone()[0]  # type: ignore[index]
    assert "pg_notify('pgtrickle_wake', '0123456789abcdef')" in src
