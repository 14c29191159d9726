"""Helpers of the scheduler tests: a daemon process handle and bounded waiting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def heartbeat(conn: psycopg.Connection[Any], pid: int) -> bool:
    row = conn.execute("SELECT 1 FROM pgtrickle.pgt_scheduler WHERE pid = %s", (pid,)).fetchone()
    return row is not None


def start(dsn: str, log: Path, *args: str, repo: Path, wait: bool = True) -> Daemon:
    """Start ``pgtrickle scheduler run *args`` against ``dsn`` with the code of ``repo``, its
    output in ``log``; with ``wait``, return once its heartbeat row is in the database."""
    env = dict(os.environ, PGTRICKLE_DSN=dsn)
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")])
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dbt_pgtrickle.cli", "scheduler", "run", *args],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=repo,
        )
    daemon = Daemon(proc, log)
    if wait:
        with psycopg.connect(dsn, autocommit=True) as conn:
            try:
                wait_for(
                    lambda: heartbeat(conn, proc.pid) or proc.poll() is not None,
                    60,
                    "the daemon's heartbeat",
                )
            except AssertionError:
                daemon.stop()
                raise
        assert proc.poll() is None, daemon.output()
    return daemon
