"""Profile ``type: pgtrickle``: exactly the postgres credentials, and a libpq connection string
for the runtime's own psycopg 3 connections.

dbt talks to the database through psycopg2 and manages its transactions per model; the runtime
(:mod:`dbt_pgtrickle`) runs its own transactions on psycopg 3. The two never share a connection:
every runtime call opens one from :meth:`PgTrickleCredentials.runtime_conninfo` as the same role,
with the same search path, so the objects it creates belong to the same owner as dbt's.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbt.adapters.postgres.connections import PostgresConnectionManager, PostgresCredentials
from psycopg.conninfo import make_conninfo

RUNTIME_APPLICATION_NAME = "dbt-pgtrickle"


def _option_value(value: str) -> str:
    """Escape a value for libpq's ``options`` (backslash before backslashes and spaces)."""
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


@dataclass
class PgTrickleCredentials(PostgresCredentials):
    @property
    def type(self) -> str:
        return "pgtrickle"

    def runtime_conninfo(self) -> str:
        """A libpq connection string for the runtime's psycopg 3 connections."""
        params: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.database,
            "connect_timeout": self.connect_timeout,
            "application_name": RUNTIME_APPLICATION_NAME,
        }
        if self.password:
            params["password"] = self.password
        for key in ("sslmode", "sslcert", "sslkey", "sslrootcert"):
            value = getattr(self, key)
            if value:
                params[key] = value
        if self.keepalives_idle:
            params["keepalives_idle"] = self.keepalives_idle
        options = []
        if self.role:
            options.append(f"-c role={_option_value(self.role)}")
        if self.search_path:
            options.append(f"-c search_path={_option_value(self.search_path)}")
        if options:
            params["options"] = " ".join(options)
        return make_conninfo(**params)  # type: ignore[arg-type]


class PgTrickleConnectionManager(PostgresConnectionManager):
    TYPE = "pgtrickle"
