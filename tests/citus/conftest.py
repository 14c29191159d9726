"""A real Citus cluster for the tests in this directory: a coordinator and two workers.

Opt-in: set ``PGTRICKLE_CITUS_TESTS=1`` (the suite takes several minutes on two cores).

``citus_cluster`` (session) starts three PostgreSQL servers from the session's server binaries
(see ``tests/conftest.py``) with ``shared_preload_libraries = 'citus'``, each on a free loopback
port, and stops them at the end. Where Citus is not installed for those binaries (CI machines,
the embedded PostgreSQL 18), every test here is skipped with the reason.

``citus_db``: a fresh database on all three nodes with the citus extension, the coordinator's
host set and both workers added; the test gets :class:`CitusDB` (DSNs of each node) and the
database is dropped on every node afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from dbt_pgtrickle.embedded import (
    LOOPBACK,
    SUPERUSER,
    Cluster,
    reachable_bindir,
    server_user,
)


def _load(relative: str, name: str) -> Any:
    # tests/conftest.py is imported by pytest as the module "conftest", which this file's name
    # shadows; load it (and the scheduler tests' daemon helpers) once more under their own names.
    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_root = _load("conftest.py", "_pgtrickle_tests_conftest")
daemons = _load("scheduler/daemons.py", "_pgtrickle_tests_daemons")
REPO = Path(__file__).resolve().parents[2]
TEST_SETTINGS: dict[str, str] = _root.TEST_SETTINGS
server_plan = _root.server_plan
_create_database = _root._create_database
_drop_database = _root._drop_database
_temp_base = _root._temp_base

CITUS_SETTINGS = dict(
    TEST_SETTINGS,
    shared_preload_libraries="citus",
    max_prepared_transactions="50",
    max_replication_slots="64",
    max_wal_senders="32",
    max_connections="200",
    # Citus tags the rows its own shard moves and splits copy with a replication origin, so
    # change capture can skip them (docs/citus.md).
    # Loopback only: no TLS between the nodes (libpq would look for client certificates in the
    # home directory of whoever started the servers).
    **{"citus.enable_change_data_capture": "on", "citus.node_conninfo": "sslmode=disable"},
)


def citus_library(bindir: Path) -> Path:
    return bindir.parent / "lib" / "citus.so"


RUN_ENV = "PGTRICKLE_CITUS_TESTS"


def citus_skip_reason() -> str | None:
    if os.environ.get(RUN_ENV) != "1":
        return (
            f"the Citus suite starts three servers and takes several minutes: set {RUN_ENV}=1 "
            "to run it (needs Citus installed for the server binaries; see docs/citus.md)"
        )
    plan = server_plan()
    if plan.kind not in ("started", "embedded") or plan.bindir is None:
        return f"Citus tests start their own servers; server plan is {plan.kind!r}"
    if not citus_library(plan.bindir).is_file():
        return (
            f"Citus is not installed for the PostgreSQL {plan.version} server binaries in "
            f"{plan.bindir} (no citus.so); see docs/citus.md"
        )
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = citus_skip_reason()
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.citus)
            item.add_marker(pytest.mark.db)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@dataclass
class Node:
    cluster: Cluster
    port: int

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(
            host=LOOPBACK, port=self.port, user=SUPERUSER, dbname=dbname, connect_timeout=10
        )

    def stop(self) -> None:
        self.cluster.stop(timeout=60)

    def crash(self) -> None:
        """Stop at once, as a power loss would (``pg_ctl stop -m immediate``: no shutdown
        checkpoint; the next start runs crash recovery, and replication slots go back to the
        state of the last checkpoint)."""
        args = ["-D", str(self.cluster.data_dir), "-m", "immediate", "-w", "-t", "60", "stop"]
        self.cluster.run("pg_ctl", args, timeout=75)

    def start(self) -> None:
        self.port = self.cluster.start(self.port, timeout=60)

    def shards_of(self, coordinator: psycopg.Connection[Any], table: str) -> int:
        """How many of ``table``'s shards the coordinator places on this node."""
        row = coordinator.execute(
            "SELECT count(*) FROM citus_shards WHERE table_name = %s::regclass AND nodeport = %s",
            (table, self.port),
        ).fetchone()
        assert row is not None
        return int(row[0])


@dataclass
class CitusCluster:
    coordinator: Node
    workers: list[Node] = field(default_factory=list)

    @property
    def nodes(self) -> list[Node]:
        return [self.coordinator, *self.workers]


@pytest.fixture(scope="session")
def citus_cluster() -> Iterator[CitusCluster]:
    reason = citus_skip_reason()
    if reason:
        pytest.skip(reason)
    plan = server_plan()
    assert plan.bindir is not None
    user = server_user()
    tmp = Path(tempfile.mkdtemp(prefix="pgtrickle-citus-", dir=_temp_base(user)))
    started: list[Cluster] = []
    try:
        tmp.chmod(0o755)
        bindir = reachable_bindir(plan.bindir, user, tmp / "pginstall")
        nodes = []
        for role in ("coordinator", "worker1", "worker2"):
            cluster = Cluster(bindir, tmp / role, user=user)
            cluster.own(tmp)
            settings = dict(CITUS_SETTINGS, unix_socket_directories=str(tmp))
            cluster.initdb(settings=settings, sync=False)
            started.append(cluster)
            nodes.append(Node(cluster, cluster.start(timeout=60)))
        yield CitusCluster(nodes[0], nodes[1:])
    finally:
        try:
            for cluster in started:
                with contextlib.suppress(Exception):  # stop the others whatever happened
                    cluster.stop(timeout=60)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class CitusDB:
    """One database on every node of the cluster, citus installed, workers added."""

    cluster: CitusCluster
    name: str

    @property
    def dsn(self) -> str:
        """The coordinator's DSN (what the runtime and the tests connect to)."""
        return self.cluster.coordinator.dsn(self.name)

    def worker_dsn(self, i: int) -> str:
        return self.cluster.workers[i].dsn(self.name)

    def connect(self, dsn: str | None = None) -> psycopg.Connection[Any]:
        return psycopg.connect(dsn or self.dsn, autocommit=True)


def _for_all_nodes(cluster: CitusCluster, fn: Any) -> None:
    for node in cluster.nodes:
        with psycopg.connect(node.dsn(), autocommit=True) as admin:
            fn(admin)


@pytest.fixture
def citus_db(citus_cluster: CitusCluster) -> Iterator[CitusDB]:
    name = f"pgt_citus_{uuid.uuid4().hex[:12]}"
    _for_all_nodes(citus_cluster, lambda admin: _create_database(admin, name))
    db = CitusDB(citus_cluster, name)
    try:
        for node in citus_cluster.nodes:
            with psycopg.connect(node.dsn(name), autocommit=True) as c:
                c.execute("CREATE EXTENSION citus")
        with db.connect() as c:
            c.execute(
                "SELECT citus_set_coordinator_host(%s, %s)",
                (LOOPBACK, citus_cluster.coordinator.port),
            )
            for worker in citus_cluster.workers:
                c.execute("SELECT citus_add_node(%s, %s)", (LOOPBACK, worker.port))
        yield db
    finally:
        for node in citus_cluster.nodes:
            if not node.cluster.is_running():
                node.start()
        with db.connect() as c:  # slots on workers hold the database open
            pass
        for node in citus_cluster.nodes:
            with psycopg.connect(node.dsn(name), autocommit=True) as c:
                c.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE database = current_database() AND NOT active"
                )
        _for_all_nodes(citus_cluster, lambda admin: _drop_database(admin, name))


@pytest.fixture
def spawn_daemon(tmp_path: Path) -> Iterator[Any]:
    """``spawn_daemon(dsn, *args)`` starts ``pgtrickle scheduler run`` against ``dsn`` (this
    checkout's code) and waits for its heartbeat; every daemon started is stopped afterwards."""
    started: list[Any] = []

    def start(dsn: str, *args: str) -> Any:
        daemon = daemons.start(dsn, tmp_path / f"daemon-{len(started)}.log", *args, repo=REPO)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
