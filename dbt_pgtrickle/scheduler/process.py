"""Running the daemon in the background: ``pgtrickle scheduler start|stop``.

``start`` launches ``python -m dbt_pgtrickle.cli scheduler run`` in a new session (the DSN passed
in the environment, never on the command line), its output appended to a log file, and returns
once the daemon's heartbeat row is in the database. The pid file and log file live in the run
directory: ``$PGTRICKLE_RUN_DIR``, else ``$XDG_STATE_HOME/pgtrickle``, else
``~/.local/state/pgtrickle``; they are named ``scheduler-<host>-<port>-<database>.{pid,log}``, so
one daemon per database runs side by side with the daemons of other databases.

``stop`` sends SIGTERM to the pid in the pid file (after checking that the process is a scheduler)
and waits for it to exit: the refresh in flight finishes, then the daemon releases its leases and
deletes its heartbeat row.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from .._conn import connect
from ..catalog import install as _install
from ..errors import PgTrickleError
from . import leases

RUN_DIR_ENV = "PGTRICKLE_RUN_DIR"


@dataclass(frozen=True)
class DaemonFiles:
    pid_file: Path
    log_file: Path


def run_dir() -> Path:
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pgtrickle"


def files_for(conn: psycopg.Connection[Any]) -> DaemonFiles:
    """Pid and log file of the daemon serving the database of ``conn``."""
    host = conn.info.host or "local"
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{host}-{conn.info.port}-{conn.info.dbname}")
    base = run_dir() / f"scheduler-{key.strip('_') or 'default'}"
    return DaemonFiles(base.with_suffix(".pid"), base.with_suffix(".log"))


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def is_scheduler_process(pid: int) -> bool:
    """Whether ``pid`` is alive and (where /proc tells) a ``scheduler run`` process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            return False
        return b"scheduler" in args and b"run" in args
    return True


def write_pid_file(pid_file: Path) -> None:
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = pid_file.with_suffix(".pid.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(pid_file)


def remove_pid_file(pid_file: Path) -> None:
    if read_pid(pid_file) == os.getpid():
        pid_file.unlink(missing_ok=True)


def start(
    dsn: str,
    *,
    poll_interval_ms: int | None = None,
    metrics_port: int | None = None,
    timeout: float = 30.0,
) -> tuple[int, DaemonFiles]:
    """Start a background daemon for the database of ``dsn``; returns its pid once healthy."""
    with connect(dsn) as conn:
        _install.require_installed(conn)
        files = files_for(conn)
    running = read_pid(files.pid_file)
    if running is not None and is_scheduler_process(running):
        raise PgTrickleError(
            f"a scheduler already runs for this database (pid {running}, {files.pid_file})"
        )
    files.pid_file.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "dbt_pgtrickle.cli", "scheduler", "run"]
    argv += ["--pid-file", str(files.pid_file)]
    if poll_interval_ms is not None:
        argv += ["--poll-interval-ms", str(poll_interval_ms)]
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port)]
    env = dict(os.environ, PGTRICKLE_DSN=dsn)
    with open(files.log_file, "ab") as log_fh:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + timeout
    with connect(dsn) as conn:
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                raise PgTrickleError(
                    f"the scheduler exited with status {code} while starting; "
                    f"{files.log_file} ends with:\n{_tail(files.log_file)}"
                )
            row = conn.execute(
                "SELECT 1 FROM pgtrickle.pgt_scheduler WHERE pid = %s AND host = %s",
                (proc.pid, _hostname()),
            ).fetchone()
            if row is not None:
                return proc.pid, files
            time.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)
    raise PgTrickleError(
        f"the scheduler did not report healthy within {timeout:.0f} s; see {files.log_file}"
    )


def stop(dsn: str, *, timeout: float = 60.0, force: bool = False) -> int | None:
    """Stop the background daemon of the database of ``dsn``; its pid, or None if none ran."""
    with connect(dsn) as conn:
        files = files_for(conn)
    pid = read_pid(files.pid_file)
    if pid is None or not is_scheduler_process(pid):
        files.pid_file.unlink(missing_ok=True)
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_scheduler_process(pid):
            return pid
        time.sleep(0.1)
    if force:
        os.kill(pid, signal.SIGKILL)
        return pid
    raise PgTrickleError(
        f"the scheduler (pid {pid}) did not stop within {timeout:.0f} s; its refresh may still "
        "be running (use --force to kill it; its lease then expires and its RUNNING refresh is "
        "marked failed)"
    )


def status(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Heartbeat rows of this database plus the local pid and log file."""
    files = files_for(conn)
    pid = read_pid(files.pid_file)
    return {
        "schedulers": leases.schedulers(conn),
        "pid_file": str(files.pid_file),
        "log_file": str(files.log_file),
        "local_pid": pid if pid is not None and is_scheduler_process(pid) else None,
    }


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
