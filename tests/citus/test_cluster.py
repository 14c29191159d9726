"""The Citus test cluster itself works: a distributed table spreads over both workers."""

from __future__ import annotations


def test_distributed_table_spans_workers(citus_db) -> None:
    with citus_db.connect() as c:
        c.execute("CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric)")
        c.execute("SELECT create_distributed_table('orders', 'id')")
        c.execute("INSERT INTO orders SELECT g, g FROM generate_series(1, 100) g")
        assert c.execute("SELECT count(*), sum(amount) FROM orders").fetchone() == (100, 5050)
        nodes = c.execute(
            "SELECT count(DISTINCT nodeport) FROM citus_shards WHERE table_name = 'orders'::regclass"
        ).fetchone()
        assert nodes == (2,)
    for i in range(2):
        with citus_db.connect(citus_db.worker_dsn(i)) as w:
            w.execute("SET citus.override_table_visibility = off")  # Citus hides shards
            shards = w.execute(
                "SELECT count(*) FROM pg_class WHERE relname ~ '^orders_[0-9]+$'"
            ).fetchone()
            assert shards is not None and shards[0] > 0
