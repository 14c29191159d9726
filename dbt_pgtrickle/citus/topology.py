"""Topology changes of a distributed source, decided without a database (pure functions).

For each captured Citus source the catalog records the nodes it has a replication slot on
(``pgt_worker_slots``, keyed by ``pg_dist_node.nodeid``) and which node holds each of its shards
(``pgt_change_tracking.shard_nodes``). Each poll compares that with the live metadata:

* a node without a slot gets one; if it already holds shards of the source and the source was
  being captured before, writes to those shards before the slot existed were not captured, so
  every stream table reading the source is recomputed (``reinitialise``);
* a node that left gets its slot drained and dropped (the caller recomputes when it cannot drain
  it);
* a node whose host or port changed keeps its slot (same node id) under the new address;
* a shard that moved between nodes that both have slots needs nothing: Citus tags the rows the
  move copies with a replication origin, which capture skips, and later writes are read from the
  new node's slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeAddress:
    name: str
    port: int


@dataclass
class TopologyChange:
    create: list[int] = field(default_factory=list)
    drop: list[int] = field(default_factory=list)
    readdress: dict[int, NodeAddress] = field(default_factory=dict)
    moved_shards: dict[int, tuple[int | None, int]] = field(default_factory=dict)
    reinitialise: str | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.create or self.drop or self.readdress or self.moved_shards or self.reinitialise
        )


def diff(
    recorded_nodes: Mapping[int, NodeAddress],
    live_nodes: Mapping[int, NodeAddress],
    recorded_shards: Mapping[int, int],
    live_shards: Mapping[int, int],
) -> TopologyChange:
    """What to do for one source. ``*_nodes``: node id → address of the nodes it needs a slot
    on; ``*_shards``: shard id → node id holding it (for a reference table: nothing)."""
    change = TopologyChange()
    first_use = not recorded_nodes
    for node_id in sorted(live_nodes):
        if node_id not in recorded_nodes:
            change.create.append(node_id)
        elif recorded_nodes[node_id] != live_nodes[node_id]:
            change.readdress[node_id] = live_nodes[node_id]
    change.drop = sorted(set(recorded_nodes) - set(live_nodes))
    for shard, node in sorted(live_shards.items()):
        before = recorded_shards.get(shard)
        if before != node and recorded_shards:
            change.moved_shards[shard] = (before, node)
    if not first_use:
        uncaptured = sorted({node for node in live_shards.values() if node in change.create})
        if uncaptured:
            change.reinitialise = (
                f"node(s) {', '.join(map(str, uncaptured))} hold shards but had no replication "
                "slot yet (added and rebalanced before the scheduler saw them); recomputed"
            )
    return change
