"""Randomised queries *and* changes: hypothesis draws a join query over two or three tables
(inner, cross and outer joins mixed in one FROM clause, the third table with or without a primary
key, optional filters, some implying a condition on one table alone that filters its change
window, optional aggregation or DISTINCT), a quarter of them joining ``a`` and
``b`` a second time (so a change of a, b and c makes five changed inputs, whose delta is the
telescoping sum), and batches of DML, creates the
stream table with refresh_mode DIFFERENTIAL, and compares it with the plain query after every
refresh. Includes the classic hard case: a join key changes on one side while the row it matched
is deleted on the other, and insert-then-delete of the same row, in one cycle.

Reproducible: ``derandomize=True`` unless ``PGTRICKLE_ORACLE_SEED`` is set;
``PGTRICKLE_RANDOM_QUERY_EXAMPLES`` sets the budget (default 40) and
``PGTRICKLE_RANDOM_QUERY_BATCHES`` the most DML batches (refresh cycles) per query (default 4).

Long mode (about 50,000 refresh cycles: hypothesis draws 3.5-4 batches per query on average
with up to 20; progress every 1,000 cycles on stdout, the totals at the end). Use a new seed for
each run: a run restarted on the same seed repeats the same examples::

    PGTRICKLE_RANDOM_QUERY_EXAMPLES=14000 PGTRICKLE_RANDOM_QUERY_BATCHES=20 \
        PGTRICKLE_ORACLE_SEED=50005 python -m pytest -q -s tests/db/test_random_queries.py
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import dbt_pgtrickle as pgt
from dbt_pgtrickle.dvm.operators import join
from dbt_pgtrickle.refresh import engine

EXAMPLES = int(os.environ.get("PGTRICKLE_RANDOM_QUERY_EXAMPLES", "40"))
BATCHES = int(os.environ.get("PGTRICKLE_RANDOM_QUERY_BATCHES", "4"))
SEED = os.environ.get("PGTRICKLE_ORACLE_SEED")
STATS = {
    "queries": 0,
    "cycles": 0,
    "failed_examples": 0,
    "old_inputs": 0,
    "filtered": 0,
    "cancelled": 0,
}

SETUP = """
DROP TABLE IF EXISTS a, b, c CASCADE;
CREATE TABLE a (id int PRIMARY KEY, k int, v int);
CREATE TABLE b (id int PRIMARY KEY, k int, w int);
CREATE TABLE c (id int {c_key}, k int, tag text);
INSERT INTO a SELECT i, i % 4, i - 3 FROM generate_series(1, 10) i;
INSERT INTO b SELECT i, i % 5, i * 2 FROM generate_series(1, 8) i;
INSERT INTO c SELECT i, i % 3, (ARRAY['x','y',NULL])[i % 3 + 1] FROM generate_series(1, 6) i;
"""

JOINS = st.sampled_from(["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN", "CROSS JOIN"])
# The third table joins the first two; RIGHT/FULL there would preserve a join (not supported).
THIRD_JOINS = st.sampled_from(["JOIN", "LEFT JOIN", "LEFT JOIN", "CROSS JOIN"])
THIRD_CONDITIONS = st.sampled_from(
    [
        " ON c.k = a.k",
        " ON c.k = b.k",  # strict in b: b's padded rows never match
        " ON c.k = coalesce(b.k, a.k) AND c.id > 1",  # b's padded rows can match
        " ON c.k <= a.k",
    ]
)
FILTERS = st.sampled_from(
    [
        "",
        "a.v > 0",
        "b.w IS NULL OR a.v < 3",
        "coalesce(a.k, -1) <> 2",
        "b.w % 3 = 0",
        "(a.v > 0 AND b.w > 2) OR a.k = 0",  # implies a.v > 0 OR a.k = 0 for a's window
    ]
)
THIRD_FILTERS = st.sampled_from(["", "c.tag IS NULL", "c.id IS NULL OR b.w > 2", "c.k > 0"])
SHAPES = st.sampled_from(["rows", "group", "scalar", "distinct"])


@st.composite
def queries(draw: st.DrawFn) -> tuple[str, bool]:
    """A query and whether table c has no primary key (its rows are then a multiset)."""
    join = draw(JOINS)
    three = draw(st.booleans())
    conditions = [" ON b.k = a.k"] if join == "FULL JOIN" else [" ON b.k = a.k", " ON b.k <= a.k"]
    on = "" if join == "CROSS JOIN" else draw(st.sampled_from(conditions))  # PostgreSQL: a FULL
    # JOIN needs a merge- or hash-joinable (equality) condition
    frm = f"a {join} b{on}"
    filters = [draw(FILTERS)]
    if three:
        third = draw(THIRD_JOINS)
        frm += f" {third} c" + ("" if third == "CROSS JOIN" else draw(THIRD_CONDITIONS))
        filters.append(draw(THIRD_FILTERS))
    five = three and draw(st.booleans())
    if five:  # self-joins: a's and b's changes are two inputs' changes each
        frm += " JOIN a AS a2" + draw(st.sampled_from([" ON a2.id = b.k", " ON a2.k = c.k"]))
        frm += " JOIN b AS b2 ON b2.id = a2.k"
    where = " AND ".join(f"({f})" for f in filters if f)
    where_sql = f" WHERE {where}" if where else ""
    shape = draw(SHAPES)
    tag = (", c.id AS cid, c.tag" if three else "") + (", a2.v AS v2, b2.w AS w2" if five else "")
    keyless_c = three and draw(st.booleans())
    if shape == "rows":
        cols = f"a.id AS aid, b.id AS bid, a.v, b.w{tag}"
        return f"SELECT {cols} FROM {frm}{where_sql}", keyless_c
    if shape == "distinct":
        cols = "a.k AS ak, b.w, c.tag" if three else "a.k AS ak, b.w"
        return f"SELECT DISTINCT {cols} FROM {frm}{where_sql}", keyless_c
    aggs = "count(*) AS n, sum(a.v) AS sv, min(b.w) AS mw, count(b.id) AS nb"
    if three:
        aggs += ", count(c.id) AS nc"
    if five:
        aggs += ", sum(a2.v) AS sv2, sum(b2.w) AS sw2"
    if shape == "scalar":
        return f"SELECT {aggs} FROM {frm}{where_sql}", keyless_c
    return f"SELECT a.k AS ak, {aggs} FROM {frm}{where_sql} GROUP BY a.k", keyless_c


IDS = st.integers(1, 14)
KS = st.one_of(st.none(), st.integers(0, 4))
VALS = st.one_of(st.none(), st.integers(-4, 12))
change = st.one_of(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.just("insert"), IDS, KS, VALS),
    st.tuples(st.sampled_from(["a", "b", "c"]), st.just("update_k"), IDS, KS, VALS),
    st.tuples(st.sampled_from(["a", "b"]), st.just("update_v"), IDS, KS, VALS),
    st.tuples(st.sampled_from(["a", "b", "c"]), st.just("delete"), IDS, KS, VALS),
    st.tuples(st.just("ab"), st.just("key_change_and_delete"), IDS, KS, VALS),
    st.tuples(st.sampled_from(["a", "b"]), st.just("insert_then_delete"), IDS, KS, VALS),
)


def apply(cur: psycopg.Cursor[Any], ch: tuple[Any, ...]) -> None:
    table, kind, ident, k, v = ch
    third = {"a": "v", "b": "w", "c": "tag"}
    if kind == "insert":
        val = None if v is None or table == "c" else v
        cur.execute(
            f"INSERT INTO {table} SELECT %s, %s, %s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE id = %s)",
            (ident, k, val, ident),
        )
    elif kind == "update_k":
        cur.execute(f"UPDATE {table} SET k = %s WHERE id = %s", (k, ident))
    elif kind == "update_v":
        cur.execute(f"UPDATE {table} SET {third[table]} = %s WHERE id = %s", (v, ident))
    elif kind == "delete":
        cur.execute(f"DELETE FROM {table} WHERE id = %s", (ident,))
    elif kind == "key_change_and_delete":
        # a's join key moves to k while b's rows with the old and the new k are deleted.
        cur.execute("SELECT k FROM a WHERE id = %s", (ident,))
        old = cur.fetchone()
        cur.execute("UPDATE a SET k = %s WHERE id = %s", (k, ident))
        cur.execute("DELETE FROM b WHERE k IS NOT DISTINCT FROM %s", (k,))
        if old is not None:
            cur.execute("DELETE FROM b WHERE k IS NOT DISTINCT FROM %s", (old[0],))
    elif kind == "insert_then_delete":
        cur.execute(
            f"INSERT INTO {table} VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING", (ident, k, v)
        )
        cur.execute(f"DELETE FROM {table} WHERE id = %s", (ident,))


def run_cycles(
    conn: psycopg.Connection[Any],
    query: str,
    batches: list[list[tuple[Any, ...]]],
    stats: dict[str, int],
    *,
    keyless_c: bool = False,
    progress: str | None = None,
) -> None:
    """Fresh tables (SETUP), a DIFFERENTIAL stream table of ``query``, then per batch of changes
    one refresh and the comparison with the query. ``progress``: a label printed every 1,000
    cycles (long runs)."""
    conn.execute("DROP TABLE IF EXISTS st")
    conn.execute(
        "DELETE FROM pgtrickle.pgt_dependencies; DELETE FROM pgtrickle.pgt_stream_tables; "
        "DELETE FROM pgtrickle.pgt_change_tracking; DROP SCHEMA pgtrickle_changes CASCADE; "
        "CREATE SCHEMA pgtrickle_changes"
    )
    conn.execute(SETUP.format(c_key="" if keyless_c else "PRIMARY KEY"))
    pgt.create_stream_table(conn, "st", query, refresh_mode="DIFFERENTIAL")
    for batch in batches:
        with conn.cursor() as cur:
            for ch in batch:
                apply(cur, ch)
        result = pgt.refresh_stream_table(conn, "st")
        assert result.action in ("DIFFERENTIAL", "NO_DATA"), result
        check = pgt.verify_stream_table(conn, "st")
        assert check["equal"], f"{query} differs after {batch}: {check['sample']}"
        stats["cycles"] += 1
        if progress and stats["cycles"] % 1000 == 0:
            print(f"{progress}: {stats['queries']} queries, {stats['cycles']} cycles")
    stats["queries"] += 1


def test_random_join_queries_stay_exact(
    conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pgt.install(conn)
    old_input = join._old_input

    def counted(*args: Any) -> str:  # telescoping terms read old inputs: count them
        STATS["old_inputs"] += 1
        return old_input(*args)

    monkeypatch.setattr(join, "_old_input", counted)
    window_filter = engine._window_filter

    def counted_filter(*args: Any) -> str | None:  # windows copied with a filter: count them
        kept = window_filter(*args)
        STATS["filtered"] += kept is not None
        return kept

    monkeypatch.setattr(engine, "_window_filter", counted_filter)
    consolidate = engine._consolidate

    def counted_consolidate(conn: Any, plan: Any, src: Any, columns: list[str]) -> None:
        consolidate(conn, plan, src, columns)  # windows whose rows undid each other: count them
        STATS["cancelled"] += src.window_rows < src.pending

    monkeypatch.setattr(engine, "_consolidate", counted_consolidate)
    pgt.set_setting(conn, "auto_full_threshold", 1)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=SEED is None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(
        drawn=queries(),
        batches=st.lists(st.lists(change, min_size=1, max_size=5), min_size=1, max_size=BATCHES),
    )
    def run(drawn: tuple[str, bool], batches: list[list[tuple[Any, ...]]]) -> None:
        query, keyless_c = drawn
        # A session per example: one session that creates and drops thousands of tables grows
        # its catalog caches (to 700 MB in a long run) and slows down with them.
        with psycopg.connect(dsn, autocommit=True) as session:
            try:
                run_cycles(
                    session, query, batches, STATS, keyless_c=keyless_c, progress="random queries"
                )
            except Exception:
                # Counted so that an interrupted long run says whether it had found one
                # (hypothesis reports a failure only once it has shrunk it).
                STATS["failed_examples"] += 1
                raise

    if SEED is not None:
        run = seed(int(SEED))(run)
    try:
        run()
    finally:  # also when a long run is interrupted: how far it got
        print(
            f"\nrandom queries: {STATS['queries']} queries, {STATS['cycles']} cycles, "
            f"{STATS['failed_examples']} failed examples, {STATS['old_inputs']} old inputs read, "
            f"{STATS['filtered']} windows filtered, {STATS['cancelled']} windows with rows "
            "cancelled"
        )
    if EXAMPLES >= 40:  # the budget reaches the telescoping sum (five changed inputs)
        assert STATS["old_inputs"] > 0
        assert STATS["filtered"] > 0
        assert STATS["cancelled"] > 0
