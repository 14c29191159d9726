"""The one module that talks to sqlglot: parse a defining query and describe its shape.

Everything sqlglot-specific (node classes, dialect quirks, rendering) stays here; the operator
modules receive a :class:`~dbt_pgtrickle.dvm.ir.QueryShape` whose expressions are SQL text rendered
by sqlglot from the parsed tree with every identifier quoted.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from ..errors import QueryError, UnsupportedConstruct
from . import ir
from .operators._sql import from_clause_sql

DIALECT = "postgres"

# Functions whose value changes between calls or over time: a delta computed with them would not
# match a recomputation, so a query using them can only be refreshed FULL.
_TIME_VARYING_NODES: tuple[type[exp.Expr], ...] = (
    exp.Rand,
    exp.CurrentTimestamp,
    exp.CurrentDate,
    exp.CurrentTime,
    exp.CurrentDatetime,
    exp.Uuid,
)
_TIME_VARYING_NAMES = {
    "now",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "random",
    "nextval",
    "currval",
    "setval",
    "gen_random_uuid",
    "txid_current",
    "pg_current_xact_id",
}
FULL_ONLY_HINT = "use refresh_mode FULL or AUTO, which recomputes the whole query"


def parse(query: str) -> exp.Query:
    """Parse ``query`` as exactly one SELECT-like statement, identifiers normalised as PostgreSQL
    folds them (unquoted names to lower case)."""
    try:
        statements = [s for s in sqlglot.parse(query, read=DIALECT) if s is not None]
    except ParseError as exc:
        raise QueryError(f"the query is not valid SQL: {_parse_error_text(exc)}") from None
    if len(statements) != 1:
        raise QueryError(
            f"the query must be exactly one SELECT statement, found {len(statements)} statements"
        )
    tree = statements[0]
    if not isinstance(tree, exp.Query):
        kind = tree.key.upper()
        raise QueryError(f"the query must be a SELECT statement, not {kind}")
    if tree.find(exp.Into):
        raise QueryError("SELECT ... INTO is not allowed in a defining query")
    normalized = normalize_identifiers(tree, dialect=DIALECT)
    assert isinstance(normalized, exp.Query)
    _unwrap_leading_join_parens(normalized)
    return normalized


def _is_join_group(node: exp.Expr) -> bool:
    """Whether ``node`` is a parenthesised join group ``(a JOIN b …)`` (not a derived table)."""
    return (
        isinstance(node, exp.Subquery)
        and not node.alias
        and not any(node.args.get(a) for a in ("laterals", "pivots", "sample"))
        and (
            isinstance(node.this, exp.Table)
            or (isinstance(node.this, exp.Subquery) and bool(node.this.alias))  # derived table
            or _is_join_group(node.this)
        )
    )


def _unwrap_leading_join_parens(tree: exp.Query) -> None:
    """``FROM ((a JOIN b ON …) LEFT JOIN c ON …) JOIN d …`` → ``FROM a JOIN b ON … LEFT JOIN c
    ON … JOIN d …``: joins associate to the left, so parentheses around the leading join
    group change nothing (PostgreSQL prints every view's joins that way)."""
    for select in tree.find_all(exp.Select):
        frm = select.args.get("from_")
        while frm is not None:
            paren = frm.this
            if not _is_join_group(paren):
                break
            inner = paren.this
            hoisted = list(paren.args.get("joins") or [])
            if not _is_join_group(inner):  # the first table of the group
                hoisted = list(inner.args.get("joins") or []) + hoisted
                inner.set("joins", None)
            frm.set("this", inner)
            select.set("joins", hoisted + list(select.args.get("joins") or []))


def _parse_error_text(exc: ParseError) -> str:
    """A one-line description without sqlglot's internal token dumps."""
    if not exc.errors:
        return str(exc).splitlines()[0]
    err = exc.errors[0]
    description = str(err.get("description") or "syntax error")
    if "<Token" in description:
        description = description.split("<Token", 1)[0].rstrip(" :") or "syntax error"
        if description.endswith(" but got"):
            description = description[: -len(" but got")]
    if "<class" in description:  # "Required keyword: 'this' missing for <class ...>"
        description = "incomplete clause"
    near = str(err.get("highlight") or "").strip()
    where = f" at line {err.get('line')}, column {err.get('col')}"
    return description + where + (f", near {near!r}" if near else "")


def render(node: exp.Expr) -> str:
    """SQL text of ``node`` for PostgreSQL with every identifier quoted."""
    return node.sql(dialect=DIALECT, identify=True)


def query_hash(text: str) -> str:
    """Hash of a query's text as given (dbt compares compiled SQL with it)."""
    return hashlib.sha256(text.encode()).hexdigest()


#: How deep views may reference views (PostgreSQL has no limit; a deeper chain is refused).
MAX_VIEW_DEPTH = 16


def expand_views(query: str, definition: Callable[[str | None, str], str | None]) -> str:
    """``query`` with every view it reads replaced by the view's definition as a derived table
    under the same alias (views of views too), or ``query`` unchanged when it reads no view.
    ``definition(schema, name)``: the view's SELECT, or None for anything else."""
    tree = parse(query)
    expanded = False
    for _ in range(MAX_VIEW_DEPTH):
        cte_names = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
        replaced = False
        for table in list(tree.find_all(exp.Table)):
            if not isinstance(table.this, exp.Identifier):
                continue  # table functions such as generate_series(...)
            schema = table.db or None
            if schema is None and table.name in cte_names:
                continue
            text = definition(schema, table.name)
            if text is None:
                continue
            alias = table.args.get("alias") or exp.TableAlias(
                this=exp.to_identifier(table.name, quoted=True)
            )
            table.replace(
                exp.Subquery(
                    this=parse(text.rstrip().rstrip(";")),
                    alias=alias,
                    joins=table.args.get("joins"),  # a view leading a parenthesised join
                )
            )
            replaced = expanded = True
        if not replaced:
            return render(tree) if expanded else query
    raise QueryError(
        f"the query reads views nested more than {MAX_VIEW_DEPTH} deep; "
        "read a view closer to the tables"
    )


def referenced_tables(tree: exp.Query) -> list[tuple[str | None, str]]:
    """``(schema or None, name)`` of every relation the query reads, CTE names excluded."""
    cte_names = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    seen: list[tuple[str | None, str]] = []
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            continue  # table functions such as generate_series(...)
        schema = table.db or None
        if schema is None and table.name in cte_names:
            continue
        key = (schema, table.name)
        if key not in seen:
            seen.append(key)
    return seen


# Set-returning functions maintained in FROM. All immutable: the rows they return for a row of the
# items before them never change, which is the whole delta rule (operators/lateral.py). Value: the
# names of their columns, or None for one column named as PostgreSQL names it (the column alias,
# else the function's alias, else the function's name).
_SRF_COLUMNS: dict[str, tuple[str, ...] | None] = {
    "unnest": None,
    "jsonb_array_elements": ("value",),
    "jsonb_array_elements_text": ("value",),
    "json_array_elements": ("value",),
    "json_array_elements_text": ("value",),
    "jsonb_each": ("key", "value"),
    "jsonb_each_text": ("key", "value"),
    "json_each": ("key", "value"),
    "json_each_text": ("key", "value"),
    "jsonb_object_keys": None,
    "json_object_keys": None,
    "generate_series": None,
    "regexp_split_to_table": None,
    "regexp_matches": None,
    "string_to_table": None,
}
_SRF_HINT = (
    "the set-returning functions maintained in FROM are " + ", ".join(sorted(_SRF_COLUMNS)) + "; "
)


def _srf_name(node: exp.Expr) -> str | None:
    """The name of a known set-returning function call, else None."""
    if isinstance(node, exp.Unnest | exp.Explode):
        return "unnest"
    if isinstance(node, exp.ExplodingGenerateSeries | exp.GenerateSeries):
        return "generate_series"
    if isinstance(node, exp.Anonymous) and str(node.this).lower() in _SRF_COLUMNS:
        return str(node.this).lower()
    return None


@dataclass(frozen=True)
class _SetReturningCall:
    """A function call in FROM: ``[LATERAL] f(…) [WITH ORDINALITY] [AS alias(columns)]``."""

    call: exp.Expr  # without alias and ordinality
    name: str | None  # a known set-returning function, else None
    alias: str | None
    columns: list[str]  # the column aliases as written
    ordinality: bool


def _set_returning_call(target: exp.Expr) -> _SetReturningCall | exp.Expr | None:
    """The function call a FROM item is, or the node that is not a function call (a LATERAL
    subquery); None for a plain table."""
    node, alias, ordinality = target, None, False
    if isinstance(node, exp.Lateral) or (
        isinstance(node, exp.Table) and not isinstance(node.this, exp.Identifier)
    ):
        alias, ordinality = node.args.get("alias"), bool(node.args.get("ordinality"))
        node = node.this
    elif not isinstance(node, exp.Unnest):
        return None
    columns = [c.name for c in alias.columns] if isinstance(alias, exp.TableAlias) else []
    if isinstance(node, exp.Unnest):
        alias = alias or node.args.get("alias")
        columns = columns or (
            [c.name for c in alias.columns] if isinstance(alias, exp.TableAlias) else []
        )
        offset = node.args.get("offset")
        if isinstance(offset, exp.Identifier):
            columns, ordinality = [*columns, offset.name], True
        elif offset:
            ordinality = True
        node = node.copy()
        node.set("alias", None)
        node.set("offset", None)
    elif not isinstance(node, exp.Func):
        return node
    name = alias.name if isinstance(alias, exp.TableAlias) and alias.name else None
    return _SetReturningCall(node, _srf_name(node), name, columns, ordinality)


def _construct_of(
    tree: exp.Select,
    allow_windows: bool = False,
    allow_distinct_on: bool = False,
    allow_grouping_sets: bool = False,
) -> tuple[str, str] | None:
    """The first construct the compiler does not handle, with a hint."""
    with_ = tree.args.get("with_") or tree.args.get("with")
    if with_ is not None and with_.args.get("recursive"):
        return "WITH RECURSIVE", FULL_ONLY_HINT
    if with_ is not None:
        return "WITH (a CTE that cannot be merged into the query)", FULL_ONLY_HINT
    joins = tree.args.get("joins") or []
    accepted_functions: set[int] = set()
    for position, join in enumerate(joins):
        side = str(join.args.get("side") or "").upper()
        if side in ("RIGHT", "FULL") and position > 0:
            return (
                f"{side} OUTER JOIN after other joins (its preserved side would be a join)",
                "reorder the FROM clause so the tables whose rows are kept come first and use "
                "LEFT JOIN, or " + FULL_ONLY_HINT,
            )
        if side and not join.args.get("on"):
            return f"{side} OUTER JOIN without ON", "write the join condition with ON"
        if join.args.get("using"):
            return "JOIN ... USING", "write the join condition with ON"
        if join.args.get("method"):
            return f"{str(join.args['method']).upper()} JOIN", "write the join condition with ON"
        target = join.this
        call = _set_returning_call(target)
        if isinstance(call, _SetReturningCall):
            if call.name is None:
                return (
                    f"function {render(call.call)} in FROM",
                    _SRF_HINT + "write its rows to a table and join that, or " + FULL_ONLY_HINT,
                )
            if side in ("RIGHT", "FULL"):
                return f"{side} JOIN to a set-returning function", "use LEFT JOIN LATERAL"
            accepted_functions.add(id(target))
            continue
        if isinstance(target, exp.Lateral):
            return (
                "LATERAL subquery",
                "rewrite it as a join with GROUP BY or as a set-returning function in FROM, or "
                + FULL_ONLY_HINT,
            )
        if not isinstance(target, exp.Table) or not isinstance(target.this, exp.Identifier):
            return "subquery or function in FROM", FULL_ONLY_HINT
        if target.args.get("sample") or target.args.get("only"):
            return "TABLESAMPLE or ONLY in FROM", "remove it"
    if tree.args.get("limit") or tree.args.get("offset"):
        return "LIMIT/OFFSET", "remove LIMIT/OFFSET, or " + FULL_ONLY_HINT
    if tree.args.get("locks"):
        return "FOR UPDATE/SHARE", "remove the locking clause"
    distinct = tree.args.get("distinct")
    if isinstance(distinct, exp.Distinct) and distinct.args.get("on") and not allow_distinct_on:
        return "DISTINCT ON", FULL_ONLY_HINT
    from_ = tree.args.get("from_") or tree.args.get("from")
    if from_ is None:
        return "SELECT without FROM", "read from a table"
    if not isinstance(from_.this, exp.Table) or not isinstance(from_.this.this, exp.Identifier):
        return "subquery or function in FROM", FULL_ONLY_HINT
    if from_.this.args.get("sample"):
        return "TABLESAMPLE", "remove TABLESAMPLE"
    if from_.this.args.get("only"):
        return "FROM ONLY", "remove ONLY"
    group = tree.args.get("group")
    if group is not None and (
        any(group.args.get(k) for k in ("grouping_sets", "rollup", "cube", "totals"))
        or (
            not allow_grouping_sets
            and any(
                isinstance(g, exp.GroupingSets | exp.Rollup | exp.Cube) for g in group.expressions
            )
        )
    ):
        return "GROUPING SETS/ROLLUP/CUBE", FULL_ONLY_HINT
    for node in tree.walk():
        if isinstance(node, exp.Window) and not allow_windows:
            return "window function", FULL_ONLY_HINT
        if isinstance(node, (exp.Subquery, exp.Exists)) or (
            isinstance(node, exp.Select) and node is not tree
        ):
            return "subquery", FULL_ONLY_HINT
        if isinstance(node, exp.Lateral | exp.Unnest) or _srf_name(node):
            if _within(node, accepted_functions):
                continue
            if isinstance(node, exp.Lateral):
                return "LATERAL subquery", FULL_ONLY_HINT
            return (
                f"set-returning function {_srf_name(node) or 'unnest'}() outside FROM",
                "call it in FROM: … CROSS JOIN LATERAL f(…) AS x(…), or " + FULL_ONLY_HINT,
            )
        if isinstance(node, _TIME_VARYING_NODES):
            return f"time-varying or volatile function {render(node)}", FULL_ONLY_HINT
    return None


def _within(node: exp.Expr, ids: set[int]) -> bool:
    """Whether ``node`` or one of its ancestors is one of the nodes ``ids``."""
    current: exp.Expr | None = node
    while current is not None:
        if id(current) in ids:
            return True
        current = current.parent
    return False


def _conjuncts(node: exp.Expr) -> list[exp.Expr]:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return [*_conjuncts(node.this), *_conjuncts(node.expression)]
    return [node]


def equalities(condition: str) -> list[tuple[str, str, str, str]]:
    """``(alias, column, alias, column)`` of each top-level conjunct of a rendered condition
    that equates two qualified columns (``"a"."x" = "b"."y"``); none if it does not parse."""
    try:
        node = sqlglot.parse_one(condition, read=DIALECT)
    except ParseError:
        return []
    return [
        (c.this.table, c.this.name, c.expression.table, c.expression.name)
        for c in _conjuncts(node)
        if isinstance(c, exp.EQ)
        and isinstance(c.this, exp.Column)
        and isinstance(c.expression, exp.Column)
        and c.this.table
        and c.expression.table
    ]


def implied_filter(conditions: list[str], alias: str, rename: str) -> str | None:
    """A condition on ``alias`` alone that every row of it satisfying all ``conditions``
    (rendered, ANDed) also satisfies, with ``alias`` written ``rename``; None when there is
    none (or a condition does not parse).

    Each conjunct that reads only ``alias`` is kept whole; an ``OR`` gives the ``OR`` of what its
    sides imply when each side implies something. Conjuncts with subqueries are left out. A
    change row that fails the result cannot contribute to a delta that applies ``conditions``
    to it, so its change window need not hold it."""
    kept: list[exp.Expr] = []
    for condition in conditions:
        try:
            node = sqlglot.parse_one(condition, read=DIALECT)
        except ParseError:
            continue
        implied = _implied(node, alias)
        if implied is not None:
            kept.append(implied)
    if not kept:
        return None
    out = exp.and_(*(k.copy() for k in kept))
    for col in out.find_all(exp.Column):
        col.set("table", exp.to_identifier(rename))
    return render(out)


def _implied(node: exp.Expr, alias: str, in_or: bool = False) -> exp.Expr | None:
    while isinstance(node, exp.Paren):
        node = node.this
    if node.find(exp.Subquery, exp.Select, exp.Exists):
        return None
    columns = list(node.find_all(exp.Column))
    if columns and all(c.table == alias for c in columns):
        # Evaluated on every row of the alias the query reads (unless an OR makes it depend on
        # a condition on another table: then only if no part of it can raise).
        return node if not in_or or _cannot_raise(node) else None
    if isinstance(node, exp.And):
        parts = [
            p
            for p in (_implied(node.this, alias, in_or), _implied(node.expression, alias, in_or))
            if p
        ]
        return exp.and_(*parts) if parts else None
    if isinstance(node, exp.Or):
        left, right = _implied(node.this, alias, True), _implied(node.expression, alias, True)
        return exp.or_(left, right) if left is not None and right is not None else None
    return None


_PLAIN_TESTS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Is, exp.In, exp.Between)


def _cannot_raise(node: exp.Expr) -> bool:
    """Whether ``node`` is made (with AND, OR, NOT) of boolean columns and comparison, ``IN``,
    ``BETWEEN``, ``[I]LIKE`` or ``IS`` tests of plain columns and constants (a constant's cast
    is evaluated once, when the query is planned)."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, (exp.And, exp.Or)):
        return _cannot_raise(node.this) and _cannot_raise(node.expression)
    if isinstance(node, exp.Not):
        return _cannot_raise(node.this)
    if isinstance(node, exp.Column):  # a boolean column
        return True
    if not isinstance(node, (*_PLAIN_TESTS, exp.Like, exp.ILike)):
        return False

    def plain(operand: exp.Expr) -> bool:
        while isinstance(operand, exp.Paren):
            operand = operand.this
        if isinstance(operand, exp.Cast):
            return isinstance(operand.this, exp.Literal)
        if isinstance(operand, exp.Neg):
            return isinstance(operand.this, exp.Literal)
        return isinstance(operand, (exp.Column, exp.Literal, exp.Null, exp.Boolean))

    operands = [v for v in node.args.values() if isinstance(v, exp.Expr)]
    operands += [e for v in node.args.values() if isinstance(v, list) for e in v]
    return bool(operands) and all(plain(o) for o in operands)


def _semijoin_form(node: exp.Expr) -> tuple[bool, exp.Expr | None, exp.Select, bool] | None:
    """``(negated, IN's left side, subquery, is IN)`` for ``[NOT] EXISTS (…)`` and
    ``x [NOT] IN (SELECT …)``; None for anything else."""
    negated = False
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Not):
        negated, node = True, node.this
        while isinstance(node, exp.Paren):
            node = node.this
    if isinstance(node, exp.Exists) and isinstance(node.this, exp.Select):
        return negated, None, node.this, False
    if isinstance(node, exp.In):
        query = node.args.get("query")
        inner = query.this if isinstance(query, exp.Subquery) else query
        if isinstance(inner, exp.Select):
            return negated, node.this, inner, True
    return None


def _split_semijoins(
    tree: exp.Select,
) -> tuple[exp.Select, list[tuple[bool, exp.Expr | None, exp.Select, bool]]]:
    """The query without its top-level EXISTS/IN-subquery conjuncts, and those conjuncts."""
    where = tree.args.get("where")
    if where is None:
        return tree, []
    semis, rest = [], []
    for conjunct in _conjuncts(where.this):
        form = _semijoin_form(conjunct)
        if form is None:
            rest.append(conjunct)
        else:
            semis.append(form)
    if not semis:
        return tree, []
    tree = tree.copy()
    if rest:
        tree.set("where", exp.Where(this=exp.and_(*[c.copy() for c in rest])))
    else:
        tree.set("where", None)
    return tree, semis


def _function_name(node: exp.Expr) -> str | None:
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    if isinstance(node, exp.Func):
        return node.sql_name().lower()
    return None


class _Analyzer:
    def __init__(self, tree: exp.Query, lookup: ir.SchemaLookup, output_names: list[str]):
        self.tree = tree
        self.lookup = lookup
        self.output_names = output_names

    def run(self) -> ir.QueryShape:
        self.where_null_rejects: frozenset[str] = frozenset()
        shape = self._run()
        shape.where_null_rejects = self.where_null_rejects
        return shape

    def _run(self) -> ir.QueryShape:
        tree = self.tree
        if not isinstance(tree, exp.Select):
            op = tree.key.upper()
            if isinstance(tree, exp.SetOperation) and not tree.args.get("distinct"):
                op += " ALL"
            raise UnsupportedConstruct(f"set operation {op}", FULL_ONLY_HINT)
        self._check_functions(tree)
        tree, raw_semijoins = _split_semijoins(tree)
        if tree.args.get("windows"):
            raise UnsupportedConstruct("WINDOW clause (named windows)", "write each window inline")
        windowed = any(isinstance(n, exp.Window) for e in tree.expressions for n in e.walk())
        distinct_node = tree.args.get("distinct")
        distinct_on = distinct_node.args.get("on") if distinct_node is not None else None
        problem = _construct_of(
            tree, allow_windows=windowed, allow_distinct_on=True, allow_grouping_sets=True
        )
        if problem:
            raise UnsupportedConstruct(*problem)

        from_ = tree.args.get("from_") or tree.args.get("from")
        assert from_ is not None  # _construct_of rejected queries without FROM
        tables = [from_.this, *(j.this for j in tree.args.get("joins") or [])]
        joins = [None, *(tree.args.get("joins") or [])]
        self.froms: list[ir.FromItem] = []
        for table, join in zip(tables, joins, strict=True):
            call = _set_returning_call(table)
            if isinstance(call, _SetReturningCall):
                assert join is not None  # _construct_of: the first FROM item is a table
                self.froms.append(self._function_item(call, join))
                continue
            source = self.lookup.table(table.db or None, table.name)
            if source.kind not in ("table", "partitioned"):
                raise UnsupportedConstruct(
                    f"source {source.qualified} is a {source.kind}, not a table",
                    "change capture needs a base table; " + FULL_ONLY_HINT,
                )
            alias = table.alias or table.name
            if join is None:
                self.froms.append(ir.FromItem(alias, source))
            else:
                on = join.args.get("on")
                side = str(join.args.get("side") or "").lower()
                kind = side or ("inner" if on is not None else "cross")
                self.froms.append(ir.FromItem(alias, source, kind, None))
        # ON conditions are qualified once every alias is known.
        for i, join in enumerate(joins[1:], start=1):
            on = join.args.get("on") if join is not None else None
            if on is not None:
                item = self.froms[i]
                qualified = self._qualify(on)
                tests: tuple[tuple[str, ir.SemiJoin], ...] = ()
                rejects = frozenset(_null_rejected_aliases(qualified))
                if item.join == "lateral_left":
                    rejects = frozenset()  # not an inner condition: the row is kept, padded
                if item.join in ir.OUTER_JOIN_KINDS:
                    # The NOT EXISTS tests of the padded rows: the side tested for a match
                    # under a fresh alias (the padded alias stays in the outer query, NULL).
                    sides = {"left": [i], "right": [0], "full": [i, 0]}[item.join]
                    tests = tuple(
                        (self.froms[s].alias, _anti_test(qualified, self.froms[s], f"__pgt_o{s}"))
                        for s in sides
                    )
                self.froms[i] = dataclasses.replace(
                    item, on=render(qualified), anti_tests=tests, null_rejects=rejects
                )
        self.from_sql = from_clause_sql(self.froms)

        semijoins = [self._semijoin(*raw) for raw in raw_semijoins]
        select_exprs = self._expand_stars(tree.expressions)
        if len(select_exprs) != len(self.output_names):
            raise QueryError(
                f"the query has {len(select_exprs)} output expressions but PostgreSQL "
                f"reports {len(self.output_names)} columns"
            )
        select_exprs = [self._qualify(e) for e in select_exprs]
        where = tree.args.get("where")
        where_sql = render(self._qualify(where.this)) if where is not None else None
        if where is not None:
            self.where_null_rejects = frozenset(_null_rejected_aliases(self._qualify(where.this)))

        notes: list[str] = []
        if tree.args.get("order") and distinct_on is None:
            notes.append("ORDER BY dropped: a stream table is an unordered set of rows")
        if distinct_on is not None:
            return self._distinct_on(
                tree, distinct_on, select_exprs, where_sql, semijoins, windowed
            )

        group = tree.args.get("group")
        group_exprs = list(group.expressions) if group is not None else []
        having = tree.args.get("having")
        aggs = self._collect_aggregates(select_exprs, having.this if having else None)
        distinct = tree.args.get("distinct") is not None

        partition = self._window_partition(select_exprs) if windowed else None
        if partition is not None and (group_exprs or aggs or having is not None or distinct):
            raise UnsupportedConstruct(
                "window functions over GROUP BY, aggregates or DISTINCT",
                "compute the grouped query in a stream table and the windows in another one "
                "reading it, or " + FULL_ONLY_HINT,
            )
        if not group_exprs and not aggs and having is None:
            outputs = [
                ir.Output(name, render(_unalias(e)))
                for name, e in zip(self.output_names, select_exprs, strict=True)
            ]
            if not distinct:
                return ir.QueryShape(
                    self.froms,
                    where_sql,
                    outputs,
                    notes=notes,
                    semijoins=semijoins,
                    window_partition=partition,
                )
            keys = [_unalias(e) for e in select_exprs]
            shape = self._grouped(keys, [], select_exprs, None, where_sql, notes, distinct=True)
            shape.semijoins = semijoins
            return shape

        if distinct:
            raise UnsupportedConstruct(
                "DISTINCT together with GROUP BY or aggregates",
                "remove DISTINCT (grouped rows are already distinct) or " + FULL_ONLY_HINT,
            )
        sets = _expand_grouping_sets(group)
        if sets is not None or any(
            isinstance(n, exp.Grouping) for e in select_exprs for n in e.walk()
        ):
            shape = self._grouping_sets(
                sets or [group_exprs],
                aggs,
                select_exprs,
                having.this if having else None,
                where_sql,
                notes,
            )
            for part in [shape, *(shape.grouping_sets or [])]:
                part.semijoins = semijoins
            return shape
        keys = [self._resolve_group_key(g, select_exprs) for g in group_exprs]
        shape = self._grouped(
            keys, aggs, select_exprs, having.this if having else None, where_sql, notes
        )
        shape.semijoins = semijoins
        return shape

    # -- helpers -------------------------------------------------------------------------------

    def _function_item(self, call: _SetReturningCall, join: exp.Join) -> ir.FromItem:
        """A set-returning function in FROM, joined LATERAL to the items before it."""
        assert call.name is not None
        alias = call.alias or call.name
        if any(f.alias == alias for f in self.froms):
            raise QueryError(f"table name {alias!r} specified more than once")
        function = render(self._qualify(call.call))  # over the items before it only
        # Its columns, as PostgreSQL describes them (the items before it cross joined: ON
        # conditions change no type).
        before = [
            dataclasses.replace(f, join="lateral", on=None)
            if f.is_function
            else ir.FromItem(f.alias, f.source, "from" if i == 0 else "cross")
            for i, f in enumerate(self.froms)
        ]
        described = (
            f"{from_clause_sql(before)} CROSS JOIN LATERAL {function} AS "
            f"{render(exp.to_identifier(alias, quoted=True))}"
        )
        types = self.lookup.expression_types(
            described, [render(exp.column(exp.Star(), table=exp.to_identifier(alias, True)))]
        )
        written = call.columns[: len(types)]
        ordinality = call.columns[len(types)] if len(call.columns) > len(types) else None
        defaults = _SRF_COLUMNS[call.name] or ((call.alias or call.name),)
        names = [*written, *defaults[len(written) :]]
        if len(names) != len(types):
            raise UnsupportedConstruct(
                f"set-returning function {call.name}() returning {len(types)} columns",
                f"name its columns: AS {alias}(c1, …, c{len(types)}), or " + FULL_ONLY_HINT,
            )
        if call.name == "generate_series" and "with time zone" in types[0]:
            raise UnsupportedConstruct(
                "generate_series() over timestamp with time zone (it depends on the TimeZone "
                "setting)",
                "generate a series of timestamp without time zone or dates, or " + FULL_ONLY_HINT,
            )
        visible = list(zip(names, types, strict=True))
        if call.ordinality:
            visible.append((ordinality or "ordinality", "bigint"))
        hidden_ordinality = [] if call.ordinality else ["__pgt_ord"]
        source = ir.SourceTable(
            "",
            call.name,
            tuple(ir.Column(n, t) for n, t in visible),
            None,
            kind="function",
        )
        side = str(join.args.get("side") or "").lower()
        return ir.FromItem(
            alias,
            source,
            "lateral_left" if side == "left" else "lateral",
            function=function,
            function_columns=(*(n for n, _ in visible), *hidden_ordinality),
        )

    def _distinct_on(
        self,
        tree: exp.Select,
        on: exp.Expr,
        select_exprs: list[exp.Expr],
        where_sql: str | None,
        semijoins: list[ir.SemiJoin],
        windowed: bool,
    ) -> ir.QueryShape:
        """``SELECT DISTINCT ON (k) … ORDER BY k, o``: the first row per k, kept like a window
        partition (see operators/window.py)."""
        if (
            windowed
            or tree.args.get("group")
            or tree.args.get("having")
            or any(isinstance(n, exp.AggFunc) for e in select_exprs for n in e.walk())
        ):
            raise UnsupportedConstruct(
                "DISTINCT ON with window functions, GROUP BY or aggregates", FULL_ONLY_HINT
            )
        order = tree.args.get("order")
        if order is None:
            raise UnsupportedConstruct(
                "DISTINCT ON without ORDER BY (which row is kept is arbitrary)",
                "add an ORDER BY that decides the row kept for each key",
            )
        keys = on.expressions if isinstance(on, exp.Tuple) else [on]

        def resolve(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Literal) and not node.is_string:
                return _unalias(select_exprs[int(node.this) - 1])
            if isinstance(node, exp.Column) and not node.table and self._owner(node.name) is None:
                for e in select_exprs:
                    if isinstance(e, exp.Alias) and e.alias == node.name:
                        return _unalias(e)
            return self._qualify(node)

        order_items = []
        for item in order.expressions:
            ordered = item.copy()
            ordered.set("this", resolve(item.this))
            order_items.append(render(ordered))
        outputs = [
            ir.Output(name, render(_unalias(e)))
            for name, e in zip(self.output_names, select_exprs, strict=True)
        ]
        return ir.QueryShape(
            self.froms,
            where_sql,
            outputs,
            semijoins=semijoins,
            window_partition=[render(resolve(k)) for k in keys],
            distinct_on_order=", ".join(order_items),
        )

    def _window_partition(self, select_exprs: list[exp.Expr]) -> list[str]:
        """The PARTITION BY shared by every window function of the SELECT list."""
        partitions = []
        for e in select_exprs:
            for w in e.find_all(exp.Window):
                if any(inner is not w for inner in w.find_all(exp.Window)):
                    raise UnsupportedConstruct("nested window functions", FULL_ONLY_HINT)
                partitions.append([render(p) for p in w.args.get("partition_by") or []])
        if any(p != partitions[0] for p in partitions):
            raise UnsupportedConstruct(
                "window functions with different PARTITION BY",
                "split them into stream tables with one PARTITION BY each, or " + FULL_ONLY_HINT,
            )
        return partitions[0]

    def _semijoin(
        self, negated: bool, lhs: exp.Expr | None, select: exp.Select, is_in: bool
    ) -> ir.SemiJoin:
        """Validate one EXISTS/IN subquery and express it as ``[NOT] EXISTS (… WHERE cond)``."""
        problem = _construct_of(select)
        if problem is None and (
            select.args.get("joins")
            or select.args.get("group")
            or select.args.get("having")
            or any(isinstance(n, exp.AggFunc) for n in select.walk())
        ):
            problem = ("subquery with joins, grouping or aggregates", FULL_ONLY_HINT)
        if problem:
            construct, hint = problem
            raise UnsupportedConstruct(f"{construct} inside an EXISTS/IN subquery", hint)
        from_ = select.args.get("from_") or select.args.get("from")
        assert from_ is not None
        table: exp.Table = from_.this
        source = self.lookup.table(table.db or None, table.name)
        if source.kind not in ("table", "partitioned"):
            raise UnsupportedConstruct(
                f"subquery source {source.qualified} is a {source.kind}, not a table",
                FULL_ONLY_HINT,
            )
        alias = table.alias or table.name
        if any(f.alias == alias for f in self.froms):
            raise UnsupportedConstruct(
                f"subquery alias {alias} repeats an alias of the outer query",
                "give the subquery's table another alias",
            )

        def scoped(node: exp.Expr) -> str:
            node = node.copy()
            for col in list(node.find_all(exp.Column)):
                if isinstance(col.this, exp.Star):
                    continue
                owner = col.table or (
                    alias if source.column(col.name) is not None else self._owner(col.name)
                )
                col.set("catalog", None)
                col.set("db", None)
                if owner:
                    col.set("table", exp.to_identifier(owner, quoted=True))
            return render(node)

        where = select.args.get("where")
        conds = [f"({scoped(where.this)})"] if where is not None else []
        if is_in:
            assert lhs is not None
            if len(select.expressions) != 1:
                raise QueryError("an IN subquery must select exactly one column")
            rhs_node = _unalias(select.expressions[0])
            rhs = scoped(rhs_node)
            left_node = self._qualify(lhs)
            left = render(left_node)
            rhs_col = (
                source.column(rhs_node.name)
                if isinstance(rhs_node, exp.Column) and rhs_node.table in ("", alias)
                else None
            )
            if negated and not (
                rhs_col is not None and rhs_col.not_null and self._never_null(left_node)
            ):  # NOT IN: false as soon as the subquery yields a NULL or lhs is NULL
                conds.append(f"({rhs} = {left} OR {rhs} IS NULL OR {left} IS NULL)")
            else:
                conds.append(f"{rhs} = {left}")
        return ir.SemiJoin(negated, source, alias, " AND ".join(conds) or "true")

    def _check_functions(self, tree: exp.Expr) -> None:
        for node in tree.walk():
            name = _function_name(node)
            if name is None:
                continue
            if name in _TIME_VARYING_NAMES or (
                isinstance(node, exp.Anonymous) and self.lookup.is_volatile_function(name)
            ):
                raise UnsupportedConstruct(
                    f"time-varying or volatile function {name}()", FULL_ONLY_HINT
                )

    def _expand_stars(self, exprs: list[exp.Expr]) -> list[exp.Expr]:
        out: list[exp.Expr] = []
        for e in exprs:
            if isinstance(e, exp.Star):
                items = self.froms
            elif isinstance(e, exp.Column) and isinstance(e.this, exp.Star):
                items = [f for f in self.froms if f.alias == e.table]
            else:
                out.append(e)
                continue
            out.extend(
                exp.column(
                    exp.to_identifier(c.name, quoted=True),
                    table=exp.to_identifier(f.alias, quoted=True),
                )
                for f in items
                for c in f.source.columns
            )
        return out

    def _owner(self, column: str) -> str | None:
        """The alias whose source has ``column``, when exactly one has it."""
        owners = [f.alias for f in self.froms if f.source.column(column) is not None]
        return owners[0] if len(owners) == 1 else None

    def _qualify(self, node: exp.Expr) -> exp.Expr:
        """Every column reference qualified by its source alias alone (no schema/catalog)."""
        node = node.copy()
        for col in list(node.find_all(exp.Column)):
            if isinstance(col.this, exp.Star):
                continue
            table = col.table or self._owner(col.name)
            col.set("catalog", None)
            col.set("db", None)
            if table:
                col.set("table", exp.to_identifier(table, quoted=True))
        return node

    def _never_null(self, node: exp.Expr) -> bool:
        """``node`` is a NOT NULL column of an input that no outer join pads with NULLs. (NOT
        IN over two such columns is plain inequality: no ``IS NULL`` escapes, which would stop
        the delta's correlated lookups from using an index.)"""
        column = self._column_of(node)
        return (
            column is not None
            and column.not_null
            and all(f.join in ("from", "inner", "cross") for f in self.froms)
        )

    def _column_of(self, node: exp.Expr) -> ir.Column | None:
        """The source column a qualified column reference names."""
        if not isinstance(node, exp.Column):
            return None
        for f in self.froms:
            if f.alias == node.table:
                return f.source.column(node.name)
        return None

    def _resolve_group_key(self, key: exp.Expr, select_exprs: list[exp.Expr]) -> exp.Expr:
        if isinstance(key, exp.Literal) and not key.is_string:
            pos = int(key.this)
            if not 1 <= pos <= len(select_exprs):
                raise QueryError(f"GROUP BY position {pos} is not in the select list")
            return _unalias(select_exprs[pos - 1])
        if isinstance(key, exp.Column) and not key.table and self._owner(key.name) is None:
            for e in select_exprs:
                if isinstance(e, exp.Alias) and e.alias == key.name:
                    return _unalias(e)
        return self._qualify(key)

    def _collect_aggregates(
        self, select_exprs: list[exp.Expr], having: exp.Expr | None
    ) -> list[exp.Expr]:
        found: list[exp.Expr] = []
        roots = [*select_exprs, *([self._qualify(having)] if having is not None else [])]
        for root in roots:
            for node in root.walk():
                ancestors = _ancestors(node, root)
                if (
                    self._is_aggregate_node(node)
                    and not any(self._is_aggregate_node(p) for p in ancestors)
                    and not any(isinstance(p, exp.Window) for p in [node, *ancestors])
                    and node not in found
                ):
                    found.append(node)
        return found

    def _is_aggregate_node(self, node: exp.Expr) -> bool:
        if isinstance(node, exp.Grouping):  # GROUPING(…) is a function of the grouping set
            return False
        if isinstance(node, exp.Filter | exp.WithinGroup):
            return True
        if isinstance(node, exp.AggFunc):
            return not isinstance(node.parent, exp.Filter | exp.WithinGroup)
        if isinstance(node, exp.Anonymous):
            return self.lookup.is_aggregate_function(str(node.this).lower())
        return False

    def _classify(self, node: exp.Expr) -> ir.AggCall:
        sql = render(node)
        condition = None
        if isinstance(node, exp.Filter) and isinstance(node.this, exp.AggFunc):
            # agg(x) FILTER (WHERE c) is agg(CASE WHEN c THEN x END): the aggregates below
            # ignore NULLs, and count(*) FILTER counts the rows where c holds.
            where = node.expression
            condition = where.this if isinstance(where, exp.Where) else where
            node = node.this
        arg = node.this if isinstance(node, exp.AggFunc) else None
        distinct = isinstance(arg, exp.Distinct)
        if condition is not None and not distinct and arg is not None:
            value = exp.Literal.number(1) if isinstance(arg, exp.Star) else arg
            arg = exp.Case(ifs=[exp.If(this=condition.copy(), true=value.copy())])
            if isinstance(node, exp.Count):
                return ir.AggCall(ir.COUNT, sql, render(arg))
        elif condition is not None:
            return ir.AggCall(ir.RESCAN, sql, None)
        if isinstance(node, exp.Count) and not distinct:
            if isinstance(arg, exp.Star) or arg is None:
                return ir.AggCall(ir.COUNT_STAR, sql, None)
            return ir.AggCall(ir.COUNT, sql, render(arg))
        kinds: dict[type[exp.Expr], str] = {
            exp.Sum: ir.SUM,
            exp.Avg: ir.AVG,
            exp.Min: ir.MIN,
            exp.Max: ir.MAX,
        }
        kind = kinds.get(type(node))
        if kind is None or distinct or arg is None or node.expressions:
            return ir.AggCall(ir.RESCAN, sql, None)
        arg_sql = render(arg)
        if kind in (ir.SUM, ir.AVG):
            (arg_type,) = self.lookup.expression_types(self.from_sql, [arg_sql])
            if arg_type not in _EXACT_NUMERIC_TYPES:
                return ir.AggCall(ir.RESCAN, sql, arg_sql, arg_type)
            return ir.AggCall(kind, sql, arg_sql, arg_type)
        return ir.AggCall(kind, sql, arg_sql)

    def _grouped(
        self,
        keys: list[exp.Expr],
        agg_nodes: list[exp.Expr],
        select_exprs: list[exp.Expr],
        having: exp.Expr | None,
        where_sql: str | None,
        notes: list[str],
        distinct: bool = False,
        classified: list[ir.AggCall] | None = None,
    ) -> ir.QueryShape:
        aggs = classified if classified is not None else [self._classify(n) for n in agg_nodes]

        def rewrite(node: exp.Expr) -> exp.Expr:
            def swap(n: exp.Expr) -> exp.Expr:
                for j, a in enumerate(agg_nodes):
                    if n == a:
                        return exp.column(exp.to_identifier(f"__pgt_agg_{j}", quoted=True))
                for i, k in enumerate(keys):
                    if n == k:
                        return exp.column(exp.to_identifier(f"__pgt_key_{i}", quoted=True))
                return n

            out = node.transform(swap)
            for col in out.find_all(exp.Column):
                if not col.name.startswith("__pgt_"):
                    raise UnsupportedConstruct(
                        f"column {col.name} is used outside an aggregate but is not a GROUP BY "
                        "expression",
                        "add it to GROUP BY",
                    )
            return out

        outputs = [
            ir.Output(name, render(rewrite(_unalias(e))))
            for name, e in zip(self.output_names, select_exprs, strict=True)
        ]
        having_sql = render(rewrite(self._qualify(having))) if having is not None else None
        not_null = []
        for k in keys:
            col = self._column_of(k)
            not_null.append(bool(col and col.not_null))
        return ir.QueryShape(
            self.froms,
            where_sql,
            outputs,
            aggregate=not distinct,
            distinct=distinct,
            group_keys=[render(k) for k in keys],
            group_key_not_null=not_null,
            aggs=aggs,
            having=having_sql,
            notes=notes,
        )

    def _grouping_sets(
        self,
        sets: list[list[exp.Expr]],
        agg_nodes: list[exp.Expr],
        select_exprs: list[exp.Expr],
        having: exp.Expr | None,
        where_sql: str | None,
        notes: list[str],
    ) -> ir.QueryShape:
        """``GROUP BY GROUPING SETS / ROLLUP / CUBE``: one aggregate shape per grouping set, in
        which the grouping expressions outside the set are typed NULLs and ``GROUPING(…)`` is a
        constant; the set's index goes into its row ids (see operators/grouping_sets.py)."""
        if len(sets) > MAX_GROUPING_SETS:
            raise UnsupportedConstruct(
                f"{len(sets)} grouping sets (at most {MAX_GROUPING_SETS} are maintained)",
                FULL_ONLY_HINT,
            )
        keys: list[exp.Expr] = []
        members: list[set[int]] = []
        for grouping_set in sets:
            indexes = set()
            for e in grouping_set:
                key = self._resolve_group_key(e, select_exprs)
                if key not in keys:
                    keys.append(key)
                indexes.add(keys.index(key))
            members.append(indexes)
        key_types = (
            self.lookup.expression_types(self.from_sql, [render(k) for k in keys]) if keys else []
        )
        having_q = self._qualify(having) if having is not None else None
        classified = [self._classify(n) for n in agg_nodes]

        def masked(node: exp.Expr, member: set[int]) -> exp.Expr:
            def swap(n: exp.Expr) -> exp.Expr:
                if isinstance(n, exp.Grouping):
                    bits = 0
                    for arg in n.expressions:
                        arg = self._qualify(arg)
                        if arg not in keys:
                            raise QueryError(
                                f"GROUPING({render(arg)}): the argument is not a grouping "
                                "expression"
                            )
                        bits = bits * 2 + (0 if keys.index(arg) in member else 1)
                    return exp.Literal.number(bits)
                if self._is_aggregate_node(n):
                    return n.copy()  # a new node: transform() does not descend into it
                if n in keys:
                    i = keys.index(n)
                    if i in member:
                        return n.copy()
                    kind = exp.DataType(this=exp.DataType.Type.USERDEFINED, kind=key_types[i])
                    return exp.Cast(this=exp.Null(), to=kind)
                return n

            return node.transform(swap)

        shapes = []
        for set_id, member in enumerate(members):
            shape = self._grouped(
                [keys[i] for i in sorted(member)],
                agg_nodes,
                [masked(e, member) for e in select_exprs],
                masked(having_q, member) if having_q is not None else None,
                where_sql,
                notes,
                classified=classified,
            )
            shape.grouping_set_id = set_id
            shapes.append(shape)
        return dataclasses.replace(shapes[0], grouping_sets=shapes, grouping_set_id=None)


MAX_GROUPING_SETS = 64


def _expand_grouping_sets(group: exp.Group | None) -> list[list[exp.Expr]] | None:
    """The grouping sets of a ``GROUP BY`` with ``GROUPING SETS``, ``ROLLUP``, ``CUBE`` or ``()``
    (as PostgreSQL expands them: the cross product of the items' sets, duplicates kept unless
    ``GROUP BY DISTINCT``); None for a plain ``GROUP BY``."""
    if group is None:
        return None
    items = list(group.expressions)
    special = (exp.GroupingSets, exp.Rollup, exp.Cube)
    if not any(
        isinstance(i, special) or (isinstance(i, exp.Tuple) and not i.expressions) for i in items
    ):
        return None

    def unit(e: exp.Expr) -> list[exp.Expr]:
        while isinstance(e, exp.Paren):  # (a) is the set {a}
            e = e.this
        return list(e.expressions) if isinstance(e, exp.Tuple) else [e]

    def expand(item: exp.Expr) -> list[list[exp.Expr]]:
        if isinstance(item, exp.Rollup):
            units = [unit(e) for e in item.expressions]
            return [[e for u in units[:n] for e in u] for n in range(len(units), -1, -1)]
        if isinstance(item, exp.Cube):
            units = [unit(e) for e in item.expressions]
            return [
                [e for b, u in enumerate(units) if mask >> b & 1 for e in u]
                for mask in range(2 ** len(units) - 1, -1, -1)
            ]
        if isinstance(item, exp.GroupingSets):
            return [s for e in item.expressions for s in expand(e)]
        if isinstance(item, exp.Paren) and isinstance(item.this, special):
            return expand(item.this)
        return [unit(item)]

    sets: list[list[exp.Expr]] = [[]]
    for item in items:
        sets = [a + b for a in sets for b in expand(item)]
    if group.args.get("all") is False:
        # GROUP BY DISTINCT: PostgreSQL compares the grouping sets as sets ((a, b) is (b, a),
        # (a, a) is (a)) and keeps the first of equal ones.
        seen: set[frozenset[str]] = set()
        unique = []
        for grouping_set in sets:
            key = frozenset(render(e) for e in grouping_set)
            if key not in seen:
                seen.add(key)
                unique.append(grouping_set)
        sets = unique
    return sets


_EXACT_NUMERIC_TYPES = {"smallint", "integer", "bigint", "numeric"}


def _anti_test(on: exp.Expr, side: ir.FromItem, new: str) -> ir.SemiJoin:
    """``NOT EXISTS (SELECT 1 FROM side's table AS new WHERE on)``, ``on`` (columns qualified)
    reading the side under the alias ``new``."""
    if any(not c.table and c.name == side.alias for c in on.find_all(exp.Column)):
        raise UnsupportedConstruct(
            f"whole-row reference to {side.alias} in an outer join's ON", "compare its columns"
        )
    renamed = _rename_alias(on, side.alias, new)
    keys: list[str] = []
    for col in renamed.find_all(exp.Column):
        if col.table == new and col.name not in keys:
            keys.append(col.name)
    # A reference to the side that is not one of its columns (a whole-row reference): unknown.
    known = all(side.source.column(k) is not None for k in keys)
    return ir.SemiJoin(True, side.source, new, render(renamed), tuple(keys) if known else None)


def _rename_alias(node: exp.Expr, alias: str, new: str) -> exp.Expr:
    """``node`` (columns qualified) with the columns of ``alias`` qualified by ``new``."""
    node = node.copy()
    for col in node.find_all(exp.Column):
        if col.table == alias:
            col.set("table", exp.to_identifier(new, quoted=True))
    return node


_STRICT_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike)
_STRICT_OPERATORS = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.Neg, exp.Paren)


def _strict_aliases(node: exp.Expr) -> set[str]:
    """Aliases such that ``node`` is NULL when all their columns are NULL (a column, or strict
    arithmetic and casts over one)."""
    if isinstance(node, exp.Column):
        return {node.table} if node.table else set()
    if isinstance(node, exp.Cast | exp.TryCast):
        return _strict_aliases(node.this)
    if isinstance(node, _STRICT_OPERATORS):
        out: set[str] = set()
        for child in node.iter_expressions():
            out |= _strict_aliases(child)
        return out
    return set()


def _null_rejected_aliases(node: exp.Expr) -> set[str]:
    """Aliases whose columns all being NULL keeps the condition ``node`` from being TRUE
    (PostgreSQL's outer-join reduction reasons the same way). Conservative: only conjunctions
    and disjunctions of comparisons, IS NOT NULL, IN lists and BETWEEN are looked at."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return _null_rejected_aliases(node.this) | _null_rejected_aliases(node.expression)
    if isinstance(node, exp.Or):
        return _null_rejected_aliases(node.this) & _null_rejected_aliases(node.expression)
    if isinstance(node, _STRICT_COMPARISONS):
        return _strict_aliases(node.this) | _strict_aliases(node.expression)
    if (
        isinstance(node, exp.Is)
        and node.args.get("negate")
        and isinstance(node.expression, exp.Null)
    ):
        return _strict_aliases(node.this)  # x IS NOT NULL
    if (
        isinstance(node, exp.Not)
        and isinstance(node.this, exp.Is)
        and not node.this.args.get("negate")
        and isinstance(node.this.expression, exp.Null)
    ):
        return _strict_aliases(node.this.this)  # NOT (x IS NULL)
    if isinstance(node, exp.In) and not node.args.get("query"):
        return _strict_aliases(node.this)
    if isinstance(node, exp.Between):
        return _strict_aliases(node.this)
    return set()


def _unalias(node: exp.Expr) -> exp.Expr:
    return node.this if isinstance(node, exp.Alias) else node


def _ancestors(node: exp.Expr, root: exp.Expr) -> list[exp.Expr]:
    out = []
    parent = node.parent
    while parent is not None and node is not root:
        out.append(parent)
        if parent is root:
            break
        parent = parent.parent
    return out


def analyze(tree: exp.Query, lookup: ir.SchemaLookup, output_names: list[str]) -> ir.QueryShape:
    """Describe a parsed query as a :class:`~ir.QueryShape`.

    CTEs and derived tables are first inlined and merged into the outer query where that keeps
    its meaning (:func:`flatten_subqueries`). Raises :class:`UnsupportedConstruct` naming the
    first construct outside the supported shapes.
    """
    return _Analyzer(flatten_subqueries(tree, lookup), lookup, output_names).run()


def set_operation(tree: exp.Query) -> tuple[list[exp.Select], ir.SetOp, list[str]] | None:
    """For a query whose top level is a set operation (UNION, INTERSECT, EXCEPT, with or without
    ALL, nested as SQL's precedence and parentheses say): its SELECT branches, left to right, the
    operation tree over their indexes, and notes. None for anything else."""
    if not isinstance(tree, exp.SetOperation):
        return None
    notes = []
    if tree.args.get("order") and not (tree.args.get("limit") or tree.args.get("offset")):
        tree = tree.copy()
        tree.set("order", None)
        notes.append("ORDER BY dropped: a stream table is an unordered set of rows")
    if tree.args.get("with_") or tree.args.get("with"):
        raise UnsupportedConstruct(
            "WITH over a set operation", "move the CTEs into the branches, or " + FULL_ONLY_HINT
        )
    branches: list[exp.Select] = []

    def walk(node: exp.Expr) -> ir.SetOp | int:
        while isinstance(node, exp.Subquery) and not node.args.get("alias"):
            node = node.this
        if isinstance(node, exp.Select):
            branches.append(node)
            return len(branches) - 1
        if not isinstance(node, exp.Union | exp.Intersect | exp.Except):
            raise UnsupportedConstruct(
                f"{node.key.upper()} as a branch of a set operation", FULL_ONLY_HINT
            )
        if node.args.get("order") or node.args.get("limit") or node.args.get("offset"):
            raise UnsupportedConstruct(
                f"ORDER BY/LIMIT on {node.key.upper()}", "remove it, or " + FULL_ONLY_HINT
            )
        left = walk(node.this)
        right = walk(node.expression)
        return ir.SetOp(node.key.lower(), not node.args.get("distinct"), left, right)

    root = walk(tree)
    assert isinstance(root, ir.SetOp)
    return branches, root, notes


def split_topk(
    tree: exp.Query, output_names: list[str]
) -> tuple[exp.Query, list[tuple[str, bool, bool]], int | None, int] | None:
    """For ``Q ORDER BY … LIMIT n [OFFSET m]``: ``(Q, [(output column, desc, nulls first)], n, m)``;
    None when the query has no LIMIT/OFFSET. Every ORDER BY item must name an output column
    (by name, position or the same expression), otherwise :class:`UnsupportedConstruct`."""
    if not isinstance(tree, exp.Select) or not (tree.args.get("limit") or tree.args.get("offset")):
        return None
    distinct = tree.args.get("distinct")
    if distinct is not None and distinct.args.get("on"):
        raise UnsupportedConstruct("DISTINCT ON with LIMIT", FULL_ONLY_HINT)

    def literal(node: exp.Expr | None) -> int | None:
        if node is None:
            return None
        value = node.args.get("expression")
        if isinstance(value, exp.Literal) and not value.is_string:
            return int(value.this)
        raise UnsupportedConstruct("LIMIT/OFFSET that is not a constant", FULL_ONLY_HINT)

    limit, offset = literal(tree.args.get("limit")), literal(tree.args.get("offset")) or 0
    order = tree.args.get("order")
    if order is None:
        raise UnsupportedConstruct(
            "LIMIT without ORDER BY (the rows it keeps are arbitrary)", "add an ORDER BY"
        )
    selects = [_unalias(e) for e in tree.expressions]
    keys = []
    for item in order.expressions:
        node = item.this
        name = None
        if isinstance(node, exp.Literal) and not node.is_string:
            pos = int(node.this)
            name = output_names[pos - 1] if 1 <= pos <= len(output_names) else None
        elif isinstance(node, exp.Column) and not node.table and node.name in output_names:
            name = node.name
        else:
            for out, expr in zip(output_names, selects, strict=False):
                if expr == node:
                    name = out
        if name is None:
            raise UnsupportedConstruct(
                f"ORDER BY {render(node)} with LIMIT: not an output column",
                "add the expression to the select list and order by it",
            )
        keys.append((name, bool(item.args.get("desc")), bool(item.args.get("nulls_first"))))
    inner = tree.copy()
    for arg in ("order", "limit", "offset"):
        inner.set(arg, None)
    return inner, keys, limit, offset


def _has_subqueries_to_flatten(tree: exp.Query) -> bool:
    with_ = tree.args.get("with_") or tree.args.get("with")
    if with_ is not None and not with_.args.get("recursive"):
        return True
    from_ = tree.args.get("from_") or tree.args.get("from")
    items = [from_.this] if from_ is not None else []
    items += [j.this for j in tree.args.get("joins") or []]
    return any(isinstance(i, exp.Subquery) for i in items)


def flatten_subqueries(tree: exp.Query, lookup: ir.SchemaLookup) -> exp.Query:
    """Inline non-recursive CTEs (a copy per reference) and merge derived tables into the outer
    query with sqlglot's ``merge_subqueries``, which only merges when the result is equivalent
    (no aggregation, DISTINCT, LIMIT, window … in the way). Queries without CTEs or derived
    tables are returned unchanged; anything the rewrite cannot handle is left for the analyser to
    reject."""
    if not isinstance(tree, exp.Select) or not _has_subqueries_to_flatten(tree):
        return tree
    return _qualify_and_merge(tree, lookup) or tree


def _qualify_and_merge(tree: exp.Query, lookup: ir.SchemaLookup) -> exp.Query | None:
    """CTEs inlined, every table schema-qualified, every column qualified by its alias (also in
    correlated subqueries, by SQL's scoping), derived tables merged where equivalent. None when
    sqlglot cannot qualify the query."""
    from sqlglot.errors import OptimizeError
    from sqlglot.optimizer.merge_subqueries import merge_subqueries
    from sqlglot.optimizer.qualify import qualify

    tree = tree.copy()
    with_ = tree.args.get("with_")
    if with_ is not None:
        ctes = {cte.alias_or_name: cte.this for cte in with_.expressions}
        tree.set("with_", None)

        def inline(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Table) and not node.db and node.name in ctes:
                alias = exp.TableAlias(this=exp.to_identifier(node.alias_or_name, quoted=True))
                return exp.Subquery(this=ctes[node.name].copy(), alias=alias)
            return node

        inlined = tree.transform(inline)
        assert isinstance(inlined, exp.Query)
        tree = inlined
    tables_by_schema: dict[str, dict[str, dict[str, str]]] = {}
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            continue
        source = lookup.table(table.db or None, table.name)
        table.set("db", exp.to_identifier(source.schema, quoted=True))
        tables_by_schema.setdefault(source.schema, {})[source.name] = {
            c.name: c.type for c in source.columns
        }
    schema: dict[str, object] = dict(tables_by_schema)
    try:
        qualified = qualify(tree, schema=schema, dialect=DIALECT, quote_identifiers=True)
        merged = merge_subqueries(qualified)
    except OptimizeError:
        return None
    assert isinstance(merged, exp.Query)
    return merged


def _reads(node: exp.Expr, name: str) -> int:
    """How many times ``node`` reads the unqualified relation ``name``."""
    return sum(1 for t in node.find_all(exp.Table) if not t.db and t.name == name)


def without_needless_recursive(tree: exp.Query) -> exp.Query:
    """``WITH RECURSIVE`` whose CTEs never read themselves is an ordinary ``WITH`` (so it can be
    inlined like one)."""
    with_ = tree.args.get("with_")
    if with_ is None or not with_.args.get("recursive") or with_.args.get("search"):
        return tree
    if any(_reads(cte.this, cte.alias_or_name) for cte in with_.expressions):
        return tree
    tree = tree.copy()
    tree.args["with_"].set("recursive", False)
    return tree


@dataclass
class RecursiveParts:
    """``WITH RECURSIVE name(columns) AS (base₁ UNION … UNION step) outer``."""

    name: str
    columns: list[str] | None  # the CTE's column list, if written
    bases: list[exp.Select]  # the non-recursive term (one or more blocks)
    step: exp.Select  # the recursive term: reads ``name`` exactly once
    outer: exp.Select  # the query over ``name`` (without the WITH)


_RECURSIVE_HINT = "see docs/internals.md (Recursive CTEs) for the maintained form, or " + (
    FULL_ONLY_HINT
)


def split_recursive(tree: exp.Query) -> RecursiveParts | None:
    """The parts of a query whose WITH RECURSIVE has a self-referencing CTE; None for every other
    query. Forms outside ``WITH RECURSIVE r AS (base UNION step) SELECT … FROM r …`` raise
    :class:`UnsupportedConstruct` naming the construct and the rewrite."""
    with_ = tree.args.get("with_")
    if with_ is None or not with_.args.get("recursive"):
        return None
    ctes = list(with_.expressions)
    recursive = [c for c in ctes if _reads(c.this, c.alias_or_name)]
    if not recursive:
        return None
    if with_.args.get("search"):
        return _reject("WITH RECURSIVE … SEARCH/CYCLE clause", "remove it; " + _RECURSIVE_HINT)
    if len(ctes) > 1:
        return _reject(
            "WITH RECURSIVE with several CTEs",
            "keep the recursive CTE alone in its WITH (write the other CTEs into it, or make "
            "them stream tables); " + _RECURSIVE_HINT,
        )
    cte = recursive[0]
    name = cte.alias_or_name
    body = cte.this
    if not isinstance(body, exp.Union) or any(
        body.args.get(k) for k in ("order", "limit", "offset")
    ):
        return _reject(
            f"recursive CTE {name} that is not `base UNION step`",
            "write it as `base UNION recursive step`; " + _RECURSIVE_HINT,
        )
    if not body.args.get("distinct"):
        return _reject(
            f"WITH RECURSIVE … UNION ALL (recursive CTE {name})",
            "write UNION instead of UNION ALL (set semantics; the same result whenever no row "
            "is derived twice, e.g. a tree walk), or " + FULL_ONLY_HINT,
        )
    step = body.expression
    while isinstance(step, exp.Subquery):
        step = step.this
    if not isinstance(step, exp.Select) or _reads(step, name) != 1:
        return _reject(
            f"recursive term of {name} that is not one SELECT reading {name} once",
            "write the recursive term as one SELECT … FROM " + name + " JOIN …; " + _RECURSIVE_HINT,
        )
    bases: list[exp.Select] = []
    pending: list[exp.Expr] = [body.this]
    while pending:
        node = pending.pop(0)
        while isinstance(node, exp.Subquery):
            node = node.this
        if isinstance(node, exp.Union) and not any(
            node.args.get(k) for k in ("order", "limit", "offset")
        ):
            pending[:0] = [node.this, node.expression]
        elif isinstance(node, exp.Select):
            bases.append(node)
        else:
            return _reject(
                f"{node.key.upper()} in the non-recursive term of {name}",
                "use plain SELECT blocks joined by UNION; " + _RECURSIVE_HINT,
            )
    for block, what in [*((b, "non-recursive") for b in bases), (step, "recursive")]:
        if any(j.args.get("side") for j in block.args.get("joins") or []):
            return _reject(
                f"outer joins in the {what} term of {name}",
                "keep the recursive CTE to inner joins, WHERE and a select list; "
                + _RECURSIVE_HINT,
            )
    alias = cte.args.get("alias")
    columns = [c.name for c in alias.columns] if alias is not None and alias.columns else None
    outer = tree.copy()
    outer.set("with_", None)
    if not isinstance(outer, exp.Select):
        return _reject(
            f"set operation over the recursive CTE {name}",
            "select from it in one SELECT; " + _RECURSIVE_HINT,
        )
    return RecursiveParts(name, columns, bases, step, outer)


def _reject(construct: str, hint: str) -> RecursiveParts:
    raise UnsupportedConstruct(construct, hint)


def output_names_of(block: exp.Select) -> list[str]:
    """Output column names of a SELECT block as PostgreSQL names them (a star or an unnamed
    expression gives an empty name)."""
    return [e.output_name if not isinstance(e, exp.Star) else "" for e in block.expressions]


# -- stages: subqueries maintained as tables of their own -----------------------------------------


@dataclass(frozen=True)
class StageSpec:
    """A subquery the compiler maintains in a table of its own (a *stage*), which the rewritten
    query reads like a source: ``query`` is its SQL (columns named ``columns``)."""

    schema: str
    name: str
    query: str
    columns: tuple[str, ...]
    # A one-row scalar cross-joined into the query: when its value changes, every row compared
    # with it is re-evaluated.
    broadcast: bool = False


_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
# Nodes of a scalar subquery's select expression that keep it NULL when every aggregate in it is
# NULL (an aggregate over no rows): then a comparison with it is not true, as for a missing row.
_NULL_PRESERVING = (
    exp.Sum,
    exp.Avg,
    exp.Min,
    exp.Max,
    exp.Column,
    exp.Literal,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.Paren,
    exp.Neg,
    exp.Cast,
    exp.DataType,
    exp.Identifier,
)


def _strip_parens(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _defined_aliases(query: exp.Expr) -> set[str]:
    """Aliases of the relations a (sub)query and the subqueries inside it define."""
    names = {t.alias_or_name for t in query.find_all(exp.Table)}
    names |= {s.alias_or_name for s in query.find_all(exp.Subquery) if s.alias_or_name}
    return names


def _outer_columns(query: exp.Expr) -> list[exp.Column]:
    """Column references of a qualified subquery to relations defined outside it."""
    inner = _defined_aliases(query)
    return [c for c in query.find_all(exp.Column) if c.table and c.table not in inner]


def _is_simple_subquery(select: exp.Expr) -> bool:
    """A one-table subquery without grouping or nested subqueries (what the semi-join rule reads
    directly)."""
    return (
        isinstance(select, exp.Select)
        and not select.args.get("joins")
        and not select.args.get("group")
        and not select.args.get("having")
        and not select.args.get("with_")
        and not any(isinstance(n, exp.AggFunc) for n in select.walk())
        and not any(isinstance(n, exp.Subquery | exp.Exists) for n in select.walk())
        and not any(isinstance(n, exp.Select) and n is not select for n in select.walk())
    )


def _is_one_row_aggregate(select: exp.Select) -> bool:
    """A select that always yields exactly one row: aggregates without GROUP BY or HAVING."""
    return (
        len(select.expressions) == 1
        and not select.args.get("group")
        and not select.args.get("having")
        and not select.args.get("limit")
        and not select.args.get("offset")
        and not select.args.get("distinct")
        and not any(isinstance(n, exp.Window) for n in select.walk())
        and any(isinstance(n, exp.AggFunc) for n in select.expressions[0].walk())
    )


def _scalar_subqueries(node: exp.Expr) -> list[exp.Subquery]:
    """Outermost scalar subqueries inside an expression (not IN lists' or EXISTS' queries)."""
    found = []
    for sub in node.find_all(exp.Subquery):
        if not isinstance(sub.this, exp.Select) or isinstance(sub.parent, exp.In | exp.Exists):
            continue
        parent = sub.parent
        nested = False
        while parent is not None and parent is not node:
            if isinstance(parent, exp.Subquery | exp.Select):
                nested = True
                break
            parent = parent.parent
        if not nested:
            found.append(sub)
    return found


def has_stage_candidates(tree: exp.Query) -> bool:
    """Whether a SELECT has a subquery that only a stage can maintain: a derived table or CTE
    that does not merge, a scalar subquery, or an IN subquery with joins or grouping."""
    if not isinstance(tree, exp.Select):
        return False
    if _has_subqueries_to_flatten(tree):
        return True
    for node in tree.walk():
        if isinstance(node, exp.Subquery) and not isinstance(node.parent, exp.In | exp.Exists):
            return True
        if isinstance(node, exp.In) and node.args.get("query") is not None:
            query = node.args["query"]
            if not _is_simple_subquery(query.this if isinstance(query, exp.Subquery) else query):
                return True
    return False


class _StageExtractor:
    """Rewrites a qualified SELECT so each stage-able subquery becomes a table reference."""

    def __init__(self, name_for: Callable[[str], tuple[str, str]]) -> None:
        self.name_for = name_for
        self.specs: list[StageSpec] = []
        self.count = 0

    def stage(self, query: exp.Query, columns: list[str], broadcast: bool = False) -> exp.Table:
        query = query.copy()
        if isinstance(query, exp.Select):
            query.set(
                "expressions",
                [
                    exp.alias_(_unalias(e), exp.to_identifier(c, quoted=True))
                    for e, c in zip(query.expressions, columns, strict=True)
                ],
            )
        text = render(query)
        schema, name = self.name_for(text)
        if all(s.name != name for s in self.specs):
            self.specs.append(StageSpec(schema, name, text, tuple(columns), broadcast))
        alias = f"__pgt_s{self.count}"
        self.count += 1
        return exp.Table(
            this=exp.to_identifier(name, quoted=True),
            db=exp.to_identifier(schema, quoted=True),
            alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True)),
        )

    def derived_tables(self, tree: exp.Select) -> None:
        from_ = tree.args.get("from_") or tree.args.get("from")
        items = [from_.this] if from_ is not None else []
        items += [j.this for j in tree.args.get("joins") or []]
        for item in items:
            if isinstance(item, exp.Subquery) and isinstance(item.this, exp.Query):
                columns = [e.alias_or_name for e in item.this.selects]
                table = self.stage(item.this, columns)
                table.set("alias", exp.TableAlias(this=exp.to_identifier(item.alias, quoted=True)))
                item.replace(table)

    def in_subquery(self, node: exp.In) -> None:
        """``x [NOT] IN (complex uncorrelated subquery)`` → ``x IN (SELECT v FROM stage)``."""
        query = node.args["query"]
        select = query.this if isinstance(query, exp.Subquery) else query
        if _is_simple_subquery(select) or _outer_columns(select) or len(select.selects) != 1:
            return
        table = self.stage(select, ["v"])
        column = exp.column("v", table=table.alias, quoted=True)
        node.set("query", exp.Subquery(this=exp.select(column).from_(table)))

    def cross_join(self, tree: exp.Select, sub: exp.Subquery) -> exp.Column:
        """Replace an uncorrelated one-row subquery by the column of its stage, cross-joined."""
        table = self.stage(sub.this, ["v"], broadcast=True)
        tree.append("joins", exp.Join(this=table, kind="CROSS"))
        column = exp.column("v", table=table.alias, quoted=True)
        sub.replace(column)
        return column

    def scalar(
        self,
        tree: exp.Select,
        sub: exp.Subquery,
        conjunct: exp.Expr | None,
        select_list: bool = False,
    ) -> None:
        """A scalar subquery: uncorrelated one-row aggregates are cross-joined; a correlated
        aggregate compared in a WHERE conjunct is grouped by its correlation columns and joined
        on them (an empty group yields NULL, and the comparison is then not true either). In
        the select list (``select_list``) the join is a LEFT JOIN: a row without a group gets
        NULL, which is what the aggregate of no rows is."""
        select = sub.this
        if not isinstance(select, exp.Select) or len(select.expressions) != 1:
            return
        outer = _outer_columns(select)
        if not outer:
            if _is_one_row_aggregate(select):
                self.cross_join(tree, sub)
            return
        value = _unalias(select.expressions[0])
        if (
            (
                not select_list
                and (
                    conjunct is None
                    or not isinstance(_strip_parens(conjunct), _COMPARISONS)
                    or sub.parent is not _strip_parens(conjunct)
                )
            )
            or select.args.get("group")
            or select.args.get("having")
            or select.args.get("limit")
            or select.args.get("distinct")
            or not any(isinstance(n, exp.AggFunc) for n in value.walk())
            or not (
                isinstance(value, exp.Count)
                or all(isinstance(n, _NULL_PRESERVING) for n in value.walk())
            )
        ):
            return
        inner_aliases = _defined_aliases(select)
        where = select.args.get("where")
        keys: list[tuple[exp.Expr, exp.Expr]] = []  # (inner side, outer side)
        rest: list[exp.Expr] = []
        for c in _conjuncts(where.this) if where is not None else []:
            cols = list(c.find_all(exp.Column))
            if all(col.table in inner_aliases for col in cols):
                rest.append(c)
                continue
            c = _strip_parens(c)
            if not isinstance(c, exp.EQ):
                return
            sides = []
            for side in (c.this, c.expression):
                refs = {col.table in inner_aliases for col in side.find_all(exp.Column)}
                if refs == {True}:
                    sides.append("inner")
                elif refs == {False}:
                    sides.append("outer")
                else:
                    return
            if sorted(sides) != ["inner", "outer"]:
                return
            inner_side, outer_side = (
                (c.this, c.expression) if sides[0] == "inner" else (c.expression, c.this)
            )
            if any(isinstance(n, exp.Subquery) for n in outer_side.walk()):
                return
            keys.append((inner_side, outer_side))
        grouped = select.copy()
        grouped.set("where", exp.Where(this=exp.and_(*[r.copy() for r in rest])) if rest else None)
        names = [f"k{i}" for i in range(len(keys))]
        grouped.set("expressions", [k.copy() for k, _ in keys] + [value.copy()])
        grouped.set("group", exp.Group(expressions=[k.copy() for k, _ in keys]))
        table = self.stage(grouped, [*names, "v"])
        on = exp.and_(
            *[
                exp.EQ(this=exp.column(n, table=table.alias, quoted=True), expression=o.copy())
                for n, (_, o) in zip(names, keys, strict=True)
            ]
        )
        # count() of no rows is 0, not NULL: a row without a group must stay, with 0.
        counted = isinstance(value, exp.Count)
        side = "LEFT" if select_list or counted else None
        tree.append("joins", exp.Join(this=table, on=on, side=side))
        column = exp.column("v", table=table.alias, quoted=True)
        sub.replace(
            exp.Coalesce(this=column, expressions=[exp.Literal.number(0)]) if counted else column
        )

    def run(self, tree: exp.Select) -> None:
        self.derived_tables(tree)
        where = tree.args.get("where")
        for conjunct in _conjuncts(where.this) if where is not None else []:
            form = _semijoin_form(conjunct)
            if form is not None:
                node = _strip_parens(conjunct)
                node = _strip_parens(node.this) if isinstance(node, exp.Not) else node
                if isinstance(node, exp.In):
                    self.in_subquery(node)
                continue
            for sub in _scalar_subqueries(conjunct):
                self.scalar(tree, sub, conjunct)
        # Uncorrelated one-row subqueries in the select list or HAVING of a grouped query: the
        # value is constant, so grouping by it as well changes nothing.
        having = tree.args.get("having")
        roots = [*tree.expressions, *([having.this] if having is not None else [])]
        grouped = tree.args.get("group") is not None
        has_aggs = any(
            isinstance(n, exp.AggFunc) and not _within_subquery(n, e)
            for e in tree.expressions
            for n in e.walk()
        )
        for root in roots:
            for sub in _scalar_subqueries(root):
                if (
                    isinstance(sub.this, exp.Select)
                    and not _outer_columns(sub.this)
                    and _is_one_row_aggregate(sub.this)
                    and (grouped or not (has_aggs or having is not None))
                ):
                    column = self.cross_join(tree, sub)
                    if grouped:
                        tree.args["group"].append("expressions", column.copy())
        # Correlated aggregates in the select list of an ungrouped query: LEFT JOINed stages.
        if not (grouped or has_aggs or having is not None):
            for root in tree.expressions:
                for sub in _scalar_subqueries(root):
                    if isinstance(sub.this, exp.Select) and _outer_columns(sub.this):
                        self.scalar(tree, sub, None, select_list=True)


def _groups_or_windows(select: exp.Select) -> bool:
    """Whether a SELECT block groups, aggregates or computes windows (at its own level)."""
    if select.args.get("group") or select.args.get("having"):
        return True
    return any(
        isinstance(node, exp.AggFunc | exp.Window) and not _within_subquery(node, e)
        for e in select.expressions
        for node in e.walk()
    )


def _within_subquery(node: exp.Expr, root: exp.Expr) -> bool:
    parent = node.parent
    while parent is not None and parent is not root:
        if isinstance(parent, exp.Subquery):
            return True
        parent = parent.parent
    return False


def stage_set_operation_branches(
    tree: exp.Query, name_for: Callable[[str], tuple[str, str]]
) -> tuple[exp.Query, list[StageSpec]]:
    """Branches of a set operation that group, aggregate or compute windows become stages: the
    branch is replaced by ``SELECT c0 AS name0, … FROM stage``, so the set operation's rules
    read the stage's applied changes like a table's. Returns the tree unchanged and no stages
    for anything else."""
    if not isinstance(tree, exp.SetOperation):
        return tree, []
    tree = tree.copy()
    extractor = _StageExtractor(name_for)

    def walk(node: exp.Expr) -> None:
        while isinstance(node, exp.Subquery) and not node.args.get("alias"):
            node = node.this
        if isinstance(node, exp.SetOperation):
            walk(node.this)
            walk(node.expression)
        elif isinstance(node, exp.Select) and _groups_or_windows(node):
            names = output_names_of(node)
            columns = [f"c{i}" for i in range(len(names))]
            table = extractor.stage(node, columns)
            node.replace(
                exp.select(
                    *(
                        exp.alias_(
                            exp.column(c, table=table.alias, quoted=True),
                            exp.to_identifier(n or c, quoted=True),
                        )
                        for c, n in zip(columns, names, strict=True)
                    )
                ).from_(table)
            )

    walk(tree)
    return tree, extractor.specs


def extract_stages(
    tree: exp.Query, lookup: ir.SchemaLookup, name_for: Callable[[str], tuple[str, str]]
) -> tuple[exp.Query, list[StageSpec]]:
    """Rewrite ``tree`` so subqueries the delta rules cannot read directly become references to
    stage tables (named by ``name_for(query text)``): derived tables and CTEs that do not merge,
    uncorrelated one-row scalar subqueries (cross-joined), correlated aggregate subqueries
    compared in WHERE (grouped by the correlation columns and joined on them), and IN
    subqueries with joins or grouping. Returns the tree unchanged and no stages when there is
    nothing to extract (or sqlglot cannot qualify the query)."""
    if not has_stage_candidates(tree):
        return tree, []
    assert isinstance(tree, exp.Select)
    qualified = _qualify_and_merge(tree, lookup)
    if not isinstance(qualified, exp.Select):
        return tree, []
    extractor = _StageExtractor(name_for)
    extractor.run(qualified)
    if not extractor.specs:
        return tree, []
    return qualified, extractor.specs
