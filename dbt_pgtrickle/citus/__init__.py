"""Citus support: placement detection, worker-slot change capture, distributed stream tables.

* :mod:`.placement` — ``is_citus_loaded``, ``placement``, ``worker_nodes``, ``shard_placements``;
* :mod:`.pgoutput` — the decoder of the workers' logical replication messages;
* :mod:`.capture` — slots, polling and import of distributed and reference sources;
* :mod:`.topology` — what a change of nodes or shards means for a source (pure);
* :mod:`.tables` — placement of stream tables and their apply path.

All of it is inert without the citus extension: one catalog probe, no error.
"""

from .placement import (
    DISTRIBUTED,
    LOCAL,
    REFERENCE,
    Placement,
    ShardPlacement,
    WorkerNode,
    is_citus_loaded,
    placement,
    shard_placements,
    worker_nodes,
)

__all__ = [
    "DISTRIBUTED",
    "LOCAL",
    "REFERENCE",
    "Placement",
    "ShardPlacement",
    "WorkerNode",
    "is_citus_loaded",
    "placement",
    "shard_placements",
    "worker_nodes",
]
