"""Storage of stream tables: the table itself and the hidden tables a plan keeps beside it
(stages, TopK and set-operation backing tables, a recursive CTE's fixpoint), created at creation,
rebuilt when the query changes, created on demand by a refresh when an earlier version did not
make them, and dropped with the stream table."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from ..citus import tables as _citus
from ..dvm import compiler
from ..dvm.operators import recursive
from ..dvm.operators._sql import quote_ident
from ..naming import CHANGES_SCHEMA

#: Fill factor of tables whose rows a refresh updates by key (stream tables and stages of
#: aggregates and keyed projections): the free space lets an updated row's new version stay on
#: its page (a HOT update, no new index entries). TPC-H at SF 1, 1%, side by side with 100: the
#: keyed apply of Q20's stage 220 -> 139 ms, Q17's 324 -> 266 ms, Q13's 108 -> 97 ms (medians
#: of 3 cycles); heap-only updates of Q17's stage 45% -> 96%.
KEYED_FILLFACTOR = 85


def build_table(
    conn: psycopg.Connection[Any],
    schema: str,
    name: str,
    plan: compiler.DeltaPlan,
    populate: bool,
    cplan: _citus.CitusPlan | None = None,
) -> int:
    """Create the storage table of a plan, and of its stages and backing tables (and fill
    them); returns rows inserted into the storage table. With a Citus placement other than
    local (``cplan``) the empty storage table is distributed before it is filled."""
    _build_internal_tables(conn, plan, populate)
    return _build_storage(conn, schema, name, plan, populate, cplan)


def _build_storage(
    conn: psycopg.Connection[Any],
    schema: str,
    name: str,
    plan: compiler.DeltaPlan,
    populate: bool,
    cplan: _citus.CitusPlan | None = None,
) -> int:
    target = sql.Identifier(schema, name)
    # Keyed rows are updated in place by every refresh that touches them: room on each page
    # lets the new version stay there (a HOT update: no new index entries).
    fill = (
        sql.SQL(" WITH (fillfactor = {})").format(sql.Literal(KEYED_FILLFACTOR))
        if plan.strategy in compiler.KEYED_STRATEGIES and cplan is None
        else sql.SQL("")
    )
    conn.execute(
        sql.SQL("CREATE TABLE {}{} AS {} WITH NO DATA").format(target, fill, sql.SQL(plan.full_sql))
    )
    if plan.strategy not in (compiler.FULL_ONLY, compiler.TOPK):
        # A distributed table's unique index must contain its distribution column.
        keyed = plan.strategy in compiler.KEYED_STRATEGIES and (
            cplan is None or cplan.distribution_column in (None, _citus.ROW_ID)
        )
        unique = sql.SQL("UNIQUE ") if keyed else sql.SQL("")
        conn.execute(
            sql.SQL("CREATE {}INDEX {} ON {} (__pgt_row_id)").format(
                unique, sql.Identifier(f"{name}__pgt_row_id"[:63]), target
            )
        )
        if plan.strategy == compiler.WINDOW_PARTITIONS:
            conn.execute(
                sql.SQL("CREATE INDEX {} ON {} (__pgt_part)").format(
                    sql.Identifier(f"{name}__pgt_part"[:63]), target
                )
            )
    if cplan is not None:
        _citus.distribute(conn, schema, name, cplan)
    if not populate:
        return 0
    cur = conn.execute(sql.SQL("INSERT INTO {} {}").format(target, sql.SQL(plan.full_sql)))
    if cplan is None:  # the first refresh plans with it
        # (Not on Citus: after the INSERT ran locally on the coordinator's placement, Citus
        # refuses the ANALYZE in the same transaction; the nodes' autovacuum analyses shards.)
        conn.execute(sql.SQL("ANALYZE {}").format(target))
    return max(cur.rowcount, 0)


def _build_internal_tables(
    conn: psycopg.Connection[Any],
    plan: compiler.DeltaPlan,
    populate: bool,
    only: set[str] | None = None,
) -> None:
    """Create the stages and backing tables of a plan (all, or those named in ``only``)."""

    def wanted(schema: str, name: str) -> bool:
        return only is None or sql.Identifier(schema, name).as_string(conn) in only

    for stage in plan.stages:  # innermost first
        if wanted(CHANGES_SCHEMA, stage.name):
            if stage.plan.topk is not None:  # a subquery with ORDER BY … LIMIT
                _build_topk_backing(conn, stage.plan.topk, populate)
            _build_storage(conn, CHANGES_SCHEMA, stage.name, stage.plan, populate)
            _index_probed_columns(conn, plan, stage)
    if plan.recursive is not None and (only is None or plan.recursive.backing in only):
        # The recursive CTE's fixpoint lives in a backing table; the stream table is the query
        # over it.
        for statement in recursive.backing_ddl(plan.recursive):
            conn.execute(sql.SQL(statement))
        for statement in recursive.populate(plan.recursive) if populate else []:
            conn.execute(sql.SQL(statement))
    if plan.topk is not None and wanted(CHANGES_SCHEMA, plan.topk.backing):
        _build_topk_backing(conn, plan.topk, populate)
    if plan.counted is not None and wanted(CHANGES_SCHEMA, plan.counted.backing):
        # a set operation's per-branch counts
        _build_storage(conn, CHANGES_SCHEMA, plan.counted.backing, plan.counted.inner, populate)


def _build_topk_backing(conn: psycopg.Connection[Any], topk: compiler.TopK, populate: bool) -> None:
    """TopK: the whole result lives in a backing table (maintained like any stream table); the
    stream table (or stage) holds its top rows, read through the index on the order."""
    _build_storage(conn, CHANGES_SCHEMA, topk.backing, topk.inner, populate)
    conn.execute(
        sql.SQL("CREATE INDEX {} ON {} ({})").format(
            sql.Identifier(f"{topk.backing}_order"),
            sql.Identifier(CHANGES_SCHEMA, topk.backing),
            sql.SQL(topk.order_sql),
        )
    )


def _index_probed_columns(
    conn: psycopg.Connection[Any], plan: compiler.DeltaPlan, stage: compiler.Stage
) -> None:
    """Index a stage's table on the columns that correlated lookups of the plans reading it
    probe (the same columns as its change window's: ``x IN (SELECT v FROM stage)`` counts the
    stage's rows with ``v = x`` per candidate row; without an index each probe scans the whole
    stage), and a grouped stage that a plan joins on its group keys (:func:`group_key_columns`)."""
    probed: list[tuple[str, ...]] = []
    readers = [plan, *(s.plan for s in plan.stages)]
    for reader in readers:
        probed.extend(
            c for c in reader.change_index_columns.get(stage.stable, []) if c not in probed
        )
    keys = group_key_columns(stage.plan)
    if keys and keys not in probed and any(_joins(r, stage) for r in readers):
        probed.append(keys)
    for columns in probed:
        create_index(conn, sql.Identifier(CHANGES_SCHEMA, stage.name), columns)


def group_key_columns(plan: compiler.DeltaPlan) -> tuple[str, ...]:
    """The output columns of a grouped plan that are its GROUP BY keys as they are, in key
    order. A query joining a grouped stage joins it on them (a decorrelated aggregate subquery
    is grouped by its correlation columns), and the row-id index cannot serve those probes:
    TPC-H Q20's term driven by 800 changed ``partsupp`` rows scanned its 544,000-row stage."""
    shape = plan.shape
    if plan.strategy != compiler.AGGREGATE or shape is None or not shape.group_keys:
        return ()
    bare = {quote_ident(f"__pgt_key_{i}"): i for i in range(len(shape.group_keys))}
    found = sorted((bare[o.sql], o.name) for o in shape.outputs if o.sql in bare)
    return tuple(name for _, name in found)


def _joins(plan: compiler.DeltaPlan, stage: compiler.Stage) -> bool:
    """Whether ``plan`` joins ``stage`` with something else: an inner-join block of it
    (``join_blocks``, which a TopK plan takes from its inner query) reads the stage and another
    input. (Walking the plan's own shape missed TopK plans, whose query is the inner plan's:
    TPC-H Q02's 116,000-row stage was scanned by each term joining it.)"""
    return any(stage.stable in block and len(block) > 1 for block in plan.join_blocks)


def create_index(
    conn: psycopg.Connection[Any], table: sql.Identifier, columns: tuple[str, ...]
) -> None:
    """``CREATE INDEX`` on ``columns``, in a savepoint: a column type without a default btree
    operator class leaves the table unindexed (its probes scan it) instead of failing."""
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("CREATE INDEX ON {} ({})").format(
                    table, sql.SQL(", ").join(sql.Identifier(c) for c in columns)
                )
            )
    except psycopg.errors.UndefinedObject:
        pass


def _internal_table_names(conn: psycopg.Connection[Any], plan: compiler.DeltaPlan) -> list[str]:
    """Quoted, qualified names of the hidden tables a plan keeps beside its stream table."""
    names = []
    for s in plan.stages:
        if s.plan.topk is not None:
            names.append(sql.Identifier(CHANGES_SCHEMA, s.plan.topk.backing).as_string(conn))
        names.append(sql.Identifier(CHANGES_SCHEMA, s.name).as_string(conn))
    if plan.recursive is not None:
        names.append(plan.recursive.backing)
    if plan.backing is not None:
        names.append(sql.Identifier(CHANGES_SCHEMA, plan.backing[0]).as_string(conn))
    return names


def _missing_internal_tables(conn: psycopg.Connection[Any], plan: compiler.DeltaPlan) -> set[str]:
    """The hidden tables of a plan that do not exist: a stream table created by an earlier
    version, whose query compiled without them, now needs them."""
    names = _internal_table_names(conn, plan)
    if not names:
        return set()
    rows = conn.execute(
        "SELECT n FROM unnest(%s::text[]) AS n WHERE to_regclass(n) IS NULL", (names,)
    ).fetchall()
    return {r[0] for r in rows}


def create_missing_internal_tables(conn: psycopg.Connection[Any], plan: compiler.DeltaPlan) -> None:
    """Create (empty) the hidden tables of a plan that do not exist yet."""
    missing = _missing_internal_tables(conn, plan)
    if missing:
        _build_internal_tables(conn, plan, False, only=missing)


def drop_internal_tables(conn: psycopg.Connection[Any], schema: str, name: str) -> None:
    """Drop the tables a stream table keeps beside its own: the backing table of a TopK stream
    table, of a set operation's per-branch counts or of a recursive CTE, and the stages
    (materialised subqueries)."""
    target = sql.Identifier(schema, name).as_string(conn)
    for backing in (
        compiler.topk_backing_name(target),
        compiler.setop_backing_name(target),
        compiler.recursive_backing_name(target),
    ):
        conn.execute(
            sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(CHANGES_SCHEMA, backing))
        )
    stages = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s AND starts_with(tablename, %s)",
        (CHANGES_SCHEMA, compiler.stage_prefix(target)),
    ).fetchall()
    for (stage,) in stages:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(CHANGES_SCHEMA, stage)))
        stage_target = sql.Identifier(CHANGES_SCHEMA, stage).as_string(conn)
        conn.execute(  # a stage with ORDER BY … LIMIT keeps a backing table of its own
            sql.SQL("DROP TABLE IF EXISTS {}").format(
                sql.Identifier(CHANGES_SCHEMA, compiler.topk_backing_name(stage_target))
            )
        )
