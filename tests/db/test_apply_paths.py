"""How a differential refresh reads its changes and applies its delta.

* The change windows are materialised while they are counted (one read of each buffer), once a
  probe found them non-empty; in AUTO, a window past what ``auto_full_threshold`` allows is
  counted first instead.
* A keyed stream table or stage is joined with its delta once: deleted and changed rows are
  addressed by ctid, new rows are the unmatched ones, and a stage's change window comes out of
  the same join.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import dbt_pgtrickle as pgt
from dbt_pgtrickle.dvm.compiler import stage_prefix
from dbt_pgtrickle.refresh import engine

# the fixture of tests/db/conftest.py
RefreshExactly = Callable[[psycopg.Connection[Any], str], pgt.RefreshResult]


def test_keyed_apply_counts_and_leaves_unchanged_rows_alone(
    db: psycopg.Connection[Any], refresh_exactly: RefreshExactly
) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY, g text, v int)")
    db.execute("INSERT INTO t VALUES (1, 'a', 1), (2, 'a', 2), (3, 'b', 3), (4, 'c', 4)")
    pgt.create_stream_table(
        db,
        "st",
        "select g, sum(v) as s, count(*) as n from t group by g",
        refresh_mode="DIFFERENTIAL",
    )
    ctid_c = db.execute("SELECT ctid::text FROM st WHERE g = 'c'").fetchone()
    db.execute("INSERT INTO t VALUES (5, 'd', 5)")  # a new group: inserted
    db.execute("UPDATE t SET v = 10 WHERE id = 1")  # group a changes: updated
    db.execute("DELETE FROM t WHERE id = 3")  # group b is gone: deleted
    db.execute("UPDATE t SET v = v WHERE id = 4")  # group c is touched but stays as it is
    r = refresh_exactly(db, "st")
    assert (r.action, r.rows_in) == ("DIFFERENTIAL", 6)
    assert (r.rows_inserted, r.rows_updated, r.rows_deleted) == (1, 1, 1)
    # not rewritten: no dead tuple and no change row for a stream table reading this one
    assert db.execute("SELECT ctid::text FROM st WHERE g = 'c'").fetchone() == ctid_c
    assert db.execute("SELECT g, s, n FROM st ORDER BY g").fetchall() == [
        ("a", 12, 2),
        ("c", 4, 1),
        ("d", 5, 1),
    ]
    history = db.execute(
        "SELECT rows_inserted, rows_updated, rows_deleted FROM pgtrickle.pgt_refresh_history "
        "WHERE action = 'DIFFERENTIAL' ORDER BY refresh_id DESC LIMIT 1"
    ).fetchone()
    assert history == (1, 1, 1)


def test_stage_window_from_the_keyed_apply(
    db: psycopg.Connection[Any], refresh_exactly: RefreshExactly
) -> None:
    # The subquery in FROM is a stage; what its refresh changed is the window of the query
    # above it, and the stream table reading the result is fed by capture of its rewrites.
    db.execute("CREATE TABLE c (id int PRIMARY KEY, name text)")
    db.execute("CREATE TABLE o (id int PRIMARY KEY, cid int, amt int)")
    db.execute("INSERT INTO c SELECT i, 'c' || i FROM generate_series(1, 6) i")
    db.execute("INSERT INTO o SELECT i, 1 + i % 5, i FROM generate_series(1, 30) i")
    pgt.create_stream_table(
        db,
        "big",
        "select c.name, s.total, s.n from c join (select cid, sum(amt) as total, count(*) as n "
        "from o group by cid) as s on s.cid = c.id where s.total > 40",
        refresh_mode="DIFFERENTIAL",
    )
    stages = db.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'pgtrickle_changes' "
        "AND tablename LIKE 'stage%%'"
    ).fetchone()
    assert stages == (1,)
    pgt.create_stream_table(
        db, "tally", "select count(*) as k, sum(total) as t from big", refresh_mode="DIFFERENTIAL"
    )
    # an aggregate over a stage: weights add up (a keyed reader would absorb a spare +1)
    pgt.create_stream_table(
        db,
        "per_n",
        "select s.n, count(*) as k, sum(s.total) as t from c join (select cid, sum(amt) as "
        "total, count(*) as n from o group by cid) as s on s.cid = c.id group by s.n",
        refresh_mode="DIFFERENTIAL",
    )
    steps = [
        # a new group (customer 6), and one that grows past the filter
        "INSERT INTO o VALUES (100, 6, 50), (101, 5, 1)",
        # touched, unchanged: +7 and -7 inside customer 1 in one statement; customer 2 changes
        "UPDATE o SET amt = amt + CASE WHEN id = 5 THEN 7 ELSE -7 END WHERE id IN (5, 10); "
        "INSERT INTO o VALUES (104, 2, 3)",
        # a group vanishes entirely
        "DELETE FROM o WHERE cid = 1",
        # a key change moves an order between groups (both change)
        "UPDATE o SET cid = 2 WHERE id = 4",
        # a NULL key: its own group, with no customer to join
        "INSERT INTO o VALUES (102, NULL, 99)",
        # a group comes back, and another shrinks below the filter
        "INSERT INTO o VALUES (103, 1, 60); DELETE FROM o WHERE cid = 3 AND id > 8",
        # a customer's name changes (the other side of the join)
        "UPDATE c SET name = 'renamed' WHERE id = 2",
    ]
    for step in steps:
        for statement in step.split("; "):
            db.execute(statement)
        r = refresh_exactly(db, "big")
        assert r.action == "DIFFERENTIAL", (step, r.fallback_reason)
        assert refresh_exactly(db, "tally").action in ("DIFFERENTIAL", "NO_DATA"), step
        # per_n reads no column of c but its id: a rename cancels out of its window.
        expected = "NO_DATA" if step.startswith("UPDATE c SET name") else "DIFFERENTIAL"
        assert refresh_exactly(db, "per_n").action == expected, step


def test_windows_past_auto_threshold_are_counted_first(
    db: psycopg.Connection[Any], refresh_exactly: RefreshExactly, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY, g int, v int)")
    db.execute("CREATE TABLE u (g int PRIMARY KEY, label text)")
    db.execute("INSERT INTO t SELECT i, i % 4, i FROM generate_series(1, 100) i")
    db.execute("INSERT INTO u SELECT i, 'g' || i FROM generate_series(0, 199) i")
    db.execute("ANALYZE t, u")
    query = "select u.label, sum(t.v) as s from t join u on u.g = t.g group by u.label"
    pgt.create_stream_table(db, "st", query, refresh_mode="AUTO")
    pgt.set_setting(db, "auto_full_threshold", 0.1)  # a window cap of 31 of 300 source rows
    # No time budget: on a loaded machine the full refresh below can pass the 50 ms cost floor,
    # and a budget of a fifth of it would cancel the differential refresh this test expects.
    pgt.set_setting(db, "auto_diff_budget", 0)
    counted = []
    count_windows = engine._count_windows

    def spy(conn: psycopg.Connection[Any], rec: Any, live: list[Any]) -> list[str]:
        counted.append(sorted(src.name for src in live))
        return count_windows(conn, rec, live)

    monkeypatch.setattr(engine, "_count_windows", spy)
    # t (read first) is under the cap and materialised; u passes it: both are dropped, counted
    db.execute("UPDATE t SET v = v + 1 WHERE id <= 3")
    db.execute("DELETE FROM u WHERE g >= 160")
    r = refresh_exactly(db, "st")
    assert (r.action, r.rows_in, counted) == ("FULL", 46, [["t", "u"]]), r
    assert (r.fallback_reason or "").startswith("46 changed rows are"), r.fallback_reason
    # under the cap: materialised and counted by their creation, nothing counted apart
    db.execute("UPDATE t SET v = v + 1 WHERE id <= 5")
    db.execute("UPDATE u SET label = 'x' WHERE g = 1")
    r = refresh_exactly(db, "st")
    assert (r.action, r.rows_in, counted) == ("DIFFERENTIAL", 12, [["t", "u"]]), r
    # explicit DIFFERENTIAL: no cap at all
    pgt.alter_stream_table(db, "st", refresh_mode="DIFFERENTIAL")
    db.execute("DELETE FROM t WHERE id > 40")
    r = refresh_exactly(db, "st")
    assert (r.action, r.rows_in, counted) == ("DIFFERENTIAL", 60, [["t", "u"]]), r


def test_no_change_refresh_reads_neither_sources_nor_plan(
    db: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With every window empty, nothing is compiled, so no source is locked: a refresh while a
    # source is locked by a long ALTER (or VACUUM FULL) is NO_DATA, not a lock timeout.
    db.execute("CREATE TABLE t (id int PRIMARY KEY, g int, v int)")
    db.execute("INSERT INTO t SELECT i, i % 4, i FROM generate_series(1, 20) i")
    pgt.create_stream_table(
        db, "st", "select g, sum(v) as s from t group by g", refresh_mode="DIFFERENTIAL"
    )
    pgt.set_setting(db, "refresh_lock_timeout_ms", 500)
    compiled = []
    compile_for = engine.compile_for
    monkeypatch.setattr(
        engine,
        "compile_for",
        lambda conn, rec: compiled.append(rec.pgt_name) or compile_for(conn, rec),
    )
    with psycopg.connect(dsn) as other:
        other.execute("BEGIN")
        other.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        assert pgt.refresh_stream_table(db, "st").action == "NO_DATA"
        other.execute("ROLLBACK")
    assert compiled == []
    db.execute("UPDATE t SET v = 0 WHERE id = 1")
    assert pgt.refresh_stream_table(db, "st").action == "DIFFERENTIAL"
    assert set(compiled) == {"st"}


def test_changed_rows_are_updated_in_place_of_a_foreign_key(
    db: psycopg.Connection[Any], refresh_exactly: RefreshExactly
) -> None:
    # A user's foreign key to a stream table's rows: a changed row is updated (as MERGE did),
    # not deleted and inserted again, which the key would refuse.
    db.execute("CREATE TABLE t (id int PRIMARY KEY, g text, v int)")
    db.execute("INSERT INTO t VALUES (1, 'a', 1), (2, 'b', 2)")
    pgt.create_stream_table(
        db, "st", "select g, sum(v) as s from t group by g", refresh_mode="DIFFERENTIAL"
    )
    db.execute("CREATE UNIQUE INDEX st_g ON st (g)")
    db.execute("ALTER TABLE st ADD CONSTRAINT st_g_key UNIQUE USING INDEX st_g")
    db.execute("CREATE TABLE note (g text REFERENCES st (g), body text)")
    db.execute("INSERT INTO note VALUES ('a', 'kept')")
    db.execute("UPDATE t SET v = 10 WHERE id = 1")
    db.execute("INSERT INTO t VALUES (3, 'c', 3)")
    r = refresh_exactly(db, "st")
    assert (r.rows_inserted, r.rows_updated, r.rows_deleted) == (1, 1, 0)
    assert db.execute("SELECT g, body FROM note").fetchall() == [("a", "kept")]


def test_a_stage_joined_on_its_group_keys_is_indexed_on_them(
    db: psycopg.Connection[Any], refresh_exactly: RefreshExactly
) -> None:
    db.execute("CREATE TABLE part (pk int PRIMARY KEY, brand text)")
    db.execute("CREATE TABLE line (id int PRIMARY KEY, pk int, sk int, qty int)")
    db.execute("INSERT INTO part SELECT i, 'b' || (i % 3) FROM generate_series(1, 30) i")
    db.execute(
        "INSERT INTO line SELECT i, 1 + i % 30, i % 4, i % 11 FROM generate_series(1, 300) i"
    )
    # The correlated average is a stage grouped by (pk, sk) and joined on both columns.
    pgt.create_stream_table(
        db,
        "joined",
        "select l.id, l.qty from line l join part p on p.pk = l.pk where p.brand = 'b1' and "
        "l.qty > (select avg(l2.qty) from line l2 where l2.pk = l.pk and l2.sk = l.sk)",
        refresh_mode="DIFFERENTIAL",
    )
    # The same under ORDER BY … LIMIT: the stage is joined by the TopK's inner query.
    pgt.create_stream_table(
        db,
        "top",
        "select l.id, l.qty from line l join part p on p.pk = l.pk where p.brand = 'b1' and "
        "l.qty > (select avg(l2.qty) from line l2 where l2.pk = l.pk and l2.sk = l.sk) "
        "order by l.qty desc, l.id limit 5",
        refresh_mode="DIFFERENTIAL",
    )
    # A grouped derived table that the query above only aggregates: no join, no key index.
    pgt.create_stream_table(
        db,
        "alone",
        "select n, count(*) as k from (select pk, count(*) as n from line group by pk) as c "
        "group by n",
        refresh_mode="DIFFERENTIAL",
    )

    def stage_indexes(name: str) -> list[str]:
        prefix = stage_prefix(f'"public"."{name}"')
        rows = db.execute(
            "SELECT regexp_replace(indexdef, '^.* USING btree ', '') FROM pg_indexes "
            "WHERE schemaname = 'pgtrickle_changes' AND starts_with(tablename, %s) ORDER BY 1",
            (prefix,),
        ).fetchall()
        return [r[0] for r in rows]

    assert stage_indexes("joined") == ["(__pgt_row_id)", "(k0, k1)"]
    assert stage_indexes("top") == ["(__pgt_row_id)", "(k0, k1)"]
    assert stage_indexes("alone") == ["(__pgt_row_id)"]
    for statement in (
        "UPDATE line SET qty = qty + 3 WHERE id % 7 = 0",
        "DELETE FROM line WHERE id % 13 = 0",
        "INSERT INTO line SELECT i, 1 + i % 30, i % 5, i % 9 FROM generate_series(301, 340) i",
    ):
        db.execute(statement)
        assert refresh_exactly(db, "joined").action == "DIFFERENTIAL"
        assert refresh_exactly(db, "top").action == "DIFFERENTIAL"
        # "alone" reads line.pk only: the update of qty cancels out of its window.
        expected = "NO_DATA" if statement.startswith("UPDATE") else "DIFFERENTIAL"
        assert refresh_exactly(db, "alone").action == expected
