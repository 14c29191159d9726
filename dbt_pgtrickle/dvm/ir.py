"""The compiler's intermediate representation: what a defining query *is*, independent of SQL text.

:func:`dbt_pgtrickle.dvm._sqlglot.analyze` turns a query into a :class:`QueryShape`; operator
modules turn a shape into SQL. Expressions here are SQL fragments rendered by sqlglot from the
parsed query (never pasted user text), so they are safe to compose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    not_null: bool = False
    # The column's collation (quoted, qualified) when it is not its type's default: a change
    # buffer's copy of the column must compare as the source does.
    collation: str | None = None


@dataclass(frozen=True)
class SourceTable:
    """A base table read by a defining query, as the catalog describes it."""

    schema: str
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] | None
    kind: str = "table"  # table | partitioned | view | matview | foreign | other

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def column(self, name: str) -> Column | None:
        for col in self.columns:
            if col.name == name:
                return col
        return None


class SchemaLookup(Protocol):
    """What the compiler needs to know about the database (the engine implements it on a
    connection; unit tests use a fixed dictionary)."""

    def table(self, schema: str | None, name: str) -> SourceTable: ...

    def expression_types(self, from_clause: str, exprs: list[str]) -> list[str]: ...

    def is_volatile_function(self, name: str) -> bool: ...

    def is_aggregate_function(self, name: str) -> bool: ...


# Aggregate kinds the compiler maintains algebraically; everything else is RESCAN.
COUNT_STAR = "count_star"
COUNT = "count"
SUM = "sum"
AVG = "avg"
MIN = "min"
MAX = "max"
RESCAN = "rescan"


@dataclass(frozen=True)
class AggCall:
    """One distinct aggregate call of the query (``SUM(x)`` used twice is one call)."""

    kind: str  # one of the kinds above
    sql: str  # the whole call, e.g. ``SUM(a.x)`` or ``STRING_AGG(a.c, ',' ORDER BY a.c)``
    arg: str | None  # the argument of count/sum/avg/min/max
    arg_type: str | None = None


@dataclass(frozen=True)
class Output:
    """One visible column of the stream table."""

    name: str
    sql: str  # over the source alias (linear shapes) or over __pgt_key_i / __pgt_agg_j


@dataclass(frozen=True)
class FromItem:
    """One relation of the FROM clause under its alias, with how it joins the ones before it.

    ``join = "null"`` appears only in the inner-join blocks an outer join is expanded into
    (:func:`.operators.join.blocks`): the alias is NULL-padded, its columns all NULL."""

    alias: str
    source: SourceTable
    # from (the first) | inner | cross | left | right | full | lateral | lateral_left | null
    join: str = "from"
    on: str | None = None
    # Outer joins: per side whose rows can be missing, (its alias, the test "no row of it
    # matches"): ``NOT EXISTS`` with ``on`` under a fresh alias for that side, which must not
    # clash with the padded alias of the outer query.
    anti_tests: tuple[tuple[str, SemiJoin], ...] = ()
    # Aliases whose columns all being NULL keeps ``on`` from being true (it is strict in them).
    null_rejects: frozenset[str] = frozenset()
    # A set-returning function in FROM (join = lateral | lateral_left): its call, rendered, and
    # the column names it is given (``WITH ORDINALITY AS alias(columns)``; the last one is the
    # ordinality). ``source`` then describes its visible columns (kind "function", no table).
    function: str | None = None
    function_columns: tuple[str, ...] = ()

    @property
    def is_function(self) -> bool:
        return self.function is not None

    @property
    def ordinality(self) -> str:
        """The ordinality column of a set-returning function item."""
        return self.function_columns[-1]


@dataclass(frozen=True)
class SemiJoin:
    """A WHERE conjunct ``[NOT] EXISTS (SELECT … FROM source AS alias WHERE condition)`` (IN and
    NOT IN subqueries are rewritten into this form). ``condition`` may refer to outer aliases."""

    negated: bool
    source: SourceTable
    alias: str
    condition: str
    # The columns of ``alias`` the condition reads, when it reads nothing else of it (then
    # changes whose weights cancel per these columns cannot flip the test); None: unknown.
    keys: tuple[str, ...] | None = None


@dataclass
class QueryShape:
    """``SELECT [DISTINCT] outputs FROM t1 [JOIN t2 ON …]… [WHERE] [GROUP BY] [HAVING]`` over base
    tables joined by inner, cross and outer joins (a left-deep chain)."""

    froms: list[FromItem]
    where: str | None
    outputs: list[Output]
    aggregate: bool = False
    distinct: bool = False
    group_keys: list[str] = field(default_factory=list)
    group_key_not_null: list[bool] = field(default_factory=list)
    aggs: list[AggCall] = field(default_factory=list)
    having: str | None = None
    notes: list[str] = field(default_factory=list)
    semijoins: list[SemiJoin] = field(default_factory=list)
    # Window functions in the SELECT list: their common PARTITION BY expressions ([] = one
    # partition); None when the query has no window function.
    window_partition: list[str] | None = None
    # DISTINCT ON: the ORDER BY that picks each partition's first row (window_partition = keys).
    distinct_on_order: str | None = None
    # GROUPING SETS / ROLLUP / CUBE: one aggregate shape per grouping set; each has its index in
    # grouping_set_id (part of its row ids) and only the set's keys as group_keys.
    grouping_sets: list[QueryShape] | None = None
    grouping_set_id: int | None = None
    # Aliases whose columns all being NULL keeps WHERE from being true.
    where_null_rejects: frozenset[str] = frozenset()

    @property
    def source(self) -> SourceTable:
        """The first (for single-table queries: the only) source."""
        return self.froms[0].source

    @property
    def alias(self) -> str:
        return self.froms[0].alias

    @property
    def keyed(self) -> bool:
        """Whether every joined table has a primary key (rows get key-based identities: the
        keys, and the ordinality of each set-returning function's row)."""
        return all(f.source.primary_key for f in self.tables)

    @property
    def tables(self) -> list[FromItem]:
        """The FROM items that read a table (not the set-returning functions)."""
        return [f for f in self.froms if not f.is_function]

    @property
    def has_outer_joins(self) -> bool:
        return any(f.join in OUTER_JOIN_KINDS for f in self.froms)


OUTER_JOIN_KINDS = ("left", "right", "full")


@dataclass(frozen=True)
class SetOp:
    """A node of a set-operation tree: ``left op [ALL] right``. Leaves are indexes into the list
    of branch shapes (each a FROM/WHERE block with a projection)."""

    op: str  # union | intersect | except
    all: bool
    left: SetOp | int
    right: SetOp | int

    def leaves(self) -> list[int]:
        out: list[int] = []
        for side in (self.left, self.right):
            out.extend([side] if isinstance(side, int) else side.leaves())
        return out

    def render(self) -> str:
        """``(B1 INTERSECT B2) EXCEPT ALL B3`` (branches numbered from 1), for ``explain``."""

        def part(side: SetOp | int) -> str:
            return f"B{side + 1}" if isinstance(side, int) else f"({side.render()})"

        keyword = self.op.upper() + (" ALL" if self.all else "")
        return f"{part(self.left)} {keyword} {part(self.right)}"
