"""The Citus matrix on a real cluster (coordinator + 2 workers): every case ends with each stream
table equal to its query (``verify_stream_table``: symmetric EXCEPT ALL)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

import dbt_pgtrickle as pgt
from dbt_pgtrickle.catalog import records
from dbt_pgtrickle.errors import ConfigError
from dbt_pgtrickle.naming import replication_slot, stable_name


def _equal(conn: psycopg.Connection[Any], *names: str) -> None:
    for name in names:
        result = pgt.verify_stream_table(conn, name)
        assert result["equal"], (name, result)


def _orders(c: psycopg.Connection[Any], rows: int = 300) -> None:
    c.execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int, region int, "
        "amount numeric, note text)"
    )
    c.execute("SELECT create_distributed_table('orders', 'id')")
    c.execute(
        "INSERT INTO orders SELECT g, g %% 40, g %% 5, g * 1.5, CASE WHEN g %% 9 = 0 THEN NULL "
        "ELSE 'n' || g END FROM generate_series(1, %s) g",
        (rows,),
    )


def _regions(c: psycopg.Connection[Any]) -> None:
    c.execute("CREATE TABLE regions (id int PRIMARY KEY, name text)")
    c.execute("SELECT create_reference_table('regions')")
    c.execute("INSERT INTO regions SELECT g, 'region ' || g FROM generate_series(0, 6) g")


def _churn(c: psycopg.Connection[Any], base: int) -> None:
    """Inserts, updates (also of the distribution-independent columns and to NULL), deletes,
    duplicates of values, a key-changing update expressed as delete + insert."""
    c.execute(
        "INSERT INTO orders SELECT g, g %% 40, g %% 7, 10, NULL FROM generate_series(%s::int, %s::int) g",
        (base, base + 49),
    )
    c.execute("UPDATE orders SET amount = amount + 1, region = 6 WHERE id % 10 = 3")
    c.execute("UPDATE orders SET note = NULL WHERE id % 11 = 0")
    c.execute("DELETE FROM orders WHERE id % 13 = 0")
    c.execute("DELETE FROM orders WHERE id = %s", (base + 1,))
    c.execute("INSERT INTO orders VALUES (%s, 1, 1, 10, 'moved')", (base + 1000,))


AGG = "SELECT region, count(*) AS n, sum(amount) AS total FROM orders GROUP BY region"


def test_local_source_regression(citus_db) -> None:
    """A plain table in a Citus database is captured by triggers as before."""
    with citus_db.connect() as c:
        pgt.install(c)
        c.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        c.execute("INSERT INTO items SELECT g, g % 3 FROM generate_series(1, 50) g")
        st = pgt.create_stream_table(
            c, "items_by_v", "SELECT v, count(*) AS n FROM items GROUP BY v"
        )
        assert st["name"] == "items_by_v"
        c.execute("UPDATE items SET v = 7 WHERE id < 10")
        c.execute("DELETE FROM items WHERE id > 45")
        assert pgt.refresh_stream_table(c, "items_by_v").action == "DIFFERENTIAL"
        _equal(c, "items_by_v")
        row = c.execute(
            "SELECT cdc_mode, source_placement FROM pgtrickle.pgt_change_tracking"
        ).fetchone()
        assert row == ("trigger", "local")


def test_reference_source_local_stream_table(citus_db) -> None:
    with citus_db.connect() as c:
        pgt.install(c)
        _regions(c)
        pgt.create_stream_table(
            c, "region_names", "SELECT id, upper(name) AS name FROM regions WHERE id > 0"
        )
        c.execute("UPDATE regions SET name = 'x' WHERE id = 2")
        c.execute("DELETE FROM regions WHERE id = 3")
        c.execute("INSERT INTO regions VALUES (9, 'nine')")
        assert pgt.refresh_stream_table(c, "region_names").action == "DIFFERENTIAL"
        _equal(c, "region_names")
        placement = c.execute(
            "SELECT source_placement, cdc_mode FROM pgtrickle.pgt_change_tracking"
        ).fetchone()
        assert placement == ("reference", "citus_slot")
        # reference tables are read from the coordinator only (one placement, no duplicates)
        nodes = c.execute("SELECT count(*) FROM pgtrickle.pgt_worker_slots").fetchone()
        assert nodes == (1,)


@pytest.mark.parametrize("placement", ["local", "reference", "distributed"])
def test_distributed_source(citus_db, placement: str) -> None:
    with citus_db.connect() as c:
        pgt.install(c)
        _orders(c)
        # DIFFERENTIAL, not AUTO: AUTO may pick FULL from measured durations (the second cycle
        # compares the first differential refresh's time with the population's).
        mode = "DIFFERENTIAL"
        pgt.create_stream_table(c, "by_region", AGG, placement=placement, refresh_mode=mode)
        pgt.create_stream_table(
            c,
            "big_orders",
            "SELECT id, customer_id, amount FROM orders WHERE amount > 100",
            placement=placement,
            refresh_mode=mode,
        )
        _equal(c, "by_region", "big_orders")
        for i in range(2):
            _churn(c, 1000 + i * 100)
            for name in ("by_region", "big_orders"):
                assert pgt.refresh_stream_table(c, name).action == "DIFFERENTIAL"
            _equal(c, "by_region", "big_orders")
        stored = c.execute(
            "SELECT placement, distribution_column FROM pgtrickle.pgt_stream_tables "
            "WHERE pgt_name = 'by_region'"
        ).fetchone()
        assert stored == (placement, "__pgt_row_id" if placement == "distributed" else None)
        kind = c.execute(
            "SELECT coalesce((SELECT CASE WHEN partmethod = 'h' THEN 'distributed' "
            "ELSE 'reference' END FROM pg_dist_partition WHERE logicalrelid = 'by_region'::regclass), "
            "'local')"
        ).fetchone()
        assert kind == (placement,)
        explained = pgt.explain_stream_table(c, "by_region", format="json")
        assert explained["citus"]["st_placement"] == placement
        assert explained["citus"]["sources"] == [
            {"source": "public.orders", "placement": "distributed", "distribution_column": "id"}
        ]


def test_mixed_distributed_and_reference_sources(citus_db) -> None:
    with citus_db.connect() as c:
        pgt.install(c)
        _orders(c)
        _regions(c)
        query = (
            "SELECT r.name, count(*) AS n, sum(o.amount) AS total FROM orders o "
            "JOIN regions r ON r.id = o.region GROUP BY r.name"
        )
        pgt.create_stream_table(c, "by_region_name", query, placement="local")
        _churn(c, 2000)
        c.execute("UPDATE regions SET name = 'renamed' WHERE id = 1")
        c.execute("DELETE FROM regions WHERE id = 4")
        assert pgt.refresh_stream_table(c, "by_region_name").action == "DIFFERENTIAL"
        _equal(c, "by_region_name")


def test_concurrent_dml_and_refresh(citus_db) -> None:
    """Writers run while refreshes run; every refresh is exact (the sources are locked against
    coordinator-routed writers while a refresh imports and reads), and so is the last one."""
    with citus_db.connect() as c:
        pgt.install(c)
        _orders(c)
        pgt.create_stream_table(c, "by_region", AGG, placement="distributed")
    stop = threading.Event()
    pause = threading.Lock()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        try:
            with citus_db.connect() as w:
                i = 0
                while not stop.is_set():
                    i += 1
                    key = 10_000 * seed + i
                    with pause:
                        w.execute(
                            "INSERT INTO orders VALUES (%s, %s, %s, %s, 'w')",
                            (key, i % 40, i % 5, i),
                        )
                        w.execute(
                            "UPDATE orders SET amount = amount + 1 WHERE id = %s", (i % 300 + 1,)
                        )
                        if i % 4 == 0:
                            w.execute("DELETE FROM orders WHERE id = %s", (key - 2,))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    try:
        with citus_db.connect() as c:
            for i in range(6):
                if i % 2:  # while writers write; once a full refresh (it reads the nodes)
                    pgt.refresh_stream_table(c, "by_region", full=i == 3)
                    continue
                # Hold the writers between statements to compare the stream table with the
                # query at one state right after a refresh.
                with pause:
                    pgt.refresh_stream_table(c, "by_region")
                    _equal(c, "by_region")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    with citus_db.connect() as c:
        pgt.refresh_stream_table(c, "by_region")
        _equal(c, "by_region")


def test_schema_change_on_distributed_source(citus_db) -> None:
    with citus_db.connect() as c:
        pgt.install(c)
        _orders(c)
        pgt.create_stream_table(c, "by_region", AGG)
        c.execute("ALTER TABLE orders ADD COLUMN extra int DEFAULT 5")
        _churn(c, 3000)
        c.execute("UPDATE orders SET extra = 1 WHERE id < 50")
        pgt.refresh_stream_table(c, "by_region")
        _equal(c, "by_region")
        c.execute("ALTER TABLE orders DROP COLUMN note")
        c.execute("INSERT INTO orders (id, customer_id, region, amount) VALUES (99999, 1, 2, 3)")
        pgt.refresh_stream_table(c, "by_region")
        _equal(c, "by_region")


def test_drop_cleans_up_slots_on_every_node(citus_db) -> None:
    with citus_db.connect() as c:
        pgt.install(c)
        _orders(c)
        _regions(c)
        pgt.create_stream_table(c, "by_region", AGG)
        pgt.create_stream_table(c, "names", "SELECT id, name FROM regions")
        slots = {replication_slot(stable_name("public", t)) for t in ("orders", "regions")}
        found = set()
        for dsn in (citus_db.dsn, citus_db.worker_dsn(0), citus_db.worker_dsn(1)):
            with citus_db.connect(dsn) as n:
                found |= {r[0] for r in n.execute("SELECT slot_name FROM pg_replication_slots")}
        assert slots <= found
        pgt.drop_stream_table(c, "by_region")
        pgt.drop_stream_table(c, "names")
        assert c.execute("SELECT count(*) FROM pgtrickle.pgt_worker_slots").fetchone() == (0,)
    for dsn in (citus_db.dsn, citus_db.worker_dsn(0), citus_db.worker_dsn(1)):
        with citus_db.connect(dsn) as n:
            left = n.execute(
                "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgtrickle%%'), "
                "(SELECT count(*) FROM pg_publication WHERE pubname LIKE 'pgtrickle%%')"
            ).fetchone()
            assert left == (0, 0), dsn


def test_two_stream_tables_on_one_distributed_source(citus_db) -> None:
    with citus_db.connect() as c:
        pgt.install(c)
        _orders(c)
        pgt.create_stream_table(c, "by_region", AGG, placement="reference")
        _churn(c, 4000)
        pgt.create_stream_table(
            c,
            "by_customer",
            "SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id",
            placement="distributed",
            distribution_column="customer_id",
        )
        _churn(c, 7000)
        pgt.refresh_stream_table(c, "by_customer")
        _churn(c, 9000)
        pgt.refresh_stream_table(c, "by_region")
        pgt.refresh_stream_table(c, "by_customer")
        _equal(c, "by_region", "by_customer")
        # one slot per node for the shared source
        assert c.execute("SELECT count(*) FROM pgtrickle.pgt_worker_slots").fetchone() == (2,)


def test_colocation_recorded_and_notice_when_not_colocated(citus_db) -> None:
    """A distributed stream table on the source's distribution column (same type, same shard
    count) is co-located with it; one on another column is not, and its creator is told."""
    notices: list[str] = []
    with citus_db.connect() as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        pgt.install(c)
        _orders(c)
        pgt.create_stream_table(
            c,
            "by_id",
            "SELECT id, amount FROM orders WHERE amount > 100",
            placement="distributed",
            distribution_column="id",
        )
        assert not [n for n in notices if "co-located" in n], notices
        pgt.create_stream_table(
            c,
            "by_customer",
            "SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id",
            placement="distributed",
            distribution_column="customer_id",
        )
        (warned,) = [n for n in notices if "co-located" in n]
        assert "public.by_customer" in warned and "customer_id" in warned
        assert "cross-shard" in warned
        rows = c.execute(
            "SELECT pgt_name, citus_colocated_with FROM pgtrickle.pgt_stream_tables ORDER BY 1"
        ).fetchall()
        assert rows == [("by_customer", None), ("by_id", "public.orders")]
        status = c.execute(
            "SELECT DISTINCT stream_table, citus_colocated_with FROM pgtrickle.citus_status "
            "ORDER BY 1"
        ).fetchall()
        assert status == [("public.by_customer", None), ("public.by_id", "public.orders")]
        assert (
            pgt.explain_stream_table(c, "by_id", format="json")["citus"]["citus_colocated_with"]
            == "public.orders"
        )
        assert "co-located with no source" in pgt.explain_stream_table(c, "by_customer")
        # Both record the distributed source in the catalog row every refresh reads.
        for name in ("by_id", "by_customer"):
            assert records.get(c, "public", name).citus_captured
        deps = c.execute(
            "SELECT DISTINCT source_placement FROM pgtrickle.pgt_dependencies"
        ).fetchall()
        assert deps == [("distributed",)]
        _churn(c, 5000)
        for name in ("by_id", "by_customer"):
            assert pgt.refresh_stream_table(c, name).action == "DIFFERENTIAL"
        _equal(c, "by_id", "by_customer")


def test_alter_on_citus(citus_db) -> None:
    """Placement and, on Citus, the query are not altered in place (loud errors saying to drop
    and create again); the schedule and refresh mode are."""
    with citus_db.connect() as c:
        pgt.install(c)
        _orders(c)
        c.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        c.execute("INSERT INTO items SELECT g, g % 3 FROM generate_series(1, 20) g")
        pgt.create_stream_table(c, "by_region", AGG, placement="local")
        pgt.create_stream_table(c, "by_v", "SELECT v, count(*) AS n FROM items GROUP BY v")
        with pytest.raises(ConfigError, match="placement of stream table by_region cannot"):
            pgt.alter_stream_table(c, "by_region", placement="distributed")
        with pytest.raises(ConfigError, match="reads Citus reference or distributed tables"):
            pgt.alter_stream_table(c, "by_region", query=AGG.replace("count(*)", "count(note)"))
        with pytest.raises(ConfigError, match=r"would read Citus tables \(public.orders\)"):
            pgt.alter_stream_table(c, "by_v", query="SELECT region AS v FROM orders")
        pgt.alter_stream_table(c, "by_region", schedule="5m", refresh_mode="DIFFERENTIAL")
        pgt.alter_stream_table(c, "by_v", query="SELECT v, sum(id) AS s FROM items GROUP BY v")
        _churn(c, 6000)
        assert pgt.refresh_stream_table(c, "by_region").action == "DIFFERENTIAL"
        _equal(c, "by_region", "by_v")


def test_create_while_writers_write(citus_db) -> None:
    """Stream tables created while writers insert through the coordinator: every write is in
    the population or in the slots, never in neither (it failed 2 of 2 runs while the creating
    transaction's lock reached the nodes before the coordinator's writers had finished)."""
    with citus_db.connect() as c:
        pgt.install(c)
        _orders(c)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        try:
            with citus_db.connect() as w:
                i = 0
                while not stop.is_set():
                    i += 1
                    w.execute(
                        "INSERT INTO orders VALUES (%s, %s, %s, 1, 'w')",
                        (seed * 100_000 + i, i % 40, i % 5),
                    )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    names = {"st_local": "local", "st_distributed": "distributed", "st_reference": "reference"}
    try:
        with citus_db.connect() as c:
            for name, placement in names.items():
                pgt.create_stream_table(
                    c, name, AGG, placement=placement, refresh_mode="DIFFERENTIAL"
                )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    with citus_db.connect() as c:
        for name in names:
            assert pgt.refresh_stream_table(c, name).action == "DIFFERENTIAL"
        _equal(c, *names)
