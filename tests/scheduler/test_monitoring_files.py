"""monitoring/ uses exactly the metric names the scheduler exports (no server)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from dbt_pgtrickle.scheduler.metrics import NAMES

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"


def used_names(text: str) -> set[str]:
    names = set(re.findall(r"pgtrickle_[a-z_]+", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_dashboard_and_alerts_use_exported_names() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    alerts = (MONITORING / "alerts.yml").read_text()
    used = used_names(exprs) | used_names(alerts)
    assert used <= set(NAMES), used - set(NAMES)
    for needed in ("pgtrickle_staleness_seconds", "pgtrickle_pending_change_rows"):
        assert needed in alerts
    assert "pgtrickle_refresh_duration_seconds_bucket" in alerts  # p99 latency alert
