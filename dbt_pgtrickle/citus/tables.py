"""Stream tables on Citus: where their sources and their storage live, and how deltas apply.

Placement of a stream table (option ``placement``):

* ``local`` — an ordinary table on the coordinator (the only choice without Citus);
* ``reference`` — a Citus reference table (a copy on every node);
* ``distributed`` — a Citus distributed table on ``distribution_column`` (default
  ``__pgt_row_id``, the row id, which spreads rows evenly);
* ``auto`` (default) — local when no source is distributed; else reference when the distributed
  sources hold fewer rows than ``citus_reference_row_threshold`` (estimated from their shards'
  statistics), distributed otherwise.

A reference or distributed stream table must be keyed (its rows identified by a row id), or
recompute fully: the multiset, window and TopK strategies address rows by ``ctid``, which means
nothing across shards. Deltas are applied with ``DELETE`` and ``INSERT … ON CONFLICT`` instead
of the local keyed apply by ctid (:func:`apply_keyed_delta`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .. import settings as _settings
from ..catalog import records
from ..dvm import compiler
from ..errors import ConfigError
from . import capture
from .placement import (
    DISTRIBUTED,
    LOCAL,
    PLACEMENTS,
    REFERENCE,
    Placement,
    estimated_rows,
    is_citus_loaded,
    placement,
    shard_placements,
)

ROW_ID = "__pgt_row_id"
OPTIONS = ("placement", "distribution_column")


@dataclass
class CitusPlan:
    """The Citus side of creating one stream table."""

    placement: str = LOCAL
    distribution_column: str | None = None
    sources: dict[tuple[str, str], Placement] = field(default_factory=dict)
    new_slots: dict[str, dict[int, Any]] = field(default_factory=dict)
    uncaptured: list[tuple[str, str, str, str]] = field(default_factory=list)
    reason: str | None = None

    @property
    def citus_sources(self) -> dict[tuple[str, str], Placement]:
        return {k: p for k, p in self.sources.items() if p.is_citus}


def plan_create(
    conn: psycopg.Connection[Any], plan: compiler.DeltaPlan, options: dict[str, Any]
) -> CitusPlan:
    """Validate the Citus options of a new stream table and decide its placement. Without the
    citus extension only ``placement`` ``auto``/``local`` is accepted, and nothing is queried
    beyond one catalog probe."""
    requested = str(options.get("placement") or "auto").lower()
    column = options.get("distribution_column")
    if requested not in ("auto", *PLACEMENTS):
        raise ConfigError(
            f"placement must be one of auto, {', '.join(PLACEMENTS)}, got {options.get('placement')!r}"
        )
    loaded = is_citus_loaded(conn)
    if not loaded:
        if requested not in ("auto", LOCAL) or column:
            raise ConfigError(
                f"placement {requested!r}{' and distribution_column' if column else ''} need the "
                "citus extension in this database (CREATE EXTENSION citus); see docs/citus.md"
            )
        return CitusPlan()
    result = CitusPlan()
    for src in plan.sources:
        if src.kind in ("table", "partitioned"):
            result.sources[(src.schema, src.name)] = placement(conn, src.schema, src.name)
    distributed = [k for k, p in result.sources.items() if p.kind == DISTRIBUTED]
    if requested == "auto":
        if not distributed:
            result.placement, result.reason = LOCAL, "no distributed source"
        else:
            rows = sum(estimated_rows(conn, s, n) for s, n in distributed)
            limit = int(_settings.get_setting(conn, "citus_reference_row_threshold"))
            result.placement = REFERENCE if rows < limit else DISTRIBUTED
            result.reason = (
                f"distributed sources hold about {rows:.0f} rows, "
                f"{'below' if rows < limit else 'at or above'} citus_reference_row_threshold {limit}"
            )
    else:
        result.placement = requested
    if column and result.placement != DISTRIBUTED:
        raise ConfigError(
            f"distribution_column applies to placement 'distributed' only (placement is "
            f"{result.placement!r})"
        )
    if result.placement == LOCAL:
        return result
    if plan.stages or plan.recursive is not None or plan.counted is not None:
        raise ConfigError(
            f"placement {result.placement!r} is not supported for a query maintained with hidden "
            "backing tables (maintained subqueries, WITH RECURSIVE, set operations); use "
            "placement 'local'"
        )
    if plan.strategy not in (*compiler.KEYED_STRATEGIES, compiler.FULL_ONLY):
        raise ConfigError(
            f"placement {result.placement!r} needs a stream table whose rows have keys (a primary "
            f"key on the sources, GROUP BY or DISTINCT); this query is maintained by strategy "
            f"{plan.strategy!r}, which addresses rows physically; use placement 'local'"
        )
    if result.placement == DISTRIBUTED:
        column = str(column or ROW_ID)
        if column not in plan.storage_columns:
            raise ConfigError(
                f"distribution_column {column!r} is not a column of the stream table "
                f"(columns: {', '.join(plan.storage_columns)})"
            )
        result.distribution_column = column
    return result


def refuse_placement_change(name: str, changes: dict[str, Any]) -> None:
    """``alter_stream_table`` does not move a stream table between local, reference and
    distributed storage: the error says to drop and create it again."""
    asked = [o for o in OPTIONS if o in changes]
    if asked:
        raise ConfigError(
            f"{' and '.join(asked)} of stream table {name} cannot be changed by "
            "alter_stream_table; drop the stream table and create it again with the new "
            f"{' and '.join(asked)} (a dbt model with a changed placement is rebuilt by "
            "dbt run --full-refresh)"
        )


def refuse_query_change(
    conn: psycopg.Connection[Any], rec: records.StreamTableRecord, plan: compiler.DeltaPlan
) -> None:
    """A new query for a stream table on Citus (reference or distributed storage, or a source
    captured from worker slots, before or after) is refused: the in-place rebuild would build
    local storage and would not import the changes waiting in the workers' slots before its
    snapshot (they would be applied twice)."""
    why = None
    if rec.placement != LOCAL:
        why = f"is a {rec.placement} table"
    elif rec.citus_captured:
        why = "reads Citus reference or distributed tables"
    elif is_citus_loaded(conn):
        cited = [
            f"{src.schema}.{src.name}"
            for src in plan.sources
            if src.kind in ("table", "partitioned")
            and placement(conn, src.schema, src.name).is_citus
        ]
        if cited:
            why = f"would read Citus tables ({', '.join(cited)})"
    if why:
        raise ConfigError(
            f"the query of stream table {rec.qualified} cannot be altered in place: it {why}; "
            "drop the stream table and create it again with the new query (a dbt model on "
            "Citus is rebuilt by dbt run --full-refresh)"
        )


def ensure_replica_identity(conn: psycopg.Connection[Any], cplan: CitusPlan) -> list[str]:
    """Set ``REPLICA IDENTITY FULL`` on Citus sources that lack it (UPDATE/DELETE must carry the
    old row); its own statement, before the creating transaction. Returns the tables changed."""
    changed = []
    for (schema, name), _ in sorted(cplan.citus_sources.items()):
        row = conn.execute(
            "SELECT relreplident::text FROM pg_class WHERE oid = to_regclass(%s)",
            (sql.Identifier(schema, name).as_string(conn),),
        ).fetchone()
        if row and row[0] != "f":
            conn.execute(
                sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(sql.Identifier(schema, name))
            )
            changed.append(f"{schema}.{name}")
    if changed:
        notice(
            conn,
            f"set REPLICA IDENTITY FULL on {', '.join(changed)}: change capture from the Citus "
            "workers needs the whole old row of every UPDATE and DELETE",
        )
    return changed


def notice(conn: psycopg.Connection[Any], message: str) -> None:
    """Send ``message`` to the client as a NOTICE."""
    body = sql.SQL("BEGIN RAISE NOTICE '%', {}; END").format(sql.Literal(message)).as_string(conn)
    conn.execute(sql.SQL("DO {}").format(sql.Literal(body)))


def _uncaptured(conn: psycopg.Connection[Any], cplan: CitusPlan) -> list[tuple[str, str, str, str]]:
    """(schema, name, kind, stable) of the Citus sources that are not captured yet."""
    from ..naming import stable_name

    out = []
    for (schema, name), p in sorted(cplan.citus_sources.items()):
        stable = stable_name(schema, name)
        row = conn.execute(
            "SELECT 1 FROM pgtrickle.pgt_change_tracking WHERE source_stable_name = %s", (stable,)
        ).fetchone()
        if row is None:
            out.append((schema, name, p.kind, stable))
    return out


def prepare_sources(conn: psycopg.Connection[Any], cplan: CitusPlan) -> None:
    """Before the creating transaction: ``REPLICA IDENTITY FULL``, and the publications of the
    sources not captured yet (their DDL needs locks the transaction will hold on the nodes)."""
    ensure_replica_identity(conn, cplan)
    cplan.uncaptured = _uncaptured(conn, cplan)
    for schema, name, kind, stable in cplan.uncaptured:
        capture.publish_all(conn, schema, name, kind, stable)


def create_slots(conn: psycopg.Connection[Any], cplan: CitusPlan) -> None:
    """Inside the creating transaction, after the sources are locked and before its snapshot:
    slots for the Citus sources not captured yet, and an import of what the slots of the others
    hold. All on a second connection: a query here would take the snapshot too early."""
    if not cplan.citus_sources:
        return
    from ..naming import stable_name

    with capture.coordinator_twin(conn) as twin:
        # The creating transaction locked the Citus sources on the coordinator only
        # (lock_on_coordinator_only): now their writers' two-phase commits are done on the
        # nodes, lock them there, which opens the transaction's work on each node and the
        # snapshot its population reads (see capture.prepare_refresh for why in this order).
        for (schema, name), p in sorted(cplan.citus_sources.items()):
            capture.await_prepared_on(twin, capture.needed_nodes(twin, schema, name, p.kind))
        for schema, name in sorted(cplan.citus_sources):
            conn.execute(
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
                    sql.Identifier(schema, name)
                )
            )
        for schema, name, kind, stable in cplan.uncaptured:
            cplan.new_slots[stable] = capture.create_slots(twin, schema, name, kind, stable)
        captured = {stable_name(s, n) for s, n in cplan.citus_sources} - set(cplan.new_slots)
        capture.catch_up(twin, captured)


def lock_on_coordinator_only(
    cplan: CitusPlan | None, schema: str, name: str, lock: sql.Composed
) -> sql.Composed:
    """A creating transaction's ``lock`` of a source, kept on the coordinator for a Citus
    source (:func:`create_slots` takes it on the nodes later)."""
    if cplan is not None and (schema, name) in cplan.citus_sources:
        return capture.on_coordinator_only(lock)
    return lock


def drop_new_slots(conn: psycopg.Connection[Any], cplan: CitusPlan) -> None:
    """Undo :func:`create_slots` after a failed creation."""
    for stable, slots in cplan.new_slots.items():
        capture.drop_slots(conn, stable, [node for node, _ in slots.values()])


def register_source(
    conn: psycopg.Connection[Any], cplan: CitusPlan, schema: str, name: str, stable: str
) -> None:
    """Record a Citus source's placement, slots and shard map (its buffer exists)."""
    if stable not in cplan.new_slots:
        return
    p = cplan.sources[(schema, name)]
    shards = (
        {s.shard_id: s.node.node_id for s in shard_placements(conn, schema, name)}
        if p.kind == DISTRIBUTED
        else {}
    )
    capture.register(conn, stable, p.kind, p.distribution_column, cplan.new_slots[stable], shards)


def distribute(conn: psycopg.Connection[Any], schema: str, name: str, cplan: CitusPlan) -> None:
    """Make a new, empty stream table a reference or distributed table (one statement each),
    with ``REPLICA IDENTITY FULL`` first (its shards inherit it): Citus copies shards to other
    nodes (``citus_drain_node``, rebalances, reference tables onto an added node) by logical
    replication, which it refuses for a table with neither a primary key nor a replica identity,
    and a stream table has no primary key."""
    if cplan.placement not in (REFERENCE, DISTRIBUTED):
        return
    target = sql.Identifier(schema, name)
    conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(target))
    if cplan.placement == REFERENCE:
        conn.execute("SELECT create_reference_table(%s)", (target.as_string(conn),))
    else:
        conn.execute(
            "SELECT create_distributed_table(%s, %s)",
            (target.as_string(conn), cplan.distribution_column),
        )


def record_placement(
    conn: psycopg.Connection[Any], pgt_id: int, schema: str, name: str, cplan: CitusPlan
) -> None:
    """Store the stream table's placement; for a distributed one, which source it is co-located
    with (a NOTICE when none: joins back to the sources will be cross-shard)."""
    if cplan.placement == LOCAL and not cplan.citus_sources:
        return  # the catalog defaults say local
    colocated: str | None = None
    if cplan.placement == DISTRIBUTED:
        own = placement(conn, schema, name)
        for (s, n), p in sorted(cplan.sources.items()):
            if p.kind == DISTRIBUTED and p.colocation_id == own.colocation_id:
                colocated = f"{s}.{n}"
                break
        if colocated is None:
            notice(
                conn,
                f"stream table {schema}.{name} is distributed on {cplan.distribution_column} but "
                "not co-located with any distributed source; joins between it and its sources "
                "will be cross-shard",
            )
    conn.execute(
        "UPDATE pgtrickle.pgt_stream_tables SET placement = %s, distribution_column = %s, "
        "citus_colocated_with = %s WHERE pgt_id = %s",
        (cplan.placement, cplan.distribution_column, colocated, pgt_id),
    )


def apply_keyed_delta(
    conn: psycopg.Connection[Any],
    columns: list[str],
    target: sql.Identifier,
    apply: sql.Identifier,
    distribution_column: str | None,
) -> None:
    """Apply a keyed delta (rows ``__pgt_row_id``, ``__pgt_keep``, columns) to a reference or
    distributed stream table, without ctids: delete the rows the delta removes, then insert the
    kept rows, updating those that exist. When the table is distributed on a column
    other than the row id, a row's shard may change, so every touched row is deleted and
    re-inserted instead."""
    cols = [c for c in columns if c != ROW_ID]
    by_row_id = distribution_column in (None, ROW_ID)
    conn.execute(
        sql.SQL(
            "DELETE FROM {t} WHERE __pgt_row_id IN (SELECT __pgt_row_id FROM {d}{only_gone})"
        ).format(t=target, d=apply, only_gone=sql.SQL(" WHERE NOT __pgt_keep" if by_row_id else ""))
    )
    col_list = sql.SQL(", ").join(sql.Identifier(c) for c in [ROW_ID, *cols])
    insert = sql.SQL(
        "INSERT INTO {t} AS t ({cols}) SELECT {cols} FROM {d} WHERE __pgt_keep"
    ).format(t=target, d=apply, cols=col_list)
    if by_row_id:
        # No "only if changed" filter: Citus requires immutable functions there, and the
        # text comparison the local keyed apply uses is not; a kept delta row is rewritten.
        insert = sql.SQL("{} ON CONFLICT (__pgt_row_id) DO UPDATE SET {}").format(
            insert,
            sql.SQL(", ").join(
                sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                for c in cols
            ),
        )
    conn.execute(insert)


def describe(conn: psycopg.Connection[Any], pgt_id: int) -> dict[str, Any]:
    """Placement facts of a stream table for ``explain``: its own placement, distribution column
    and co-location, and each source's placement (local sources included)."""
    row = conn.execute(
        "SELECT placement, distribution_column, citus_colocated_with "
        "FROM pgtrickle.pgt_stream_tables WHERE pgt_id = %s",
        (pgt_id,),
    ).fetchone()
    assert row is not None
    sources = conn.execute(
        "SELECT d.source_schema || '.' || d.source_name, coalesce(t.source_placement, 'local'), "
        "t.distribution_column FROM pgtrickle.pgt_dependencies d "
        "LEFT JOIN pgtrickle.pgt_change_tracking t USING (source_stable_name) "
        "WHERE d.pgt_id = %s ORDER BY 1",
        (pgt_id,),
    ).fetchall()
    return {
        "st_placement": row[0],
        "distribution_column": row[1],
        "citus_colocated_with": row[2],
        "sources": [
            {"source": s, "placement": p, "distribution_column": col} for s, p, col in sources
        ],
    }


def describe_lines(info: dict[str, Any]) -> list[str]:
    """``explain`` text lines for :func:`describe` (none when everything is local)."""
    citus_sources = [s for s in info["sources"] if s["placement"] != LOCAL]
    if info["st_placement"] == LOCAL and not citus_sources:
        return []
    head = f"  placement: {info['st_placement']}"
    if info["distribution_column"]:
        head += f" on {info['distribution_column']}"
    if info["st_placement"] == DISTRIBUTED:
        head += f", co-located with {info['citus_colocated_with'] or 'no source'}"
    lines = [head]
    for s in citus_sources:
        col = f" on {s['distribution_column']}" if s["distribution_column"] else ""
        lines.append(f"  source {s['source']}: {s['placement']}{col} (worker slots)")
    return lines
