"""The dbt side's packaging and configuration, without a server: the macro copies, the Hub
package, the adapter plugin's layout, config validation and the change diff."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from dbt_common.exceptions import CompilationError
from dbt_support import ROOT
from psycopg.conninfo import conninfo_to_dict
from sync_macros import COPIES, SOURCE, macro_files

import dbt_pgtrickle
from dbt.adapters.pgtrickle import Plugin
from dbt.adapters.pgtrickle.__version__ import version as adapter_version
from dbt.adapters.pgtrickle.connections import PgTrickleCredentials
from dbt.adapters.pgtrickle.relation_configs import (
    CatalogState,
    IndexSpec,
    StreamTableConfig,
    config_changes,
    query_hash,
)

pytestmark = pytest.mark.dbt

SEMVER = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$")


@pytest.mark.parametrize("copy", COPIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_macro_copies_are_identical_to_macros(copy: Path) -> None:
    source = macro_files(SOURCE)
    assert source, "macros/ is empty"
    copied = macro_files(copy) if copy.exists() else {}
    stale = sorted(set(source) ^ set(copied) | {k for k in source if copied.get(k) != source[k]})
    assert not stale, (
        f"{copy.relative_to(ROOT)} differs from macros/ in {stale}; "
        "run `python tests/dbt/sync_macros.py`"
    )


def test_hub_package_is_a_valid_package() -> None:
    hub = ROOT / "hub_package"
    project = yaml.safe_load((hub / "dbt_project.yml").read_text())
    assert project["name"] == "pgtrickle"
    assert project["config-version"] == 2
    assert SEMVER.match(str(project["version"]))
    assert project["version"] == dbt_pgtrickle.__version__ == adapter_version
    required = project["require-dbt-version"]
    assert isinstance(required, list) and any(r.startswith(">=") for r in required)
    assert project["macro-paths"] == ["macros"]
    assert "Apache License" in (hub / "LICENSE").read_text()
    readme = (hub / "README.md").read_text()
    assert "type: pgtrickle" in readme and "pip install 'dbt-pgtrickle[dbt]'" in readme


def test_adapter_plugin_layout() -> None:
    assert Plugin.dependencies == ["postgres"]
    assert Plugin.project_name == "dbt_pgtrickle"
    include = Path(Plugin.include_path)
    assert yaml.safe_load((include / "dbt_project.yml").read_text())["name"] == "dbt_pgtrickle"
    # dbt's namespace packages: a plugin must not ship these (they would shadow dbt-core's).
    for path in ("dbt/__init__.py", "dbt/adapters/__init__.py", "dbt/include/__init__.py"):
        assert not (ROOT / path).exists(), path
    assert (ROOT / "dbt/adapters/pgtrickle/__version__.py").exists()


def test_runtime_connection_string_keeps_role_and_search_path() -> None:
    creds = PgTrickleCredentials(
        host="127.0.0.1",
        user="app",
        port=5433,
        password="s3cret",
        database="shop",
        schema="analytics",
        role="dbt runner",
        search_path="analytics, public",
    )
    params = conninfo_to_dict(creds.runtime_conninfo())
    assert params["host"] == "127.0.0.1" and params["port"] == "5433"
    assert params["dbname"] == "shop" and params["password"] == "s3cret"
    assert params["options"] == r"-c role=dbt\ runner -c search_path=analytics,\ public"
    assert creds.type == "pgtrickle"


def test_config_defaults_and_normalisation() -> None:
    cfg = StreamTableConfig.from_model("m", {"refresh_mode": "differential", "schedule": " 5m "})
    assert cfg.refresh_mode == "DIFFERENTIAL" and cfg.schedule == "5m"
    assert cfg.initialize and cfg.cdc_mode == "auto" and cfg.placement == "auto"
    assert cfg.on_configuration_change == "apply"
    assert StreamTableConfig.from_model("m", {}).runtime_options() == {
        "schedule": None,
        "refresh_mode": "AUTO",
        "initialize": True,
        "cdc_mode": "auto",
    }
    distributed = StreamTableConfig.from_model(
        "m", {"placement": "distributed", "distribution_column": "region"}
    )
    assert distributed.runtime_options()["distribution_column"] == "region"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"refresh_mode": "SOMETIMES"},
            "invalid refresh_mode 'SOMETIMES'; allowed: AUTO, DIFFERENTIAL, FULL",
        ),
        ({"cdc_mode": "wal2json"}, "invalid cdc_mode 'wal2json'; allowed: auto, trigger"),
        ({"on_configuration_change": "ignore"}, "allowed: apply, continue, fail"),
        ({"initialize": "yes"}, "invalid initialize 'yes'; allowed: true, false"),
        ({"placement": "sharded"}, "allowed: auto, local, reference, distributed"),
        ({"placement": "distributed"}, "distribution_column"),
        ({"distribution_column": "id"}, "only with placement 'distributed'"),
        ({"indexes": [{"columns": []}]}, "indexes columns"),
        ({"indexes": [{"columns": ["a"], "kind": "btree"}]}, "indexes key 'kind'"),
        ({"indexes": [{"columns": ["a"], "type": "bitmap"}]}, "allowed: btree, hash"),
        ({"schedule": "every now and then"}, "schedule"),
    ],
)
def test_invalid_config_names_key_and_allowed_values(raw: dict[str, object], message: str) -> None:
    with pytest.raises(CompilationError) as err:
        StreamTableConfig.from_model("orders_agg", raw)
    assert "orders_agg" in str(err.value) and message in str(err.value)


def _state(**overrides: object) -> CatalogState:
    base: dict[str, object] = {
        "schema": "analytics",
        "name": "agg",
        "query_hash": query_hash("select 1 as x"),
        "original_query": "select 1 as x",
        "schedule": "1m",
        "requested_mode": "AUTO",
        "effective_mode": "DIFFERENTIAL",
        "status": "ACTIVE",
        "cdc_mode": "trigger",
        "placement": "local",
    }
    base.update(overrides)
    return CatalogState(**base)  # type: ignore[arg-type]


def test_same_compiled_sql_and_config_is_no_change() -> None:
    cfg = StreamTableConfig.from_model("m", {"schedule": "1m"})
    assert config_changes(_state(), "\n  select 1 as x ;\n", cfg) == []


def test_changes_say_how_they_are_applied() -> None:
    cfg = StreamTableConfig.from_model(
        "m",
        {
            "schedule": "5m",
            "refresh_mode": "FULL",
            "cdc_mode": "trigger",
            "indexes": [{"columns": ["x"]}],
        },
    )
    changes = {c.key: c.how for c in config_changes(_state(), "select 2 as x", cfg)}
    assert changes == {
        "query": "alter",
        "schedule": "alter",
        "refresh_mode": "alter",
        "indexes": "indexes",
    }
    placed = StreamTableConfig.from_model("m", {"schedule": "1m", "placement": "reference"})
    assert [(c.key, c.how) for c in config_changes(_state(), "select 1 as x", placed)] == [
        ("placement", "rebuild")
    ]


def test_index_names_are_stable_and_fit_postgres() -> None:
    spec = IndexSpec(("lower(name)", "id"), unique=True, type="btree")
    name = spec.name("x" * 80)
    assert name == spec.name("x" * 80) and len(name) <= 63 and "__pgt_ix_" in name
    assert name != IndexSpec(("lower(name)", "id")).name("x" * 80)


def test_query_change_on_citus_is_a_rebuild() -> None:
    """alter_stream_table refuses a new query for a stream table on Citus, so dbt rebuilds."""
    cfg = StreamTableConfig.from_model("m", {"schedule": "1m"})
    for state in (_state(placement="reference"), _state(citus_sources=True)):
        assert [(c.key, c.how) for c in config_changes(state, "select 2 as x", cfg)] == [
            ("query", "rebuild")
        ]
