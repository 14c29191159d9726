"""Without the citus extension the Citus paths are inert: no error, local placement, and the
Citus-only options are refused with a message naming what is missing."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import dbt_pgtrickle as pgt
from dbt_pgtrickle.catalog import records
from dbt_pgtrickle.citus import capture, is_citus_loaded, placement, shard_placements, worker_nodes
from dbt_pgtrickle.errors import ConfigError


@pytest.fixture
def shop(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    pgt.install(conn)
    conn.execute("CREATE TABLE orders (id int PRIMARY KEY, region int)")
    conn.execute("INSERT INTO orders SELECT g, g % 3 FROM generate_series(1, 30) g")
    return conn


def test_detection_answers_local(shop: psycopg.Connection[Any]) -> None:
    assert not is_citus_loaded(shop)
    assert placement(shop, "public", "orders").kind == "local"
    assert worker_nodes(shop) == []
    assert shard_placements(shop, "public", "orders") == []
    assert capture.poll_all(shop).imported == 0


@pytest.mark.parametrize(
    "options",
    [
        {"placement": "reference"},
        {"placement": "distributed"},
        {"placement": "auto", "distribution_column": "region"},
    ],
)
def test_citus_options_need_the_extension(
    shop: psycopg.Connection[Any], options: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError, match="citus extension"):
        pgt.create_stream_table(
            shop, "st", "SELECT region, count(*) AS n FROM orders GROUP BY 1", **options
        )
    assert shop.execute("SELECT to_regclass('st')").fetchone() == (None,)


def test_bad_placement_is_named(shop: psycopg.Connection[Any]) -> None:
    with pytest.raises(ConfigError, match="placement must be one of auto, local, reference"):
        pgt.create_stream_table(shop, "st", "SELECT id FROM orders", placement="sharded")


def test_local_placement_recorded_and_explained(shop: psycopg.Connection[Any]) -> None:
    pgt.create_stream_table(
        shop, "st", "SELECT region, count(*) AS n FROM orders GROUP BY 1", placement="local"
    )
    (row,) = pgt.status(shop)
    assert row["placement"] == "local"
    info = pgt.explain_stream_table(shop, "st", format="json")["citus"]
    assert info == {
        "st_placement": "local",
        "distribution_column": None,
        "citus_colocated_with": None,
        "sources": [{"source": "public.orders", "placement": "local", "distribution_column": None}],
    }
    assert "placement" not in pgt.explain_stream_table(shop, "st")
    assert shop.execute("SELECT count(*) FROM pgtrickle.citus_status").fetchone() == (0,)


def test_refresh_without_citus_sources_asks_nothing_about_citus(
    shop: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog row read by every refresh already says whether a source is captured from
    Citus worker slots; without one, the refresh runs no Citus catalog query of its own."""
    pgt.create_stream_table(shop, "st", "SELECT region, count(*) AS n FROM orders GROUP BY 1")
    assert not records.get(shop, "public", "st").citus_captured

    def no_citus(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a refresh without Citus sources queried the Citus catalog")

    monkeypatch.setattr(capture, "citus_sources", no_citus)
    monkeypatch.setattr(capture, "prepare_refresh", no_citus)
    shop.execute("UPDATE orders SET region = 7 WHERE id < 5")
    assert pgt.refresh_stream_table(shop, "st").action == "DIFFERENTIAL"
    assert pgt.verify_stream_table(shop, "st")["equal"]


@pytest.mark.parametrize(
    "change", [{"placement": "local"}, {"distribution_column": "region", "schedule": "1m"}]
)
def test_placement_is_not_altered_in_place(
    shop: psycopg.Connection[Any], change: dict[str, Any]
) -> None:
    pgt.create_stream_table(shop, "st", "SELECT region, count(*) AS n FROM orders GROUP BY 1")
    with pytest.raises(ConfigError, match="drop the stream table and create it again"):
        pgt.alter_stream_table(shop, "st", **change)


def test_scheduler_tick_polls_citus_only_when_a_source_is_captured_there(
    shop: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tick's own catalog read says whether any source is captured from Citus worker
    slots; without one it runs no Citus query (poll_all is not called), and it notices when the
    catalog changes."""
    from dbt_pgtrickle.scheduler.daemon import Scheduler

    calls: list[int] = []

    def counting_poll_all(conn: psycopg.Connection[Any]) -> capture.PollReport:
        calls.append(1)
        return capture.PollReport()

    monkeypatch.setattr(capture, "poll_all", counting_poll_all)
    pgt.create_stream_table(shop, "st", "SELECT region, count(*) AS n FROM orders GROUP BY 1")
    daemon = Scheduler(dsn)
    daemon._open()
    try:
        daemon.tick()
        shop.execute("INSERT INTO orders VALUES (100, 1)")
        daemon.woken[pgt.stable_name("public", "orders")] = 0.0
        assert daemon.tick().refreshed == ["public.st"]
        assert calls == []
        # the catalog now says the source is captured from worker slots: the next tick polls
        shop.execute("UPDATE pgtrickle.pgt_change_tracking SET cdc_mode = %s", (capture.CDC_MODE,))
        daemon.tick()
        assert calls == [1]
        shop.execute("UPDATE pgtrickle.pgt_change_tracking SET cdc_mode = 'trigger'")
        daemon.tick()
        assert calls == [1]
    finally:
        daemon._close(graceful=True)
