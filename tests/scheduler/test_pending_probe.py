"""``pgtrickle.pending_stream_tables``: one probe per change buffer, the same answer as
``pgtrickle.has_pending_changes`` for every stream table (in-process, no daemon process)."""

from __future__ import annotations

from typing import Any

import psycopg

import dbt_pgtrickle as pgt


def pending(conn: psycopg.Connection[Any], *names: str) -> set[str]:
    """Names of the pending stream tables (among ``names``; all when none given), after checking
    that the one-pass probe and the per-stream-table function agree on every stream table."""
    rows = conn.execute(
        "SELECT pgt_id, pgt_name, pgtrickle.has_pending_changes(pgt_id) "
        "FROM pgtrickle.pgt_stream_tables"
    ).fetchall()
    by_id = {pgt_id: name for pgt_id, name, _ in rows}
    expected = {name for _, name, flag in rows if flag}
    everything = {
        by_id[r[0]] for r in conn.execute("SELECT pgtrickle.pending_stream_tables()").fetchall()
    }
    assert everything == expected
    wanted = [pgt_id for pgt_id, name in by_id.items() if not names or name in names]
    some = conn.execute(
        "SELECT array_agg(p ORDER BY p) FROM pgtrickle.pending_stream_tables(%s) p", (wanted,)
    ).fetchone()
    found = {by_id[i] for i in (some[0] if some and some[0] else [])}
    assert found == {n for n in expected if n in {by_id[i] for i in wanted}}
    return found


def test_each_reader_is_judged_by_its_own_frontier(shop: psycopg.Connection[Any]) -> None:
    pgt.create_stream_table(shop, "ahead", "SELECT id, amount FROM orders")
    pgt.create_stream_table(shop, "behind", "SELECT region, count(*) AS n FROM orders GROUP BY 1")
    shop.execute("CREATE TABLE other (id int PRIMARY KEY)")
    pgt.create_stream_table(
        shop, "both", "SELECT o.id FROM orders o JOIN other x ON x.id = o.id", schedule="1h"
    )
    assert pending(shop) == set()
    shop.execute("INSERT INTO orders VALUES (100, 'north', 1)")
    assert pending(shop) == {"ahead", "behind", "both"}
    pgt.refresh_stream_table(shop, "ahead")
    # ahead's frontier has seen the row; behind's and both's have not (one buffer, three readers)
    assert pending(shop) == {"behind", "both"}
    assert pending(shop, "ahead", "behind") == {"behind"}
    pgt.refresh_stream_table(shop, "behind")
    pgt.refresh_stream_table(shop, "both")
    assert pending(shop) == set()
    # a change in the other source only: only its reader
    shop.execute("INSERT INTO other VALUES (1)")
    assert pending(shop) == {"both"}
    assert pending(shop, "ahead") == set()


def test_a_writer_in_progress_at_the_frontier_is_pending_once_it_commits(
    shop: psycopg.Connection[Any], dsn: str
) -> None:
    """The late writer's xid is below the frontier's xmax but in its in-progress list, and
    later rows of the buffer do not hide it."""
    # DIFFERENTIAL: AUTO may rightly recompute tables this small (this is about the probe).
    pgt.create_stream_table(
        shop, "early", "SELECT id, amount FROM orders", refresh_mode="DIFFERENTIAL"
    )
    pgt.create_stream_table(
        shop, "late", "SELECT id, region FROM orders", refresh_mode="DIFFERENTIAL"
    )
    with psycopg.connect(dsn) as writer:
        writer.execute("INSERT INTO orders VALUES (200, 'east', 2)")  # open transaction
        shop.execute("INSERT INTO orders VALUES (201, 'east', 3)")  # committed after it began
        pgt.refresh_stream_table(shop, "early")  # sees 201, not 200 (in progress)
        assert pending(shop) == {"late"}
        writer.commit()
    # Both buffers rows are at or above early's xmin; 201's xid is the largest and visible to
    # early, 200's is in early's in-progress list.
    assert pending(shop) == {"early", "late"}
    assert pgt.refresh_stream_table(shop, "early").action == "DIFFERENTIAL"
    assert pending(shop) == {"late"}
    pgt.refresh_stream_table(shop, "late")
    assert pending(shop) == set()


def test_truncate_marker_upstream_refresh_unpopulated_and_uncaptured(
    shop: psycopg.Connection[Any],
) -> None:
    pgt.create_stream_table(
        shop, "by_region", "SELECT region, sum(amount) AS total FROM orders GROUP BY region"
    )
    pgt.create_stream_table(shop, "grand", "SELECT sum(total) AS total FROM by_region")
    assert pending(shop) == set()
    shop.execute("TRUNCATE orders")  # one marker row in the buffer
    assert pending(shop) == {"by_region"}
    assert pgt.refresh_stream_table(shop, "by_region").action == "FULL"
    # the upstream stream table's refresh wrote into its own buffer
    assert pending(shop) == {"grand"}
    pgt.refresh_stream_table(shop, "grand")
    assert pending(shop) == set()
    pgt.create_stream_table(shop, "later", "SELECT id FROM orders", initialize=False)
    shop.execute("CREATE MATERIALIZED VIEW north AS SELECT * FROM orders WHERE region = 'north'")
    pgt.create_stream_table(shop, "on_view", "SELECT count(*) AS n FROM north")
    # not populated yet; a source whose changes are not captured (a materialized view): always
    # pending
    assert pending(shop) == {"later", "on_view"}
    pgt.refresh_stream_table(shop, "later")
    assert pending(shop) == {"on_view"}
    assert pending(shop, "by_region", "grand", "later") == set()
