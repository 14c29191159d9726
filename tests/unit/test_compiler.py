"""The DVM compiler without a server: shapes, strategies, the SQL's reach, rejected constructs."""

from __future__ import annotations

import re

import pytest

from dbt_pgtrickle.dvm import compile_query, compiler
from dbt_pgtrickle.dvm.ir import Column, SourceTable
from dbt_pgtrickle.errors import QueryError

TABLES = {
    "orders": SourceTable(
        "public",
        "orders",
        (
            Column("id", "integer", True),
            Column("region", "text"),
            Column("amount", "numeric"),
            Column("qty", "integer"),
            Column("score", "double precision"),
        ),
        ("id",),
    ),
    "events": SourceTable(
        "public", "events", (Column("kind", "text"), Column("n", "integer")), None
    ),
    "v_orders": SourceTable("public", "v_orders", (Column("id", "integer"),), None, kind="view"),
    "edges": SourceTable(
        "public", "edges", (Column("src", "integer"), Column("dst", "integer")), None
    ),
    "docs": SourceTable(
        "public",
        "docs",
        (Column("id", "integer", True), Column("j", "jsonb"), Column("arr", "integer[]")),
        ("id",),
    ),
}
TYPES = {
    "amount": "numeric",
    "qty": "integer",
    "score": "double precision",
    "n": "integer",
    "src": "integer",
    "dst": "integer",
}


class StaticLookup:
    def table(self, schema: str | None, name: str) -> SourceTable:
        return TABLES[name]

    def expression_types(self, from_clause: str, exprs: list[str]) -> list[str]:
        out = []
        for e in exprs:
            col = re.findall(r'"(\w+)"$', e)
            out.append(TYPES.get(col[0], "numeric") if col else "numeric")
        return out

    def is_volatile_function(self, name: str) -> bool:
        return name in {"my_random"}

    def is_aggregate_function(self, name: str) -> bool:
        return name in {"my_agg"}


TARGET = '"public"."st"'


def plan(query: str, names: list[str]) -> compiler.DeltaPlan:
    return compile_query(query, StaticLookup(), names, TARGET)


def test_keyed_projection_never_reads_the_source() -> None:
    p = plan("select id, amount * 2 as a2 from orders where region = 'eu'", ["id", "a2"])
    assert p.strategy == compiler.LINEAR_KEYED
    assert p.storage_columns == ["__pgt_row_id", "id", "a2"]
    assert '"public"."orders"' not in p.delta_sql  # the delta never reads the source


def test_no_primary_key_uses_multiset_identity() -> None:
    p = plan("select kind from events", ["kind"])
    assert p.strategy == compiler.LINEAR_MULTISET
    assert '"public"."events"' not in p.delta_sql  # the delta never reads the source


def test_invertible_aggregates_never_read_the_source_in_the_delta() -> None:
    p = plan(
        "select region, count(*) as n, count(qty) as c, sum(amount) as s, avg(qty) as a "
        "from orders group by region",
        ["region", "n", "c", "s", "a"],
    )
    assert p.strategy == compiler.AGGREGATE
    assert '"public"."orders"' not in p.delta_sql
    assert p.hidden_columns[0] == "__pgt_count"


def test_min_max_and_other_aggregates_rescan_only_flagged_groups() -> None:
    p = plan(
        "select region, min(qty) as lo, string_agg(region, ',') as s from orders group by 1",
        ["region", "lo", "s"],
    )
    assert '"__pgt_rescan"' in p.delta_sql
    assert '"public"."orders"' in p.delta_sql  # the rescan reads the groups' base rows
    costs = {o.detail: o.delta_cost for o in p.operators}
    assert costs['MIN("orders"."qty")'].startswith("O(Δ); rescans")
    assert costs['STRING_AGG("orders"."region", \',\')'].startswith("rescans")


def test_float_sum_is_not_maintained_algebraically() -> None:
    p = plan("select region, sum(score) as s from orders group by region", ["region", "s"])
    (call,) = [o for o in p.operators if o.operator == "Aggregate call"]
    assert "double precision" in call.why


def test_group_by_alias_and_ordinal_resolve_to_the_expression() -> None:
    by_alias = plan("select upper(region) as r, count(*) as n from orders group by r", ["r", "n"])
    by_pos = plan("select upper(region) as r, count(*) as n from orders group by 1", ["r", "n"])
    assert by_alias.full_sql == by_pos.full_sql


def test_distinct_is_a_counted_group() -> None:
    p = plan("select distinct region from orders", ["region"])
    assert p.strategy == compiler.AGGREGATE and p.hidden_columns == ["__pgt_count"]
    assert any(o.operator == "Distinct" for o in p.operators)


def test_order_by_is_dropped_with_a_note() -> None:
    p = plan("select id from orders order by id", ["id"])
    assert p.differential and any("ORDER BY" in n for n in p.notes)


def test_names_with_quotes_spaces_and_capitals_are_quoted() -> None:
    TABLES["Odd Table"] = SourceTable(
        "public", 'Odd "T"', (Column('Col "1"', "integer", True),), ('Col "1"',)
    )
    try:
        p = plan('select "Col ""1""" from "Odd Table"', ['Col "1"'])
        assert '"Odd ""T"""' in p.full_sql and '"Col ""1"""' in p.full_sql
    finally:
        del TABLES["Odd Table"]


REJECTED = [
    (
        "select o.id from orders o join orders p on true right join orders r on true",
        "RIGHT OUTER JOIN after other joins",
    ),
    (
        "select o.id from orders o left join orders p on true full join orders r on true",
        "FULL OUTER JOIN after other joins",
    ),
    ("select o.id from orders o left join (orders p join orders r on true) on true", "subquery"),
    ("select o.id from orders o join events e using (id)", "USING"),
    ("select o.id from orders o natural join events e", "NATURAL JOIN"),
    ("select o.id from orders o join (select 1 as x) e on true", "SELECT without FROM"),
    ("select id, unnest(arr) as a from docs", "set-returning function unnest() outside FROM"),
    (
        "select id, jsonb_array_elements(j) as a from docs",
        "set-returning function jsonb_array_elements() outside FROM",
    ),
    ("select d.id from docs d left join lateral (select 1 as x) s on true", "LATERAL subquery"),
    ("select d.id from docs d, my_srf(d.j) s", "function MY_SRF"),
    (
        "select d.id from docs d right join lateral unnest(d.arr) u on true",
        "RIGHT JOIN to a set-returning function",
    ),
    ("select id from orders union all select n from events order by 1 limit 3", "ORDER BY/LIMIT"),
    (
        "select region from orders intersect select kind from events group by kind "
        "having max(now()) is not null",
        "time-varying",
    ),
    ("select id from orders except select 1", "SELECT without FROM"),
    ("select id from orders limit 5", "LIMIT"),
    ("select distinct on (region) region from orders", "DISTINCT ON"),
    (
        "select rank() over (partition by region order by id) as r, "
        "rank() over (order by id) as r2 from orders",
        "different PARTITION BY",
    ),
    ("select region, rank() over (order by count(*)) as r from orders group by 1", "window"),
    ("select id, rank() over w as r from orders window w as (order by id)", "WINDOW clause"),
    (
        "select id, (select e.n from events e where e.n = o.qty) as m from orders o",
        "subquery",
    ),
    ("select id from orders where qty > (select n from events limit 1)", "subquery"),
    (
        "select id from orders o where qty > (select count(*) from events e where e.n > o.id)",
        "subquery",
    ),
    (
        "select id from orders o where exists (select 1 from events e group by e.kind)",
        "inside an EXISTS/IN subquery",
    ),
    ("select id from orders o where exists (select 1 from orders o)", "repeats an alias"),
    ("select n from (select n from events limit 3) s", "LIMIT without ORDER BY"),
    (
        "select count(*) from orders group by cube(id, region, amount, qty, score, id + 1, 1 - id)",
        "128 grouping sets (at most 64",
    ),
    (
        "select id from orders o where exists (select 1 from events e group by rollup(e.kind))",
        "GROUPING SETS/ROLLUP/CUBE inside an EXISTS/IN subquery",
    ),
    ("select id, now() as t from orders", "time-varying"),
    ("select id, random() as r from orders", "time-varying"),
    ("select id, my_random() as r from orders", "my_random"),
    ("select id from v_orders", "view"),
    ("select region, qty from orders group by region", "column qty"),
    (
        "select distinct count(*) as n from orders group by region",
        "DISTINCT together with GROUP BY",
    ),
]


@pytest.mark.parametrize(("query", "construct"), REJECTED)
def test_rejected_constructs_fall_back_with_the_construct_named(query: str, construct: str) -> None:
    names = ["a", "b"] if "rank()" in query or "now()" in query or "random" in query else ["a"]
    if "as m from" in query:
        names = ["id", "m"]
    if "region, qty" in query:
        names = ["region", "qty"]
    p = plan(query, names)
    assert p.strategy == compiler.FULL_ONLY
    assert p.unsupported and construct in p.unsupported


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("delete from orders", "not DELETE"),
        ("select 1; select 2", "exactly one SELECT"),
        ("select from where", "not valid SQL"),
        ("insert into orders values (1)", "not INSERT"),
    ],
)
def test_non_select_input_is_a_query_error(query: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        plan(query, ["a"])


def test_join_delta_has_one_term_per_nonempty_subset_of_changed_inputs() -> None:
    p = plan(
        "select o.id, e.kind from orders o join events e on e.n = o.qty where o.amount > 0",
        ["id", "kind"],
    )
    assert p.strategy == compiler.LINEAR_MULTISET  # events has no primary key
    from dbt_pgtrickle.naming import stable_name

    orders, events = stable_name("public", "orders"), stable_name("public", "events")
    one = p.delta_for({orders})
    both = p.delta_for({orders, events})
    assert one.count("UNION ALL") == 0 and f"__pgt_changes_{orders}" in one
    assert f"__pgt_changes_{events}" not in one
    assert both.count("UNION ALL") == 2  # ΔO⋈E + O⋈ΔE − ΔO⋈ΔE
    assert "(-1 * " in both


def test_join_delta_telescopes_over_inputs_ordered_by_window_size() -> None:
    from dbt_pgtrickle.dvm.operators import join
    from dbt_pgtrickle.naming import stable_name

    p = plan(
        "select o.id, e.kind, d.j, g.dst, o2.qty from orders o join events e on e.n = o.qty "
        "join docs d on d.id = o.id join edges g on g.src = o.id "
        "join orders o2 on o2.id = d.id where o.amount > 0",
        ["id", "kind", "j", "dst", "qty"],
    )
    orders, events, docs, edges = (
        stable_name("public", t) for t in ("orders", "events", "docs", "edges")
    )
    everything = {orders, events, docs, edges}
    sizes = {orders: 10, events: 500, docs: 3, edges: 7}
    terms = _top_level_terms(p.shape, compiler.Changed(everything, sizes))
    assert len(terms) == 5  # one per changed input (o and o2 are two), not 2^5 - 1
    # events (largest window) first: its term reads the others as old inputs; then o and o2
    # (equal windows: FROM order), edges, and docs last, reading the others as they are now.
    assert f'"__pgt_changes_{events}" AS "e"' in terms[0]
    assert _old_input_of("o", orders, '"id", "amount", "qty"') in terms[0]
    assert _old_input_of("o2", orders, '"id", "qty"') in terms[0]
    assert _old_input_of("d", docs, '"id", "j"') in terms[0]
    assert f'"__pgt_changes_{orders}" AS "o"' in terms[1] and '"public"."events" AS "e"' in terms[1]
    assert _old_input_of("o2", orders, '"id", "qty"') in terms[1]
    assert f'"__pgt_changes_{orders}" AS "o2"' in terms[2]
    assert f'"__pgt_changes_{edges}" AS "g"' in terms[3]
    assert _old_input_of("d", docs, '"id", "j"') in terms[3]
    assert f'"__pgt_changes_{docs}" AS "d"' in terms[4] and "UNION ALL" not in terms[4]
    weights = '"e"."__pgt_w" * "o"."__pgt_w" * "o2"."__pgt_w" * "g"."__pgt_w" * "d"."__pgt_w"'
    assert f"(1 * {weights})" in terms[0]
    # A plain set (Citus sources), or four changed inputs: inclusion–exclusion.
    assert len(_top_level_terms(p.shape, everything)) == 31
    four = compiler.Changed({orders, docs, edges}, sizes)
    assert len(_top_level_terms(p.shape, four)) == 15
    # The columns a term probes an old input's window by, per join partner; the windows that
    # can be read as old: all but the largest, once five inputs changed.
    assert p.join_index_columns == {
        orders: [("qty",), ("id",)],
        events: [("n",)],
        docs: [("id",)],
        edges: [("src",)],
    }
    assert p.join_blocks == [[orders, events, docs, edges, orders]]
    assert join.old_inputs(p.join_blocks[0], sizes) == {orders, docs, edges}
    assert join.old_inputs(p.join_blocks[0], {**sizes, orders: 500}) == everything  # a tie
    assert join.old_inputs(p.join_blocks[0], {orders: 1, events: 2, docs: 3}) == set()


def test_telescoping_self_join_and_whole_row_reference() -> None:
    from dbt_pgtrickle.dvm.operators import join
    from dbt_pgtrickle.naming import stable_name

    orders, events = stable_name("public", "orders"), stable_name("public", "events")
    docs, edges = stable_name("public", "docs"), stable_name("public", "edges")
    p = plan(
        "select a.id, b.id as other, e.kind, x.j from orders a, orders b, orders c, events e, "
        "docs x where a.qty = b.id and c.id = b.qty and e.n = c.qty and x.id = a.id",
        ["id", "other", "kind", "j"],
    )
    assert p.join_blocks == [[orders, orders, orders, events, docs]]
    # the largest window is the self-joined table: two of its aliases are read as old
    sizes = {orders: 5, events: 2, docs: 1}
    assert join.old_inputs(p.join_blocks[0], sizes) == {orders, events, docs}
    terms = _top_level_terms(p.shape, compiler.Changed({orders, events, docs}, sizes))
    assert len(terms) == 5 and terms[0].count("UNION ALL") == 4 and "UNION ALL" not in terms[4]
    # A whole-row value of an alias cannot be read from an old input's columns.
    p = plan(
        "select o.id, to_jsonb(e) as doc from orders o join events e on e.n = o.qty "
        "join docs d on d.id = o.id join edges g on g.src = o.id join orders o2 on o2.id = g.dst",
        ["id", "doc"],
    )
    changed = compiler.Changed({orders, events, docs, edges}, {events: 2})
    assert len(_top_level_terms(p.shape, changed)) == 31


def test_old_input_of_an_alias_read_for_no_column_and_probes_from_top_level_equalities() -> None:
    from dbt_pgtrickle.naming import stable_name

    p = plan(
        "select o.qty, e.kind, g.dst from orders o join events e on e.n = o.qty "
        "join edges g on g.src = e.n join edges g2 on g2.src = g.dst cross join orders o2 "
        "where (e.kind = o.region or o.amount < 0)",
        ["qty", "kind", "dst"],
    )
    orders, events, edges = (stable_name("public", t) for t in ("orders", "events", "edges"))
    changed = compiler.Changed({orders, events, edges}, {events: 9, orders: 2, edges: 1})
    terms = _top_level_terms(p.shape, changed)
    assert len(terms) == 5
    # o2 is only cross-joined: its old input is the weight alone (its window may hold no column
    # but those other aliases of orders read)
    no_column = (
        f'(SELECT 1 AS "__pgt_w" FROM "public"."orders" UNION ALL SELECT (-"__pgt_w")::integer '
        f'FROM "__pgt_changes_{orders}") AS "o2"'
    )
    assert no_column in terms[0]
    # the equality under OR is no probe: orders is probed by qty only
    assert p.join_index_columns[orders] == [("qty",)]
    assert p.join_index_columns[edges] == [("src",), ("dst",)]


def _top_level_terms(shape: object, changed: set[str]) -> list[str]:
    """The terms of the join delta of ``shape`` (split at UNION ALL outside parentheses)."""
    from dbt_pgtrickle.dvm.operators import join

    exprs = [(o.sql, o.name) for o in shape.outputs]  # type: ignore[attr-defined]
    body = join.delta(shape, exprs, changed)  # type: ignore[arg-type]
    parts, depth, last = [], 0, 0
    for i, ch in enumerate(body):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and body.startswith(" UNION ALL ", i):
            parts.append(body[last:i])
            last = i + len(" UNION ALL ")
    parts.append(body[last:])
    return parts


def _old_input_of(alias: str, stable: str, cols: str) -> str:
    table = {"o": "orders", "o2": "orders", "d": "docs", "e": "events", "g": "edges"}[alias]
    return (
        f'(SELECT {cols}, 1 AS "__pgt_w" FROM "public"."{table}" UNION ALL SELECT {cols}, '
        f'(-"__pgt_w")::integer FROM "__pgt_changes_{stable}") AS "{alias}"'
    )


def test_self_join_of_a_keyed_table_is_keyed_on_both_keys() -> None:
    p = plan(
        "select a.id, b.id as other from orders a, orders b where a.qty = b.id", ["id", "other"]
    )
    assert p.strategy == compiler.LINEAR_KEYED
    assert 'ROW("a"."id", "b"."id")' in p.full_sql


def test_too_many_changed_inputs_is_reported() -> None:
    from dbt_pgtrickle.naming import stable_name

    query = "select t1.id from " + ", ".join(f"orders t{i}" for i in range(1, 8))
    p = plan(query, ["id"])
    with pytest.raises(compiler.TooManyChangedInputs, match="7 joined inputs"):
        p.delta_for({stable_name("public", "orders")})


def test_left_join_adds_padded_terms() -> None:
    from dbt_pgtrickle.naming import stable_name

    TABLES["customers"] = SourceTable(
        "public", "customers", (Column("id", "integer", True), Column("name", "text")), ("id",)
    )
    try:
        p = plan(
            "select c.id, o.amount from customers c left join orders o on o.id = c.id",
            ["id", "amount"],
        )
        assert p.strategy == compiler.LINEAR_KEYED
        assert "LEFT JOIN" in p.full_sql
        delta = p.delta_for({stable_name("public", "orders")})
        assert "ON false" in delta and "NOT EXISTS" in delta  # padding appears / disappears
    finally:
        del TABLES["customers"]


def _blocks(query: str, names: list[str]) -> list[list[tuple[str, str]]]:
    from dbt_pgtrickle.dvm.operators import join

    p = plan(query, names)
    assert p.shape is not None and p.strategy != compiler.FULL_ONLY, p.unsupported
    return [
        [(f.alias, f.join) for f in b.froms] + [("not exists", sj.alias) for sj in b.semijoins]
        for b in join.blocks(p.shape)
    ]


def test_outer_join_chain_expands_into_inner_blocks_with_not_exists_tests() -> None:
    blocks = _blocks(
        "select o.id, e.kind from orders o join orders p on p.id = o.qty "
        "left join events e on e.n = o.qty",
        ["id", "kind"],
    )
    assert blocks == [
        [("o", "from"), ("p", "inner"), ("e", "inner")],
        [("o", "from"), ("p", "inner"), ("e", "null"), ("not exists", "__pgt_o2")],
    ]
    # RIGHT/FULL as the first join: the right side's padded block starts from it.
    full = _blocks("select o.id from orders o full join events e on e.n = o.qty", ["id"])
    assert full[2] == [("e", "from"), ("o", "null"), ("not exists", "__pgt_o0")]


def test_blocks_that_cannot_hold_rows_are_dropped() -> None:
    chain = (
        "select a.id from orders a left join orders b on b.id = a.qty "
        "left join orders c on c.id = b.qty"
    )
    # c's ON is strict in b: no block with b padded and c present, and with b padded the test
    # "no c matches" always holds.
    assert _blocks(chain, ["id"]) == [
        [("a", "from"), ("b", "inner"), ("c", "inner")],
        [("a", "from"), ("b", "inner"), ("c", "null"), ("not exists", "__pgt_o2")],
        [("a", "from"), ("b", "null"), ("c", "null"), ("not exists", "__pgt_o1")],
    ]
    # A WHERE strict in the padded side turns the LEFT JOIN into an inner join.
    assert len(_blocks(chain + " where c.amount > 0", ["id"])) == 1
    # coalesce() is not strict: the padded blocks stay.
    assert len(_blocks(chain + " where coalesce(c.amount, 0) = 0", ["id"])) == 3


def test_outer_join_delta_reads_only_change_windows_and_indexed_lookups() -> None:
    from dbt_pgtrickle.naming import stable_name

    p = plan(
        "select o.id, e.kind from orders o join orders p on p.id = o.qty "
        "left join events e on e.n = o.qty",
        ["id", "kind"],
    )
    assert p.strategy == compiler.LINEAR_MULTISET  # events has no primary key
    delta = p.delta_for({stable_name("public", "events")})
    # Rows of the block correlated with a changed events row, by primary key: no scan of the
    # block with a correlated EXISTS per row.
    assert '("o"."id", "p"."id") IN (SELECT "o"."id", "p"."id" FROM' in delta
    assert "Outer join" in [o.operator for o in p.operators]
    assert p.change_index_columns == {stable_name("public", "events"): [("n",)]}


def test_lateral_function_is_applied_to_the_change_window_with_its_ordinality() -> None:
    from dbt_pgtrickle.naming import stable_name

    p = plan(
        "select d.id, e.value from docs d cross join lateral jsonb_array_elements(d.j) as e",
        ["id", "value"],
    )
    assert p.strategy == compiler.LINEAR_KEYED
    assert [s.qualified for s in p.sources] == ["public.docs"]  # the function is no source
    assert 'ROW("d"."id", "e"."__pgt_ord")' in p.full_sql
    docs = stable_name("public", "docs")
    delta = p.delta_for({docs})
    assert (
        f'"__pgt_changes_{docs}" AS "d" CROSS JOIN LATERAL JSONB_ARRAY_ELEMENTS("d"."j") '
        'WITH ORDINALITY AS "e"("value", "__pgt_ord")' in delta
    )
    assert '"public"."docs"' not in delta  # linear: only the change window is read
    assert "Lateral function" in [o.operator for o in p.operators]


def test_lateral_function_names_and_ordinality_follow_postgresql() -> None:
    named = plan(
        "select d.id, u.x, u.n from docs d, unnest(d.arr) with ordinality as u(x, n)",
        ["id", "x", "n"],
    )
    assert '"u"("x", "n")' in named.full_sql and 'ROW("d"."id", "u"."n")' in named.full_sql
    scalar = plan("select d.id, u from docs d, unnest(d.arr) u", ["id", "u"])
    assert '"u"("u", "__pgt_ord")' in scalar.full_sql
    star = plan("select * from docs d left join lateral unnest(d.arr) u on true", list("abcd"))
    assert star.shape is not None
    assert [o.sql for o in star.shape.outputs][-1] == '"u"."u"'  # the ordinality stays hidden
    assert "LEFT JOIN LATERAL UNNEST" in star.full_sql


def test_ctes_and_derived_tables_are_merged_into_the_query() -> None:
    cte = plan(
        "with big as (select id, qty from orders where amount > 10) "
        "select a.id, b.qty from big a join big b on a.qty = b.id",
        ["id", "qty"],
    )
    assert cte.strategy == compiler.LINEAR_KEYED
    assert cte.shape is not None and len(cte.shape.froms) == 2  # the CTE inlined twice
    derived = plan(
        "select s.region, count(*) as n from (select * from orders where qty > 1) s "
        "group by s.region",
        ["region", "n"],
    )
    assert derived.strategy == compiler.AGGREGATE
    assert '"qty" > 1' in derived.full_sql


def test_union_all_adds_branch_deltas() -> None:
    from dbt_pgtrickle.naming import stable_name

    p = plan("select id from orders where qty > 1 union all select n from events", ["id"])
    assert p.strategy == compiler.LINEAR_MULTISET and p.branches and len(p.branches) == 2
    delta = p.delta_for({stable_name("public", "events")})
    assert f"__pgt_changes_{stable_name('public', 'events')}" in delta
    assert "WHERE false" in delta  # the unchanged branch contributes an empty, typed relation


@pytest.mark.parametrize(
    ("query", "tree"),
    [
        ("select id from orders intersect select n from events", "B1 INTERSECT B2"),
        ("select id from orders except all select n from events", "B1 EXCEPT ALL B2"),
        (
            "select id from orders union select n from events except select qty from orders "
            "intersect all select n from events",
            "(B1 UNION B2) EXCEPT (B3 INTERSECT ALL B4)",
        ),
        (
            "select id from orders union select n from events union all select qty from orders",
            "(B1 UNION B2) UNION ALL B3",
        ),
        ("select distinct id from orders union select n from events", "B1 UNION B2"),
    ],
)
def test_set_operations_keep_per_branch_counts_in_a_backing_table(query: str, tree: str) -> None:
    from dbt_pgtrickle.naming import stable_name

    p = plan(query, ["id"])
    assert p.strategy == compiler.LINEAR_MULTISET and p.counted is not None
    assert p.operators[-1].operator == "Set operation" and p.operators[-1].detail == tree
    inner = p.counted.inner
    assert inner.strategy == compiler.AGGREGATE
    assert inner.hidden_columns == [f"__pgt_c_{i}" for i in range(len(p.counted.branches))]
    assert p.backing == (p.counted.backing, inner)
    assert p.counted.backing in p.full_sql  # copies are derived from the stored counts
    delta = p.delta_for({stable_name("public", "events")})
    # O(Δ): sources appear only as the typed empty relation of a branch that did not change
    assert '"public"."events"' not in delta
    assert delta.count('"public"."orders"') == delta.count(
        '"public"."orders" AS "orders" WHERE false'
    )
    assert p.counted.backing in delta  # old counts are read from the backing table


def test_order_by_on_a_set_operation_is_dropped_with_a_note() -> None:
    p = plan("select id from orders except select n from events order by 1", ["id"])
    assert p.counted is not None and p.notes == [
        "ORDER BY dropped: a stream table is an unordered set of rows"
    ]
    assert "ORDER BY" not in p.counted.inner.full_sql


def test_pure_union_keeps_the_counted_distinct_plan() -> None:
    p = plan("select id from orders union select n from events", ["id"])
    assert p.branches is not None and p.counted is None and p.backing is None


def test_grouping_sets_are_one_aggregate_per_set_with_the_set_in_the_row_id() -> None:
    p = plan(
        "select region, qty, grouping(region, qty) as gr, count(*) as n, min(amount) as m "
        "from orders group by region, cube(qty) having count(*) > 1",
        ["region", "qty", "gr", "n", "m"],
    )
    assert p.strategy == compiler.AGGREGATE and p.shape and p.shape.grouping_sets
    sets = p.shape.grouping_sets
    assert [len(s.group_keys) for s in sets] == [2, 1]
    assert [s.grouping_set_id for s in sets] == [0, 1]
    assert [o.sql for o in sets[1].outputs][:3] == ['"__pgt_key_0"', "CAST(NULL AS integer)", "1"]
    assert "hash_record_extended(ROW(1, " in p.full_sql  # set index, then the set's keys
    delta = p.delta_sql or ""
    assert delta.count("UNION ALL") == 1  # one aggregate delta per set
    assert delta.count('"__pgt_rescan"') >= 2  # MIN is rescanned per set, for flagged groups
    assert p.operators[1].operator == "Grouping sets"


def test_rollup_expands_as_postgresql_does() -> None:
    p = plan(
        "select region, count(*) as n from orders "
        "group by grouping sets ((region, qty), ()), rollup(amount)",
        ["region", "n"],
    )
    assert p.shape and p.shape.grouping_sets
    assert [len(s.group_keys) for s in p.shape.grouping_sets] == [3, 2, 1, 0]
    p = plan(
        "select region, count(*) as n, grouping(region) as g from orders "
        "group by grouping sets ((region), (), cube((region, qty)))",
        ["region", "n", "g"],
    )
    assert p.shape and p.shape.grouping_sets
    sets = p.shape.grouping_sets
    assert [len(s.group_keys) for s in sets] == [1, 0, 2, 0]
    assert [s.outputs[2].sql for s in sets] == ["0", "1", "0", "1"]


def test_window_functions_recompute_touched_partitions() -> None:
    p = plan(
        "select id, sum(qty) over (partition by region) as s, "
        "rank() over (partition by region order by amount) as r from orders",
        ["id", "s", "r"],
    )
    assert p.strategy == compiler.WINDOW_PARTITIONS and p.hidden_columns == ["__pgt_part"]
    window = [o for o in p.operators if o.operator == "Window"][0]
    assert window.detail == 'PARTITION BY "orders"."region"'


def test_topk_keeps_the_whole_result_in_a_backing_table() -> None:
    p = plan(
        "select region, count(*) as n from orders group by region order by n desc limit 3",
        ["region", "n"],
    )
    assert p.strategy == compiler.TOPK and p.topk is not None
    assert p.topk.inner.strategy == compiler.AGGREGATE
    assert p.storage_columns == ["region", "n"]
    assert p.full_sql.endswith('ORDER BY "n" DESC NULLS FIRST LIMIT 3 OFFSET 0')
    assert p.topk.backing in p.topk.inner.delta_sql  # old group state is read from the backing


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("select id from orders limit 5", "LIMIT without ORDER BY"),
        ("select id from orders order by qty limit 5", "not an output column"),
        ("select id from orders order by id limit 5 + 1", "not a constant"),
    ],
)
def test_topk_needs_a_determined_order_of_output_columns(query: str, message: str) -> None:
    p = plan(query, ["id"])
    assert p.strategy == compiler.FULL_ONLY and message in (p.unsupported or "")


def test_distinct_on_keeps_the_first_row_per_key() -> None:
    p = plan(
        "select distinct on (region) region, id from orders order by region, amount desc, id",
        ["region", "id"],
    )
    assert p.strategy == compiler.WINDOW_PARTITIONS
    assert "row_number() OVER (PARTITION BY" in p.full_sql and '"__pgt_rn" = 1' in p.full_sql
    assert [o.operator for o in p.operators][-1] == "Distinct on"


CLOSURE = (
    "with recursive r(a, b) as (select src, dst from edges "
    "union select r.a, e.dst from r join edges e on e.src = r.b)"
)


def test_recursive_cte_is_maintained_from_a_backing_table() -> None:
    from dbt_pgtrickle.dvm.operators import recursive

    p = plan(CLOSURE + " select b from r where a <> b", ["b"])
    assert p.strategy == compiler.RECURSIVE
    assert p.storage_columns == ["__pgt_row_id", "b"]
    assert [s.qualified for s in p.sources] == ["public.edges"]  # r itself is no source
    assert p.recursive is not None
    backing = p.recursive.backing
    assert backing.startswith('"pgtrickle_changes"."rec_')
    assert f"FROM {backing}" in p.full_sql and "edges" not in p.full_sql
    ddl = recursive.backing_ddl(p.recursive)
    # The step joins r on column b: the semi-naive probes use an index on it.
    assert f'CREATE INDEX ON {backing} ("b")' in ddl
    assert "WITH RECURSIVE" in recursive.full_r(p.recursive)
    assert [o.operator for o in p.operators] == [
        "Recursive CTE",
        "Semi-naive insertion",
        "Over-deletion (DRed)",
        "Rederivation (DRed)",
        "Project",
    ]
    steps = p.prepare_for(p.source_stables)
    first = {
        s.split(" AS ", 1)[0].split(" WHERE ", 1)[0]: i for i, s in reversed(list(enumerate(steps)))
    }
    over_delete = steps[first['CREATE TEMP TABLE "__pgt_rec_d" ON COMMIT DROP']]
    derive = steps[first['CREATE TEMP TABLE "__pgt_rec_n" ON COMMIT DROP']]
    assert (
        first['CREATE TEMP TABLE "__pgt_rec_d" ON COMMIT DROP']
        < first[f"DELETE FROM {backing}"]
        < first['CREATE TEMP TABLE "__pgt_rec_n" ON COMMIT DROP']
        < first[
            f'INSERT INTO {backing} ("__pgt_row_id", "a", "b") SELECT "__pgt_row_id", "a", "b" FROM "__pgt_rec_n"'
        ]
    )
    # Over-deletion starts from rows whose net weight is negative; insertion from positive ones.
    assert 'HAVING sum("__pgt_w") < 0' in over_delete
    assert 'HAVING sum("__pgt_w") > 0' not in over_delete
    assert 'HAVING sum("__pgt_w") > 0' in derive
    # Hash joins are off while D and N are built (nested loops driven from the delta), and
    # restored afterwards.
    off = steps.index(next(s for s in steps if "set_config('enable_hashjoin', 'off'" in s))
    back = steps.index(
        next(s for s in steps if "current_setting('pgtrickle.saved_enable_hashjoin')" in s)
    )
    assert off < first['CREATE TEMP TABLE "__pgt_rec_d" ON COMMIT DROP']
    assert first['CREATE TEMP TABLE "__pgt_rec_n" ON COMMIT DROP'] < back
    delta = p.delta_for(p.source_stables)
    assert '"__pgt_rec_n"' in delta and '"__pgt_rec_d"' in delta and "edges" not in delta


def test_with_recursive_without_self_reference_is_an_ordinary_cte() -> None:
    p = plan("with recursive q as (select id from orders) select id from q", ["id"])
    assert p.strategy == compiler.LINEAR_KEYED


RECURSIVE_REJECTED = [
    (
        "with recursive r(a, b) as (select src, dst from edges "
        "union all select r.a, e.dst from r join edges e on e.src = r.b) select a, b from r",
        "WITH RECURSIVE … UNION ALL",
        "write UNION instead of UNION ALL",
    ),
    (
        "with recursive s as (select src from edges), r(a) as (select src from s "
        "union select e.dst from r join edges e on e.src = r.a) select a from r",
        "WITH RECURSIVE with several CTEs",
        "keep the recursive CTE alone",
    ),
    (
        CLOSURE + " search depth first by a set o select a, b from r",
        "SEARCH/CYCLE",
        "remove it",
    ),
    (
        CLOSURE + " select a, count(*) as n from r group by a",
        "a query over the recursive CTE r",
        "make SELECT … FROM r a stream table",
    ),
    (
        CLOSURE + " select r.a, e.dst from r join edges e on e.src = r.a",
        "a query over the recursive CTE r",
        "join, group or aggregate it in another stream table",
    ),
    (
        "with recursive r(a, b) as (select src, dst from edges "
        "union select r.a, e.dst from r left join edges e on e.src = r.b) select a, b from r",
        "outer joins in the recursive term of r",
        "keep the recursive CTE to inner joins",
    ),
    (
        "with recursive r(a, b) as (select src, dst from edges union select r.a, r.b + 1 "
        "from r where not exists (select 1 from edges e where e.src = r.b)) select a, b from r",
        "EXISTS/IN subqueries in the recursive term of r",
        "keep the recursive CTE to inner joins",
    ),
    (
        "with recursive r(a, b) as (select src, max(dst) from edges group by src "
        "union select r.a, e.dst from r join edges e on e.src = r.b) select a, b from r",
        "GROUP BY, aggregates or DISTINCT in the non-recursive term of r",
        "keep the recursive CTE to inner joins",
    ),
    (
        "with recursive r as (select src + 1 from edges "
        "union select e.dst from r join edges e on e.src = r.src) select * from r",
        "recursive CTE r without distinct column names",
        "name its columns: WITH RECURSIVE r(col1",
    ),
    (
        "with recursive r(a, __pgt_w) as (select src, dst from edges "
        "union select r.a, e.dst from r join edges e on e.src = r.__pgt_w) select a, a from r",
        "recursive CTE r with a column named __pgt_",
        "rename the column",
    ),
]


@pytest.mark.parametrize(("query", "construct", "rewrite"), RECURSIVE_REJECTED)
def test_rejected_recursive_forms_name_the_construct_and_the_rewrite(
    query: str, construct: str, rewrite: str
) -> None:
    p = plan(query, ["a", "b"] if "n from r" not in query else ["a", "n"])
    assert p.strategy == compiler.FULL_ONLY
    assert p.unsupported and construct in p.unsupported and rewrite in p.unsupported


@pytest.mark.parametrize(
    ("query", "names", "stages"),
    [
        # a derived table that does not merge (grouped), read by an aggregate above it
        (
            "select n, count(*) as c from (select region, count(*) as n from orders "
            "group by region) s group by n",
            ["n", "c"],
            1,
        ),
        # an uncorrelated one-row scalar subquery in WHERE
        ("select id from orders where qty > (select avg(n) from events)", ["id"], 1),
        # a correlated aggregate compared in WHERE: grouped by the correlation column
        (
            "select id from orders o where qty < (select 0.5 * max(e.n) from events e "
            "where e.kind = o.region)",
            ["id"],
            1,
        ),
        # an IN subquery with grouping
        (
            "select id from orders where qty in (select n from events group by n "
            "having count(*) > 1)",
            ["id"],
            1,
        ),
        # the same grouped CTE twice (one stage) and a scalar over it (a second one)
        (
            "with r as (select region, sum(qty) as t from orders group by region) "
            "select r.region from r where r.t = (select max(t) from r)",
            ["region"],
            2,
        ),
    ],
)
def test_subqueries_become_stages(query: str, names: list[str], stages: int) -> None:
    p = plan(query, names)
    assert p.differential, p.unsupported
    assert len(p.stages) == stages
    prefix = compiler.stage_prefix(TARGET)
    assert all(s.name.startswith(prefix) for s in p.stages)
    # stages are read like sources but are not captured sources themselves
    assert {s.name for s in p.sources} <= {"orders", "events"}
    assert any(s.stable in p.inputs for s in p.stages)
    assert any(op.operator.startswith("Stage ") for op in p.operators)


def test_not_in_over_not_null_columns_is_plain_inequality() -> None:
    # o.id and the subquery's o2.id are NOT NULL: no NULL escapes, so lookups can use an index.
    strict = plan(
        "select o.region from orders o where o.id not in (select o2.id from orders o2 "
        "where o2.qty > 1)",
        ["region"],
    )
    assert strict.shape is not None
    (sj,) = strict.shape.semijoins
    assert sj.negated and "IS NULL" not in sj.condition
    # events.n is nullable: NOT IN keeps its NULL semantics.
    nullable = plan(
        "select o.region from orders o where o.id not in (select e.n from events e)", ["region"]
    )
    assert nullable.shape is not None
    (sj,) = nullable.shape.semijoins
    assert "IS NULL" in sj.condition


def test_change_windows_keep_only_rows_that_meet_what_the_query_requires_of_their_table() -> None:
    """WHERE and ON conjuncts over one alias, and what each side of an OR implies for it, filter
    that table's change window (over the buffer alias b); a self-join ORs its aliases' filters
    and an alias with none takes the table's away; a semi-join's table gets what its own
    condition implies; outer joins get none."""
    from dbt_pgtrickle.naming import stable_name

    orders, events = stable_name("public", "orders"), stable_name("public", "events")
    p = plan(
        "select o.region, sum(e.n) as s from orders o join events e on e.n = o.qty "
        "and e.kind like 'a%' where o.amount > 5 and (o.region = 'x' and e.n > 1 "
        "or o.region = 'y') group by o.region",
        ["region", "s"],
    )
    assert p.window_filters == {
        orders: '("b"."amount" > 5 AND ("b"."region" = \'x\' OR "b"."region" = \'y\'))',
        events: '("b"."kind" LIKE \'a%\')',
    }
    assert "only its change rows that meet" in p.operators[0].why
    # Self-join: one alias without a filter leaves the window whole; two with filters OR them.
    assert (
        plan(
            "select a.id from orders a join orders b on a.qty = b.id where a.amount > 1", ["id"]
        ).window_filters
        == {}
    )
    both = plan(
        "select a.id from orders a join orders b on a.qty = b.id "
        "where a.amount > 1 and b.region = 'z'",
        ["id"],
    )
    assert both.window_filters == {orders: '("b"."amount" > 1) OR ("b"."region" = \'z\')'}
    # A semi-join's table: what its own condition implies for it; the outer one: WHERE's.
    semi = plan(
        "select o.id from orders o where o.qty > 0 and exists "
        "(select 1 from events e where e.n = o.qty and e.kind = 'k')",
        ["id"],
    )
    assert semi.window_filters == {orders: '("b"."qty" > 0)', events: '("b"."kind" = \'k\')'}
    # An OR over one alias alone is a condition like any other; nothing is implied for an
    # alias by an OR with a side without it, a subquery, another alias only.
    assert plan(
        "select o.id from orders o where o.amount > 1 or o.qty = o.id + 1 or o.region is null",
        ["id"],
    ).window_filters == {
        orders: '("b"."amount" > 1 OR "b"."qty" = "b"."id" + 1 OR "b"."region" IS NULL)'
    }
    assert (
        plan(
            "select o.id from orders o, events e where o.amount > 1 or e.n = 2", ["id"]
        ).window_filters
        == {}
    )
    # Inside an OR only tests that cannot raise: the cast there may be evaluated only for
    # region 'x' (and a top-level one is evaluated by the query on every row anyway).
    guarded = plan(
        "select o.id from orders o, events e where (o.region = 'x' and e.kind::int > 1 "
        "or e.n > 0) and (e.kind = 'a' or e.n is null) and o.qty::text <> 'z'",
        ["id"],
    )
    assert guarded.window_filters == {
        orders: '(CAST("b"."qty" AS TEXT) <> \'z\')',
        events: '("b"."kind" = \'a\' OR "b"."n" IS NULL)',
    }
    # Outer joins: a preserved alias is bound by WHERE; the right side of a LEFT JOIN by that
    # join's ON only (WHERE may pass the padded row its change would remove); the sides of a
    # FULL JOIN, and the left of a RIGHT JOIN, by nothing.
    left = plan(
        "select o.id, e.n from orders o left join events e on e.n = o.qty and e.kind = 'k' "
        "and o.qty > 2 where o.amount > 1 and e.n > 0",
        ["id", "n"],
    )
    assert left.window_filters == {
        orders: '("b"."amount" > 1)',
        events: '("b"."kind" = \'k\')',
    }
    right = plan(
        "select o.id, e.n from orders o right join events e on e.n = o.qty and o.qty > 2 "
        "where e.kind = 'k' and o.amount > 1",
        ["id", "n"],
    )
    assert right.window_filters == {events: '("b"."kind" = \'k\')'}
    assert (
        plan(
            "select o.id, e.n from orders o full join events e on e.n = o.qty and e.kind = 'k' "
            "where o.amount > 1 and e.n > 0",
            ["id", "n"],
        ).window_filters
        == {}
    )
    # TopK keeps its inner plan's filters; a UNION's branches get none.
    topk = plan("select o.id from orders o where o.amount > 1 order by o.id limit 3", ["id"])
    assert topk.window_filters == {orders: '("b"."amount" > 1)'}
    assert (
        plan(
            "select id from orders where amount > 1 union all select n from events", ["id"]
        ).window_filters
        == {}
    )
