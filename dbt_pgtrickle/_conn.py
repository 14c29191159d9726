"""Accept a psycopg 3 connection or a DSN; run the runtime's work in autocommit mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from .errors import PgTrickleError


def connect(dsn: str) -> psycopg.Connection[Any]:
    try:
        conn = psycopg.connect(dsn, autocommit=True, application_name="pgtrickle")
        # No server-side prepared statements: a generic plan for a change-window read (its
        # bounds are parameters) can scan the whole buffer (see scheduler.daemon).
        conn.prepare_threshold = None
        return conn
    except psycopg.ProgrammingError as exc:  # libpq could not parse the connection string
        raise PgTrickleError(f"invalid connection string: {str(exc).strip()}") from None
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or ["unknown error"])[0]
        raise PgTrickleError(
            f"cannot connect to PostgreSQL: {first}", sqlstate=getattr(exc, "sqlstate", None)
        ) from None


@contextmanager
def session(conn_or_dsn: psycopg.Connection[Any] | str) -> Iterator[psycopg.Connection[Any]]:
    """Yield an autocommit connection: a new one for a DSN (closed afterwards), or the given one
    (which must not be inside a transaction; its autocommit setting is restored afterwards)."""
    if isinstance(conn_or_dsn, str):
        conn = connect(conn_or_dsn)
        try:
            yield conn
        finally:
            conn.close()
        return
    conn = conn_or_dsn
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise PgTrickleError(
            "the connection is inside a transaction; dbt-pgtrickle runs its own transactions, "
            "so commit or roll back first (or pass a DSN)"
        )
    previous = conn.autocommit
    conn.autocommit = True
    try:
        yield conn
    finally:
        if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
            conn.autocommit = previous
