"""install(): idempotent, concurrent-safe, and a fresh install equals an upgraded one."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

import dbt_pgtrickle as pgt
from dbt_pgtrickle.catalog.install import install, installed_version
from dbt_pgtrickle.catalog.migrations import MIGRATIONS, SCHEMA_VERSION
from dbt_pgtrickle.errors import NotInstalledError

CATALOG_DUMP = """
SELECT 'column', c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
       || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE n.nspname = 'pgtrickle' AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', c.relname || ' ' || pg_get_constraintdef(k.oid)
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pgtrickle'
UNION ALL
SELECT 'index', regexp_replace(pg_get_indexdef(i.indexrelid), '_pkey|_key', '')
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pgtrickle'
UNION ALL
SELECT 'view', c.relname || ' ' || pg_get_viewdef(c.oid)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'pgtrickle' AND c.relkind = 'v'
UNION ALL
SELECT 'function', p.proname || '(' || pg_get_function_arguments(p.oid) || ') '
       || pg_get_functiondef(p.oid)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgtrickle'
ORDER BY 1, 2
"""


def catalog(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    return conn.execute(CATALOG_DUMP).fetchall()


def test_install_is_idempotent(conn: psycopg.Connection[Any]) -> None:
    assert pgt.install(conn) == SCHEMA_VERSION
    before = catalog(conn)
    assert pgt.install(conn) == SCHEMA_VERSION
    assert catalog(conn) == before
    assert installed_version(conn) == SCHEMA_VERSION


def test_fresh_install_equals_upgrade_through_every_migration(
    conn: psycopg.Connection[Any], pg_server_dsn: str
) -> None:
    install(conn)
    fresh = catalog(conn)
    assert len(fresh) > 50
    other = conn.execute("SELECT current_database()").fetchone()[0] + "_up"  # type: ignore[index]
    conn.execute(f'CREATE DATABASE "{other}"')
    try:
        dsn = psycopg.conninfo.make_conninfo(pg_server_dsn, dbname=other)
        with psycopg.connect(dsn, autocommit=True) as up:
            for migration in MIGRATIONS:
                assert install(up, target_version=migration.version) == migration.version
            assert catalog(up) == fresh
    finally:
        conn.execute(f'DROP DATABASE "{other}" WITH (FORCE)')


def test_concurrent_installs_both_succeed(dsn: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                barrier.wait()
                install(c)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    with psycopg.connect(dsn, autocommit=True) as c:
        assert installed_version(c) == SCHEMA_VERSION
        rows = c.execute("SELECT count(*) FROM pgtrickle.pgt_schema_version").fetchone()
        assert rows == (1,)


def test_api_requires_install(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(NotInstalledError, match="pgtrickle install"):
        pgt.status(conn)


def test_newer_schema_is_refused(conn: psycopg.Connection[Any]) -> None:
    install(conn)
    conn.execute(
        "INSERT INTO pgtrickle.pgt_schema_version (version, runtime_version) VALUES (999, 'x')"
    )
    with pytest.raises(NotInstalledError, match="newer than this runtime"):
        install(conn)


def test_sql_stable_name_matches_python(conn: psycopg.Connection[Any]) -> None:
    install(conn)
    for schema, table in [("public", "orders"), ("Sales Data", 'Ördér "x"'), ("a", "")]:
        row = conn.execute("SELECT pgtrickle.stable_name(%s, %s)", (schema, table)).fetchone()
        assert row == (pgt.stable_name(schema, table),)
