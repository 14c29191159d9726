"""Schedules, due times, retry backoff and the dependency graph (no server)."""

from __future__ import annotations

import datetime as dt

import pytest

from dbt_pgtrickle.errors import ConfigError
from dbt_pgtrickle.scheduler.daemon import backoff_seconds
from dbt_pgtrickle.scheduler.dag import Graph, topological_order
from dbt_pgtrickle.scheduler.schedule import (
    CALCULATED,
    CRON,
    INTERVAL,
    ON_CHANGE,
    budget_due,
    cron_next,
    parse,
    parse_duration,
)

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 3, 10, 12, 7, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1d", 86400), ("2h15s", 7215)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    schedule = parse(text)
    assert schedule.kind == INTERVAL
    assert schedule.next_due(T0) == T0 + dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "m5", "1.5s", "5 m", "-1s", "1y"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_interval_due() -> None:
    schedule = parse("1m")
    assert not schedule.is_due(T0, T0 + dt.timedelta(seconds=59))
    assert schedule.is_due(T0, T0 + dt.timedelta(seconds=60))
    assert schedule.is_due(None, T0)  # never refreshed: due at once


def test_budget_counts_from_the_oldest_pending_change() -> None:
    # 10 s budget, refresh 0.5 s, tick 0.1 s: due 0.5 + 0.1 + 5% (0.5) = 1.1 s before the
    # budget of the oldest change runs out.
    assert budget_due(10.0, 100.0, 99.0, 0.5, 0.1) == pytest.approx(108.9)
    # a change long after the last refresh does not make it due earlier
    assert budget_due(10.0, 150.0, 99.0, 0.5, 0.1) == pytest.approx(158.9)
    # never refreshed: due at once
    assert budget_due(10.0, 100.0, None, 0.5, 0.1) == float("-inf")


def test_budget_keeps_half_the_budget_between_refreshes() -> None:
    # The refresh takes 8 s of the 10 s budget: the budget alone would start the next one
    # before the previous one ends (back to back under continuous writes); instead it starts
    # half the budget after the previous one is expected to end.
    assert budget_due(10.0, 100.0, 100.0, 8.0, 0.1) == pytest.approx(100.0 + 8.0 + 5.0)
    # the same when the expected refresh exceeds the budget
    assert budget_due(10.0, 100.0, 100.0, 30.0, 0.1) == pytest.approx(135.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*/5 * * * *", dt.datetime(2024, 3, 10, 12, 10, tzinfo=UTC)),
        ("0 * * * *", dt.datetime(2024, 3, 10, 13, 0, tzinfo=UTC)),
        ("15 3 * * *", dt.datetime(2024, 3, 11, 3, 15, tzinfo=UTC)),
        ("0 0 1 * *", dt.datetime(2024, 4, 1, tzinfo=UTC)),
        ("0 9 * * 1-5", dt.datetime(2024, 3, 11, 9, 0, tzinfo=UTC)),  # 10 March 2024 is a Sunday
        ("*/10 * * * * *", dt.datetime(2024, 3, 10, 12, 7, 40, tzinfo=UTC)),  # seconds first
        ("45 8 12 * * *", dt.datetime(2024, 3, 10, 12, 8, 45, tzinfo=UTC)),
        ("@hourly", dt.datetime(2024, 3, 10, 13, 0, tzinfo=UTC)),
        ("@daily", dt.datetime(2024, 3, 11, tzinfo=UTC)),
        ("@midnight", dt.datetime(2024, 3, 11, tzinfo=UTC)),
        ("@weekly", dt.datetime(2024, 3, 17, tzinfo=UTC)),
        ("@monthly", dt.datetime(2024, 4, 1, tzinfo=UTC)),
        ("@yearly", dt.datetime(2025, 1, 1, tzinfo=UTC)),
        ("@annually", dt.datetime(2025, 1, 1, tzinfo=UTC)),
    ],
)
def test_cron_next(text: str, expected: dt.datetime) -> None:
    assert cron_next(text, T0) == expected
    schedule = parse(text)
    assert schedule.kind == CRON
    assert schedule.next_due(T0) == expected
    assert not schedule.is_due(T0, expected - dt.timedelta(seconds=1))
    assert schedule.is_due(T0, expected)


def test_cron_fire_time_is_strictly_after_the_last_refresh() -> None:
    at = dt.datetime(2024, 3, 10, 12, 10, tzinfo=UTC)
    assert cron_next("*/5 * * * *", at) == dt.datetime(2024, 3, 10, 12, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    "text", ["* * * *", "* * * * * * *", "61 * * * *", "* 25 * * *", "@often", "x y z a b"]
)
def test_bad_cron(text: str) -> None:
    with pytest.raises(ConfigError):
        parse(text)


def test_on_change_and_calculated() -> None:
    assert parse(None).kind == ON_CHANGE
    assert parse(None).is_due(T0, T0)
    calculated = parse("calculated")
    assert calculated.kind == CALCULATED
    assert calculated.next_due(T0) is None
    assert not calculated.is_due(None, T0)


def test_backoff_doubles_with_jitter_and_a_cap() -> None:
    for failures, nominal in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0)]:
        for _ in range(20):
            assert 0.75 * nominal <= backoff_seconds(failures, 1000, 60000) <= 1.25 * nominal
    assert backoff_seconds(40, 1000, 60000) <= 75.0


def test_topological_order_and_cycle() -> None:
    assert topological_order({3: [1, 2], 2: [1], 1: []}) == [1, 2, 3]
    assert topological_order({5: [], 4: []}) == [4, 5]
    assert topological_order({1: [9], 2: [], 3: [2, 7]}) == [1, 2, 3]  # 7, 9: not stream tables
    assert topological_order({1: [4], 2: [], 3: [1], 4: [2]}) == [2, 4, 1, 3]
    wide = {n: [] for n in range(5000)} | {5000 + n: [n, 4999 - n] for n in range(5000)}
    order = topological_order(wide)
    at = {n: i for i, n in enumerate(order)}
    assert len(order) == 10000 and all(at[u] < at[n] for n, ups in wide.items() for u in ups)
    with pytest.raises(ConfigError, match=r"\[1, 2, 4\] depend on each other in a cycle"):
        topological_order({1: [2], 2: [1], 3: [], 4: [1]})


def test_diamond_groups() -> None:
    a, x = ("public", "a"), ("public", "x")
    # B and C read A; D reads B and C; E reads D and X; F reads only B.
    graph = Graph(
        {1: [], 2: [], 3: [1, 2], 4: [3], 5: [1]},
        {1: [a], 2: [a], 4: [x]},
    )
    group = graph.diamond(3)
    assert group is not None
    assert group.members == (1, 2, 3)
    assert group.shared_sources == (a,)
    assert graph.diamond(4) is not None  # E reaches A twice, through D
    assert graph.diamond(4).members == (1, 2, 3, 4)  # type: ignore[union-attr]
    assert graph.diamond(5) is None
    assert graph.diamond(1) is None
    assert graph.descendants(1) == {3, 4, 5}


def test_direct_and_indirect_read_is_a_diamond() -> None:
    a = ("public", "a")
    graph = Graph({1: [], 2: [1]}, {1: [a], 2: [a]})
    group = graph.diamond(2)
    assert group is not None and group.members == (1, 2)
