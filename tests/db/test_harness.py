"""The test harness itself: the server is reachable, and each test gets a fresh, empty database."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

_databases_seen: list[str] = []


def test_server_is_reachable_and_new_enough(conn: psycopg.Connection[Any]) -> None:
    assert conn.execute("select 1").fetchone() == (1,)
    assert conn.info.server_version >= 150000
    assert conn.autocommit


@pytest.mark.parametrize("round_", [1, 2])
def test_each_test_gets_a_fresh_empty_database(conn: psycopg.Connection[Any], round_: int) -> None:
    name = conn.execute("select current_database()").fetchone()[0]  # type: ignore[index]
    assert name.startswith("pgt_test_")
    assert name not in _databases_seen
    _databases_seen.append(name)
    user_relations = conn.execute(
        """
        select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_toast'
        """
    ).fetchone()
    assert user_relations == (0,)
    # Left behind on purpose: the next round must not see it.
    conn.execute("create table leftover (id int)")


def test_databases_of_finished_tests_are_dropped(pg_server_dsn: str) -> None:
    if not _databases_seen:
        pytest.skip("runs after the fresh-database tests")
    with psycopg.connect(pg_server_dsn, autocommit=True) as admin:
        left = admin.execute(
            "select datname from pg_database where datname = any(%s)", [_databases_seen]
        ).fetchall()
    assert left == []


def test_db_tests_are_marked_db(request: pytest.FixtureRequest, dsn: str) -> None:
    assert request.node.get_closest_marker("db") is not None
    assert "dbname=pgt_test_" in dsn
