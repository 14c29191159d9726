"""Planner settings a refresh sets for its own transaction, as its statements see them: a trigger
on the stream table records them when the refresh writes its rows."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import dbt_pgtrickle as pgt


@pytest.fixture
def db(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    pgt.install(conn)
    conn.execute("CREATE TABLE src (id int PRIMARY KEY, g int, v int)")
    conn.execute("INSERT INTO src SELECT i, i % 4, i FROM generate_series(1, 40) i")
    pgt.create_stream_table(
        conn,
        "st",
        "select g, sum(v) as s, count(*) as n from src group by g",
        refresh_mode="DIFFERENTIAL",
    )
    conn.execute("CREATE TABLE seen (cache text, page_cost text, jit text)")
    conn.execute(
        "CREATE FUNCTION record_settings() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO seen VALUES (current_setting('effective_cache_size'), "
        "current_setting('random_page_cost'), current_setting('jit')); RETURN NULL; END $$"
    )
    conn.execute(
        "CREATE TRIGGER record_settings AFTER INSERT OR UPDATE OR DELETE ON st "
        "FOR EACH STATEMENT EXECUTE FUNCTION record_settings()"
    )
    return conn


def refresh_and_read(conn: psycopg.Connection[Any], full: bool = False) -> set[tuple[str, ...]]:
    conn.execute("DELETE FROM seen")
    conn.execute("UPDATE src SET v = v + 1 WHERE id % 7 = 0")
    result = pgt.refresh_stream_table(conn, "st", full=full)
    assert result.action == ("FULL" if full else "DIFFERENTIAL"), result
    return set(conn.execute("SELECT cache, page_cost, jit FROM seen").fetchall())


def test_a_differential_refresh_plans_with_its_settings_and_a_full_one_without(
    db: psycopg.Connection[Any],
) -> None:
    server = db.execute(
        "SELECT current_setting('effective_cache_size'), current_setting('jit')"
    ).fetchone()
    assert server is not None and server[0] != "256MB"
    assert refresh_and_read(db) == {("256MB", "1.1", "off")}
    # A full refresh keeps the server's cache size and JIT (its random_page_cost is the refresh's).
    assert refresh_and_read(db, full=True) == {(server[0], "1.1", server[1])}
    pgt.set_setting(db, "refresh_effective_cache_size_mb", 1024)
    pgt.set_setting(db, "refresh_random_page_cost", 2)
    assert refresh_and_read(db) == {("1GB", "2", "off")}
    pgt.set_setting(db, "refresh_effective_cache_size_mb", 0)  # 0: the server's value
    pgt.set_setting(db, "refresh_random_page_cost", 0)
    page_cost = db.execute("SELECT current_setting('random_page_cost')").fetchone()
    assert page_cost is not None
    assert refresh_and_read(db) == {(server[0], page_cost[0], "off")}
    # Outside the refresh nothing stayed set.
    after = db.execute(
        "SELECT current_setting('effective_cache_size'), current_setting('jit')"
    ).fetchone()
    assert after == server
