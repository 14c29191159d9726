"""The DVM compiler: defining query in, :class:`DeltaPlan` out. Pure (no database access beyond
the :class:`~dbt_pgtrickle.dvm.ir.SchemaLookup` it is given).

Pipeline: parse (sqlglot) → analyze into a single-source :class:`QueryShape` → pick the operator
rule for the shape → SQL for the full recomputation and for the delta. A query outside the
supported shapes compiles to a FULL-only plan carrying the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UnsupportedConstruct
from . import _sqlglot, ir
from .operators import aggregate, distinct, project
from .operators._sql import row_hash
from .operators.scan import changes_relation

# Strategies: how a delta is applied to the stream table.
LINEAR_KEYED = "linear_keyed"  # MERGE rows recomputed for touched primary keys
LINEAR_MULTISET = "linear_multiset"  # delete/insert copies by content hash
AGGREGATE = "aggregate"  # MERGE recomputed groups
FULL_ONLY = "full_only"  # no delta: every refresh recomputes

MERGE_STRATEGIES = (LINEAR_KEYED, AGGREGATE)


@dataclass
class OperatorInfo:
    """One node of the operator tree as ``explain`` shows it."""

    operator: str
    detail: str
    delta_cost: str  # "O(Δ)" or what it scans
    why: str = ""


@dataclass
class DeltaPlan:
    defining_query: str
    strategy: str
    full_sql: str
    visible_columns: list[str]
    hidden_columns: list[str]
    delta_sql: str | None = None
    sources: list[ir.SourceTable] = field(default_factory=list)
    operators: list[OperatorInfo] = field(default_factory=list)
    unsupported: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def differential(self) -> bool:
        return self.strategy != FULL_ONLY

    @property
    def storage_columns(self) -> list[str]:
        """Columns of the stream table, in order: row id (not for FULL-only), visible, hidden."""
        cols = [*self.visible_columns, *self.hidden_columns]
        return cols if self.strategy == FULL_ONLY else ["__pgt_row_id", *cols]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["sources"] = [s.qualified for s in self.sources]
        return data


def referenced_sources(query: str) -> list[tuple[str | None, str]]:
    """Relations the query reads, as written (schema may be None)."""
    return _sqlglot.referenced_tables(_sqlglot.parse(query))


def compile_query(
    query: str, lookup: ir.SchemaLookup, output_names: list[str], target: str
) -> DeltaPlan:
    """Compile ``query`` for the stream table ``target`` (quoted and qualified)."""
    tree = _sqlglot.parse(query)
    normalized = _sqlglot.render(tree)
    try:
        shape = _sqlglot.analyze(tree, lookup, output_names)
    except UnsupportedConstruct as exc:
        sources = [lookup.table(s, n) for s, n in _sqlglot.referenced_tables(tree)]
        return DeltaPlan(
            defining_query=normalized,
            strategy=FULL_ONLY,
            full_sql=normalized,
            visible_columns=list(output_names),
            hidden_columns=[],
            sources=sources,
            operators=[OperatorInfo("Query", "whole query", "full recompute", str(exc))],
            unsupported=str(exc),
        )
    if shape.source.column("__pgt_w") is not None:
        raise UnsupportedConstruct(
            "source column __pgt_w collides with the change-window weight", "rename the column"
        )
    changes = changes_relation_for(shape.source)
    ops = [
        OperatorInfo(
            "Scan",
            shape.source.qualified,
            "O(Δ)",
            "reads the change window of the source",
        )
    ]
    if shape.where:
        ops.append(OperatorInfo("Filter", shape.where, "O(Δ)", "applied to each change image"))
    if shape.aggregate or shape.distinct:
        plan = _grouped_plan(shape, changes, target, ops)
    else:
        plan = _linear_plan(shape, changes, ops)
    plan.defining_query = normalized
    plan.sources = [shape.source]
    plan.notes = shape.notes
    return plan


def changes_relation_for(source: ir.SourceTable) -> str:
    from ..naming import stable_name

    return changes_relation(stable_name(source.schema, source.name))


def _linear_plan(shape: ir.QueryShape, changes: str, ops: list[OperatorInfo]) -> DeltaPlan:
    names = [o.name for o in shape.outputs]
    if shape.source.primary_key:
        ops.append(
            OperatorInfo(
                "Project",
                ", ".join(names),
                "O(Δ)",
                "row id = hash(primary key); touched keys are re-read through the primary key",
            )
        )
        return DeltaPlan(
            "",
            LINEAR_KEYED,
            project.keyed_full(shape),
            names,
            [],
            project.keyed_delta(shape, changes),
            operators=ops,
        )
    ops.append(
        OperatorInfo(
            "Project",
            ", ".join(names),
            "O(Δ)",
            "no primary key: row id = hash(output values), duplicates kept as copies",
        )
    )
    return DeltaPlan(
        "",
        LINEAR_MULTISET,
        project.multiset_full(shape),
        names,
        [],
        project.multiset_delta(shape, changes),
        operators=ops,
    )


def _grouped_plan(
    shape: ir.QueryShape, changes: str, target: str, ops: list[OperatorInfo]
) -> DeltaPlan:
    names = [o.name for o in shape.outputs]
    if shape.distinct:
        ops.append(
            OperatorInfo(
                "Distinct", ", ".join(names), "O(Δ)", "multiplicity per distinct row, hidden"
            )
        )
        full_sql, delta_sql = distinct.full(shape), distinct.delta(shape, changes, target)
    else:
        keys = ", ".join(shape.group_keys) or "(no GROUP BY: one row)"
        ops.append(OperatorInfo("Aggregate", f"GROUP BY {keys}", "O(Δ)", "row id = hash(keys)"))
        for agg in shape.aggs:
            ops.append(_agg_info(agg, shape))
        if shape.having:
            ops.append(
                OperatorInfo(
                    "Having",
                    shape.having,
                    "O(Δ) + rescan of touched hidden groups",
                    "groups hidden by HAVING keep no state, so a touched hidden group is "
                    "recomputed from its base rows",
                )
            )
        full_sql, delta_sql = aggregate.full(shape), aggregate.delta(shape, changes, target)
    return DeltaPlan(
        "",
        AGGREGATE,
        full_sql,
        names,
        aggregate.hidden_columns(shape),
        delta_sql,
        operators=ops,
    )


def _agg_info(agg: ir.AggCall, shape: ir.QueryShape) -> OperatorInfo:
    scope = "the group" if shape.group_keys else "the whole source (no GROUP BY)"
    if agg.kind in (ir.COUNT_STAR, ir.COUNT, ir.SUM, ir.AVG):
        return OperatorInfo("Aggregate call", agg.sql, "O(Δ)", "invertible: state += Δ")
    if agg.kind in (ir.MIN, ir.MAX):
        return OperatorInfo(
            "Aggregate call",
            agg.sql,
            f"O(Δ); rescans {scope} when its extremum is removed",
            "insertions compare with the stored extremum",
        )
    why = "not invertible"
    if agg.arg_type:
        why = f"argument type {agg.arg_type} is not exact, sums would drift"
    return OperatorInfo("Aggregate call", agg.sql, f"rescans {scope} on every change", why)


__all__ = [
    "AGGREGATE",
    "FULL_ONLY",
    "LINEAR_KEYED",
    "LINEAR_MULTISET",
    "DeltaPlan",
    "compile_query",
    "referenced_sources",
    "row_hash",
]
