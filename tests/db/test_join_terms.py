"""A join's delta when five or more of its inputs changed: one telescoping term per changed input,
inputs ordered by window size (largest first), each later input read as old state (its rows and
its change window negated), and those windows indexed on the columns the terms probe them by.

Each cycle changes every input (key changes, deletes of matched rows, NULL keys, duplicates,
insert-then-delete) and the stream table must equal its query afterwards."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import dbt_pgtrickle as pgt
from dbt_pgtrickle.dvm.operators import join
from dbt_pgtrickle.dvm.operators.scan import changes_relation
from dbt_pgtrickle.naming import stable_name
from dbt_pgtrickle.refresh import storage

# the fixture of tests/db/conftest.py
RefreshExactly = Callable[[psycopg.Connection[Any], str], pgt.RefreshResult]

SEED = 7301


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[Any]]]:
    """Records the indexes created on change windows and the old inputs the terms read."""
    seen: dict[str, list[Any]] = {"indexes": [], "old": []}
    create_index, old_input = storage.create_index, join._old_input

    def spy_index(conn: Any, table: Any, columns: Any) -> None:
        seen["indexes"].append((table.as_string(conn), tuple(columns)))
        create_index(conn, table, columns)

    def spy_old(item: Any, window: str, text: str) -> str:
        seen["old"].append(item.alias)
        return old_input(item, window, text)

    monkeypatch.setattr(storage, "create_index", spy_index)
    monkeypatch.setattr(join, "_old_input", spy_old)
    yield seen


def _window(table: str) -> str:
    return '"' + changes_relation(stable_name("public", table)) + '"'


def test_five_changed_inputs_take_five_terms_and_index_the_old_windows(
    db: psycopg.Connection[Any], refresh_exactly: RefreshExactly, spied: dict[str, list[Any]]
) -> None:
    rng = random.Random(SEED)
    db.execute("CREATE TABLE d1 (id int PRIMARY KEY, g text)")
    db.execute("CREATE TABLE d2 (id int PRIMARY KEY, h int)")
    db.execute("CREATE TABLE d3 (id int PRIMARY KEY, z int)")
    db.execute("CREATE TABLE d4 (id int PRIMARY KEY, y int)")
    db.execute("CREATE TABLE f (id int PRIMARY KEY, a int, b int, v int, c int DEFAULT 1)")
    db.execute("INSERT INTO d3 SELECT i, i % 2 FROM generate_series(1, 5) i")
    db.execute("INSERT INTO d4 SELECT i, i % 3 FROM generate_series(0, 3) i")
    db.execute(
        "INSERT INTO d1 SELECT i, CASE WHEN i % 5 = 0 THEN NULL ELSE 'g' || i % 3 END "
        "FROM generate_series(1, 40) i"
    )
    db.execute("INSERT INTO d2 SELECT i, i % 4 FROM generate_series(1, 30) i")
    db.execute(
        "INSERT INTO f SELECT i, CASE WHEN i % 17 = 0 THEN NULL ELSE 1 + i % 45 END, "
        "1 + i % 33, i % 7, 1 + i % 5 FROM generate_series(1, 600) i"
    )
    for name in ("keyed", "grouped"):
        query = (
            "select f.id, d1.g, d2.h, d3.z, d4.y, f.v from f join d1 on d1.id = f.a "
            "join d2 on d2.id = f.b join d3 on d3.id = f.c join d4 on d4.id = d2.h"
            if name == "keyed"
            else "select d1.g, d4.y, sum(f.v * d3.z) as s, count(*) as n from f join d1 on "
            "d1.id = f.a join d2 on d2.id = f.b join d3 on d3.id = f.c join d4 on d4.id = d2.h "
            "group by d1.g, d4.y"
        )
        pgt.create_stream_table(db, name, query, refresh_mode="DIFFERENTIAL")
    next_f = 601
    for cycle in range(6):
        spied["indexes"].clear()
        spied["old"].clear()
        # f gets the largest window every cycle; d1 and d2 a few rows each.
        for _ in range(25):
            kind = rng.random()
            if kind < 0.4:
                db.execute(
                    "INSERT INTO f VALUES (%s, %s, %s, %s)",
                    (
                        next_f,
                        rng.choice([None, *range(1, 48)]),
                        rng.randint(1, 33),
                        rng.randint(0, 6),
                    ),
                )
                next_f += 1
            elif kind < 0.7:
                db.execute(
                    "UPDATE f SET a = %s, v = v + 1 WHERE id = (SELECT id FROM f ORDER BY id "
                    "OFFSET %s LIMIT 1)",
                    (rng.choice([None, *range(1, 48)]), rng.randint(0, 500)),
                )
            else:
                db.execute(
                    "DELETE FROM f WHERE id = (SELECT id FROM f ORDER BY id OFFSET %s LIMIT 1)",
                    (rng.randint(0, 500),),
                )
        # insert-then-delete of the same row, within the cycle
        db.execute("INSERT INTO f VALUES (100000, 1, 1, 1)")
        db.execute("DELETE FROM f WHERE id = 100000")
        # a dimension key changes while a fact row matching the new key arrives
        k = 41 + cycle  # a key no row of d1 has yet
        db.execute("UPDATE d1 SET id = %s WHERE id = %s", (k, rng.randint(1, 40)))
        db.execute("INSERT INTO f VALUES (%s, %s, 2, 5)", (next_f, k))
        next_f += 1
        db.execute("UPDATE d1 SET g = NULL WHERE id = %s", (rng.randint(1, 40),))
        # a dimension row goes while rows matching it change on the other side
        gone = rng.randint(1, 30)
        db.execute("DELETE FROM d2 WHERE id = %s", (gone,))
        db.execute("UPDATE f SET v = v + 10 WHERE b = %s", (gone,))
        db.execute(
            "INSERT INTO d2 VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET h = excluded.h",
            (rng.randint(1, 33), rng.randint(0, 3)),
        )
        db.execute("UPDATE d2 SET h = h + 1 WHERE id = %s", (rng.randint(1, 33),))
        db.execute("UPDATE d3 SET z = z + 1 WHERE id = %s", (rng.randint(1, 5),))
        db.execute("UPDATE d4 SET y = y + 1 WHERE id = %s", (rng.randint(0, 3),))
        db.execute("UPDATE f SET c = %s WHERE id = %s", (rng.randint(1, 5), rng.randint(1, 600)))
        for name in ("keyed", "grouped"):
            r = refresh_exactly(db, name)
            assert r.action == "DIFFERENTIAL", (cycle, name, r.fallback_reason)
        # f's window is the largest: never read as old, so never indexed on its join columns;
        # d1 to d4 are read as old inputs, through indexes on their probed columns.
        assert set(spied["old"]) == {"d1", "d2", "d3", "d4"}, (cycle, spied["old"])
        indexed = set(spied["indexes"])
        assert {(_window(t), ("id",)) for t in ("d1", "d2", "d3", "d4")} <= indexed
        assert (_window("d2"), ("h",)) in indexed
        assert not any(t == _window("f") for t, _ in indexed), indexed


def test_a_self_join_reads_one_alias_as_old_through_an_index(
    db: psycopg.Connection[Any], refresh_exactly: RefreshExactly, spied: dict[str, list[Any]]
) -> None:
    rng = random.Random(SEED + 1)
    db.execute("CREATE TABLE kind (id int PRIMARY KEY, label text)")
    db.execute("INSERT INTO kind SELECT i, 'k' || i FROM generate_series(0, 4) i")
    db.execute("CREATE TABLE node (id int PRIMARY KEY, parent int, w int)")
    db.execute(
        "INSERT INTO node SELECT i, CASE WHEN i % 9 = 0 THEN NULL ELSE i / 2 END, i % 5 "
        "FROM generate_series(1, 200) i"
    )
    pgt.create_stream_table(
        db,
        "pairs",
        "select c.id, p.id as pid, g.id as gid, c.w + p.w + g.w as w, k.label from node c "
        "join node p on p.id = c.parent join node g on g.id = p.parent join kind k on k.id = c.w "
        "join kind k2 on k2.id = p.w",
        refresh_mode="DIFFERENTIAL",
    )
    pgt.create_stream_table(
        db,
        "parents",
        "select p.id, sum(c.w * p.w + g.w) as s, count(*) as n from node c join node p "
        "on p.id = c.parent join node g on g.id = p.parent join kind k on k.id = c.w "
        "join kind k2 on k2.id = p.w where k.label <> 'k3' group by p.id",
        refresh_mode="DIFFERENTIAL",
    )
    for cycle in range(5):
        spied["indexes"].clear()
        spied["old"].clear()
        for _ in range(15):
            kind = rng.random()
            i = rng.randint(1, 260)
            if kind < 0.35:
                db.execute(
                    "INSERT INTO node VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING",
                    (i, rng.choice([None, rng.randint(1, 260)]), rng.randint(0, 4)),
                )
            elif kind < 0.7:  # parent (join key) or weight
                db.execute(
                    "UPDATE node SET parent = %s, w = w + 1 WHERE id = %s",
                    (rng.choice([None, rng.randint(1, 260)]), i),
                )
            else:
                db.execute("DELETE FROM node WHERE id = %s", (i,))
        # a parent and its children change together: their old and new images meet in a term
        parent = db.execute(
            "SELECT parent FROM node WHERE parent IS NOT NULL ORDER BY id OFFSET %s LIMIT 1",
            (rng.randint(0, 100),),
        ).fetchone()
        if parent:
            db.execute("UPDATE node SET w = w + 1 WHERE id = %s", parent)
            db.execute("UPDATE node SET w = w + 2 WHERE parent = %s", parent)
        db.execute("UPDATE node SET id = id + 1000 WHERE id = %s", (rng.randint(1, 100),))
        db.execute(
            "UPDATE kind SET label = CASE WHEN label = 'k3' THEN 'x' ELSE 'k3' END WHERE id = %s",
            (rng.randint(0, 4),),
        )
        for name in ("pairs", "parents"):
            r = refresh_exactly(db, name)
            assert r.action == "DIFFERENTIAL" and r.rows_in > 0, (cycle, r.fallback_reason)
        # five terms each (the node window is largest: its three aliases first, by position),
        # reading 4 + 3 + 2 + 1 old inputs
        assert len(spied["old"]) == 20, spied["old"]
        indexed = set(spied["indexes"])
        assert {(_window("node"), ("parent",)), (_window("node"), ("id",))} <= indexed
        assert (_window("kind"), ("id",)) in indexed
