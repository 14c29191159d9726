"""dbt-pgtrickle: incrementally maintained stream tables for PostgreSQL and Citus.

The Python API: every function takes a psycopg 3 connection (idle; the runtime runs its own
transactions) or a DSN string.
"""

from ._version import __version__
from .api import (
    alter_stream_table,
    check_schedule,
    create_stream_table,
    drop_stream_table,
    explain_stream_table,
    get_setting,
    install,
    list_settings,
    list_subscriptions,
    query_hash,
    refresh_all,
    refresh_order,
    refresh_stream_table,
    scheduler_status,
    set_setting,
    sla_summary,
    status,
    subscribe,
    unsubscribe,
    verify_stream_table,
)
from .errors import (
    ConfigError,
    PgTrickleError,
    QueryError,
    RefreshError,
    SourceError,
    StreamTableExists,
    StreamTableNotFound,
    UnsupportedConstruct,
)
from .naming import stable_name
from .refresh.engine import RefreshResult

__all__ = [
    "check_schedule",
    "query_hash",
    "ConfigError",
    "PgTrickleError",
    "QueryError",
    "RefreshError",
    "RefreshResult",
    "SourceError",
    "StreamTableExists",
    "StreamTableNotFound",
    "UnsupportedConstruct",
    "__version__",
    "alter_stream_table",
    "create_stream_table",
    "drop_stream_table",
    "explain_stream_table",
    "get_setting",
    "install",
    "list_settings",
    "list_subscriptions",
    "refresh_all",
    "refresh_order",
    "refresh_stream_table",
    "scheduler_status",
    "set_setting",
    "sla_summary",
    "stable_name",
    "status",
    "subscribe",
    "unsubscribe",
    "verify_stream_table",
]
