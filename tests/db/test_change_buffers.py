"""Change buffer layout: the BRIN xid index, and unlogged buffers across a crash restart."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

import dbt_pgtrickle as pgt
from dbt_pgtrickle.catalog.install import install
from dbt_pgtrickle.embedded import Cluster
from dbt_pgtrickle.naming import stable_name
from dbt_pgtrickle.refresh import engine

BUF = f"pgtrickle_changes.changes_{stable_name('public', 'src')}"
LOGGED_BUF = f"pgtrickle_changes.changes_{stable_name('public', 'kept')}"
QUERIES = {
    "agg": "SELECT g, count(*) AS n, sum(v) AS s FROM src GROUP BY g",
    "rows": "SELECT id, g, v FROM src WHERE v IS NOT NULL",
    "kept_sum": "SELECT sum(v) AS s FROM kept",
}


def differences(conn: psycopg.Connection[Any], name: str) -> int:
    """Rows in the symmetric EXCEPT ALL of the stream table and its query."""
    check = pgt.verify_stream_table(conn, name)
    return int(check["extra"]) + int(check["missing"])


def pending(conn: psycopg.Connection[Any], name: str) -> bool:
    """has_pending_changes, checked against the scheduler's many-table probe."""
    row = conn.execute(
        "SELECT pgtrickle.has_pending_changes(pgtrickle.stream_table_id(%s)), "
        "pgtrickle.stream_table_id(%s) IN (SELECT pgtrickle.pending_stream_tables())",
        (name, name),
    ).fetchone()
    assert row is not None and row[0] == row[1], (name, row)
    return bool(row[0])


def persistence(conn: psycopg.Connection[Any], table: str) -> str:
    row = conn.execute("SELECT relpersistence FROM pg_class WHERE oid = %s::regclass", (table,))
    return str(row.fetchone()[0])  # type: ignore[index]


def setup_sources(conn: psycopg.Connection[Any]) -> None:
    """``kept`` (captured while buffers are logged, the default), then ``src`` (unlogged)."""
    pgt.install(conn)
    conn.execute("CREATE TABLE kept (id int PRIMARY KEY, v int)")
    conn.execute("INSERT INTO kept SELECT g, g FROM generate_series(1, 20) g")
    pgt.create_stream_table(conn, "kept_sum", QUERIES["kept_sum"], refresh_mode="DIFFERENTIAL")
    pgt.set_setting(conn, "change_buffer_unlogged", True)
    conn.execute("CREATE TABLE src (id int PRIMARY KEY, g text, v int)")
    conn.execute(
        "INSERT INTO src SELECT g, chr(97 + g % 5), nullif(g % 7, 0) FROM generate_series(1, 200) g"
    )
    for name in ("agg", "rows"):
        pgt.create_stream_table(conn, name, QUERIES[name], refresh_mode="DIFFERENTIAL")


def write_changes(conn: psycopg.Connection[Any], base: int) -> None:
    """Inserts (with NULLs and duplicates of values), updates moving groups and keys, deletes."""
    conn.execute(
        "INSERT INTO src SELECT g, chr(97 + g %% 3), CASE WHEN g %% 4 = 0 THEN NULL ELSE 1 END "
        "FROM generate_series(%s::int, %s::int) g",
        (base, base + 30),
    )
    conn.execute("UPDATE src SET g = 'z', v = coalesce(v, 0) + 1 WHERE id % 9 = 0")
    conn.execute("UPDATE src SET id = id + 100000 WHERE id % 13 = 0")
    conn.execute("DELETE FROM src WHERE id % 11 = 0")
    conn.execute("UPDATE kept SET v = v + 1 WHERE id <= 5")


def test_buffer_has_a_brin_xid_index_the_window_and_cleanup_use(
    conn: psycopg.Connection[Any],
) -> None:
    pgt.install(conn)
    conn.execute("CREATE TABLE src (id int PRIMARY KEY, g text, v int)")
    pgt.create_stream_table(conn, "agg", QUERIES["agg"], refresh_mode="DIFFERENTIAL")
    assert persistence(conn, BUF) == "p"  # logged by default
    defs = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'pgtrickle_changes'"
    ).fetchall()
    assert len(defs) == 1 and "USING brin" in defs[0][0] and "pages_per_range='32'" in defs[0][0]
    conn.execute("INSERT INTO src SELECT g, 'a', g FROM generate_series(1, 50) g")
    frontier = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]  # type: ignore[index]
    src = engine._Source("public", "src", stable_name("public", "src"), True, ["id", "g", "v"])
    assert "::bigint" not in engine._window(src).as_string(conn)  # no lagging reader: plain scan
    src.lagging_peer = True
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")  # only the index can serve it now
        plan = conn.execute(
            sql.SQL("EXPLAIN SELECT count(*) {}").format(engine._window(src)), {"f": frontier}
        ).fetchall()
    assert any(f"Bitmap Index Scan on changes_{src.stable}_xid" in r[0] for r in plan), plan
    assert pgt.refresh_stream_table(conn, "agg").action == "DIFFERENTIAL"
    assert differences(conn, "agg") == 0
    assert conn.execute(f"SELECT count(*) FROM {BUF}").fetchone() == (0,)  # cleaned up


def test_upgrade_replaces_the_btree_of_existing_buffers(conn: psycopg.Connection[Any]) -> None:
    pgt.install(conn)
    conn.execute("CREATE TABLE src (id int PRIMARY KEY, g text, v int)")
    pgt.create_stream_table(conn, "agg", QUERIES["agg"], refresh_mode="DIFFERENTIAL")
    # Back to version 5 as far as the buffer and the catalog are concerned.
    index = sql.Identifier("pgtrickle_changes", f"changes_{stable_name('public', 'src')}_xid")
    conn.execute(sql.SQL("DROP INDEX {}").format(index))
    conn.execute(
        sql.SQL("CREATE INDEX {} ON {} (__pgt_xid)").format(
            sql.Identifier(index.as_string(conn).split(".")[1].strip('"')),
            sql.SQL(BUF),
        )
    )
    conn.execute("DROP TABLE pgtrickle.pgt_unlogged_sentinel")
    conn.execute("UPDATE pgtrickle.pgt_schema_version SET version = 5 WHERE version = 6")
    install(conn)
    rows = conn.execute(
        "SELECT am.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_am am ON am.oid = c.relam WHERE i.indrelid = %s::regclass",
        (BUF,),
    ).fetchall()
    assert rows == [("brin",)]
    conn.execute("INSERT INTO src VALUES (1, 'a', 1)")
    assert pgt.refresh_stream_table(conn, "agg").action == "DIFFERENTIAL"
    assert differences(conn, "agg") == 0


def test_a_reader_whose_sentinel_row_is_gone_recomputes_once(
    conn: psycopg.Connection[Any],
) -> None:
    setup_sources(conn)
    assert persistence(conn, BUF) == "u" and persistence(conn, LOGGED_BUF) == "p"
    armed = conn.execute("SELECT count(*) FROM pgtrickle.pgt_unlogged_sentinel").fetchone()
    assert armed == (2,)  # agg and rows; kept_sum reads a logged buffer
    write_changes(conn, 1000)
    for name in ("agg", "rows", "kept_sum"):
        assert pgt.refresh_stream_table(conn, name).action == "DIFFERENTIAL"
        assert differences(conn, name) == 0
        assert not pending(conn, name)
    conn.execute("DELETE FROM pgtrickle.pgt_unlogged_sentinel")  # what a crash restart does
    assert pending(conn, "agg") and pending(conn, "rows") and not pending(conn, "kept_sum")
    r = pgt.refresh_stream_table(conn, "agg")
    assert r.action == "FULL" and "public.src" in (r.fallback_reason or "")
    assert "unlogged change buffer" in (r.fallback_reason or "")
    assert not pending(conn, "agg") and pending(conn, "rows")
    assert pgt.refresh_stream_table(conn, "agg").action == "NO_DATA"
    pgt.drop_stream_table(conn, "rows")
    assert conn.execute("SELECT pgt_id FROM pgtrickle.pgt_unlogged_sentinel").fetchall() == [
        (conn.execute("SELECT pgtrickle.stream_table_id('agg')").fetchone()[0],)  # type: ignore[index]
    ]


def test_crash_restart_empties_unlogged_buffers_and_readers_recompute(
    own_server: tuple[Cluster, str],
) -> None:
    cluster, dsn = own_server
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup_sources(conn)
        write_changes(conn, 1000)  # committed, captured, not refreshed yet
        assert conn.execute(f"SELECT count(*) FROM {BUF}").fetchone() != (0,)
    port = cluster.running_port()
    cluster.run(
        "pg_ctl", ["-D", str(cluster.data_dir), "-m", "immediate", "-w", "stop"], timeout=75
    )
    assert cluster.running_port() is None
    cluster.start(port, timeout=60)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(f"SELECT count(*) FROM {BUF}").fetchone() == (0,)  # changes lost
        assert conn.execute("SELECT count(*) FROM pgtrickle.pgt_unlogged_sentinel").fetchone() == (
            0,
        )
        assert pending(conn, "agg") and pending(conn, "rows")  # nothing new written, still due
        assert differences(conn, "agg") > 0  # stale: the lost changes are not in it
        write_changes(conn, 2000)  # after the restart: captured again
        for name in ("agg", "rows"):
            r = pgt.refresh_stream_table(conn, name)
            assert r.action == "FULL", (name, r)
            assert "crash restart" in (r.fallback_reason or ""), r.fallback_reason
            assert differences(conn, name) == 0, name
        # The logged buffer kept its changes: applied differentially, exactly.
        assert pgt.refresh_stream_table(conn, "kept_sum").action == "DIFFERENTIAL"
        assert differences(conn, "kept_sum") == 0
        write_changes(conn, 3000)
        for name in ("agg", "rows", "kept_sum"):
            assert pgt.refresh_stream_table(conn, name).action == "DIFFERENTIAL", name
            assert differences(conn, name) == 0, name
        reasons = conn.execute(
            "SELECT pgt_name FROM pgtrickle.pgt_refresh_history WHERE fallback_reason LIKE "
            "'%unlogged change buffer%' ORDER BY 1"
        ).fetchall()
        assert reasons == [("agg",), ("rows",)]


@pytest.mark.parametrize("value", ["on", "false"])
def test_setting_parses(conn: psycopg.Connection[Any], value: str) -> None:
    pgt.install(conn)
    pgt.set_setting(conn, "change_buffer_unlogged", value)
    assert pgt.get_setting(conn, "change_buffer_unlogged") is (value == "on")


def test_pending_probe_finds_the_readers_behind_on_one_buffer(
    conn: psycopg.Connection[Any],
) -> None:
    """Seven readers of one buffer, each refreshed after one more write: the scheduler's probe
    (a binary search over the readers' frontiers on the BRIN index) agrees with the per-table
    probe for each, before and after a write none of them has seen."""
    pgt.install(conn)
    conn.execute("CREATE TABLE src (id int PRIMARY KEY, g text, v int)")
    names = [f"r{i}" for i in range(7)]
    for name in names:
        # DIFFERENTIAL: in AUTO a 1 ms stream table may rightly recompute (the per-row
        # estimate from a one-row refresh is mostly fixed cost); this test is about the probe.
        pgt.create_stream_table(
            conn, name, "SELECT count(*) AS n FROM src", refresh_mode="DIFFERENTIAL"
        )
    for i, name in enumerate(names):
        conn.execute("INSERT INTO src VALUES (%s, 'a', 1)", (i,))
        assert pgt.refresh_stream_table(conn, name).action == "DIFFERENTIAL"
    assert [pending(conn, n) for n in names] == [True] * 6 + [False]
    behind = [
        engine._sources(
            conn, conn.execute("SELECT pgtrickle.stream_table_id(%s)", (n,)).fetchone()[0]
        )[0].lagging_peer  # type: ignore[index]
        for n in names
    ]
    assert behind == [False] + [True] * 6  # r0 is the slowest reader: no one behind it
    for i in (6, 0, 3):
        assert pgt.refresh_stream_table(conn, names[i]).action in ("DIFFERENTIAL", "NO_DATA")
    assert [pending(conn, n) for n in names] == [False, True, True, False, True, True, False]
    conn.execute("INSERT INTO src VALUES (100, 'b', 2)")
    assert all(pending(conn, n) for n in names)
    for name in names:
        pgt.refresh_stream_table(conn, name)
        assert pgt.verify_stream_table(conn, name)["equal"]
    assert not any(pending(conn, n) for n in names)
