"""The settings registry: every tunable of dbt-pgtrickle, in one place.

Each :class:`Setting` has a name, a type, a default and a doc string. Values are read from the
catalog table ``pgtrickle.pgt_settings`` (set with :func:`set_setting` or plain SQL) and fall back
to the default. ``docs/CONFIGURATION.md`` is generated from this registry
(``python -m dbt_pgtrickle.settings > docs/CONFIGURATION.md``); a test fails when it drifts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .errors import ConfigError


@dataclass(frozen=True)
class Setting:
    name: str
    type: type
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None

    def parse(self, raw: Any) -> Any:
        """Convert ``raw`` (text from the catalog, or a Python value) to this setting's type."""
        try:
            if self.type is bool:
                if isinstance(raw, bool):
                    return raw
                text = str(raw).strip().lower()
                if text in ("true", "on", "yes", "1"):
                    return True
                if text in ("false", "off", "no", "0"):
                    return False
                raise ValueError(raw)
            value = self.type(raw)
        except (TypeError, ValueError):
            raise ConfigError(
                f"setting {self.name}: {raw!r} is not a valid {self.type.__name__}"
            ) from None
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"setting {self.name}: {value} is below the minimum {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"setting {self.name}: {value} is above the maximum {self.maximum}")
        return value


REGISTRY: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "auto_full_threshold",
            float,
            0.25,
            "AUTO refresh mode: when the pending change rows of a stream table's sources exceed "
            "this fraction of the sources' estimated row count (pg_class.reltuples), the refresh "
            "recomputes the whole query (FULL) instead of applying a delta; the reason is recorded "
            "in the refresh history. Change rows count images, so an UPDATE counts twice. A "
            "source never analysed (no estimate) never triggers the switch. 1 turns it off. "
            "Default: the crossovers measured by `benchmarks/auto_threshold.py` lie between 0.14 "
            "and 0.39 (docs/BENCHMARK.md); 0.25 keeps the worst wrong choice within 1.31x.",
            minimum=0.0,
            maximum=1.0,
        ),
        Setting(
            "auto_cost_floor_ms",
            float,
            50.0,
            "AUTO refresh mode: once the last full refresh of a stream table, or the estimate "
            "of its differential refresh, takes at least this long, a refresh also compares "
            "measured costs: the last differential refresh's time per change row times the "
            "pending change rows (the estimate), against the last full refresh's time (or the "
            "initial population). If the estimate is above 80% of it, the refresh recomputes "
            "(FULL) and records both figures as the reason, unless it is for more than twice "
            "the measured change rows and the measured refresh itself took less than the "
            "budget of an unmeasured refresh (auto_diff_budget): such an extrapolation is "
            "tried with that budget (a larger change is not cheaper than a smaller one, so "
            "a smaller measured refresh past the budget means the attempt would be "
            "cancelled). Past the floor a differential "
            "refresh also gets its time budget (auto_diff_budget). When both are below the "
            "floor, either is cheap and the choice is left to auto_full_threshold, unless the "
            "last differential refresh recomputed because a scalar subquery's value changed, "
            "had at least half as many change rows and took more than 80% of the full one. "
            "Off when "
            "auto_full_threshold is 1. Default: at 200 ms, TPC-H at scale factor 0.1 (full "
            "refreshes of 44-2,040 ms) let AUTO run differential refreshes up to 11.6x slower "
            "than a full one (docs/BENCHMARK.md, variant tpch_sf0.1-floor200); judging only "
            "measured times (not the estimate) against 50 ms, up to 8.5x (variant "
            "tpch_sf0.1-measured_floor).",
            minimum=0.0,
        ),
        Setting(
            "auto_diff_budget",
            float,
            0.2,
            "AUTO refresh mode: a differential refresh may take at most this fraction of the "
            "stream table's last full refresh (or initial population), once that full "
            "refresh took at least auto_cost_floor_ms; "
            "once a differential refresh has been measured, at most twice the estimate "
            "from it, up to a full refresh's time, if that is more (a differential refresh "
            "estimated above 80% of a full one is not attempted). Past it, the attempt is "
            "cancelled and rolled back to a "
            "savepoint, and the refresh recomputes the query in the same snapshot, recording "
            "the reason; the next refreshes go straight to FULL while their change rows are at "
            "least 80% of the cancelled attempt's, until 2 full refreshes have followed it: then "
            "AUTO tries again, with twice the fraction for a change at most 1.25 times as large "
            "(a larger change waits for 4 and keeps the fraction) (after 4, 8 … 64 full "
            "refreshes when the "
            "tries are cancelled again, doubling the fraction each time up to 0.8). So an AUTO "
            "refresh costs at most (1 + this) times a full one when nothing is known of its "
            "differential cost, a retry at most 1.8 times (the retries together at most this "
            "fraction per refresh on average), and "
            "at most twice when its estimate was wrong by more than the margin; a cheap one "
            "(full refresh and estimate both under auto_cost_floor_ms) runs without a budget. "
            "0 turns the budget off.",
            minimum=0.0,
        ),
        Setting(
            "refresh_lock_timeout_ms",
            int,
            5000,
            "How long a refresh waits for the stream table's lock (held by another refresh or an "
            "ALTER) before failing with a retryable lock error.",
            minimum=0,
        ),
        Setting(
            "refresh_random_page_cost",
            float,
            1.1,
            "random_page_cost set for the duration of a refresh transaction, so the planner "
            "drives small change windows into the source and stream table through their indexes "
            "(at PostgreSQL's default of 4 it switches to whole-table scans from about 1% "
            "changes; see docs/BENCHMARK.md). 0 leaves the server's setting alone.",
            minimum=0.0,
        ),
        Setting(
            "refresh_effective_cache_size_mb",
            int,
            256,
            "effective_cache_size (in MB) set for the rest of a refresh transaction once it goes "
            "differential (also for the full recompute that follows a cancelled attempt), so "
            "the planner charges for the pages repeated index scans of a large table touch. At "
            "PostgreSQL's default of 4GB it assumes a smaller table stays cached and charges each "
            "of its pages at most once however many scans read it, and drove Q21's delta at SF 1 "
            "from every line item of 434 suppliers (164,000 rows, 0.9 s) instead of from the "
            "5,400 changed orders (50 ms; docs/internals.md). On Citus it applies to the "
            "coordinator's planning only. 0 leaves the server's setting alone.",
            minimum=0,
            maximum=16_777_215,
        ),
        Setting(
            "refresh_statement_timeout_ms",
            int,
            0,
            "statement_timeout applied inside a refresh transaction; 0 means no limit.",
            minimum=0,
        ),
        Setting(
            "change_buffer_unlogged",
            bool,
            False,
            "Create change buffers (one per captured source, when its first stream table is "
            "created) as UNLOGGED tables: capture then writes no WAL, which makes bulk "
            "statements on captured tables cheaper (docs/BENCHMARK.md, write path). The price: "
            "PostgreSQL empties unlogged tables after a crash restart and on a promoted standby, "
            "and unlogged buffers are not replicated. The runtime detects that (an unlogged "
            "sentinel row per reading stream table) and recomputes each reader once, FULL, with "
            "the reason in the refresh history; the scheduler refreshes them even without new "
            "writes. Off (logged buffers) is the safe default: no recompute after a crash, and "
            "stream tables on a promoted standby stay differential. Existing buffers keep their "
            "kind; `ALTER TABLE pgtrickle_changes.changes_<stable name> SET UNLOGGED` (or SET "
            "LOGGED) converts one, and an unlogged one's readers recompute once.",
        ),
        Setting(
            "history_retention_days",
            int,
            14,
            "Refresh history rows older than this are pruned (by the scheduler, in bounded batches).",
            minimum=1,
        ),
        Setting(
            "history_prune_interval_ms",
            int,
            60000,
            "How often the scheduler prunes refresh history older than history_retention_days.",
            minimum=1000,
        ),
        Setting(
            "history_prune_batch",
            int,
            5000,
            "Rows deleted per pruning statement; the scheduler runs at most 20 such statements "
            "per pruning round, so one round never holds locks or I/O for long.",
            minimum=1,
        ),
        Setting(
            "scheduler_poll_interval_ms",
            int,
            5000,
            "The longest the scheduler sleeps between two looks at the catalog. Changes wake it "
            "at once (change capture notifies it), so this only bounds how late it notices "
            "changes whose wake-up was lost or skipped (`SET pgtrickle.wake = off`), schedule "
            "edits and new stream tables.",
            minimum=50,
        ),
        Setting(
            "scheduler_lease_ms",
            int,
            30000,
            "Lifetime of a scheduler's lease on a stream table (pgt_st_locks); extended every "
            "third of it while the refresh runs. After a scheduler dies, another takes its "
            "stream tables over when the lease expires.",
            minimum=1000,
        ),
        Setting(
            "scheduler_max_failures",
            int,
            5,
            "Consecutive failures with a non-retryable error (syntax, undefined object, "
            "permission, …) after which the scheduler suspends a stream table (status "
            "SUSPENDED). Retryable errors (serialization failure, deadlock, lock timeout, lost "
            "connection) are retried with backoff and never suspend.",
            minimum=1,
        ),
        Setting(
            "scheduler_retry_base_ms",
            int,
            1000,
            "First retry delay after a failed refresh; doubled after each further failure "
            "(with ±25% jitter), up to scheduler_retry_max_ms.",
            minimum=10,
        ),
        Setting(
            "scheduler_retry_max_ms",
            int,
            300000,
            "Longest retry delay after failed refreshes.",
            minimum=10,
        ),
        Setting(
            "notify_coalesce_ms",
            int,
            250,
            "Subscription notifications for one stream table are coalesced within this window.",
            minimum=0,
        ),
        Setting(
            "sla_window_hours",
            int,
            24,
            "Window over which sla_summary() computes percentiles, error rate and error budget.",
            minimum=1,
        ),
        Setting(
            "sla_target",
            float,
            0.99,
            "Share of refreshes that should succeed; sla_summary() reports how much of the "
            "error budget (1 - sla_target) is left in the window.",
            minimum=0.0,
            maximum=1.0,
        ),
        Setting(
            "citus_worker_retry_ticks",
            int,
            5,
            "Consecutive failed polls of a Citus worker after which it is flagged in "
            "`pgtrickle.citus_status`, logged as a WARNING and announced on the NOTIFY channel "
            "`pgtrickle_alert` (docs/citus.md). The count is stored, so it survives restarts.",
            minimum=1,
        ),
        Setting(
            "citus_poll_batch_changes",
            int,
            10000,
            "Citus change import: decoded messages read from a worker's replication slot per "
            "batch. Each batch is imported in its own coordinator transaction; a batch always "
            "ends at a transaction boundary, so it may hold a few more.",
            minimum=1,
        ),
        Setting(
            "citus_poll_concurrency",
            int,
            4,
            "Citus change import: nodes of one source polled at the same time, each by its own "
            "thread over its own connections to the node and to the coordinator; 1 polls them "
            "one after the other. Each node's changes are still imported before its slot is "
            "confirmed.",
            minimum=1,
        ),
        Setting(
            "citus_reference_row_threshold",
            int,
            100000,
            "Placement `auto` of a stream table reading a distributed source: reference table "
            "when the sources' row estimate (the sum of their shards' pg_class.reltuples) is "
            "below this, distributed table otherwise.",
            minimum=0,
        ),
    )
}


def get_setting(conn: psycopg.Connection[Any], name: str) -> Any:
    """The current value of setting ``name`` in the database of ``conn``."""
    setting = _lookup(name)
    row = conn.execute(
        "SELECT value FROM pgtrickle.pgt_settings WHERE name = %s", (name,)
    ).fetchone()
    return setting.default if row is None else setting.parse(row[0])


def all_settings(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Every setting with its effective value."""
    stored = dict(conn.execute("SELECT name, value FROM pgtrickle.pgt_settings").fetchall())
    return {
        name: (s.parse(stored[name]) if name in stored else s.default)
        for name, s in REGISTRY.items()
    }


def set_setting(conn: psycopg.Connection[Any], name: str, value: Any) -> None:
    """Store ``value`` for setting ``name`` (validated against the registry)."""
    parsed = _lookup(name).parse(value)
    conn.execute(
        sql.SQL(
            "INSERT INTO pgtrickle.pgt_settings (name, value) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
        ),
        (name, str(parsed).lower() if isinstance(parsed, bool) else str(parsed)),
    )


def _lookup(name: str) -> Setting:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"unknown setting {name!r}; known settings: {known}") from None


def _bound(value: float) -> str:
    """A range bound as the docs show it: integers with thousands separators."""
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def render_markdown() -> str:
    """The text of docs/CONFIGURATION.md."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from dbt_pgtrickle/settings.py by "
        "`python -m dbt_pgtrickle.settings > docs/CONFIGURATION.md`; do not edit by hand. -->",
        "",
        "Settings are stored per database in `pgtrickle.pgt_settings` and read at each use. "
        "Change one with `pgtrickle set NAME VALUE`, the Python API "
        "`dbt_pgtrickle.set_setting(conn, name, value)`, or SQL:",
        "",
        "```sql",
        "INSERT INTO pgtrickle.pgt_settings (name, value) VALUES ('auto_full_threshold', '0.2')",
        "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value;",
        "```",
        "",
        "| name | type | default | range | description |",
        "|---|---|---|---|---|",
    ]
    for s in REGISTRY.values():
        bounds = ""
        if s.minimum is not None or s.maximum is not None:
            lo = "" if s.minimum is None else _bound(s.minimum)
            hi = "" if s.maximum is None else _bound(s.maximum)
            bounds = f"{lo} … {hi}"
        lines.append(f"| `{s.name}` | {s.type.__name__} | `{s.default}` | {bounds} | {s.doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
