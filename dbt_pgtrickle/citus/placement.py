"""Where a table lives on a Citus cluster, and which nodes the cluster has.

Every function here costs one catalog probe and answers "local" (or nothing) when the citus
extension is not installed in the database, so plain PostgreSQL pays nothing and sees no error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..errors import ConfigError

LOCAL = "local"
REFERENCE = "reference"
DISTRIBUTED = "distributed"
PLACEMENTS = (LOCAL, REFERENCE, DISTRIBUTED)


@dataclass(frozen=True)
class Placement:
    """``kind`` is local, reference or distributed; a distributed table has its distribution
    column (``None`` for a single-shard table of schema-based sharding) and co-location group."""

    kind: str
    distribution_column: str | None = None
    colocation_id: int | None = None

    @property
    def is_citus(self) -> bool:
        return self.kind != LOCAL


@dataclass(frozen=True)
class WorkerNode:
    """A primary node from ``pg_dist_node``; ``node_id`` survives a change of host or port."""

    node_id: int
    group_id: int
    name: str
    port: int

    @property
    def key(self) -> str:
        return str(self.node_id)


@dataclass(frozen=True)
class ShardPlacement:
    shard_id: int
    node: WorkerNode


def is_citus_loaded(conn: psycopg.Connection[Any]) -> bool:
    """Whether the citus extension is installed in this database."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
    found = row.fetchone()
    return bool(found and found[0])


def placement(conn: psycopg.Connection[Any], schema: str, table: str) -> Placement:
    """The placement of ``schema.table``: local (also without Citus), reference or distributed.

    A Citus local table (a coordinator table added to the metadata) is rejected: its changes go
    through neither worker slots nor ordinary triggers in a way we can rely on.
    """
    if not is_citus_loaded(conn):
        return Placement(LOCAL)
    row = conn.execute(
        "SELECT p.partmethod::text, p.repmodel::text, p.colocationid, "
        "CASE WHEN p.partkey IS NOT NULL THEN column_to_column_name(p.logicalrelid, p.partkey) END "
        "FROM pg_dist_partition p WHERE p.logicalrelid = to_regclass(%s)",
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchone()
    if row is None:
        return Placement(LOCAL)
    method, repmodel, colocation, column = row
    if method == "h":
        return Placement(DISTRIBUTED, column, colocation)
    if method == "n" and repmodel == "t":
        return Placement(REFERENCE, None, colocation)
    if method == "n" and colocation:
        return Placement(DISTRIBUTED, None, colocation)  # single-shard (schema-based sharding)
    raise ConfigError(
        f"{schema}.{table} is a Citus local table, which stream tables cannot read; undo it "
        "with undistribute_table() or make it a reference or distributed table"
    )


def worker_nodes(
    conn: psycopg.Connection[Any], *, include_coordinator: bool = False
) -> list[WorkerNode]:
    """Active primary nodes, by node id (the coordinator, group 0, only when asked for)."""
    if not is_citus_loaded(conn):
        return []
    rows = conn.execute(
        "SELECT nodeid, groupid, nodename, nodeport FROM pg_dist_node "
        "WHERE isactive AND noderole = 'primary' AND (groupid <> 0 OR %s) ORDER BY nodeid",
        (include_coordinator,),
    ).fetchall()
    return [WorkerNode(*r) for r in rows]


def coordinator_node(conn: psycopg.Connection[Any]) -> WorkerNode | None:
    """The coordinator's row in ``pg_dist_node`` (group 0), if it was added to the metadata."""
    nodes = [n for n in worker_nodes(conn, include_coordinator=True) if n.group_id == 0]
    return nodes[0] if nodes else None


def shard_placements(
    conn: psycopg.Connection[Any], schema: str, table: str
) -> list[ShardPlacement]:
    """Every active placement of every shard of ``schema.table`` (none for a local table)."""
    if not is_citus_loaded(conn):
        return []
    rows = conn.execute(
        "SELECT s.shardid, n.nodeid, n.groupid, n.nodename, n.nodeport "
        "FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid) "
        "JOIN pg_dist_node n ON n.groupid = p.groupid "
        "WHERE s.logicalrelid = to_regclass(%s) AND p.shardstate = 1 "
        "AND n.noderole = 'primary' ORDER BY s.shardid, n.nodeid",
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchall()
    return [ShardPlacement(r[0], WorkerNode(r[1], r[2], r[3], r[4])) for r in rows]


def estimated_rows(conn: psycopg.Connection[Any], schema: str, table: str) -> float:
    """Row estimate of a distributed or reference table from its shards' statistics
    (``pg_class.reltuples`` on the nodes; a shard never analysed counts 0)."""
    row = conn.execute(
        "SELECT coalesce(sum(greatest(nullif(result, '')::float8, 0)), 0) FROM "
        "run_command_on_shards(%s, $$SELECT reltuples FROM pg_class WHERE oid = '%%s'::regclass$$) "
        "WHERE success",
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchone()
    return float(row[0]) if row else 0.0
