"""Install and upgrade the database side: schemas, catalog tables, views.

:func:`install` is idempotent and safe when several processes run it at once: it serialises on a
transaction-scoped advisory lock, then either creates the current schema or applies the missing
forward migrations, all in one transaction.
"""

from __future__ import annotations

from typing import Any

import psycopg

from .._version import __version__
from ..errors import NotInstalledError
from ..naming import CATALOG_SCHEMA, CHANGES_SCHEMA, fnv1a_64
from .migrations import CURRENT_SCHEMA, MIGRATIONS, SCHEMA_VERSION

# A fixed advisory-lock key derived from the project name (signed 64-bit for PostgreSQL).
_INSTALL_LOCK = fnv1a_64(b"pgtrickle.install") - (1 << 63)


def installed_version(conn: psycopg.Connection[Any]) -> int | None:
    """The schema version recorded in the database, or None when not installed."""
    row = conn.execute("SELECT to_regclass('pgtrickle.pgt_schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    row = conn.execute("SELECT max(version) FROM pgtrickle.pgt_schema_version").fetchone()
    return row[0] if row else None


def install(conn: psycopg.Connection[Any], *, target_version: int | None = None) -> int:
    """Create or upgrade the pgtrickle schemas; returns the schema version now installed.

    ``target_version`` (tests only) stops the upgrade at that migration.
    """
    target = SCHEMA_VERSION if target_version is None else target_version
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INSTALL_LOCK,))
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {CATALOG_SCHEMA}")
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {CHANGES_SCHEMA}")
        current = installed_version(conn)
        if current is not None and current > SCHEMA_VERSION:
            raise NotInstalledError(
                f"the database has pgtrickle schema version {current}, newer than this runtime "
                f"({__version__}, schema {SCHEMA_VERSION}); upgrade dbt-pgtrickle"
            )
        if current is None and target == SCHEMA_VERSION:
            conn.execute(CURRENT_SCHEMA)
            conn.execute(
                "INSERT INTO pgtrickle.pgt_schema_version (version, runtime_version) "
                "VALUES (%s, %s)",
                (SCHEMA_VERSION, __version__),
            )
            return SCHEMA_VERSION
        for migration in MIGRATIONS:
            if (current or 0) < migration.version <= target:
                conn.execute(migration.sql)
                conn.execute(
                    "INSERT INTO pgtrickle.pgt_schema_version (version, runtime_version) "
                    "VALUES (%s, %s)",
                    (migration.version, __version__),
                )
        return max(current or 0, target)


def require_installed(conn: psycopg.Connection[Any]) -> None:
    """Raise :class:`NotInstalledError` unless the current schema version is installed."""
    version = installed_version(conn)
    if version is None:
        raise NotInstalledError(
            "pgtrickle is not installed in this database; run `pgtrickle install` "
            "(or dbt_pgtrickle.install(conn))"
        )
    if version != SCHEMA_VERSION:
        raise NotInstalledError(
            f"the pgtrickle schema is at version {version}, this runtime needs {SCHEMA_VERSION}; "
            "run `pgtrickle install` to upgrade"
        )
