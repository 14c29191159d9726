"""Fixtures for the dbt tests.

``dbt_database`` (session) is one database on the session's server shared by the adapter test
classes (each works in its own schema, dbt-tests-adapter's ``unique_schema``);
``dbt_profile_target`` points dbt-tests-adapter's fixtures at it with profile type ``pgtrickle``.
The integration scenario uses a database of its own (the ``dsn`` fixture).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

pytest.importorskip(
    "dbt.adapters.pgtrickle", reason="dbt is not installed (pip install -e '.[dbt]')"
)

from dbt.tests.fixtures.project import *  # noqa: E402,F403  (dbt-tests-adapter's fixtures)
from dbt_support import profile_target  # noqa: E402


@pytest.fixture(scope="session")
def dbt_database(pg_server_dsn: str) -> Iterator[str]:
    """The DSN of a database shared by the adapter test classes."""
    name = f"pgt_dbt_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield make_conninfo(pg_server_dsn, dbname=name)
    finally:
        with psycopg.connect(pg_server_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="class")
def dbt_profile_target(dbt_database: str) -> dict[str, Any]:
    """dbt-tests-adapter's target, overridden: profile type ``pgtrickle`` on ``dbt_database``."""
    return profile_target(dbt_database)
