"""The error hierarchy of dbt-pgtrickle.

Every error the runtime raises on purpose is a :class:`PgTrickleError`. Errors that came from the
database keep its SQLSTATE in :attr:`PgTrickleError.sqlstate`; retry decisions read the SQLSTATE
class (see :func:`is_retryable`), never the message text.
"""

from __future__ import annotations


class PgTrickleError(Exception):
    """Base class. ``sqlstate`` is the database's code when the database raised it."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class ConfigError(PgTrickleError):
    """A setting, option or argument has a value we do not accept."""


class NotInstalledError(PgTrickleError):
    """The ``pgtrickle`` schema is missing or older than this runtime."""


class StreamTableNotFound(PgTrickleError):
    """No stream table of that name is registered."""


class StreamTableExists(PgTrickleError):
    """A stream table or another relation already has that name."""


class SourceError(PgTrickleError):
    """A source relation is missing, of an unsupported kind, or unusable for change capture."""


class QueryError(PgTrickleError):
    """The defining query is not a valid single SELECT statement."""


class UnsupportedConstruct(PgTrickleError):
    """The query uses SQL the differential compiler cannot maintain incrementally.

    ``construct`` names the construct; ``hint`` says which rewrite would make it supported.
    """

    def __init__(self, construct: str, hint: str = "") -> None:
        message = f"unsupported for DIFFERENTIAL refresh: {construct}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)
        self.construct = construct
        self.hint = hint


class NameCollision(PgTrickleError):
    """Two different source tables hash to the same stable name."""


class RefreshError(PgTrickleError):
    """A refresh failed; the database error, if any, is chained as ``__cause__``."""


class LockNotAvailable(PgTrickleError):
    """Another session is refreshing or altering the stream table right now."""


# SQLSTATE classes and codes after which running the same work again may succeed.
_RETRYABLE_CLASSES = {
    "08",
    "40",
    "53",
    "57",
}  # connection, rollback, resources, operator intervention
_RETRYABLE_CODES = {"55P03"}  # lock_not_available


def is_retryable(sqlstate: str | None) -> bool:
    """Whether an error with this SQLSTATE is worth retrying (transient by its class)."""
    if not sqlstate:
        return False
    if sqlstate in _RETRYABLE_CODES:
        return True
    if sqlstate == "57014":  # query_canceled by statement_timeout is a real failure, not transient
        return False
    return sqlstate[:2] in _RETRYABLE_CLASSES
