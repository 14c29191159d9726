"""Change capture of Citus sources: per-node logical replication slots, polled directly.

A distributed or reference source gets one ``pgoutput`` slot named from its stable name
(:func:`~dbt_pgtrickle.naming.replication_slot`) on each node it needs: every active primary
worker for a distributed table (so a shard moved or rebalanced onto a worker is already watched),
the coordinator for a reference table (Citus's change-data-capture decoder publishes reference
table changes from the coordinator only). Writes on the workers pay no trigger.

One poll of a source on a node (:func:`poll_source`), under a session advisory lock on the
coordinator so pollers of one source take turns:

1. peek (never consume) the slot up to the node's current WAL position, in bounded batches that
   end at transaction boundaries;
2. in one coordinator transaction: keep the transactions that end after the position recorded
   for the node (``pgt_change_tracking.frontier_per_node``), map their relations back to the
   source (the decoder reports the distributed table; a shard name ``t_<shardid>`` is mapped
   through ``pg_dist_shard``), ``COPY`` them into the source's change buffer, and record the new
   position;
3. after that commit, advance the slot on the node.

The nodes of a source are polled concurrently (``citus_poll_concurrency``), one thread and one
connection pair per node, so each node keeps this order on its own.

A crash before 2 commits leaves the changes in the slot; a crash between 2 and 3 leaves them in
the slot too, but their position is recorded, so the next poll skips them. Nothing is lost or
imported twice. Imported rows carry the importing coordinator transaction's ``xid8``, so the
refresh engine's frontier logic applies unchanged.

Requires ``citus.enable_change_data_capture = on`` on every node: Citus then tags the rows its
own shard moves and splits copy with a replication origin (skipped here) and names the
distributed table instead of the shard. UPDATE and DELETE need the full old row, so capture sets
``REPLICA IDENTITY FULL`` on the source.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .. import settings as _settings
from ..errors import ConfigError, PgTrickleError, RefreshError, SourceError
from ..naming import CHANGES_SCHEMA, buffer_table, replication_slot
from . import pgoutput
from .placement import (
    DISTRIBUTED,
    REFERENCE,
    WorkerNode,
    coordinator_node,
    shard_placements,
    worker_nodes,
)
from .topology import NodeAddress, TopologyChange, diff

log = logging.getLogger("dbt_pgtrickle.citus")

#: NOTIFY channel of operational alerts (a worker flagged after repeated failed polls).
ALERT_CHANNEL = "pgtrickle_alert"
CDC_MODE = "citus_slot"
CONNECT_TIMEOUT_S = 5
_SHARD_SUFFIX = re.compile(r"^(.*)_(\d+)$")


class WorkerUnavailable(PgTrickleError):
    """A node could not be polled (its SQLSTATE says whether retrying may help)."""


@dataclass
class CitusSource:
    """A captured Citus source as the catalog records it."""

    stable: str
    schema: str
    name: str
    placement: str
    columns: list[str]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class PollReport:
    imported: int = 0
    transactions: int = 0
    failed_nodes: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    #: Stable names of the sources that got change rows (their readers are now pending).
    changed: set[str] = field(default_factory=set)


# -- connections ---------------------------------------------------------------------------------


def node_dsn(conn: psycopg.Connection[Any], node: WorkerNode | NodeAddress) -> str:
    """The coordinator connection's parameters, pointed at ``node``."""
    params = dict(conn.info.get_parameters())
    params.update(host=node.name, port=str(node.port), connect_timeout=str(CONNECT_TIMEOUT_S))
    params.pop("hostaddr", None)
    if conn.info.password:
        params["password"] = conn.info.password
    params["dbname"] = conn.info.dbname
    return make_conninfo(**params)


@contextmanager
def _node(
    conn: psycopg.Connection[Any], node: WorkerNode | NodeAddress
) -> Iterator[psycopg.Connection[Any]]:
    try:
        wconn = psycopg.connect(node_dsn(conn, node), autocommit=True)
    except psycopg.OperationalError as exc:
        raise WorkerUnavailable(
            f"cannot connect to Citus node {node.name}:{node.port}: {str(exc).strip()}",
            sqlstate=exc.sqlstate or "08006",
        ) from None
    try:
        yield wconn
    finally:
        wconn.close()


def coordinator_twin(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """A second autocommit connection to the coordinator (the caller's may be inside a
    transaction whose snapshot must not see the import yet)."""
    params = dict(conn.info.get_parameters())
    if conn.info.password:
        params["password"] = conn.info.password
    return psycopg.connect(make_conninfo(**params), autocommit=True)


# -- catalog -------------------------------------------------------------------------------------


def citus_sources(conn: psycopg.Connection[Any], pgt_id: int | None = None) -> list[CitusSource]:
    """The slot-captured sources (of one stream table, or all). One catalog query."""
    rows = conn.execute(
        "SELECT t.source_stable_name, t.source_schema, t.source_name, t.source_placement, "
        "t.captured_columns FROM pgtrickle.pgt_change_tracking t WHERE t.cdc_mode = %s "
        "AND (%s::bigint IS NULL OR t.source_stable_name IN (SELECT source_stable_name "
        "FROM pgtrickle.pgt_dependencies WHERE pgt_id = %s)) ORDER BY 2, 3",
        (CDC_MODE, pgt_id, pgt_id),
    ).fetchall()
    return [CitusSource(r[0], r[1], r[2], r[3], [c["name"] for c in r[4]]) for r in rows]


def _needed_nodes(
    conn: psycopg.Connection[Any], src_schema: str, src_name: str, kind: str
) -> dict[int, WorkerNode]:
    if kind == REFERENCE:
        coordinator = coordinator_node(conn)
        if coordinator is None:
            raise ConfigError(
                f"reference table {src_schema}.{src_name} can only be captured when the "
                "coordinator is in the Citus metadata: SELECT citus_set_coordinator_host(...)"
            )
        return {coordinator.node_id: coordinator}
    nodes = {n.node_id: n for n in worker_nodes(conn)}
    for p in shard_placements(conn, src_schema, src_name):
        nodes.setdefault(p.node.node_id, p.node)
    return nodes


def _node_tables(
    conn: psycopg.Connection[Any], schema: str, name: str, node_id: int
) -> list[tuple[str, str]]:
    """The source and its shards placed on ``node_id`` (names as on that node)."""
    rows = conn.execute(
        "SELECT parse_ident(shard_name(s.logicalrelid, s.shardid)) FROM pg_dist_shard s "
        "JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n ON n.groupid = p.groupid "
        "WHERE s.logicalrelid = to_regclass(%s) AND n.nodeid = %s",
        (sql.Identifier(schema, name).as_string(conn), node_id),
    ).fetchall()
    shards = [(r[0][0], r[0][1]) if len(r[0]) == 2 else (schema, r[0][0]) for r in rows]
    return [(schema, name), *shards]


def _live_shards(conn: psycopg.Connection[Any], src: CitusSource) -> dict[int, int]:
    if src.placement != DISTRIBUTED:
        return {}
    return {p.shard_id: p.node.node_id for p in shard_placements(conn, src.schema, src.name)}


# -- slots -------------------------------------------------------------------------------------


def _check_cdc(wconn: psycopg.Connection[Any], where: str) -> None:
    row = wconn.execute(
        "SELECT current_setting('citus.enable_change_data_capture', true)"
    ).fetchone()
    if not row or row[0] != "on":
        raise ConfigError(
            f"citus.enable_change_data_capture is not on at {where}; set it on every node "
            "(postgresql.conf, then reload) so capture can tell shard moves from writes"
        )


def ensure_slot(
    wconn: psycopg.Connection[Any], stable: str, where: str, tables: Sequence[tuple[str, str]]
) -> str | None:
    """Create ``stable``'s publication (``tables``: the source and its shards on this node) and
    slot on a node; the slot's start position, or ``None`` when it existed already. Slot
    creation waits for the node's running transactions, so every transaction committed before
    it is visible to a query started after it."""
    _check_cdc(wconn, where)
    publish(wconn, stable, tables)
    slot = replication_slot(stable)
    if wconn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone():
        return None
    row = wconn.execute(
        "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,)
    ).fetchone()
    assert row is not None
    return str(row[0])


def publish(wconn: psycopg.Connection[Any], stable: str, tables: Sequence[tuple[str, str]]) -> None:
    """Make ``stable``'s publication on a node cover ``tables``. Citus's decoder reports row
    changes of a shard under the distributed table, so that table is published; a TRUNCATE is
    reported per shard, so the node's shards are published too. Only these tables: a
    publication makes PostgreSQL demand a replica identity for UPDATE and DELETE."""
    pub = sql.Identifier(replication_slot(stable))
    with wconn.transaction():
        wconn.execute("SET LOCAL citus.enable_ddl_propagation = off")
        wconn.execute("SET LOCAL citus.override_table_visibility = off")
        exists = wconn.execute(
            "SELECT 1 FROM pg_publication WHERE pubname = %s", (replication_slot(stable),)
        ).fetchone()
        present = {
            (r[0], r[1])
            for r in wconn.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                (replication_slot(stable),),
            ).fetchall()
        }
        wanted = [
            t
            for t in tables
            if t not in present
            and wconn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(*t).as_string(wconn),)
            ).fetchone()[0]  # type: ignore[index]
        ]
        names = sql.SQL(", ").join(sql.Identifier(*t) for t in wanted)
        if not exists:
            wconn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(pub, names))
        elif wanted:
            wconn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(pub, names))


def drop_slot(wconn: psycopg.Connection[Any], stable: str) -> bool:
    """Drop ``stable``'s slot and publication on a node; whether the slot existed."""
    row = wconn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        "WHERE slot_name = %s AND database = current_database()",
        (replication_slot(stable),),
    ).fetchone()
    with wconn.transaction():
        wconn.execute("SET LOCAL citus.enable_ddl_propagation = off")
        wconn.execute(
            sql.SQL("DROP PUBLICATION IF EXISTS {}").format(
                sql.Identifier(replication_slot(stable))
            )
        )
    return row is not None


def publish_all(
    conn: psycopg.Connection[Any], schema: str, name: str, kind: str, stable: str
) -> None:
    """Create the source's publication on every node it needs (before the creating transaction
    locks the source on the nodes: the publication DDL needs a lock that conflicts)."""
    for node_id, node in _needed_nodes(conn, schema, name, kind).items():
        with _node(conn, node) as wconn:
            _check_cdc(wconn, f"{node.name}:{node.port}")
            publish(wconn, stable, _node_tables(conn, schema, name, node_id))


def create_slots(
    conn: psycopg.Connection[Any], schema: str, name: str, kind: str, stable: str
) -> dict[int, tuple[WorkerNode, str]]:
    """Slots for a newly captured source on every node it needs: node id → (node, start lsn)."""
    created: dict[int, tuple[WorkerNode, str]] = {}
    try:
        for node_id, node in _needed_nodes(conn, schema, name, kind).items():
            tables = _node_tables(conn, schema, name, node_id)
            with _node(conn, node) as wconn:
                lsn = ensure_slot(wconn, stable, f"{node.name}:{node.port}", tables)
                if lsn is None:  # left over from an earlier capture: start afresh
                    drop_slot(wconn, stable)
                    lsn = ensure_slot(wconn, stable, f"{node.name}:{node.port}", tables)
                assert lsn is not None
                created[node_id] = (node, lsn)
    except BaseException:
        drop_slots(conn, stable, [n for n, _ in created.values()])
        raise
    return created


def drop_slots(
    conn: psycopg.Connection[Any], stable: str, nodes: Sequence[WorkerNode | NodeAddress]
) -> list[str]:
    """Drop ``stable``'s slot on each node it can reach; returns the nodes it could not."""
    missed = []
    for node in nodes:
        try:
            with _node(conn, node) as wconn:
                drop_slot(wconn, stable)
        except (WorkerUnavailable, psycopg.Error):
            missed.append(f"{node.name}:{node.port}")
    return missed


def register(
    conn: psycopg.Connection[Any],
    stable: str,
    kind: str,
    distribution_column: str | None,
    slots: dict[int, tuple[WorkerNode, str]],
    shards: dict[int, int],
) -> None:
    """Record a new slot-captured source (its tracking row exists already): placement, start
    positions per node, shard map, one ``pgt_worker_slots`` row per node."""
    frontier = {str(node_id): lsn for node_id, (_, lsn) in slots.items()}
    conn.execute(
        "UPDATE pgtrickle.pgt_change_tracking SET cdc_mode = %s, source_placement = %s, "
        "distribution_column = %s, frontier_per_node = %s, shard_nodes = %s "
        "WHERE source_stable_name = %s",
        (
            CDC_MODE,
            kind,
            distribution_column,
            _json(frontier),
            _json({str(k): v for k, v in shards.items()}),
            stable,
        ),
    )
    for node, lsn in slots.values():
        _record_slot(conn, stable, node, lsn)


def _record_slot(conn: psycopg.Connection[Any], stable: str, node: WorkerNode, lsn: str) -> None:
    conn.execute(
        "INSERT INTO pgtrickle.pgt_worker_slots (node_name, node_port, slot_name, "
        "source_stable_name, confirmed_lsn, node_id, created_lsn) VALUES (%s, %s, %s, %s, "
        "%s::pg_lsn, %s, %s::pg_lsn) ON CONFLICT (node_name, node_port, slot_name) DO UPDATE SET "
        "confirmed_lsn = EXCLUDED.confirmed_lsn, node_id = EXCLUDED.node_id, "
        "created_lsn = EXCLUDED.created_lsn, created_at = now(), consecutive_failures = 0, "
        "last_error = NULL, flagged_at = NULL",
        (node.name, node.port, replication_slot(stable), stable, lsn, node.node_id, lsn),
    )


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def release(conn: psycopg.Connection[Any], stable: str) -> list[NodeAddress]:
    """Forget a slot-captured source's slots (inside the dropping transaction); returns the
    nodes whose slot :func:`drop_slots` must drop after the commit."""
    rows = conn.execute(
        "DELETE FROM pgtrickle.pgt_worker_slots WHERE source_stable_name = %s "
        "RETURNING node_name, node_port",
        (stable,),
    ).fetchall()
    return [NodeAddress(r[0], r[1]) for r in rows]


# -- polling -------------------------------------------------------------------------------------


@contextmanager
def _source_lock(conn: psycopg.Connection[Any], stable: str) -> Iterator[None]:
    """Pollers of one source take turns (session advisory lock on the coordinator)."""
    key = f"pgtrickle_citus:{stable}"
    conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


def _recorded(
    conn: psycopg.Connection[Any], stable: str
) -> tuple[dict[int, NodeAddress], dict[int, int]]:
    rows = conn.execute(
        "SELECT node_id, node_name, node_port FROM pgtrickle.pgt_worker_slots "
        "WHERE source_stable_name = %s",
        (stable,),
    ).fetchall()
    shards = conn.execute(
        "SELECT shard_nodes FROM pgtrickle.pgt_change_tracking WHERE source_stable_name = %s",
        (stable,),
    ).fetchone()
    return (
        {int(r[0]): NodeAddress(r[1], r[2]) for r in rows if r[0] is not None},
        {int(k): int(v) for k, v in (shards[0] if shards else {}).items()},
    )


def sync_topology(conn: psycopg.Connection[Any], src: CitusSource) -> TopologyChange:
    """Bring the source's slots in line with the live metadata (see :mod:`.topology`)."""
    recorded_nodes, recorded_shards = _recorded(conn, src.stable)
    live = _needed_nodes(conn, src.schema, src.name, src.placement)
    live_shards = _live_shards(conn, src)
    change = diff(
        recorded_nodes,
        {i: NodeAddress(n.name, n.port) for i, n in live.items()},
        recorded_shards,
        live_shards,
    )
    if change.empty:
        return change
    for node_id, addr in change.readdress.items():
        conn.execute(
            "UPDATE pgtrickle.pgt_worker_slots SET node_name = %s, node_port = %s "
            "WHERE source_stable_name = %s AND node_id = %s",
            (addr.name, addr.port, src.stable, node_id),
        )
    for node_id in change.create:
        node = live[node_id]
        tables = _node_tables(conn, src.schema, src.name, node_id)
        with _node(conn, node) as wconn:
            lsn = ensure_slot(wconn, src.stable, f"{node.name}:{node.port}", tables)
            if lsn is None:
                row = wconn.execute(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                    (replication_slot(src.stable),),
                ).fetchone()
                lsn = str(row[0]) if row else "0/0"
        with conn.transaction():
            _record_slot(conn, src.stable, node, lsn)
            conn.execute(
                "UPDATE pgtrickle.pgt_change_tracking SET frontier_per_node = "
                "jsonb_set(frontier_per_node, ARRAY[%s], to_jsonb(%s::text)) "
                "WHERE source_stable_name = %s",
                (str(node_id), lsn, src.stable),
            )
    if change.moved_shards:  # TRUNCATEs of the moved shards are reported under their names
        for node_id in {new for _, new in change.moved_shards.values()} - set(change.create):
            node = live[node_id]
            with _node(conn, node) as wconn:
                publish(wconn, src.stable, _node_tables(conn, src.schema, src.name, node_id))
    for node_id in change.drop:
        addr = recorded_nodes[node_id]
        drained = True
        try:
            _poll_node(
                conn, src, node_id, addr, _settings.get_setting(conn, "citus_poll_batch_changes")
            )
        except (WorkerUnavailable, psycopg.Error):
            drained = False
        missed = drop_slots(conn, src.stable, [addr])
        with conn.transaction():
            conn.execute(
                "DELETE FROM pgtrickle.pgt_worker_slots WHERE source_stable_name = %s AND node_id = %s",
                (src.stable, node_id),
            )
            conn.execute(
                "UPDATE pgtrickle.pgt_change_tracking SET frontier_per_node = frontier_per_node - %s "
                "WHERE source_stable_name = %s",
                (str(node_id), src.stable),
            )
        if not drained and change.reinitialise is None:
            change.reinitialise = (
                f"node {addr.name}:{addr.port} left the cluster before its changes were read; "
                "recomputed"
            )
        if missed:
            log.warning(
                "could not drop slot %s on %s", replication_slot(src.stable), ", ".join(missed)
            )
    with conn.transaction():
        conn.execute(
            "UPDATE pgtrickle.pgt_change_tracking SET shard_nodes = %s WHERE source_stable_name = %s",
            (_json({str(k): v for k, v in live_shards.items()}), src.stable),
        )
        if change.reinitialise:
            conn.execute(
                "UPDATE pgtrickle.pgt_stream_tables SET needs_full = true WHERE pgt_id IN "
                "(SELECT pgt_id FROM pgtrickle.pgt_dependencies WHERE source_stable_name = %s)",
                (src.stable,),
            )
            log.warning("Citus source %s: %s", src.qualified, change.reinitialise)
    return change


def poll_source(
    conn: psycopg.Connection[Any], src: CitusSource, *, strict: bool = False, topology: bool = True
) -> PollReport:
    """Import every change of ``src`` committed on its nodes up to now. ``conn``: an autocommit
    coordinator connection outside any transaction. A node that fails is skipped and its failure
    counted (see :func:`_failed`); with ``strict`` the first failure is raised instead."""
    report = PollReport()
    batch = int(_settings.get_setting(conn, "citus_poll_batch_changes"))
    with _source_lock(conn, src.stable):
        try:
            change = sync_topology(conn, src) if topology else TopologyChange()
        except WorkerUnavailable as exc:
            if strict:
                raise
            report.failed_nodes.append(str(exc))
            change = TopologyChange()
        if change.reinitialise:
            report.reinitialised.append(src.qualified)
        recorded, _ = _recorded(conn, src.stable)
        for node_id, addr, outcome in _poll_nodes(conn, src, sorted(recorded.items()), batch):
            if not isinstance(outcome, Exception):
                report.imported += outcome[0]
                report.transactions += outcome[1]
                continue
            _failed(conn, src, node_id, addr, outcome)
            if strict:
                raise WorkerUnavailable(
                    f"Citus node {addr.name}:{addr.port} could not be polled for "
                    f"{src.qualified}: {str(outcome).strip()}",
                    sqlstate=getattr(outcome, "sqlstate", None) or "08006",
                ) from None
            report.failed_nodes.append(f"{addr.name}:{addr.port}")
    return report


_NodeOutcome = tuple[int, int] | WorkerUnavailable | psycopg.OperationalError


def _poll_nodes(
    conn: psycopg.Connection[Any],
    src: CitusSource,
    nodes: list[tuple[int, NodeAddress]],
    batch: int,
) -> list[tuple[int, NodeAddress, _NodeOutcome]]:
    """Poll ``nodes`` for ``src``, up to ``citus_poll_concurrency`` at a time: the first on
    ``conn``, each other one in a thread on a coordinator connection of its own. Every node's
    slot is read by one thread only, so its import-then-confirm order is unchanged; imports of
    different nodes take turns on the source's catalog row (see :func:`_import`), while the
    peeks and decoding of one node overlap another's import. A node that cannot be polled
    yields its exception (the caller counts it); any other error is raised once every thread
    has finished."""
    limit = int(_settings.get_setting(conn, "citus_poll_concurrency"))

    def poll(coordinator: psycopg.Connection[Any], node_id: int, addr: NodeAddress) -> _NodeOutcome:
        try:
            return _poll_node(coordinator, src, node_id, addr, batch)
        except (WorkerUnavailable, psycopg.OperationalError) as exc:
            return exc

    def poll_on_twin(node_id: int, addr: NodeAddress) -> _NodeOutcome:
        with coordinator_twin(conn) as twin:
            return poll(twin, node_id, addr)

    if limit <= 1 or len(nodes) <= 1:
        return [(node_id, addr, poll(conn, node_id, addr)) for node_id, addr in nodes]
    with ThreadPoolExecutor(max_workers=limit - 1, thread_name_prefix="pgtrickle-citus") as pool:
        futures = [pool.submit(poll_on_twin, node_id, addr) for node_id, addr in nodes[1:]]
        first = poll(conn, *nodes[0])
        rest = [f.result() for f in futures]
    return [
        (node_id, addr, out) for (node_id, addr), out in zip(nodes, [first, *rest], strict=True)
    ]


def _poll_node(
    conn: psycopg.Connection[Any], src: CitusSource, node_id: int, addr: NodeAddress, batch: int
) -> tuple[int, int]:
    slot = replication_slot(src.stable)
    imported = txns_total = 0
    shard_ids = _shard_ids(conn, src)
    with _node(conn, addr) as wconn:
        target = _flushed_target(wconn)
        while True:
            rows = wconn.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s, "
                "'proto_version', '1', 'publication_names', %s)",
                (slot, target, batch, slot),
            ).fetchall()
            if not rows:
                _advance(conn, wconn, src, node_id, addr, target)
                break
            txns = pgoutput.transactions(bytes(r[0]) for r in rows)
            if not txns:
                break
            imported += _import(conn, src, node_id, txns, shard_ids)
            txns_total += len(txns)
            _advance(conn, wconn, src, node_id, addr, pgoutput.int_to_lsn(txns[-1].end_lsn))
            if len(rows) < batch:
                break
    return imported, txns_total


def _flushed_target(wconn: psycopg.Connection[Any], timeout_s: float = 5.0) -> str:
    """The node's WAL position now, once it is flushed. Decoding reads flushed WAL only, and with
    ``synchronous_commit = off`` a commit is visible before its record is flushed: reading up to
    an unflushed position would skip such a commit (and then advance the slot past it)."""
    # The insert position: pg_current_wal_lsn() is the write position, which lags behind
    # asynchronous commits.
    target = wconn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]  # type: ignore[index]
    deadline = time.monotonic() + timeout_s
    flushed = False
    while True:
        row = wconn.execute(
            "SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn, pg_current_wal_flush_lsn()::text",
            (target,),
        ).fetchone()
        assert row is not None
        if row[0]:
            return str(target)
        if not flushed:
            # The WAL writer may hibernate for seconds; a synchronous commit of a transaction
            # with an xid flushes the WAL up to its commit record, so up to the target too.
            with wconn.transaction():
                wconn.execute("SET LOCAL synchronous_commit = on")
                wconn.execute("SELECT pg_current_xact_id()")
            flushed = True
            continue
        if time.monotonic() > deadline:
            return str(row[1])  # the rest is read by the next poll
        time.sleep(0.005)


def _advance(
    conn: psycopg.Connection[Any],
    wconn: psycopg.Connection[Any],
    src: CitusSource,
    node_id: int,
    addr: NodeAddress,
    lsn: str,
) -> None:
    """Confirm the slot up to ``lsn`` (only after the import of everything before it committed)
    and record the node as healthy."""
    wconn.execute(
        "SELECT pg_replication_slot_advance(slot_name, %s::pg_lsn) FROM pg_replication_slots "
        "WHERE slot_name = %s AND confirmed_flush_lsn < %s::pg_lsn",
        (lsn, replication_slot(src.stable), lsn),
    )
    was_flagged = conn.execute(
        "UPDATE pgtrickle.pgt_worker_slots SET confirmed_lsn = greatest(confirmed_lsn, %s::pg_lsn), "
        "last_poll_at = now(), consecutive_failures = 0, last_error = NULL, flagged_at = NULL "
        "WHERE source_stable_name = %s AND node_id = %s RETURNING "
        "(SELECT flagged_at IS NOT NULL FROM pgtrickle.pgt_worker_slots w "
        "WHERE w.source_stable_name = %s AND w.node_id = %s)",
        (lsn, src.stable, node_id, src.stable, node_id),
    ).fetchone()
    if was_flagged and was_flagged[0]:
        log.warning("Citus node %s:%s is polled again for %s", addr.name, addr.port, src.qualified)


def _failed(
    conn: psycopg.Connection[Any], src: CitusSource, node_id: int, addr: NodeAddress, exc: Exception
) -> None:
    """Count a failed poll; at ``citus_worker_retry_ticks`` in a row flag the node, log a
    WARNING and NOTIFY :data:`ALERT_CHANNEL` (once per flagging)."""
    limit = int(_settings.get_setting(conn, "citus_worker_retry_ticks"))
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    row = conn.execute(
        "UPDATE pgtrickle.pgt_worker_slots SET consecutive_failures = consecutive_failures + 1, "
        "last_error = %s, flagged_at = CASE WHEN consecutive_failures + 1 >= %s "
        "THEN coalesce(flagged_at, now()) END "
        "WHERE source_stable_name = %s AND node_id = %s "
        "RETURNING consecutive_failures, flagged_at = now()",
        (message, limit, src.stable, node_id),
    ).fetchone()
    if row is None:
        return
    failures, newly_flagged = row
    if newly_flagged:
        text = (
            f"Citus node {addr.name}:{addr.port} failed {failures} polls in a row for source "
            f"{src.qualified}: {message}"
        )
        log.warning(text)
        conn.execute(
            "SELECT pg_notify(%s, %s)",
            (
                ALERT_CHANNEL,
                _json(
                    {
                        "kind": "citus_worker",
                        "node": f"{addr.name}:{addr.port}",
                        "source": src.qualified,
                        "failures": failures,
                        "error": message,
                    }
                ),
            ),
        )


def _shard_ids(conn: psycopg.Connection[Any], src: CitusSource) -> set[int]:
    rows = conn.execute(
        "SELECT shardid FROM pg_dist_shard WHERE logicalrelid = to_regclass(%s)",
        (sql.Identifier(src.schema, src.name).as_string(conn),),
    ).fetchall()
    return {int(r[0]) for r in rows}


def _is_source(rel: pgoutput.Relation, src: CitusSource, shard_ids: set[int]) -> bool:
    if rel.schema != src.schema:
        return False
    if rel.name == src.name:
        return True
    m = _SHARD_SUFFIX.match(rel.name)
    return bool(m and int(m.group(2)) in shard_ids)


def _import(
    conn: psycopg.Connection[Any],
    src: CitusSource,
    node_id: int,
    txns: list[pgoutput.Transaction],
    shard_ids: set[int],
) -> int:
    """Copy the changes of ``txns`` the node has not imported yet into the buffer and record the
    node's new position, in one coordinator transaction. Returns change rows written."""
    cols = src.columns
    buf = sql.Identifier(CHANGES_SCHEMA, buffer_table(src.stable))
    written = 0
    with conn.transaction():
        # Durable before the caller confirms the slot: with synchronous_commit off on the
        # coordinator, a crash right after the commit could lose the import (and the recorded
        # position) while the node's slot had already moved past the changes.
        conn.execute("SET LOCAL synchronous_commit = on")
        row = conn.execute(
            "SELECT frontier_per_node ->> %s FROM pgtrickle.pgt_change_tracking "
            "WHERE source_stable_name = %s FOR UPDATE",
            (str(node_id), src.stable),
        ).fetchone()
        if row is None:
            raise SourceError(f"{src.qualified} is no longer captured")
        done = pgoutput.lsn_to_int(row[0]) if row[0] else 0
        fresh = [t for t in txns if t.end_lsn > done and t.origin is None]
        rows = [r for t in fresh for r in _buffer_rows(t, src, shard_ids, cols)]
        if rows:
            copy_sql = sql.SQL("COPY {} (__pgt_action, __pgt_w, {}) FROM STDIN").format(
                buf, sql.SQL(", ").join(sql.Identifier(c) for c in cols)
            )
            with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                for r in rows:
                    copy.write_row(r)
            written = len(rows)
        last = max(t.end_lsn for t in txns)
        if last > done:
            conn.execute(
                "UPDATE pgtrickle.pgt_change_tracking SET frontier_per_node = "
                "jsonb_set(frontier_per_node, ARRAY[%s], to_jsonb(%s::text)) "
                "WHERE source_stable_name = %s",
                (str(node_id), pgoutput.int_to_lsn(last), src.stable),
            )
        if written:
            conn.execute("SELECT pg_notify('pgtrickle_wake', %s)", (src.stable,))
    return written


def _buffer_rows(
    txn: pgoutput.Transaction, src: CitusSource, shard_ids: set[int], cols: list[str]
) -> Iterator[tuple[Any, ...]]:
    truncated = False
    for ch in txn.changes:
        if not _is_source(ch.relation, src, shard_ids):
            continue
        if ch.action == "T":
            if not truncated:
                truncated = True
                yield ("T", 0, *([None] * len(cols)))
            continue
        index = {name: i for i, name in enumerate(ch.relation.columns)}
        if ch.action in "UD" and (ch.old is None or ch.old_is_key_only):
            raise SourceError(
                f"an {'UPDATE' if ch.action == 'U' else 'DELETE'} on {src.qualified} arrived "
                "without its old row; the source needs REPLICA IDENTITY FULL "
                f"(ALTER TABLE {src.qualified} REPLICA IDENTITY FULL), then a full refresh"
            )
        if ch.old is not None and ch.action in "UD":
            yield (ch.action, -1, *_values(ch.old, None, index, cols, src))
        if ch.new is not None:
            yield (ch.action, 1, *_values(ch.new, ch.old, index, cols, src))


def _values(
    values: tuple[pgoutput.Value, ...],
    old: tuple[pgoutput.Value, ...] | None,
    index: dict[str, int],
    cols: list[str],
    src: CitusSource,
) -> list[str | None]:
    out: list[str | None] = []
    for c in cols:
        i = index.get(c)
        v: pgoutput.Value = None if i is None else values[i]
        if v is pgoutput.UNCHANGED:
            v = old[i] if old is not None and i is not None else pgoutput.UNCHANGED
            if v is pgoutput.UNCHANGED:
                raise SourceError(
                    f"an UPDATE on {src.qualified} left column {c} unchanged and TOASTed and no "
                    "old value was sent; the source needs REPLICA IDENTITY FULL"
                )
        out.append(v)  # type: ignore[arg-type]
    return out


# -- entry points for the refresh engine and the scheduler ---------------------------------------


def poll_all(conn: psycopg.Connection[Any]) -> PollReport:
    """Poll every slot-captured source (the scheduler's tick, which calls it only when its
    catalog read found one). Failed nodes are skipped and counted; the others keep flowing."""
    total = PollReport()
    for src in citus_sources(conn):
        try:
            report = poll_source(conn, src)
        except (PgTrickleError, psycopg.Error) as exc:
            log.warning("polling Citus source %s failed: %s", src.qualified, exc)
            total.failed_nodes.append(src.qualified)
            continue
        total.imported += report.imported
        if report.imported:
            total.changed.add(src.stable)
        total.transactions += report.transactions
        total.failed_nodes += report.failed_nodes
        total.reinitialised += report.reinitialised
    return total


def prepare_refresh(conn: psycopg.Connection[Any], sources: list[CitusSource]) -> None:
    """Inside a refresh transaction, before its snapshot: lock the Citus sources against
    coordinator-routed writers (SHARE mode, until the refresh commits), wait for those writers'
    two-phase commits to finish on the nodes, then import everything committed up to now from
    every node (a node that cannot be polled fails the refresh, retryably). The refresh then
    reads base tables and buffers that describe the same state."""
    with coordinator_twin(conn) as twin:
        # Topology first, before the locks: new slots and publications need the sources' locks
        # on the nodes, which the LOCK below takes there too (Citus propagates it).
        for src in sources:
            report = poll_source(twin, src, strict=True)
            if report.reinitialised:
                raise RefreshError(
                    f"Citus topology of {src.qualified} changed; its stream tables are marked "
                    "for a full refresh, retry",
                    sqlstate="40001",
                )
        # Citus sends a LOCK to the nodes first, in the refresh's transaction on each node,
        # whose REPEATABLE READ snapshot its first statement takes: before the lock on the
        # coordinator waited for the writers routed through it. A full refresh read the nodes
        # in those snapshots and missed the last writes, which the import below counted as
        # seen. So: the coordinator first (writers routed through it wait from then on), their
        # two-phase commits finished on the nodes, and only then the nodes (writers connected
        # to them, MX, wait from then on; the refresh's snapshots there see every write routed
        # through the coordinator).
        _lock_sources(conn, sources, on_coordinator_only)
        for src in sources:
            _await_prepared(twin, src)
        _lock_sources(conn, sources, lambda statement: statement)
        for src in sources:
            poll_source(twin, src, strict=True, topology=False)


def on_coordinator_only(statement: sql.Composed) -> sql.Composed:
    """``statement`` (a LOCK) run without Citus sending it to the nodes: a LOCK there would
    start the transaction's work on each node, and with it its snapshot, too early (see
    :func:`prepare_refresh`)."""
    return sql.SQL(
        "SET LOCAL citus.enable_ddl_propagation = off; {}; "
        "SET LOCAL citus.enable_ddl_propagation TO DEFAULT"
    ).format(statement)


def _lock_sources(
    conn: psycopg.Connection[Any],
    sources: list[CitusSource],
    wrap: Callable[[sql.Composed], sql.Composed],
) -> None:
    for src in sorted(sources, key=lambda s: (s.schema, s.name)):
        try:
            conn.execute(
                wrap(
                    sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
                        sql.Identifier(src.schema, src.name)
                    )
                )
            )
        except psycopg.errors.InternalError as exc:
            # Citus propagates the lock to the nodes; it reports a lost node connection
            # (e.g. a worker restarted under this session's cached connection) as XX000.
            raise WorkerUnavailable(
                f"locking {src.qualified} on the Citus nodes failed: "
                f"{exc.diag.message_primary or exc}; retry",
                sqlstate="08006",
            ) from None


def needed_nodes(
    conn: psycopg.Connection[Any], schema: str, name: str, kind: str
) -> list[WorkerNode]:
    """The nodes a source of placement ``kind`` is captured on."""
    return list(_needed_nodes(conn, schema, name, kind).values())


def catch_up(conn: psycopg.Connection[Any], stables: set[str]) -> None:
    """For a creating transaction, after it locked the sources and before its snapshot (``conn``
    is another autocommit connection): import what the already captured sources ``stables``
    hold in their slots, so the new stream table's population and its frontier agree."""
    for src in citus_sources(conn):
        if src.stable in stables:
            _await_prepared(conn, src)
            poll_source(conn, src, strict=True, topology=False)


def _await_prepared(
    conn: psycopg.Connection[Any], src: CitusSource, timeout_s: float = 10.0
) -> None:
    """Wait (bounded) until no two-phase transaction prepared before now is pending on the
    source's nodes: a coordinator commit returns before ``COMMIT PREPARED`` reaches them."""
    recorded, _ = _recorded(conn, src.stable)
    await_prepared_on(conn, list(recorded.values()), timeout_s)


def await_prepared_on(
    conn: psycopg.Connection[Any],
    nodes: Sequence[WorkerNode | NodeAddress],
    timeout_s: float = 10.0,
) -> None:
    """:func:`_await_prepared` on ``nodes`` (a node that cannot be reached is skipped)."""
    for addr in nodes:
        try:
            with _node(conn, addr) as wconn:
                deadline = time.monotonic() + timeout_s
                first = wconn.execute(
                    "SELECT coalesce(array_agg(gid), '{}') FROM pg_prepared_xacts "
                    "WHERE database = current_database()"
                ).fetchone()[0]  # type: ignore[index]
                while first and time.monotonic() < deadline:
                    time.sleep(0.01)
                    left = wconn.execute(
                        "SELECT count(*) FROM pg_prepared_xacts WHERE gid = ANY(%s)", (first,)
                    ).fetchone()[0]  # type: ignore[index]
                    if not left:
                        break
        except WorkerUnavailable:
            continue  # poll_source reports it
