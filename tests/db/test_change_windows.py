"""Change windows as the refresh materialises them: only the columns the delta reads, and only
the rows that meet what the query requires of their table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

import dbt_pgtrickle as pgt
from dbt_pgtrickle.naming import CHANGES_SCHEMA, buffer_table, stable_name
from dbt_pgtrickle.refresh import engine

# the fixture of tests/db/conftest.py
RefreshExactly = Callable[[psycopg.Connection[Any], str], pgt.RefreshResult]


def test_updates_of_unread_columns_change_nothing(
    db: psycopg.Connection[Any], refresh_exactly: RefreshExactly
) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY, g text, v int, note text)")
    db.execute("INSERT INTO t SELECT i, 'g' || (i % 3), i, 'n' FROM generate_series(1, 30) i")
    pgt.create_stream_table(
        db,
        "st",
        "select g, sum(v) as s, count(*) as n from t group by g",
        refresh_mode="DIFFERENTIAL",
    )
    db.execute("UPDATE t SET note = 'changed'")  # no column the query reads
    db.execute("INSERT INTO t VALUES (100, 'g1', 5, 'x')")
    db.execute("DELETE FROM t WHERE id = 100")  # inserted and deleted within one window
    r = refresh_exactly(db, "st")
    assert (r.action, r.rows_in) == ("DIFFERENTIAL", 62)
    assert (r.rows_inserted, r.rows_updated, r.rows_deleted) == (0, 0, 0)
    db.execute("UPDATE t SET note = 'again', v = v + 1 WHERE id <= 3")
    r = refresh_exactly(db, "st")
    assert r.rows_updated == 3


def test_change_rows_that_undo_each_other_are_cancelled_out_of_the_window(
    db: psycopg.Connection[Any], refresh_exactly: RefreshExactly, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over columns whose equality is identity (integers, dates, numerics with a scale), equal
    change rows of opposite weights are cancelled when the window is materialised: an update of
    columns the query does not read leaves nothing, duplicates keep their count. The refresh
    still counts the change rows it consumed (rows_in: what AUTO compares across refreshes,
    whether or not a window was consolidated)."""
    windows: list[int] = []  # the rows each consolidated window kept
    consolidate = engine._consolidate

    def recorded(conn: Any, plan: Any, src: Any, columns: list[str]) -> None:
        consolidate(conn, plan, src, columns)
        windows.append(src.window_rows)

    monkeypatch.setattr(engine, "_consolidate", recorded)
    db.execute("CREATE TABLE t (id int PRIMARY KEY, g int, v numeric(10,2), d date, note text)")
    db.execute(
        "INSERT INTO t SELECT i, i % 3, i, date '2026-01-01' + i, 'n' FROM generate_series(1, 30) i"
    )
    db.execute("CREATE TABLE dup (g int, v int)")  # no key: copies are distinct rows
    db.execute("INSERT INTO dup VALUES (1, 1), (1, 1), (2, 2)")
    pgt.create_stream_table(
        db,
        "st",
        "select g, sum(v) as s, max(d) as m, count(*) as n from t group by g",
        refresh_mode="DIFFERENTIAL",
    )
    pgt.create_stream_table(
        db, "copies", "select g, v from dup where v > 0", refresh_mode="DIFFERENTIAL"
    )
    db.execute("UPDATE t SET note = 'changed'")  # no column the query reads: 60 change rows
    db.execute("INSERT INTO t VALUES (100, 1, 5, date '2026-05-01', 'x')")
    db.execute("DELETE FROM t WHERE id = 100")  # inserted and deleted within one window
    assert refresh_exactly(db, "st").action == "NO_DATA"
    # 3 real updates (6 change rows) among 20 that change only the note; one moves a row
    # between groups, one changes the latest date of its group.
    db.execute("UPDATE t SET note = 'again' WHERE id BETWEEN 11 AND 27")
    db.execute("UPDATE t SET v = v + 1 WHERE id = 1")
    db.execute("UPDATE t SET g = 2 WHERE id = 3")
    db.execute("UPDATE t SET d = d + 100 WHERE id = 30")
    windows.clear()
    r = refresh_exactly(db, "st")
    assert (r.action, r.rows_in, windows) == ("DIFFERENTIAL", 40, [6]), (r, windows)
    # Two equal copies inserted, one of two equal copies deleted, an update that changes
    # nothing: +2, -1 and nothing.
    db.execute("INSERT INTO dup VALUES (3, 3), (3, 3)")
    db.execute("DELETE FROM dup WHERE ctid = (SELECT min(ctid) FROM dup WHERE g = 1)")
    db.execute("UPDATE dup SET v = v WHERE g = 2")
    windows.clear()
    r = refresh_exactly(db, "copies")
    assert (r.action, r.rows_in, windows) == ("DIFFERENTIAL", 5, [3]), (r, windows)
    assert db.execute("SELECT g, count(*) FROM copies GROUP BY g ORDER BY g").fetchall() == [
        (1, 1),
        (2, 1),
        (3, 2),
    ]


def test_numeric_scale_and_case_only_changes_are_kept(
    db: psycopg.Connection[Any], refresh_exactly: RefreshExactly
) -> None:
    # 1.0 = 1.00 and, under a nondeterministic collation, 'abc' = 'ABC'; the query shows both
    # differences, so such an update must reach the stream table (windows must not treat equal
    # images as the same).
    db.execute("CREATE TABLE t (id int PRIMARY KEY, amount numeric, label text)")
    db.execute("INSERT INTO t VALUES (1, 1.0, 'abc'), (2, 2.5, 'x')")
    pgt.create_stream_table(
        db, "st", "select id, amount, label from t", refresh_mode="DIFFERENTIAL"
    )
    db.execute("UPDATE t SET amount = 1.00 WHERE id = 1")
    refresh_exactly(db, "st")
    assert db.execute("SELECT amount::text FROM st WHERE id = 1").fetchone() == ("1.00",)
    try:
        db.execute(
            "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
        )
    except psycopg.errors.FeatureNotSupported:
        return  # a server built without ICU
    db.execute("CREATE TABLE tc (id int PRIMARY KEY, label text COLLATE ci)")
    db.execute("INSERT INTO tc VALUES (1, 'abc'), (2, 'x')")
    pgt.create_stream_table(db, "st_ci", "select id, label from tc", refresh_mode="DIFFERENTIAL")
    db.execute("UPDATE tc SET label = 'ABC' WHERE id = 1")
    refresh_exactly(db, "st_ci")
    assert db.execute("SELECT label::text FROM st_ci WHERE id = 1").fetchone() == ("ABC",)
    # A condition on the column compares under its collation in the change rows too (their
    # buffer column has it): 'ABC' = 'abc' here.
    pgt.create_stream_table(
        db,
        "st_ci_n",
        "select count(*) as n from tc where label = 'abc'",
        refresh_mode="DIFFERENTIAL",
    )
    db.execute("INSERT INTO tc VALUES (3, 'Abc'), (4, 'abd')")
    r = refresh_exactly(db, "st_ci_n")
    assert r.rows_in == 1  # 'abd' fails the condition: not in the window
    assert db.execute("SELECT n FROM st_ci_n").fetchone() == (2,)
    # A buffer made before buffers kept collations gets it when a stream table is created on
    # its source.
    buffer = sql.Identifier(CHANGES_SCHEMA, buffer_table(stable_name("public", "tc")))
    db.execute(
        sql.SQL('ALTER TABLE {} ALTER COLUMN label TYPE text COLLATE "default"').format(buffer)
    )
    pgt.create_stream_table(db, "st_ci_ids", "select id from tc", refresh_mode="DIFFERENTIAL")
    db.execute("INSERT INTO tc VALUES (5, 'ABC')")
    refresh_exactly(db, "st_ci_n")
    assert db.execute("SELECT n FROM st_ci_n").fetchone() == (3,)


def test_duplicate_images_keep_their_multiplicity(
    db: psycopg.Connection[Any], refresh_exactly: RefreshExactly
) -> None:
    db.execute("CREATE TABLE k (g text, v int)")  # no key: a multiset
    db.execute("INSERT INTO k VALUES ('a', 1), ('b', 2)")
    pgt.create_stream_table(db, "st", "select g, v from k where v > 0", refresh_mode="DIFFERENTIAL")
    db.execute("INSERT INTO k VALUES ('a', 1), ('a', 1), ('a', 1), ('c', 3)")
    refresh_exactly(db, "st")
    assert db.execute("SELECT count(*) FROM st WHERE g = 'a'").fetchone() == (4,)
    db.execute("DELETE FROM k WHERE g = 'a'")
    db.execute("INSERT INTO k VALUES ('a', 1)")
    refresh_exactly(db, "st")
    assert db.execute("SELECT count(*) FROM st WHERE g = 'a'").fetchone() == (1,)


def test_change_rows_that_fail_the_query_conditions_on_their_table_are_left_out(
    db: psycopg.Connection[Any], refresh_exactly: RefreshExactly
) -> None:
    """A change row that fails what WHERE and ON require of its table alone (here: part of an
    OR, a LIKE with a percent sign, a condition of a semi-join's table) is neither copied nor
    counted; updates moving rows into and out of the condition, key changes and rows whose
    changes are all irrelevant (NO_DATA, the frontier moves on) stay exact."""
    db.execute("CREATE TABLE p (id int PRIMARY KEY, kind text, size int)")
    db.execute("CREATE TABLE l (id int PRIMARY KEY, pid int, qty int, mode text)")
    db.execute("CREATE TABLE r (pid int, flag text)")  # no key
    db.execute(
        "INSERT INTO p SELECT i, 'k' || (i % 4) || '%x', i % 7 FROM generate_series(1, 40) i"
    )
    db.execute(
        "INSERT INTO l SELECT i, 1 + i % 40, i % 11, (ARRAY['AIR', 'MAIL', 'SHIP'])[1 + i % 3] "
        "FROM generate_series(1, 400) i"
    )
    db.execute(
        "INSERT INTO r SELECT 1 + i % 40, (ARRAY['y', 'n'])[1 + i % 2] FROM generate_series(1, 60) i"
    )
    pgt.create_stream_table(
        db,
        "st",
        "select p.kind, count(*) as n, sum(l.qty) as q from l join p on p.id = l.pid "
        "where (l.mode = 'AIR' and p.size > 2 or l.mode = 'MAIL' and l.qty > 5) "
        "and p.kind like 'k1\\%%' and exists (select 1 from r where r.pid = p.id and r.flag = 'y') "
        "group by p.kind",
        refresh_mode="DIFFERENTIAL",
    )
    # Only SHIP rows, size changes of parts of other kinds, 'n' flags: nothing the query uses.
    db.execute("UPDATE l SET qty = qty + 1 WHERE mode = 'SHIP'")
    db.execute("UPDATE p SET size = size + 1 WHERE kind NOT LIKE 'k1%'")
    db.execute("INSERT INTO r VALUES (1, 'n'), (5, 'n')")
    r = refresh_exactly(db, "st")
    assert (r.action, r.rows_in) == ("NO_DATA", 0), r
    # The same again shows nothing pending: the frontier moved past the rows left out.
    assert refresh_exactly(db, "st").action == "NO_DATA"
    # 10 SHIP rows become AIR (5 of them weigh as new images only), 5 MAIL rows with qty > 5
    # become SHIP (old images only), 20 SHIP rows change qty (left out); a part changes kind
    # into the condition, another out of it; a flag flips; a key changes.
    db.execute(
        "UPDATE l SET mode = 'AIR' WHERE id IN (SELECT id FROM l WHERE mode = 'SHIP' LIMIT 10)"
    )
    db.execute(
        "UPDATE l SET mode = 'SHIP' WHERE id IN "
        "(SELECT id FROM l WHERE mode = 'MAIL' AND qty > 5 LIMIT 5)"
    )
    db.execute(
        "UPDATE l SET qty = qty + 1 WHERE id IN (SELECT id FROM l WHERE mode = 'SHIP' LIMIT 20)"
    )
    db.execute("UPDATE p SET kind = 'k1%x' WHERE id = 2")
    db.execute("UPDATE p SET kind = 'k9%x' WHERE id = 5")
    db.execute("UPDATE r SET flag = 'y' WHERE pid = 6 AND flag = 'n'")
    db.execute("UPDATE l SET id = id + 1000, pid = 9 WHERE id = 13")
    r = refresh_exactly(db, "st")
    assert r.action == "DIFFERENTIAL", r
    # Of the 80 change rows: 10 new AIR images, 5 old MAIL images, the kind-k1% images of
    # the two parts (one each), the two new 'y' images: 19. Never the 40 images of the qty
    # changes of SHIP rows, nor the moved row's (MAIL, qty 2: fails the OR before and after).
    assert (r.rows_in, r.cleanup_rows) == (19, 80), r
    assert (
        db.execute("SELECT n, q FROM st").fetchall()
        == db.execute(
            "SELECT count(*), sum(l.qty) FROM l JOIN p ON p.id = l.pid WHERE (l.mode = 'AIR' AND "
            "p.size > 2 OR l.mode = 'MAIL' AND l.qty > 5) AND p.kind = 'k1%x' AND EXISTS "
            "(SELECT FROM r WHERE r.pid = p.id AND r.flag = 'y')"
        ).fetchall()
    )
