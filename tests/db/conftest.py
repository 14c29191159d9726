"""Fixtures shared by the database tests of the refresh engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import dbt_pgtrickle as pgt

RefreshExactly = Callable[[psycopg.Connection[Any], str], pgt.RefreshResult]


def _refresh_exactly(conn: psycopg.Connection[Any], name: str) -> pgt.RefreshResult:
    result = pgt.refresh_stream_table(conn, name)
    check = pgt.verify_stream_table(conn, name)
    assert check["equal"], check
    return result


@pytest.fixture
def refresh_exactly() -> RefreshExactly:
    """Refresh a stream table, then require it to equal its query (symmetric EXCEPT ALL)."""
    return _refresh_exactly


@pytest.fixture
def db(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The test database with dbt-pgtrickle installed (modules with tables of their own
    override it)."""
    pgt.install(conn)
    return conn
