"""Parsing of stream-table names and the retry classification of errors."""

import pytest

from dbt_pgtrickle.catalog.records import split_name
from dbt_pgtrickle.errors import ConfigError, is_retryable


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("orders_by_day", ("public", "orders_by_day")),
        ("Analytics.Orders", ("analytics", "orders")),
        ('"Sales Data"."Sum ""Q"""', ("Sales Data", 'Sum "Q"')),
        ('"a.b".c', ("a.b", "c")),
    ],
)
def test_split_name(text: str, expected: tuple[str, str]) -> None:
    assert split_name(text) == expected


@pytest.mark.parametrize("text", ["a.b.c", ".x", "x."])
def test_split_name_rejects_bad_names(text: str) -> None:
    with pytest.raises(ConfigError):
        split_name(text)


@pytest.mark.parametrize(
    ("sqlstate", "retry"),
    [
        ("40001", True),  # serialization_failure
        ("40P01", True),  # deadlock_detected
        ("55P03", True),  # lock_not_available
        ("08006", True),  # connection_failure
        ("57P01", True),  # admin_shutdown
        ("57014", False),  # query_canceled (statement_timeout): a real failure
        ("42601", False),  # syntax_error
        ("42P01", False),  # undefined_table
        ("42501", False),  # insufficient_privilege
        ("22012", False),  # division_by_zero
        (None, False),
    ],
)
def test_retry_is_decided_by_sqlstate_class(sqlstate: str | None, retry: bool) -> None:
    assert is_retryable(sqlstate) is retry
