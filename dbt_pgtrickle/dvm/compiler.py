"""The DVM compiler: defining query in, :class:`DeltaPlan` out. Pure (no database access beyond
the :class:`~dbt_pgtrickle.dvm.ir.SchemaLookup` it is given).

Pipeline: parse (sqlglot) → analyze into a :class:`QueryShape` (a FROM/WHERE block of inner-joined
base tables, then projection, DISTINCT or aggregation) → pick the operator rule for the shape →
SQL for the full recomputation and, per set of changed sources, for the delta. A query outside the
supported shapes compiles to a FULL-only plan carrying the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsupportedConstruct
from ..naming import CHANGES_SCHEMA, fnv1a_64, stable_name
from . import _sqlglot, ir
from .operators import (
    aggregate,
    distinct,
    grouping_sets,
    join,
    project,
    recursive,
    setop,
    union,
    window,
)
from .operators._sql import columns_of, from_clause_sql, quote_ident

# Strategies: how a delta is applied to the stream table.
LINEAR_KEYED = "linear_keyed"  # keyed apply of consolidated rows by primary-key row id
LINEAR_MULTISET = "linear_multiset"  # delete/insert copies by content hash
AGGREGATE = "aggregate"  # keyed apply of recomputed groups
WINDOW_PARTITIONS = "window_partitions"  # delete and recompute touched window partitions
TOPK = "topk"  # maintain the whole result in a backing table, keep its top rows
RECURSIVE = "recursive"  # WITH RECURSIVE: r kept in a backing table, the query over it as copies
FULL_ONLY = "full_only"  # no delta: every refresh recomputes

KEYED_STRATEGIES = (LINEAR_KEYED, AGGREGATE)

TooManyChangedInputs = join.TooManyChangedInputs
Changed = join.Changed


@dataclass
class OperatorInfo:
    """One node of the operator tree as ``explain`` shows it."""

    operator: str
    detail: str
    delta_cost: str  # "O(Δ)" or what it scans
    why: str = ""


@dataclass
class TopK:
    """``Q ORDER BY … LIMIT n OFFSET m``: ``inner`` maintains all of Q in ``backing`` (a table in
    the changes schema); the stream table holds the top rows of the backing table."""

    inner: DeltaPlan
    backing: str  # table name in pgtrickle_changes
    order_sql: str  # ORDER BY over the backing table's columns
    limit: int | None
    offset: int


@dataclass
class Counted:
    """A set operation with INTERSECT/EXCEPT (or a mix of UNION and UNION ALL): per distinct row,
    one hidden count per branch in ``backing`` (a table in the changes schema, maintained by
    ``inner``); the stream table holds as many copies as the operation's multiplicity."""

    inner: DeltaPlan
    backing: str  # table name in pgtrickle_changes
    tree: ir.SetOp
    branches: list[ir.QueryShape]


@dataclass
class Stage:
    """A subquery maintained in a table of its own (in the changes schema) inside the refresh of
    the stream table that reads it: the stage is refreshed first, in the same transaction, and
    what it changed becomes its change window for the query above it."""

    name: str  # table name in pgtrickle_changes
    plan: DeltaPlan
    source: ir.SourceTable  # how the query above sees it
    broadcast: bool = False  # a one-row scalar every row above is compared with

    @property
    def stable(self) -> str:
        return stable_name(self.source.schema, self.source.name)

    @property
    def key(self) -> str:
        """The column that identifies what one delta row replaces."""
        return "__pgt_part" if self.plan.strategy == WINDOW_PARTITIONS else "__pgt_row_id"


@dataclass
class DeltaPlan:
    defining_query: str
    strategy: str
    full_sql: str
    visible_columns: list[str]
    hidden_columns: list[str]
    sources: list[ir.SourceTable] = field(default_factory=list)
    operators: list[OperatorInfo] = field(default_factory=list)
    unsupported: str | None = None
    notes: list[str] = field(default_factory=list)
    shape: ir.QueryShape | None = None
    target: str = ""
    branches: list[ir.QueryShape] | None = None  # UNION [ALL]
    union_distinct: bool = False
    # Columns of a change window that correlated lookups probe (semi-joins, outer joins): the
    # engine indexes the window on them, so each probe is an index scan, not a scan of Δ.
    change_index_columns: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    # Columns by which a join's telescoping terms probe a change window read as an old input
    # (:func:`_join_columns`), and the inputs of each inner-join block
    # (:func:`.operators.join.block_inputs`): the engine indexes those windows when needed.
    join_index_columns: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    join_blocks: list[list[str]] = field(default_factory=list)
    # Per source (stable name) this plan reads: a condition over the change buffer's alias
    # ``b`` that every change row the delta can use satisfies (:func:`_window_filters`). A
    # source without an entry has no such condition, or the plan kind does not say.
    window_filters: dict[str, str] = field(default_factory=dict)
    topk: TopK | None = None
    counted: Counted | None = None
    recursive: recursive.Recursion | None = None

    @property
    def backing(self) -> tuple[str, DeltaPlan] | None:
        """The hidden table (in the changes schema) this stream table is derived from, with the
        plan maintaining it: TopK's whole result, a set operation's counts; None otherwise."""
        if self.topk is not None:
            return self.topk.backing, self.topk.inner
        if self.counted is not None:
            return self.counted.backing, self.counted.inner
        return None

    # Stages this plan reads, innermost first (a stage's own stages come before it).
    stages: list[Stage] = field(default_factory=list)
    # Stable names of every relation the delta reads (sources and stages).
    inputs: set[str] = field(default_factory=set)

    @property
    def differential(self) -> bool:
        return self.strategy != FULL_ONLY

    @property
    def storage_columns(self) -> list[str]:
        """Columns of the stream table, in order: row id (not for FULL-only), visible, hidden."""
        cols = [*self.visible_columns, *self.hidden_columns]
        return cols if self.strategy in (FULL_ONLY, TOPK) else ["__pgt_row_id", *cols]

    @property
    def source_stables(self) -> set[str]:
        return {stable_name(s.schema, s.name) for s in self.sources}

    def delta_for(self, changed: set[str]) -> str:
        """Delta SQL when the sources with these stable names changed (their change windows are
        the temporary relations named by :func:`~.operators.scan.changes_relation`).

        Raises :class:`TooManyChangedInputs` when a join would need too many terms."""
        if self.topk is not None:
            return self.topk.inner.delta_for(changed)
        if self.counted is not None:
            c = self.counted
            return setop.delta(c.tree, c.branches, changed, _changes_table(c.backing))
        if self.recursive is not None:
            return recursive.delta(self.recursive)
        if self.branches and self.union_distinct:
            return union.distinct_delta(self.branches, changed, self.target)
        if self.branches:
            return union.delta(self.branches, changed)
        shape = self.shape
        if shape is None:
            raise UnsupportedConstruct(self.unsupported or "no delta for this query")
        if self.strategy == WINDOW_PARTITIONS:
            return window.delta(shape, changed)
        if self.strategy == LINEAR_KEYED:
            return project.keyed_delta(shape, changed)
        if self.strategy == LINEAR_MULTISET:
            return project.multiset_delta(shape, changed)
        if shape.distinct:
            return distinct.delta(shape, changed, self.target)
        if shape.grouping_sets:
            return grouping_sets.delta(shape.grouping_sets, changed, self.target)
        return aggregate.delta(shape, changed, self.target)

    def prepare_for(self, changed: set[str]) -> list[str]:
        """Statements the engine runs after creating the change windows and before the delta
        (a recursive CTE updates its backing table and leaves D and N for the delta)."""
        if self.recursive is not None:
            return recursive.maintain(self.recursive, changed)
        return []

    @property
    def delta_sql(self) -> str | None:
        """The delta when every source changed (what ``explain`` shows)."""
        if not self.differential:
            return None
        try:
            if self.recursive is not None:
                return ";\n".join([*self.prepare_for(self.source_stables), self.delta_for(set())])
            return self.delta_for(Changed(self.source_stables))
        except TooManyChangedInputs as exc:
            return f"-- {exc}"

    def to_json(self) -> dict[str, Any]:
        return {
            "defining_query": self.defining_query,
            "strategy": self.strategy,
            "full_sql": self.full_sql,
            "delta_sql": self.delta_sql,
            "visible_columns": self.visible_columns,
            "hidden_columns": self.hidden_columns,
            "sources": [s.qualified for s in self.sources],
            "operators": [vars(o) for o in self.operators],
            "unsupported": self.unsupported,
            "notes": self.notes,
        }


def stage_prefix(owner: str) -> str:
    """Prefix of the names of the stage tables of the stream table ``owner`` (quoted and
    qualified), so they can be found and dropped without compiling its query."""
    return f"stage_{fnv1a_64(owner.encode()):016x}_"


class _StagedLookup:
    """A :class:`~ir.SchemaLookup` that also knows the stage tables of the query being compiled
    (they need not exist yet: expression types are asked of the stage's query instead)."""

    def __init__(self, base: ir.SchemaLookup, stages: dict[str, tuple[ir.SourceTable, str]]):
        self.base = base
        self.stages = stages

    def table(self, schema: str | None, name: str) -> ir.SourceTable:
        if schema in (None, CHANGES_SCHEMA) and name in self.stages:
            return self.stages[name][0]
        return self.base.table(schema, name)

    def expression_types(self, from_clause: str, exprs: list[str]) -> list[str]:
        for name, (_, query) in self.stages.items():
            ref = f"{quote_ident(CHANGES_SCHEMA)}.{quote_ident(name)}"
            from_clause = from_clause.replace(ref, f"({query})")
        return self.base.expression_types(from_clause, exprs)

    def is_volatile_function(self, name: str) -> bool:
        return self.base.is_volatile_function(name)

    def is_aggregate_function(self, name: str) -> bool:
        return self.base.is_aggregate_function(name)


def _compile_stages(
    specs: list[_sqlglot.StageSpec], lookup: ir.SchemaLookup, owner: str
) -> tuple[list[Stage], _StagedLookup]:
    stages: list[Stage] = []
    known: dict[str, tuple[ir.SourceTable, str]] = {}
    for spec in specs:
        table_sql = f"{quote_ident(spec.schema)}.{quote_ident(spec.name)}"
        plan = compile_query(spec.query, lookup, list(spec.columns), table_sql, owner=owner)
        if not plan.differential or plan.counted is not None or plan.recursive is not None:
            exc = UnsupportedConstruct("a subquery that cannot be maintained differentially")
            exc.full_reason = (  # type: ignore[attr-defined]
                f"subquery: {plan.unsupported}"
                if plan.unsupported
                else "subquery with INTERSECT/EXCEPT or WITH RECURSIVE: " + _sqlglot.FULL_ONLY_HINT
            )
            raise exc
        types = lookup.expression_types(
            f"({spec.query}) AS {quote_ident('__pgt_t')}",
            [f"{quote_ident('__pgt_t')}.{quote_ident(c)}" for c in spec.columns],
        )
        keyed = plan.strategy in KEYED_STRATEGIES
        # A TopK stage holds its top rows as they are (no row id; a multiset to its readers).
        row_id = () if plan.topk is not None else (ir.Column("__pgt_row_id", "bigint", keyed),)
        source = ir.SourceTable(
            spec.schema,
            spec.name,
            (*row_id, *(ir.Column(c, t) for c, t in zip(spec.columns, types, strict=True))),
            ("__pgt_row_id",) if keyed else None,
        )
        for inner in plan.stages:
            if all(s.name != inner.name for s in stages):
                stages.append(inner)
        if all(s.name != spec.name for s in stages):
            stages.append(Stage(spec.name, plan, source, spec.broadcast))
        known[spec.name] = (source, spec.query)
    return stages, _StagedLookup(lookup, known)


def compile_query(
    query: str,
    lookup: ir.SchemaLookup,
    output_names: list[str],
    target: str,
    *,
    owner: str | None = None,
) -> DeltaPlan:
    """Compile ``query`` for the stream table ``target`` (quoted and qualified). ``owner``: the
    stream table whose refresh maintains this plan (default ``target``; it names stages)."""
    owner = owner or target
    tree = parsed = _sqlglot.parse(query)
    normalized = _sqlglot.render(tree)
    base_lookup = lookup
    stages: list[Stage] = []
    try:
        tree = _sqlglot.without_needless_recursive(tree)
        rec = _sqlglot.split_recursive(tree)
        if rec is not None:
            return _recursive_plan(rec, lookup, output_names, target, normalized)
        topk = _sqlglot.split_topk(tree, output_names)
        if topk is not None:
            return _topk_plan(topk, lookup, output_names, target, normalized, owner)
        prefix = stage_prefix(owner)

        def name_for(text: str) -> tuple[str, str]:
            return CHANGES_SCHEMA, f"{prefix}{fnv1a_64(text.encode()):016x}"

        tree, specs = _sqlglot.extract_stages(tree, lookup, name_for)  # a SELECT's subqueries
        if not specs:  # a set operation's grouped branches
            tree, specs = _sqlglot.stage_set_operation_branches(tree, name_for)
        if specs:
            stages, lookup = _compile_stages(specs, lookup, owner)
        set_op = _sqlglot.set_operation(tree)
        if set_op is not None:
            selects, op_tree, set_op_notes = set_op
            branches = [_sqlglot.analyze(b, lookup, output_names) for b in selects]
            if any(b.aggregate or b.window_partition is not None for b in branches):
                raise UnsupportedConstruct(  # a grouped branch the stages did not take
                    "GROUP BY, aggregates or windows inside a branch of a set operation",
                    _sqlglot.FULL_ONLY_HINT,
                )
            kinds = _set_op_kinds(op_tree)
            pure_union = len(kinds) == 1 and kinds <= {("union", True), ("union", False)}
            if pure_union and not any(b.distinct for b in branches):
                plan = _union_plan(branches, normalized, target, kinds == {("union", False)})
            else:
                plan = _counted_plan(op_tree, branches, normalized, target)
            plan.notes = set_op_notes
            _attach_stages(plan, stages, plan.sources)
            return plan
        shape = _sqlglot.analyze(tree, lookup, output_names)
        for item in shape.froms:
            if item.source.column("__pgt_w") is not None:
                raise UnsupportedConstruct(
                    f"source column {item.source.qualified}.__pgt_w collides with the "
                    "change-window weight",
                    "rename the column",
                )
    except UnsupportedConstruct as exc:
        sources = [base_lookup.table(s, n) for s, n in _sqlglot.referenced_tables(parsed)]
        reason = getattr(exc, "full_reason", None) or str(exc)
        return DeltaPlan(
            defining_query=normalized,
            strategy=FULL_ONLY,
            full_sql=normalized,
            visible_columns=list(output_names),
            hidden_columns=[],
            sources=sources,
            operators=[OperatorInfo("Query", "whole query", "full recompute", reason)],
            unsupported=reason,
        )
    ops = [
        OperatorInfo(
            "Scan", f"{f.source.qualified} AS {f.alias}", "O(Δ)", "reads the source's change window"
        )
        for f in shape.tables
    ]
    ops.extend(
        OperatorInfo(
            "Lateral function",
            f"{'LEFT JOIN ' if f.join == 'lateral_left' else ''}LATERAL {f.function} AS {f.alias}"
            + (f" ON {f.on}" if f.on else ""),
            "O(Δ)",
            "immutable, so applied to the changed rows of the items before it only (linear); "
            "row id includes the ordinality of each of its rows",
        )
        for f in shape.froms
        if f.is_function
    )
    if len(shape.tables) > 1:
        conds = [
            f.on
            for f in shape.froms
            if f.on and f.join not in ir.OUTER_JOIN_KINDS and not f.is_function
        ]
        ops.append(
            OperatorInfo(
                "Join",
                " AND ".join(conds) or "cross join",
                "O(Δ) per term, through indexes on the join columns",
                "up to four changed inputs: one term per non-empty subset of them, joining "
                "their change windows with the current other inputs; five or more (not with "
                "Citus sources): one term per changed input, largest change window first, "
                "joining its window with the changed inputs before it as they are now and those "
                "after it as they were (the table plus its change window negated, probed "
                "through an index the refresh builds on the window); without an index on a "
                "join column an input is scanned",
            )
        )
    if shape.has_outer_joins:
        outer = [f for f in shape.froms if f.join in ir.OUTER_JOIN_KINDS]
        ops.append(
            OperatorInfo(
                "Outer join",
                "; ".join(f"{f.join.upper()} JOIN {f.alias} ON {f.on}" for f in outer),
                "O(Δ) per block, through indexes on the join columns",
                f"{len(join.blocks(shape))} inner-join blocks with NOT EXISTS tests for the "
                "NULL-padded rows; a padded row is re-tested only when it is correlated with a "
                "change (found by primary key, or by ctid for a source without one)",
            )
        )
    if shape.where:
        ops.append(OperatorInfo("Filter", shape.where, "O(Δ)", "applied to each change image"))
    for sj in shape.semijoins:
        ops.append(
            OperatorInfo(
                "Anti-join" if sj.negated else "Semi-join",
                f"{'NOT ' if sj.negated else ''}EXISTS ({sj.source.qualified} AS {sj.alias} "
                f"WHERE {sj.condition})",
                "O(Δ) through an index on the correlated columns",
                "rows correlated with a changed subquery row are re-tested against the old and "
                "the new subquery source",
            )
        )
    if shape.window_partition is not None:
        plan = _window_plan(shape, ops)
    elif shape.aggregate or shape.distinct:
        plan = _grouped_plan(shape, ops)
    else:
        plan = _linear_plan(shape, ops)
    plan.defining_query = normalized
    read = [*(f.source for f in shape.tables), *(sj.source for sj in shape.semijoins)]
    plan.inputs = {stable_name(src.schema, src.name) for src in read}
    plan.notes = shape.notes
    plan.shape = shape
    plan.target = target
    plan.change_index_columns = _probed_columns(shape)
    plan.join_index_columns, plan.join_blocks = _joined_columns([shape])
    if plan.strategy in (LINEAR_KEYED, LINEAR_MULTISET, AGGREGATE):
        plan.window_filters = _window_filters(shape)
        for op, item in zip(ops, shape.tables, strict=False):  # the Scan operators come first
            kept = plan.window_filters.get(stable_name(item.source.schema, item.source.name))
            if kept is not None:  # its columns unqualified (for explain only)
                shown = kept.replace(f'"{BUFFER_ALIAS}".', "")
                op.why += f"; only its change rows that meet {shown}"
    _attach_stages(plan, stages, read)
    return plan


#: The alias of a change buffer in the engine's statement that materialises its window.
BUFFER_ALIAS = "b"


def _window_filters(shape: ir.QueryShape) -> dict[str, str]:
    """Per source table, the condition its change rows must meet to matter (over the buffer's
    alias :data:`BUFFER_ALIAS`): what the conditions that bind an alias's rows imply for that
    alias alone, ORed over the table's aliases (a table with an alias bound by nothing gets
    none). A change row that fails it adds nothing to any term: the terms apply those
    conditions to window rows and to the old inputs built from windows alike, so the engine
    leaves it out of the window (TPC-H Q12's ``l_shipmode``, date and ``l_commitdate <
    l_receiptdate`` conditions keep well under 1% of ``lineitem``'s change rows).

    Which conditions bind an alias:
    * one that no outer join can NULL-pad: WHERE and the ON conditions of inner joins (its
      rows are in no output row that fails them, padded or not, and pad nothing);
    * the right side of a LEFT JOIN: that join's own ON (a row that fails it matches nothing,
      so it neither joins nor removes a padded row; WHERE does not bind it: the padded row it
      would remove may pass WHERE). No later join pads it again: a RIGHT or FULL JOIN is
      accepted only as the first join (``_sqlglot``), where it pads the first item alone;
    * any other padded alias (either side of a FULL JOIN, the left of a RIGHT JOIN): nothing;
    * a semi-join's table: its own condition (a row that fails it matches no outer row)."""
    nullable: set[str] = set()
    for i, item in enumerate(shape.froms):
        if item.join in ("right", "full"):
            nullable.update(f.alias for f in shape.froms[:i])
        if item.join in ("left", "full", "lateral_left"):
            nullable.add(item.alias)
    binding = [shape.where] + [f.on for f in shape.froms if f.join in ("inner", "cross")]
    conditions = [c for c in binding if c]
    uses: dict[str, list[str | None]] = {}
    for item in shape.tables:
        if item.alias not in nullable:
            implied = _sqlglot.implied_filter(conditions, item.alias, BUFFER_ALIAS)
        elif item.join == "left" and item.on:
            implied = _sqlglot.implied_filter([item.on], item.alias, BUFFER_ALIAS)
        else:
            implied = None
        uses.setdefault(stable_name(item.source.schema, item.source.name), []).append(implied)
    for sj in shape.semijoins:
        implied = _sqlglot.implied_filter([sj.condition], sj.alias, BUFFER_ALIAS)
        uses.setdefault(stable_name(sj.source.schema, sj.source.name), []).append(implied)
    return {
        stable: " OR ".join(dict.fromkeys(f"({f})" for f in filters if f))
        for stable, filters in uses.items()
        if all(filters)
    }


def _attach_stages(plan: DeltaPlan, stages: list[Stage], read: list[ir.SourceTable]) -> None:
    """Give ``plan`` its stages: its sources become the tables it ``read`` that are not stages
    plus the stages' own sources, and its operators are preceded by the stages'."""
    stage_names = {st.name for st in stages}
    unique: dict[str, ir.SourceTable] = {}
    for src in read:
        if not (src.schema == CHANGES_SCHEMA and src.name in stage_names):
            unique.setdefault(src.qualified, src)
    for st in stages:
        for src in st.plan.sources:
            unique.setdefault(src.qualified, src)
    plan.sources = list(unique.values())
    plan.stages = stages
    if stages:
        plan.operators = [
            *(
                OperatorInfo(f"Stage {st.name}: {op.operator}", op.detail, op.delta_cost, op.why)
                for st in stages
                for op in st.plan.operators
            ),
            *plan.operators,
        ]


def _probed_columns(shape: ir.QueryShape) -> dict[str, list[tuple[str, ...]]]:
    probes: dict[str, list[tuple[str, ...]]] = {}

    def add(source: ir.SourceTable, cols: tuple[str, ...]) -> None:
        if cols:
            wanted = probes.setdefault(stable_name(source.schema, source.name), [])
            if cols not in wanted:
                wanted.append(cols)

    for block in join.blocks(shape):
        for sj in block.semijoins:
            add(sj.source, columns_of(sj.alias, sj.condition))
    return probes


def merge_columns(
    maps: Iterable[dict[str, list[tuple[str, ...]]]],
) -> dict[str, list[tuple[str, ...]]]:
    """Column lists per stable name from several plans or shapes, each list once."""
    merged: dict[str, list[tuple[str, ...]]] = {}
    for m in maps:
        for stable, lists in m.items():
            known = merged.setdefault(stable, [])
            known.extend(c for c in lists if c not in known)
    return merged


def _join_columns(shape: ir.QueryShape) -> dict[str, list[tuple[str, ...]]]:
    """Per input (stable name): the column lists by which telescoping terms probe its change
    window when they read it as an old input, one per other alias of the block it is equated
    with by a top-level conjunct of an ON condition or the WHERE (``a.x = b.y``; ON first), a
    list that is a prefix of another left out."""
    found: dict[str, list[tuple[str, ...]]] = {}
    for block in join.blocks(shape):
        present = {f.alias: f for f in join.join_inputs(block)}
        conditions = [
            *(f.on for f in present.values() if f.on),
            *([block.where] if block.where else []),
        ]
        probes: dict[tuple[str, str], list[str]] = {}
        for a, ca, b, cb in (e for c in conditions for e in _sqlglot.equalities(c)):
            if a == b or a not in present or b not in present:
                continue
            for alias, col, other in ((a, ca, b), (b, cb, a)):
                if present[alias].source.column(col) is not None:
                    cols = probes.setdefault((alias, other), [])
                    cols.extend([col] if col not in cols else [])
        for (alias, _), cols in probes.items():
            src = present[alias].source
            wanted = found.setdefault(stable_name(src.schema, src.name), [])
            wanted.extend([tuple(cols)] if tuple(cols) not in wanted else [])
    return {
        stable: [c for c in lists if not any(o != c and o[: len(c)] == c for o in lists)]
        for stable, lists in found.items()
    }


def _joined_columns(
    shapes: list[ir.QueryShape],
) -> tuple[dict[str, list[tuple[str, ...]]], list[list[str]]]:
    """``join_index_columns`` and ``join_blocks`` of a plan over ``shapes`` (a query, or the
    branches of a set operation)."""
    return (
        merge_columns(_join_columns(shape) for shape in shapes),
        [inputs for shape in shapes for inputs in join.block_inputs(shape)],
    )


def _union_plan(
    branches: list[ir.QueryShape], normalized: str, target: str, is_distinct: bool
) -> DeltaPlan:
    names = [o.name for o in branches[0].outputs]
    ops = [
        OperatorInfo(
            "Union" if is_distinct else "Union all",
            f"{len(branches)} branches",
            "O(Δ)",
            "multiplicity per distinct row (hidden); present while positive"
            if is_distinct
            else "branch deltas are added; rows are kept as copies by content",
        )
    ]
    ops.extend(_branch_operators(branches))
    joined = _joined_columns(branches)
    return DeltaPlan(
        normalized,
        AGGREGATE if is_distinct else LINEAR_MULTISET,
        union.distinct_full(branches) if is_distinct else union.full(branches),
        names,
        ["__pgt_count"] if is_distinct else [],
        sources=_branch_sources(branches),
        operators=ops,
        target=target,
        branches=branches,
        union_distinct=is_distinct,
        change_index_columns=_branch_probes(branches),
        join_index_columns=joined[0],
        join_blocks=joined[1],
        inputs={stable_name(s.schema, s.name) for s in _branch_sources(branches)},
    )


def _branch_operators(branches: list[ir.QueryShape]) -> list[OperatorInfo]:
    out = []
    for i, b in enumerate(branches, start=1):
        detail = ", ".join(f"{f.source.qualified} AS {f.alias}" for f in b.froms)
        out.append(OperatorInfo(f"Branch {i}", detail, "O(Δ)", b.where or ""))
    return out


def _branch_sources(branches: list[ir.QueryShape]) -> list[ir.SourceTable]:
    unique: dict[str, ir.SourceTable] = {}
    for b in branches:
        for src in [*(f.source for f in b.tables), *(sj.source for sj in b.semijoins)]:
            unique.setdefault(src.qualified, src)
    return list(unique.values())


def _branch_probes(branches: list[ir.QueryShape]) -> dict[str, list[tuple[str, ...]]]:
    return merge_columns(_probed_columns(b) for b in branches)


def _set_op_kinds(tree: ir.SetOp) -> set[tuple[str, bool]]:
    kinds = {(tree.op, tree.all)}
    for side in (tree.left, tree.right):
        if isinstance(side, ir.SetOp):
            kinds |= _set_op_kinds(side)
    return kinds


def _changes_table(name: str) -> str:
    return f'"pgtrickle_changes".{quote_ident(name)}'


def setop_backing_name(target: str) -> str:
    """Name (in the changes schema) of the table holding a set operation's per-branch counts;
    derived from the quoted, qualified stream-table name so it is stable."""
    return f"setop_{fnv1a_64(target.encode()):016x}"


def _counted_plan(
    tree: ir.SetOp, branches: list[ir.QueryShape], normalized: str, target: str
) -> DeltaPlan:
    names = [o.name for o in branches[0].outputs]
    backing = setop_backing_name(target)
    backing_sql = _changes_table(backing)
    counts = [setop.count_column(i) for i in range(len(branches))]
    inner = DeltaPlan(normalized, AGGREGATE, setop.backing_full(branches), names, counts)
    ops = _branch_operators(branches)
    ops.append(
        OperatorInfo(
            "Set operation",
            tree.render(),
            "O(Δ)",
            f"a hidden count per distinct row and branch in pgtrickle_changes.{backing}; the "
            "stream table holds the rows whose multiplicity (a function of the counts) is "
            "positive, that many copies each",
        )
    )
    joined = _joined_columns(branches)
    return DeltaPlan(
        normalized,
        LINEAR_MULTISET,
        setop.full(tree, branches, backing_sql),
        names,
        [],
        sources=_branch_sources(branches),
        operators=ops,
        target=target,
        change_index_columns=_branch_probes(branches),
        join_index_columns=joined[0],
        join_blocks=joined[1],
        counted=Counted(inner, backing, tree, branches),
        inputs={stable_name(s.schema, s.name) for s in _branch_sources(branches)},
    )


def topk_backing_name(target: str) -> str:
    """Name (in the changes schema) of the table holding the whole result of a TopK stream
    table; derived from the quoted, qualified stream-table name so it is stable."""
    return f"topk_{fnv1a_64(target.encode()):016x}"


def _topk_plan(
    parts: tuple[Any, list[tuple[str, bool, bool]], int | None, int],
    lookup: ir.SchemaLookup,
    output_names: list[str],
    target: str,
    normalized: str,
    owner: str,
) -> DeltaPlan:
    inner_tree, keys, limit, offset = parts
    backing = topk_backing_name(target)
    backing_sql = _changes_table(backing)
    inner = compile_query(
        _sqlglot.render(inner_tree), lookup, output_names, backing_sql, owner=owner
    )
    if not inner.differential:
        exc = UnsupportedConstruct("the query under ORDER BY … LIMIT")
        exc.full_reason = inner.unsupported  # type: ignore[attr-defined]
        raise exc
    q = quote_ident
    order_sql = ", ".join(
        f"{q(name)} {'DESC' if desc else 'ASC'} NULLS {'FIRST' if nulls_first else 'LAST'}"
        for name, desc, nulls_first in keys
    )
    cols = ", ".join(q(n) for n in output_names)
    limit_sql = f" LIMIT {limit}" if limit is not None else ""
    full_sql = f"SELECT {cols} FROM {backing_sql} ORDER BY {order_sql}{limit_sql} OFFSET {offset}"
    ops = [
        *inner.operators,
        OperatorInfo(
            "TopK",
            f"ORDER BY {order_sql}{limit_sql} OFFSET {offset}",
            "O(Δ) for the whole result + the top rows re-read through an index",
            "the whole result is maintained in pgtrickle_changes." + backing + "; the top rows "
            "are re-read from it only when a refresh changed it",
        ),
    ]
    return DeltaPlan(
        normalized,
        TOPK,
        full_sql,
        list(output_names),
        [],
        sources=inner.sources,
        operators=ops,
        notes=inner.notes,
        target=target,
        change_index_columns=inner.change_index_columns,
        join_index_columns=inner.join_index_columns,
        join_blocks=inner.join_blocks,
        window_filters=inner.window_filters,  # the windows are read by the inner delta only
        topk=TopK(inner, backing, order_sql, limit, offset),
        stages=inner.stages,
        inputs=inner.inputs,
    )


def _window_plan(shape: ir.QueryShape, ops: list[OperatorInfo]) -> DeltaPlan:
    assert shape.window_partition is not None
    names = [o.name for o in shape.outputs]
    if shape.distinct_on_order is not None:
        ops.append(
            OperatorInfo(
                "Distinct on",
                f"({', '.join(shape.window_partition)}) ORDER BY {shape.distinct_on_order}",
                "size of the touched key groups",
                "the first row of each key whose group appears in the change window is recomputed",
            )
        )
    elif shape.window_partition:
        ops.append(
            OperatorInfo(
                "Window",
                "PARTITION BY " + ", ".join(shape.window_partition),
                "size of the touched partitions",
                "a partition whose key appears in the change window is deleted and recomputed",
            )
        )
    else:
        ops.append(
            OperatorInfo(
                "Window",
                "no PARTITION BY",
                "whole input on every change",
                "every row's window value depends on all rows; add PARTITION BY to limit it",
            )
        )
    return DeltaPlan(
        "", WINDOW_PARTITIONS, window.full(shape), names, ["__pgt_part"], operators=ops
    )


def _linear_plan(shape: ir.QueryShape, ops: list[OperatorInfo]) -> DeltaPlan:
    names = [o.name for o in shape.outputs]
    if shape.keyed:
        ops.append(
            OperatorInfo(
                "Project",
                ", ".join(names),
                "O(Δ)",
                "row id = hash(primary keys); deltas consolidated per row id and content",
            )
        )
        return DeltaPlan("", LINEAR_KEYED, project.keyed_full(shape), names, [], operators=ops)
    ops.append(
        OperatorInfo(
            "Project",
            ", ".join(names),
            "O(Δ)",
            "a source has no primary key: row id = hash(output values), duplicates kept as copies",
        )
    )
    return DeltaPlan("", LINEAR_MULTISET, project.multiset_full(shape), names, [], operators=ops)


def _grouped_plan(shape: ir.QueryShape, ops: list[OperatorInfo]) -> DeltaPlan:
    names = [o.name for o in shape.outputs]
    if shape.distinct:
        ops.append(
            OperatorInfo(
                "Distinct", ", ".join(names), "O(Δ)", "multiplicity per distinct row, hidden"
            )
        )
        full_sql = distinct.full(shape)
    else:
        if shape.grouping_sets:
            sets = ", ".join(f"({', '.join(s.group_keys)})" for s in shape.grouping_sets)
            ops.append(
                OperatorInfo(
                    "Grouping sets",
                    f"GROUPING SETS ({sets})",
                    f"O(Δ) per grouping set ({len(shape.grouping_sets)} sets)",
                    "each set is an aggregate of its own over the same input delta; "
                    "row id = hash(set index, the set's keys)",
                )
            )
            full_sql = grouping_sets.full(shape.grouping_sets)
        else:
            keys = ", ".join(shape.group_keys) or "(no GROUP BY: one row)"
            ops.append(OperatorInfo("Aggregate", f"GROUP BY {keys}", "O(Δ)", "row id = hash(keys)"))
            full_sql = aggregate.full(shape)
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
    return DeltaPlan("", AGGREGATE, full_sql, names, aggregate.hidden_columns(shape), operators=ops)


def _agg_info(agg: ir.AggCall, shape: ir.QueryShape) -> OperatorInfo:
    scope = "the group" if shape.group_keys else "the whole input (no GROUP BY)"
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


def recursive_backing_name(target: str) -> str:
    """Name (in the changes schema) of the table holding the recursive CTE of a stream table."""
    return f"rec_{fnv1a_64(target.encode()):016x}"


class _WithCte:
    """A schema lookup that also knows the recursive CTE, as a table of the given columns."""

    def __init__(self, lookup: ir.SchemaLookup, name: str, columns: tuple[ir.Column, ...]):
        self.lookup, self.name, self.columns = lookup, name, columns

    def table(self, schema: str | None, name: str) -> ir.SourceTable:
        if schema is None and name == self.name:
            return ir.SourceTable("", name, self.columns, None)
        return self.lookup.table(schema, name)

    def expression_types(self, from_clause: str, exprs: list[str]) -> list[str]:
        return self.lookup.expression_types(from_clause, exprs)

    def is_volatile_function(self, name: str) -> bool:
        return self.lookup.is_volatile_function(name)

    def is_aggregate_function(self, name: str) -> bool:
        return self.lookup.is_aggregate_function(name)


def _plain_block(shape: ir.QueryShape, what: str) -> None:
    """A block of a recursive CTE must be monotone: inner joins, WHERE, a projection."""
    problem = None
    if shape.aggregate or shape.distinct:
        problem = "GROUP BY, aggregates or DISTINCT"
    elif shape.window_partition is not None:
        problem = "window functions"
    elif shape.semijoins:
        problem = "EXISTS/IN subqueries"
    elif any(f.join not in ("from", "inner", "cross") for f in shape.froms):
        problem = "outer joins"
    if problem:
        raise UnsupportedConstruct(
            f"{problem} in {what}",
            "keep the recursive CTE to inner joins, WHERE and a select list, and put the rest "
            "in a stream table reading this one, or " + _sqlglot.FULL_ONLY_HINT,
        )
    for item in shape.froms:
        if item.source.schema and item.source.column("__pgt_w") is not None:
            raise UnsupportedConstruct(
                f"source column {item.source.qualified}.__pgt_w collides with the change-window "
                "weight",
                "rename the column",
            )


# Type names (as format_type gives them without a modifier) that a CAST would read with a default
# length and truncate to (character → character(1)); the recursive CTE's rows are cast to these
# instead. An untyped literal in the non-recursive term makes a text column, as in PostgreSQL.
_CAST_SAFE_TYPES = {"unknown": "text", "character": "bpchar", "bit": "bit varying"}


def _recursive_plan(
    parts: _sqlglot.RecursiveParts,
    lookup: ir.SchemaLookup,
    output_names: list[str],
    target: str,
    normalized: str,
) -> DeltaPlan:
    name = parts.name
    columns = parts.columns or _sqlglot.output_names_of(parts.bases[0])
    if not all(columns) or len(set(columns)) != len(columns):
        raise UnsupportedConstruct(
            f"recursive CTE {name} without distinct column names",
            f"name its columns: WITH RECURSIVE {name}(col1, col2, …)",
        )
    if any(c.startswith("__pgt_") for c in columns):
        raise UnsupportedConstruct(
            f"recursive CTE {name} with a column named __pgt_…", "rename the column"
        )
    bases = [_sqlglot.analyze(b, lookup, columns) for b in parts.bases]
    for b in bases:
        _plain_block(b, f"the non-recursive term of {name}")
    first = bases[0]
    types = [
        _CAST_SAFE_TYPES.get(t, t)
        for t in lookup.expression_types(
            from_clause_sql(first.froms), [o.sql for o in first.outputs]
        )
    ]
    cte_lookup = _WithCte(
        lookup, name, tuple(ir.Column(c, t) for c, t in zip(columns, types, strict=True))
    )
    step = _sqlglot.analyze(parts.step, cte_lookup, columns)
    _plain_block(step, f"the recursive term of {name}")
    outer = _sqlglot.analyze(parts.outer, cte_lookup, output_names)
    if (
        len(outer.froms) != 1
        or outer.froms[0].source.schema
        or outer.aggregate
        or outer.distinct
        or outer.window_partition is not None
        or outer.semijoins
    ):
        raise UnsupportedConstruct(
            f"a query over the recursive CTE {name} other than SELECT … FROM {name} WHERE …",
            f"make SELECT … FROM {name} a stream table and join, group or aggregate it in "
            "another stream table reading it, or " + _sqlglot.FULL_ONLY_HINT,
        )
    (step_alias,) = [f.alias for f in step.froms if not f.source.schema]
    backing = f'"pgtrickle_changes".{quote_ident(recursive_backing_name(target))}'
    rec = recursive.Recursion(
        name, tuple(columns), tuple(types), tuple(bases), step, step_alias, outer, backing
    )
    unique: dict[str, ir.SourceTable] = {}
    for shape in [*bases, step]:
        for f in shape.froms:
            if f.source.schema:
                unique.setdefault(f.source.qualified, f.source)
    names = [o.name for o in outer.outputs]
    ops = [
        OperatorInfo(
            "Recursive CTE",
            f"{name}({', '.join(columns)}): {len(bases)} base block(s) UNION step over "
            + ", ".join(f.source.qualified for f in step.froms if f.source.schema),
            "set semantics (UNION)",
            "the fixpoint is kept in pgtrickle_changes." + recursive_backing_name(target),
        ),
        OperatorInfo(
            "Semi-naive insertion",
            "facts using inserted rows, and what the step derives from them",
            "O(Δ + new facts), through the backing table's indexes on the step's join columns",
            "a recursive query seeded by the change, minus the facts already present",
        ),
        OperatorInfo(
            "Over-deletion (DRed)",
            "facts derivable from deleted rows, closed under the step",
            "everything reachable from the deleted rows (up to all of r)",
            "runs only when a source lost rows",
        ),
        OperatorInfo(
            "Rederivation (DRed)",
            "over-deleted facts that still have a derivation",
            "the base and step blocks over the current sources, filtered to the over-deleted "
            "facts (may scan the sources)",
            "then the semi-naive closure from them",
        ),
        OperatorInfo(
            "Project",
            ", ".join(names) + (f" WHERE {outer.where}" if outer.where else ""),
            "O(Δr)",
            "applied to the facts added (+1) and removed (−1); rows kept as copies by content",
        ),
    ]
    return DeltaPlan(
        normalized,
        RECURSIVE,
        recursive.full(rec),
        names,
        [],
        sources=list(unique.values()),
        operators=ops,
        notes=outer.notes,
        target=target,
        recursive=rec,
    )


__all__ = [
    "AGGREGATE",
    "Changed",
    "FULL_ONLY",
    "LINEAR_KEYED",
    "LINEAR_MULTISET",
    "RECURSIVE",
    "TOPK",
    "WINDOW_PARTITIONS",
    "DeltaPlan",
    "merge_columns",
    "TooManyChangedInputs",
    "compile_query",
]
