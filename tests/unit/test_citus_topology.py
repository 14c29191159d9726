"""Topology changes of a Citus source (pure: no database)."""

from __future__ import annotations

from dbt_pgtrickle.citus.topology import NodeAddress, diff

W1, W2, W3 = (
    NodeAddress("10.0.0.1", 5432),
    NodeAddress("10.0.0.2", 5432),
    NodeAddress("10.0.0.3", 5432),
)


def test_no_change() -> None:
    change = diff({1: W1, 2: W2}, {1: W1, 2: W2}, {100: 1, 101: 2}, {100: 1, 101: 2})
    assert change.empty


def test_both_empty() -> None:
    assert diff({}, {}, {}, {}).empty


def test_nothing_recorded_while_workers_live_creates_slots_without_recompute() -> None:
    change = diff({}, {1: W1, 2: W2}, {}, {100: 1, 101: 2})
    assert change.create == [1, 2]
    assert change.reinitialise is None
    assert not change.moved_shards


def test_worker_added_without_shards() -> None:
    change = diff({1: W1, 2: W2}, {1: W1, 2: W2, 3: W3}, {100: 1, 101: 2}, {100: 1, 101: 2})
    assert change.create == [3]
    assert change.drop == []
    assert change.reinitialise is None


def test_worker_added_already_holding_shards_recomputes() -> None:
    change = diff({1: W1, 2: W2}, {1: W1, 2: W2, 3: W3}, {100: 1, 101: 2}, {100: 1, 101: 3})
    assert change.create == [3]
    assert change.moved_shards == {101: (2, 3)}
    assert change.reinitialise is not None and "3" in change.reinitialise


def test_worker_removed() -> None:
    change = diff({1: W1, 2: W2}, {1: W1}, {100: 1, 101: 2}, {100: 1, 101: 1})
    assert change.drop == [2]
    assert change.create == []
    assert change.moved_shards == {101: (2, 1)}
    assert change.reinitialise is None  # decided by the caller: only if it cannot drain node 2


def test_port_change_keeps_the_slot() -> None:
    moved = NodeAddress("10.0.0.2", 6432)
    change = diff({1: W1, 2: W2}, {1: W1, 2: moved}, {100: 1}, {100: 1})
    assert change.readdress == {2: moved}
    assert change.create == [] and change.drop == []
    assert change.reinitialise is None


def test_shard_moved_between_existing_workers() -> None:
    change = diff({1: W1, 2: W2}, {1: W1, 2: W2}, {100: 1, 101: 2}, {100: 2, 101: 2})
    assert change.moved_shards == {100: (1, 2)}
    assert change.create == [] and change.drop == []
    assert change.reinitialise is None
