"""Opt-in Prometheus metrics of the scheduler (``pgtrickle scheduler run --metrics-port N``).

Needs ``prometheus-client`` (``pip install 'dbt-pgtrickle[metrics]'``). The names below are the
ones ``monitoring/`` (Grafana dashboard, alert rules) uses; keep the two in step.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

NAMES = (
    "pgtrickle_refreshes_total",
    "pgtrickle_refresh_duration_seconds",
    "pgtrickle_rows_changed_total",
    "pgtrickle_refresh_failures_total",
    "pgtrickle_pending_change_rows",
    "pgtrickle_staleness_seconds",
    "pgtrickle_stream_table_suspended",
    "pgtrickle_lease_held",
    "pgtrickle_scheduler_tick_seconds",
    "pgtrickle_scheduler_up",
)


class Metrics:
    """Does nothing; :class:`PrometheusMetrics` records."""

    def refresh(
        self, name: str, action: str, seconds: float, inserted: int, updated: int, deleted: int
    ) -> None:
        pass

    def failure(self, name: str, sqlstate: str | None, retryable: bool) -> None:
        pass

    def tick(self, seconds: float) -> None:
        pass

    def lease(self, name: str, held: bool) -> None:
        pass

    def gauges(self, rows: list[tuple[str, float | None, int, bool]]) -> None:
        """Per stream table: (name, staleness seconds, pending change rows, suspended)."""

    @property
    def wants_gauges(self) -> bool:
        return False


class PrometheusMetrics(Metrics):
    """Metrics in a private registry, served over HTTP on ``addr:port``."""

    def __init__(self, port: int, addr: str = "127.0.0.1") -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigError(
                "metrics need prometheus-client: pip install 'dbt-pgtrickle[metrics]'"
            ) from None
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.refreshes = prom.Counter(
            "pgtrickle_refreshes",
            "Refreshes run by the scheduler",
            ["stream_table", "action"],
            registry=r,
        )
        self.duration = prom.Histogram(
            "pgtrickle_refresh_duration_seconds",
            "Refresh duration by action",
            ["action"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.rows = prom.Counter(
            "pgtrickle_rows_changed",
            "Rows changed in stream tables",
            ["stream_table", "kind"],
            registry=r,
        )
        self.failures = prom.Counter(
            "pgtrickle_refresh_failures",
            "Failed refreshes",
            ["stream_table", "sqlstate", "retryable"],
            registry=r,
        )
        self.pending = prom.Gauge(
            "pgtrickle_pending_change_rows",
            "Change rows not yet applied",
            ["stream_table"],
            registry=r,
        )
        self.staleness = prom.Gauge(
            "pgtrickle_staleness_seconds",
            "Seconds since the last refresh while changes are pending (0 when up to date)",
            ["stream_table"],
            registry=r,
        )
        self.suspended = prom.Gauge(
            "pgtrickle_stream_table_suspended",
            "1 when suspended after failures",
            ["stream_table"],
            registry=r,
        )
        self.leases = prom.Gauge(
            "pgtrickle_lease_held",
            "1 while this scheduler holds the stream table's lease",
            ["stream_table"],
            registry=r,
        )
        self.ticks = prom.Histogram(
            "pgtrickle_scheduler_tick_seconds",
            "Duration of one scheduler tick (refreshes excluded)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.up = prom.Gauge("pgtrickle_scheduler_up", "1 while the scheduler runs", registry=r)
        self.up.set(1)
        self.server, self.thread = prom.start_http_server(port, addr=addr, registry=r)

    def refresh(
        self, name: str, action: str, seconds: float, inserted: int, updated: int, deleted: int
    ) -> None:
        self.refreshes.labels(name, action).inc()
        self.duration.labels(action).observe(seconds)
        for kind, n in (("inserted", inserted), ("updated", updated), ("deleted", deleted)):
            if n:
                self.rows.labels(name, kind).inc(n)

    def failure(self, name: str, sqlstate: str | None, retryable: bool) -> None:
        self.failures.labels(name, sqlstate or "", str(retryable).lower()).inc()

    def tick(self, seconds: float) -> None:
        self.ticks.observe(seconds)

    def lease(self, name: str, held: bool) -> None:
        self.leases.labels(name).set(1 if held else 0)

    def gauges(self, rows: list[tuple[str, float | None, int, bool]]) -> None:
        for name, staleness, pending, suspended in rows:
            self.staleness.labels(name).set(staleness or 0.0)
            self.pending.labels(name).set(pending)
            self.suspended.labels(name).set(1 if suspended else 0)

    @property
    def wants_gauges(self) -> bool:
        return True

    def close(self) -> None:
        self.up.set(0)
        self.server.shutdown()
        self.server.server_close()

    def port(self) -> Any:
        return self.server.server_address[1]
