"""The per-process plan cache: reused while the sources are unchanged, recompiled after DDL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import dbt_pgtrickle as pgt
from dbt_pgtrickle.catalog import records
from dbt_pgtrickle.dvm import compiler
from dbt_pgtrickle.refresh import engine

# the fixture of tests/db/conftest.py
RefreshExactly = Callable[[psycopg.Connection[Any], str], pgt.RefreshResult]


@pytest.fixture
def db(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    pgt.install(conn)
    conn.execute("CREATE TABLE a (id int PRIMARY KEY, k int, v int)")
    conn.execute("CREATE TABLE b (k int, label text)")  # no primary key: a multiset
    conn.execute("INSERT INTO a SELECT i, i % 5, i FROM generate_series(1, 50) i")
    conn.execute("INSERT INTO b SELECT i, 'l' || i FROM generate_series(0, 4) i")
    return conn


def plan_now(conn: psycopg.Connection[Any], name: str) -> compiler.DeltaPlan:
    """The plan a refresh of ``name`` would use now (compiled inside a transaction)."""
    with conn.transaction():
        return engine.compile_for(conn, records.get(conn, "public", name))


def test_plan_is_reused_until_a_source_changes(
    db: psycopg.Connection[Any], refresh_exactly: RefreshExactly
) -> None:
    pgt.create_stream_table(
        db,
        "st",
        "select b.label, sum(a.v) as s, count(*) as n from a join b on a.k = b.k group by b.label",
        refresh_mode="DIFFERENTIAL",
    )
    first = plan_now(db, "st")
    assert plan_now(db, "st") is first
    db.execute("INSERT INTO a VALUES (100, 1, 7)")
    assert refresh_exactly(db, "st").action == "DIFFERENTIAL"
    assert plan_now(db, "st") is first

    db.execute("ALTER TABLE b ADD PRIMARY KEY (k)")  # a key changes how b's rows are identified
    second = plan_now(db, "st")
    assert second is not first
    assert plan_now(db, "st") is second
    db.execute("UPDATE b SET label = 'changed' WHERE k = 1")
    db.execute("DELETE FROM a WHERE id = 3")
    assert refresh_exactly(db, "st").action == "DIFFERENTIAL"

    db.execute("ALTER TABLE a ALTER COLUMN v TYPE numeric")
    third = plan_now(db, "st")
    assert third is not second
    assert [s.column("v").type for s in third.sources if s.name == "a"] == ["numeric"]  # type: ignore[union-attr]


def test_source_dropped_and_created_again_is_recompiled(
    db: psycopg.Connection[Any], refresh_exactly: RefreshExactly
) -> None:
    pgt.create_stream_table(
        db,
        "st",
        "select a.id, a.v, b.label from a join b on a.k = b.k",
        refresh_mode="DIFFERENTIAL",
    )
    first = plan_now(db, "st")
    db.execute("DROP TABLE b")
    db.execute("CREATE TABLE b (k int, label text)")  # the same definition, a new table
    db.execute("INSERT INTO b VALUES (1, 'one'), (2, 'two'), (2, 'two')")
    assert refresh_exactly(db, "st").action == "FULL"  # capture reinstalled
    assert plan_now(db, "st") is not first
    db.execute("INSERT INTO b VALUES (3, 'three')")
    db.execute("UPDATE a SET k = 2 WHERE id = 1")
    assert refresh_exactly(db, "st").action == "DIFFERENTIAL"


def test_function_redefinition_is_recompiled(db: psycopg.Connection[Any]) -> None:
    db.execute("CREATE FUNCTION bump(x int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT x + 1'")
    pgt.create_stream_table(db, "st", "select id, bump(v) as w from a")
    assert plan_now(db, "st").differential
    db.execute(
        "CREATE OR REPLACE FUNCTION bump(x int) RETURNS int VOLATILE LANGUAGE sql AS 'SELECT x + 1'"
    )
    assert not plan_now(db, "st").differential


def test_search_path_change_is_recompiled(db: psycopg.Connection[Any]) -> None:
    pgt.create_stream_table(db, "st", "select id, v from a")
    first = plan_now(db, "st")
    db.execute("CREATE SCHEMA other")
    db.execute("CREATE TABLE other.a (id int PRIMARY KEY, v bigint)")
    db.execute("SET search_path = other, public")
    try:
        second = plan_now(db, "st")
    finally:
        db.execute("RESET search_path")
    assert [s.schema for s in first.sources] == ["public"]
    assert [s.schema for s in second.sources] == ["other"]
