"""Leases in ``pgtrickle.pgt_st_locks`` and the scheduler's heartbeat row in ``pgt_scheduler``.

A lease (``lock_key``, ``holder``, ``acquired_at``, ``expires_at``) says which scheduler works on
something (``refresh:<pgt_id>`` for a stream table, ``prune`` for history pruning). It is taken
when free or expired, extended while held (by the :class:`~.daemon.Keeper` thread, every third of
its lifetime), and deleted when done. A scheduler killed with SIGKILL cannot release its leases;
they expire and another scheduler takes the work over. Leases are advisory among schedulers: the
refresh itself still locks the stream table, so a manual refresh never runs concurrently either.
"""

from __future__ import annotations

import random
from typing import Any

import psycopg

REFRESH_PREFIX = "refresh:"
PRUNE_KEY = "prune"

#: Randomised wait after losing a lease race, so competing schedulers spread out.
CONFLICT_BACKOFF_S = (0.05, 0.5)


def refresh_key(pgt_id: int) -> str:
    return f"{REFRESH_PREFIX}{pgt_id}"


def conflict_backoff() -> float:
    return random.uniform(*CONFLICT_BACKOFF_S)


def acquire(conn: psycopg.Connection[Any], key: str, holder: str, ttl_ms: int) -> bool:
    """Take (or renew) the lease ``key``; False when another holder's lease has not expired."""
    row = conn.execute(
        "INSERT INTO pgtrickle.pgt_st_locks AS l (lock_key, holder, acquired_at, expires_at) "
        "VALUES (%s, %s, now(), clock_timestamp() + make_interval(secs => %s / 1000.0)) "
        "ON CONFLICT (lock_key) DO UPDATE SET holder = EXCLUDED.holder, "
        "acquired_at = CASE WHEN l.holder = EXCLUDED.holder THEN l.acquired_at ELSE now() END, "
        "expires_at = EXCLUDED.expires_at "
        "WHERE l.holder = EXCLUDED.holder OR l.expires_at < clock_timestamp() "
        "RETURNING holder",
        (key, holder, ttl_ms),
    ).fetchone()
    return row is not None


def extend_all(conn: psycopg.Connection[Any], holder: str, ttl_ms: int) -> int:
    """Push back the expiry of every lease ``holder`` holds; returns how many."""
    cur = conn.execute(
        "UPDATE pgtrickle.pgt_st_locks SET expires_at = clock_timestamp() "
        "+ make_interval(secs => %s / 1000.0) WHERE holder = %s",
        (ttl_ms, holder),
    )
    return max(cur.rowcount, 0)


def release(conn: psycopg.Connection[Any], key: str, holder: str) -> None:
    conn.execute(
        "DELETE FROM pgtrickle.pgt_st_locks WHERE lock_key = %s AND holder = %s", (key, holder)
    )


def release_all(conn: psycopg.Connection[Any], holder: str) -> None:
    conn.execute("DELETE FROM pgtrickle.pgt_st_locks WHERE holder = %s", (holder,))


def fail_orphaned_refreshes(conn: psycopg.Connection[Any]) -> int:
    """Mark ``RUNNING`` history rows whose scheduler no longer holds the stream table's lease as
    ``FAILED`` (the scheduler died mid-refresh; its transaction was rolled back). Returns how many.
    """
    cur = conn.execute(
        "UPDATE pgtrickle.pgt_refresh_history h SET status = 'FAILED', "
        "ended_at = clock_timestamp(), sqlstate = '57P01', "
        "error_message = 'the scheduler running this refresh stopped before it finished ("
        "' || h.initiated_by || '); the refresh was rolled back' "
        "WHERE h.status = 'RUNNING' AND NOT EXISTS (SELECT 1 FROM pgtrickle.pgt_st_locks l "
        "WHERE l.lock_key = %s || h.pgt_id AND l.expires_at >= clock_timestamp())",
        (REFRESH_PREFIX,),
    )
    return max(cur.rowcount, 0)


# -- heartbeat ------------------------------------------------------------------------------------


def register(
    conn: psycopg.Connection[Any],
    holder: str,
    *,
    pid: int,
    host: str,
    version: str,
    poll_interval_ms: int,
    metrics_port: int | None,
) -> None:
    conn.execute(
        "INSERT INTO pgtrickle.pgt_scheduler (holder, pid, host, version, poll_interval_ms, "
        "metrics_port) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (holder) DO UPDATE SET "
        "last_tick_at = now(), last_beat_at = now(), state = 'running', "
        "poll_interval_ms = EXCLUDED.poll_interval_ms",
        (holder, pid, host, version, poll_interval_ms, metrics_port),
    )


def beat(conn: psycopg.Connection[Any], holder: str, *, tick: bool = False) -> bool:
    """Refresh the heartbeat (and the last-tick time when ``tick``); False if the row is gone."""
    cur = conn.execute(
        "UPDATE pgtrickle.pgt_scheduler SET last_beat_at = clock_timestamp()"
        + (", last_tick_at = clock_timestamp()" if tick else "")
        + " WHERE holder = %s",
        (holder,),
    )
    return cur.rowcount > 0


def unregister(conn: psycopg.Connection[Any], holder: str) -> None:
    conn.execute("DELETE FROM pgtrickle.pgt_scheduler WHERE holder = %s", (holder,))


#: A scheduler whose heartbeat is older than this is reported as not alive.
STALE_AFTER_S = 15


def schedulers(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every heartbeat row, newest first, with ``alive`` and the leases each holds."""
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT s.holder, s.pid, s.host, s.version, s.started_at, s.last_tick_at, "
            "s.last_beat_at, s.state, s.poll_interval_ms, s.metrics_port, "
            "s.last_beat_at > clock_timestamp() - make_interval(secs => %s) AS alive, "
            "coalesce((SELECT array_agg(l.lock_key ORDER BY l.lock_key) "
            "FROM pgtrickle.pgt_st_locks l WHERE l.holder = s.holder "
            "AND l.expires_at >= clock_timestamp()), '{}') AS leases "
            "FROM pgtrickle.pgt_scheduler s ORDER BY s.started_at DESC",
            (STALE_AFTER_S,),
        ).fetchall()
