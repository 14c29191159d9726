"""EXISTS / NOT EXISTS tests before a change, as the delta evaluates them: "more than s rows match
now", s the net weight of the matching changes, counting at most s + 1 of the matches. Each step
puts a key on one edge of that test."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import dbt_pgtrickle as pgt


@pytest.fixture
def db(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    pgt.install(conn)
    conn.execute("CREATE TABLE d (k int PRIMARY KEY, label text)")
    conn.execute("CREATE TABLE m (id int PRIMARY KEY, k int, v int)")
    conn.execute("INSERT INTO d SELECT i, 'k' || i FROM generate_series(1, 8) i")
    # Key i has i - 1 matching rows of m to start with (key 1 none).
    conn.execute(
        "INSERT INTO m SELECT row_number() OVER (), k, j "
        "FROM generate_series(2, 8) k, generate_series(1, k - 1) j"
    )
    return conn


STEPS = [
    # key 1: from 0 to 3 matches (s = 3 = all current matches: no old match)
    "INSERT INTO m SELECT 1000 + j, 1, 1 FROM generate_series(1, 3) j",
    # key 3: 2 matches, both deleted (s = -2, none now: an old match)
    "DELETE FROM m WHERE k = 3",
    # key 5: 4 matches, 3 deleted and 1 added (s = -2 while 2 match now)
    "DELETE FROM m WHERE id IN (SELECT id FROM m WHERE k = 5 ORDER BY id LIMIT 3); "
    "INSERT INTO m VALUES (2000, 5, 1)",
    # key 7: 6 matches, one moves away and one stops matching (s = -2); key 2 gets the moved one:
    # 1 -> 2 matches, s = 1 (exactly s + 1 match now: an old match)
    "UPDATE m SET k = 2 WHERE id = (SELECT min(id) FROM m WHERE k = 7); "
    "UPDATE m SET v = 0 WHERE id = (SELECT max(id) FROM m WHERE k = 7)",
    # key 1 again: 3 matches, all deleted and one inserted and deleted in the same window (s = -3)
    "DELETE FROM m WHERE k = 1; INSERT INTO m VALUES (3000, 1, 1); DELETE FROM m WHERE id = 3000",
    # key 4: 3 matches, all stop matching the condition, then one matches again
    "UPDATE m SET v = 0 WHERE k = 4; "
    "UPDATE m SET v = 1 WHERE id = (SELECT min(id) FROM m WHERE k = 4)",
    # key 8: 7 matches, one changes to another matching value (s = 0, and the key's changes do
    # not cancel: its test is evaluated)
    "UPDATE m SET v = v + 10 WHERE id = (SELECT min(id) FROM m WHERE k = 8)",
    # keys 2 and 6: every match removed, then as many added back with other values (s = 0 on
    # both, and their changes do not cancel per the columns the test reads)
    "DELETE FROM m WHERE k IN (2, 6); "
    "INSERT INTO m SELECT 4000 + j, 2, 2 FROM generate_series(1, 2) j; "
    "INSERT INTO m SELECT 5000 + j, 6, 1 FROM generate_series(1, 5) j",
]


@pytest.mark.parametrize("test", ["exists", "not exists"])
def test_semijoin_tests_on_the_edge_of_their_old_count(
    db: psycopg.Connection[Any], test: str
) -> None:
    where = f"{test} (select 1 from m where m.k = d.k and m.v > 0)"
    # Rows, and a count per group: a wrong old test adds a copy that only the count shows.
    pgt.create_stream_table(
        db, "st", f"select d.k, d.label from d where {where}", refresh_mode="DIFFERENTIAL"
    )
    pgt.create_stream_table(
        db,
        "st_n",
        f"select d.k % 2 as parity, count(*) as n from d where {where} group by 1",
        refresh_mode="DIFFERENTIAL",
    )
    for step in STEPS:
        db.execute(step)
        for name in ("st", "st_n"):
            result = pgt.refresh_stream_table(db, name)
            assert result.action == "DIFFERENTIAL", result
            check = pgt.verify_stream_table(db, name)
            assert check["equal"], (step, name, check)
    rows = {k for (k,) in db.execute("SELECT k FROM st").fetchall()}
    expected = {2, 4, 5, 6, 7, 8}
    assert rows == (expected if test == "exists" else set(range(1, 9)) - expected)
