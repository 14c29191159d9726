"""Change windows as the refresh materialises them: only the columns the delta reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

import dbt_pgtrickle as pgt

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
