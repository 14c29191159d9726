"""The settings registry and its generated documentation."""

from pathlib import Path

import pytest

from dbt_pgtrickle.errors import ConfigError
from dbt_pgtrickle.settings import REGISTRY, render_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIGURATION.md"


def test_configuration_doc_matches_registry() -> None:
    assert DOC.read_text() == render_markdown(), (
        "docs/CONFIGURATION.md is out of date: run "
        "`python -m dbt_pgtrickle.settings > docs/CONFIGURATION.md`"
    )


def test_every_setting_is_documented_and_defaults_parse() -> None:
    for setting in REGISTRY.values():
        assert setting.doc.strip()
        assert setting.parse(setting.default) == setting.default
        assert f"`{setting.name}`" in render_markdown()


def test_bad_values_are_rejected_with_the_setting_name() -> None:
    with pytest.raises(ConfigError, match="auto_full_threshold"):
        REGISTRY["auto_full_threshold"].parse("lots")
    with pytest.raises(ConfigError, match="above the maximum"):
        REGISTRY["auto_full_threshold"].parse("1.5")
    with pytest.raises(ConfigError, match="below the minimum"):
        REGISTRY["refresh_lock_timeout_ms"].parse(-1)
