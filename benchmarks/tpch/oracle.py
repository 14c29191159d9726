"""Exactness check of a corpus stream table against its query (shared by the test and the
benchmark).

* Queries without ``LIMIT``: symmetric ``EXCEPT ALL`` over the visible columns (multisets).
* Top-k queries (``ORDER BY k LIMIT n``) may legitimately differ from a fresh run of the query
  when rows tie on ``k`` at the cut-off, so the check is the definition of "a correct result of
  ``ORDER BY k LIMIT n``": (1) the table has as many rows as the query returns, (2) every row of
  the table is a row of the query without its ``ORDER BY … LIMIT`` (multiset containment, so no
  row appears more often than it exists), and (3) the multiset of the table's sort keys equals
  that of the query's result. Without ties this is plain equality.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

from . import Query


def visible_columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    cur = conn.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(sql.Identifier(table)))
    assert cur.description is not None
    return [d.name for d in cur.description if not d.name.startswith("__pgt_")]


def _cols(names: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def multiset_diff(
    conn: psycopg.Connection[Any], left: sql.Composable, right: sql.Composable, limit: int = 10
) -> list[tuple[Any, ...]]:
    """Rows of ``left`` not in ``right`` and vice versa, each tagged with its side."""
    q = sql.SQL(
        "(SELECT 'only in stream table' AS side, * FROM ({l} EXCEPT ALL {r}) AS a) UNION ALL "
        "(SELECT 'only in query', * FROM ({r} EXCEPT ALL {l}) AS b) LIMIT {n}"
    ).format(l=left, r=right, n=sql.Literal(limit))
    return conn.execute(q).fetchall()


def sort_columns(order_keys: str) -> list[str]:
    """Output column names of an ``ORDER BY`` list (``revenue desc, o_orderdate``)."""
    out = []
    for item in order_keys.split(","):
        name = re.split(r"\s+", item.strip())[0]
        out.append(name.split(".")[-1].strip('"'))
    return out


def mismatches(conn: psycopg.Connection[Any], q: Query, table_name: str | None = None) -> list[Any]:
    """Empty when ``table_name`` (default: the stream table of ``q``) is a correct result of
    ``q``; otherwise up to a few differing rows, each tagged with what is wrong."""
    name = table_name or q.stream_table
    cols = visible_columns(conn, name)
    table = sql.SQL("SELECT {} FROM {}").format(_cols(cols), sql.Identifier(name))
    query = sql.SQL("SELECT {} FROM ({}) AS q").format(_cols(cols), sql.SQL(q.sql))
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if q.limit is None:
            return multiset_diff(conn, table, query)
        assert q.order_keys and q.unlimited_sql
        problems: list[Any] = []
        n_table = conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS t").format(table)).fetchone()
        n_query = conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS t").format(query)).fetchone()
        if n_table != n_query:
            problems.append(("row count", n_table, n_query))
        unlimited = sql.SQL("SELECT {} FROM ({}) AS q").format(
            _cols(cols), sql.SQL(q.unlimited_sql)
        )
        extra = conn.execute(
            sql.SQL("SELECT * FROM ({} EXCEPT ALL {}) AS x LIMIT 10").format(table, unlimited)
        ).fetchall()
        problems += [("not a row of the query", *r) for r in extra]
        keys = _cols(sort_columns(q.order_keys))
        problems += multiset_diff(
            conn,
            sql.SQL("SELECT {} FROM {}").format(keys, sql.Identifier(name)),
            sql.SQL("SELECT {} FROM ({}) AS q").format(keys, sql.SQL(q.sql)),
        )
        return problems
