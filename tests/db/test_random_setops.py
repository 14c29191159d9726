"""Randomised set operations and grouping sets, against the plain query after every refresh.

Hypothesis draws a tree of ``UNION``/``INTERSECT``/``EXCEPT`` (each with or without ``ALL``),
written with or without parentheses so SQL's precedence decides the nesting, over branches that
filter, join, project to duplicate-rich values or use ``DISTINCT``; or a ``GROUP BY`` with
``ROLLUP``/``CUBE``/``GROUPING SETS`` (also mixed with plain keys and duplicate sets) and
``GROUPING()``. The changes are those of :mod:`test_random_queries` (inserts, key and value
updates, deletes, a key change while the matching row is deleted, insert-then-delete).

Reproducible: ``derandomize=True`` unless ``PGTRICKLE_ORACLE_SEED`` is set;
``PGTRICKLE_RANDOM_SETOPS_EXAMPLES`` sets the budget (default 15 per test).
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from test_random_queries import change, run_cycles

import dbt_pgtrickle as pgt

EXAMPLES = int(os.environ.get("PGTRICKLE_RANDOM_SETOPS_EXAMPLES", "15"))
SEED = os.environ.get("PGTRICKLE_ORACLE_SEED")
STATS = {"queries": 0, "cycles": 0}

# Two integer columns each (NULLs and duplicates are common in k and in the derived values).
BRANCHES = [
    "SELECT k, v FROM a",
    "SELECT k, v FROM a WHERE v > 0",
    "SELECT k, w % 3 FROM b",
    "SELECT k, w FROM b WHERE w IS NULL OR k < 3",
    "SELECT a.k, b.w FROM a JOIN b ON b.id = a.id",
    "SELECT DISTINCT k, v % 2 FROM a",
    "SELECT k, length(tag) FROM c",
    "SELECT b.k, b.w % 2 FROM b WHERE EXISTS (SELECT 1 FROM c WHERE c.k = b.k)",
]
OPS = st.sampled_from(["UNION", "UNION ALL", "INTERSECT", "INTERSECT ALL", "EXCEPT", "EXCEPT ALL"])


@st.composite
def set_operations(draw: st.DrawFn, depth: int = 0) -> str:
    if depth >= 3 or (depth > 0 and draw(st.booleans())):
        return draw(st.sampled_from(BRANCHES))
    left = draw(set_operations(depth + 1))
    right = draw(set_operations(depth + 1))
    if draw(st.booleans()):  # explicit nesting; otherwise precedence decides
        left, right = f"({left})", f"({right})"
    return f"{left} {draw(OPS)} {right}"


GROUPINGS = st.sampled_from(
    [
        "ROLLUP (a.k, b.k)",
        "CUBE (a.k, b.k)",
        "GROUPING SETS ((a.k), (b.k), ())",
        "a.k, ROLLUP (b.k)",
        "GROUPING SETS ((a.k, b.k), a.k, (), ())",
        "ROLLUP ((a.k, b.k))",
    ]
)
AGGREGATES = st.sampled_from(
    [
        "count(*) AS n, sum(a.v) AS sv",
        "min(b.w) AS mw, max(a.v) AS mv, count(b.w) AS nb",
        "avg(a.v) AS av, string_agg(b.w::text, ',' ORDER BY b.w) AS ws",
    ]
)
FROMS = st.sampled_from(["a JOIN b ON b.k = a.k", "a LEFT JOIN b ON b.id = a.id"])


@st.composite
def grouping_queries(draw: st.DrawFn) -> str:
    having = draw(st.sampled_from(["", " HAVING count(*) > 1"]))
    return (
        f"SELECT a.k AS ak, b.k AS bk, grouping(a.k, b.k) AS g, {draw(AGGREGATES)} "
        f"FROM {draw(FROMS)} GROUP BY {draw(GROUPINGS)}{having}"
    )


def _property(strategy: Any) -> Any:
    def wrap(test: Any) -> Any:
        wrapped = settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=SEED is None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
            database=None,
        )(
            given(
                query=strategy,
                batches=st.lists(st.lists(change, min_size=1, max_size=5), min_size=1, max_size=4),
            )(test)
        )
        return seed(int(SEED))(wrapped) if SEED is not None else wrapped

    return wrap


def test_random_set_operations_stay_exact(conn: psycopg.Connection[Any]) -> None:
    pgt.install(conn)
    pgt.set_setting(conn, "auto_full_threshold", 1)

    @_property(set_operations())
    def run(query: str, batches: list[list[tuple[Any, ...]]]) -> None:
        run_cycles(conn, query, batches, STATS)

    run()
    print(f"\nrandom set operations: {STATS['queries']} queries, {STATS['cycles']} cycles so far")


def test_random_grouping_sets_stay_exact(conn: psycopg.Connection[Any]) -> None:
    pgt.install(conn)
    pgt.set_setting(conn, "auto_full_threshold", 1)

    @_property(grouping_queries())
    def run(query: str, batches: list[list[tuple[Any, ...]]]) -> None:
        run_cycles(conn, query, batches, STATS)

    run()
    print(f"\nrandom grouping sets: {STATS['queries']} queries, {STATS['cycles']} cycles so far")
