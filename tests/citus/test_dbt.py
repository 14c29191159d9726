"""dbt on a Citus coordinator: the integration project's ``orders_by_status`` stream-table model
over the seeded ``orders`` table, distributed after seeding, is created by ``dbt run``, refreshed
by the next ``dbt run`` after writes through the coordinator, and equal to its query each time;
a changed query is a rebuild under ``--full-refresh``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

import dbt_pgtrickle as pgt

pytest.importorskip(
    "dbt.adapters.pgtrickle", reason="dbt is not installed (pip install -e '.[dbt]')"
)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dbt"))

from dbt_support import (  # noqa: E402
    DbtProject,
    DbtResult,
    copy_integration_project,
    profile_target,
    write_profile,
)

PROFILE = "pgtrickle_integration_tests"


def test_dbt_run_of_a_stream_table_on_a_distributed_source(citus_db, tmp_path: Path) -> None:
    project = DbtProject(
        copy_integration_project(tmp_path),
        write_profile(
            tmp_path / "profiles", PROFILE, profile_target(citus_db.dsn, schema="analytics")
        ),
    )

    def dbt(*args: str, expect: bool = True, **vars: Any) -> DbtResult:
        return project.dbt(*args, "--vars", json.dumps(vars), expect=expect)

    project.dbt("deps")
    dbt("seed", "-s", "orders")
    with citus_db.connect() as c:
        c.execute("SELECT create_distributed_table('analytics.orders', 'id')")
    created = dbt("run", "-s", "orders_by_status")
    assert any("CREATE STREAM TABLE" in line for line in created.lines), created.log
    with citus_db.connect() as c:
        row = c.execute(
            "SELECT t.source_placement, t.cdc_mode FROM pgtrickle.pgt_change_tracking t "
            "WHERE t.source_name = 'orders'"
        ).fetchone()
        assert row == ("distributed", "citus_slot")
        # placement auto: a small distributed source gives a reference stream table
        assert c.execute(
            "SELECT placement FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'orders_by_status'"
        ).fetchone() == ("reference",)
        assert pgt.verify_stream_table(c, "analytics.orders_by_status")["equal"]
        c.execute("INSERT INTO analytics.orders VALUES (501, 1, 10.00, 'new'), (502, 2, 5.5, 'x')")
        c.execute("UPDATE analytics.orders SET status = 'paid' WHERE id % 3 = 0")
        c.execute("DELETE FROM analytics.orders WHERE id % 5 = 0")
    refreshed = dbt("run", "-s", "orders_by_status")
    assert any("REFRESH DIFFERENTIAL" in line for line in refreshed.lines), refreshed.log
    with citus_db.connect() as c:
        assert pgt.verify_stream_table(c, "analytics.orders_by_status")["equal"]
    # A new query of a stream table on Citus is a rebuild: refused without --full-refresh.
    model = project.project_dir / "models" / "orders_by_status.sql"
    model.write_text(
        model.read_text().replace("max(amount) as largest", "max(amount) + 0 as largest")
    )
    refused = dbt("run", "-s", "orders_by_status", expect=False)
    assert "--full-refresh" in refused.log, refused.log
    with citus_db.connect() as c:
        c.execute("UPDATE analytics.orders SET amount = amount + 1 WHERE id < 10")
    dbt("run", "--full-refresh", "-s", "orders_by_status")
    with citus_db.connect() as c:
        assert pgt.verify_stream_table(c, "analytics.orders_by_status")["equal"]
        assert c.execute(
            "SELECT count(*) FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'orders_by_status' "
            "AND original_query LIKE '%%+ 0 as largest%%'"
        ).fetchone() == (1,)
