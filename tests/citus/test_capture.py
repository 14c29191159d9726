"""Distributed and reference sources captured from the workers' slots, on a real cluster."""

from __future__ import annotations

from typing import Any

import psycopg

import dbt_pgtrickle as pgt


def _equal(conn: psycopg.Connection[Any], name: str) -> None:
    result = pgt.verify_stream_table(conn, name)
    assert result["equal"], result


def _orders(c: psycopg.Connection[Any], rows: int = 200) -> None:
    c.execute("CREATE TABLE orders (id bigint PRIMARY KEY, region int, amount numeric, note text)")
    c.execute("SELECT create_distributed_table('orders', 'id')")
    c.execute(
        "INSERT INTO orders SELECT g, g %% 5, g * 1.5, 'n' || g FROM generate_series(1, %s) g",
        (rows,),
    )


def test_distributed_source_local_stream_table(citus_db) -> None:
    with citus_db.connect() as c:
        pgt.install(c)
        _orders(c)
        pgt.create_stream_table(
            c,
            "by_region",
            "SELECT region, count(*) AS n, sum(amount) AS total FROM orders GROUP BY region",
        )
        _equal(c, "by_region")
        c.execute("INSERT INTO orders SELECT g, g % 7, g, NULL FROM generate_series(201, 260) g")
        c.execute("UPDATE orders SET amount = amount + 1, region = 9 WHERE id % 10 = 0")
        c.execute("DELETE FROM orders WHERE id % 13 = 0")
        r = pgt.refresh_stream_table(c, "by_region")
        assert r.action == "DIFFERENTIAL"
        _equal(c, "by_region")
        assert pgt.refresh_stream_table(c, "by_region").action == "NO_DATA"
        slots = c.execute("SELECT count(*) FROM pgtrickle.pgt_worker_slots").fetchone()
        assert slots == (2,)
