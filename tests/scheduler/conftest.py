"""Fixtures of the scheduler tests: every daemon process a test starts is stopped afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemons import Daemon, heartbeat, wait_for

import dbt_pgtrickle as pgt

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """``spawn(dsn, *args)`` starts ``pgtrickle scheduler run`` and waits for its heartbeat."""
    started: list[Daemon] = []

    def start(dsn: str, *args: str, wait: bool = True) -> Daemon:
        log = tmp_path / f"daemon-{len(started)}.log"
        env = dict(os.environ, PGTRICKLE_DSN=dsn)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dbt_pgtrickle.cli", "scheduler", "run", *args],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        daemon = Daemon(proc, log)
        started.append(daemon)
        if wait:
            with psycopg.connect(dsn, autocommit=True) as conn:
                wait_for(
                    lambda: heartbeat(conn, proc.pid) or proc.poll() is not None,
                    30,
                    "the daemon's heartbeat",
                )
            assert proc.poll() is None, daemon.output()
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def shop(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """pgtrickle installed, a source ``orders`` with 90 rows in three regions."""
    pgt.install(conn)
    conn.execute(
        "CREATE TABLE orders (id int PRIMARY KEY, region text NOT NULL, amount int NOT NULL);"
        "INSERT INTO orders SELECT g, (ARRAY['north','south','east'])[1 + g % 3], g "
        "FROM generate_series(1, 90) g"
    )
    return conn
