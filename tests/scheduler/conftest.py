"""Fixtures of the scheduler tests: every daemon process a test starts is stopped afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import daemons
import psycopg
import pytest
from daemons import Daemon

import dbt_pgtrickle as pgt

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """``spawn(dsn, *args)`` starts ``pgtrickle scheduler run`` and waits for its heartbeat."""
    started: list[Daemon] = []

    def start(dsn: str, *args: str, wait: bool = True) -> Daemon:
        daemon = daemons.start(
            dsn, tmp_path / f"daemon-{len(started)}.log", *args, repo=REPO, wait=wait
        )
        started.append(daemon)
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
