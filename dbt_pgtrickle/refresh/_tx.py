"""Transaction helpers: the runtime owns its transactions on an autocommit connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from ..errors import PgTrickleError


@contextmanager
def repeatable_read(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """One REPEATABLE READ transaction; the snapshot is taken by its first data statement
    (``LOCK TABLE`` and ``SET`` take none), committed on success, rolled back on error."""
    if conn.info.transaction_status != TransactionStatus.IDLE or not conn.autocommit:
        raise PgTrickleError(
            "the connection must be idle and in autocommit mode for a refresh; "
            "commit or roll back first"
        )
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    try:
        yield
    except BaseException:
        if not conn.closed:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
