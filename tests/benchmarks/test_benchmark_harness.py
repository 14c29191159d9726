"""The benchmark harness keeps working: ``python -m benchmarks run --profile smoke``.

Runs every workload of the harness at tiny sizes against the test server (scratch databases of
its own, dropped afterwards), into a temporary results directory and a copy of
``docs/BENCHMARK.md``. Checks the shape of what it wrote, never a time: every workload finished
without error, every stream table / IMMV equalled its query, the JSON holds no path of this
machine, the generated sections were replaced and the hand-written text around them kept. The
pg_ivm part runs only where the extension is installed; the dbt part needs dbt-postgres.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness, report  # noqa: E402


def test_smoke_profile_runs_every_workload(dsn: str, tmp_path: Path) -> None:
    results = tmp_path / "results"
    docs = tmp_path / "BENCHMARK.md"
    shutil.copy(ROOT / "docs" / "BENCHMARK.md", docs)
    hand_written = "hand-written paragraph that the regeneration must keep"
    docs.write_text(docs.read_text() + "\n" + hand_written + "\n")

    rc = harness.main(
        ["run", "--dsn", dsn, "--profile", "smoke", "--results", str(results), "--docs", str(docs)]
    )

    reports = {p.stem: json.loads(p.read_text()) for p in results.glob("*.json")}
    assert {name: r["error"] for name, r in reports.items()} == {
        "tpch_sf0.002": None,
        "write_path": None,
        "daemon": None,
        "peers": None,
    }
    assert rc == 0
    for name, r in reports.items():
        text = (results / f"{name}.json").read_text()
        assert str(tmp_path) not in text and str(ROOT) not in text, name
        assert r["machine"]["cpu_count"] and r["versions"]["postgresql"], name

    tpch = reports["tpch_sf0.002"]["results"]
    params = reports["tpch_sf0.002"]["params"]
    assert sorted(tpch["queries"]) == params["queries"]
    for run in tpch["runs"]:
        for name, q in run["queries"].items():
            for kind in ("diff", "full", "mv"):
                assert len(q["samples_s"][kind]) == params["repeats"], (name, kind)
            # NO_DATA: every change row of the cycle was filtered or cancelled out of the windows
            choices = {"DIFFERENTIAL", "FULL", "NO_DATA"}
            assert set(q["auto_choice"]) <= choices, (name, q["auto_reason"])
            assert set(q["auto_choice"]) == {"NO_DATA"} or q["auto_ms"], name
    assert tpch["queries"]["q01"]["effective_mode"] == "DIFFERENTIAL"
    assert set(tpch["runs"][0]["queries"]["q01"]["actions"]) == {"DIFFERENTIAL"}
    for prof in tpch["profiles"]:
        assert "Query Text" not in prof["file"]
        assert (results / prof["file"]).read_text().count("->") > 0  # plan nodes were saved

    wp = reports["write_path"]["results"]
    assert set(wp["checks"].values()) == {"equal"}
    assert set(wp["bulk"]) == {"bulk_insert", "bulk_update", "bulk_delete"}

    daemon = reports["daemon"]["results"]
    assert daemon["latency"]["not_visible_within_30s"] == 0
    assert daemon["latency"]["latency_ms"]["n"] == daemon["latency"]["changes"]
    assert daemon["tick"]["stream_tables"] == 20

    peers = reports["peers"]["results"]
    if "skipped" not in peers["pg_ivm"]:
        assert "q01" in peers["pg_ivm"]["supported"]
        assert set(peers["pg_ivm"]["rows_differing_from_query"].values()) == {0}
    if "skipped" not in peers["dbt"]:
        wrong = peers["dbt"]["rows_differing_from_query"]
        assert {m: w["stream_table"] for m, w in wrong.items()} == {
            "inc_events": 0,
            "inc_by_customer": 0,
        }
        # the incremental model never sees the deleted rows nor the cancelled ones leave
        batch = peers["dbt"]["change_batch"]
        assert wrong["inc_events"]["dbt"] == batch["deleted"] + batch["cancelled"]

    text = docs.read_text()
    assert hand_written in text
    for section in report.SECTIONS:
        assert text.count(f"<!-- BEGIN GENERATED: {section} -->") == 1, section
    assert "#### Scale factor 0.002" in text
    assert "write amplification of trigger capture" in text
