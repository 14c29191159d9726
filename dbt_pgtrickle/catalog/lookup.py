"""The compiler's view of the database: tables, columns, keys, expression types, functions."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from ..dvm.ir import Column, SourceTable
from ..errors import SourceError

_KINDS = {
    "r": "table",
    "p": "partitioned",
    "v": "view",
    "m": "matview",
    "f": "foreign",
}


class DatabaseLookup:
    """:class:`~dbt_pgtrickle.dvm.ir.SchemaLookup` answered from the connected database."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self._tables: dict[tuple[str | None, str], SourceTable] = {}

    def table(self, schema: str | None, name: str) -> SourceTable:
        key = (schema, name)
        if key not in self._tables:
            self._tables[key] = describe_table(self.conn, schema, name)
        return self._tables[key]

    def view_definition(self, schema: str | None, name: str) -> str | None:
        """The SELECT of a view (as ``pg_get_viewdef`` prints it, names qualified where the
        search_path needs it); None for a table or anything that does not resolve."""
        ident = sql.Identifier(name) if schema is None else sql.Identifier(schema, name)
        row = self.conn.execute(
            "SELECT pg_get_viewdef(c.oid) FROM pg_class c "
            "WHERE c.oid = to_regclass(%s) AND c.relkind = 'v'",
            (ident.as_string(self.conn),),
        ).fetchone()
        return None if row is None else str(row[0])

    def expression_types(self, from_clause: str, exprs: list[str]) -> list[str]:
        # Both texts were rendered by the compiler from the parsed query (identifiers quoted).
        query = sql.SQL("SELECT {} FROM {} LIMIT 0").format(
            sql.SQL(", ").join(sql.SQL(e) for e in exprs),
            sql.SQL(from_clause),
        )
        cur = self.conn.execute(query)
        oids = [d.type_code for d in cur.description or []]
        rows = self.conn.execute(
            "SELECT format_type(o, NULL) FROM unnest(%s::oid[]) WITH ORDINALITY AS u(o, i) ORDER BY i",
            (oids,),
        ).fetchall()
        return [r[0] for r in rows]

    def is_volatile_function(self, name: str) -> bool:
        row = self.conn.execute(
            "SELECT bool_or(provolatile = 'v') FROM pg_proc WHERE proname = %s", (name,)
        ).fetchone()
        return bool(row and row[0])

    def is_aggregate_function(self, name: str) -> bool:
        row = self.conn.execute(
            "SELECT bool_or(prokind = 'a') FROM pg_proc WHERE proname = %s", (name,)
        ).fetchone()
        return bool(row and row[0])


def resolve(conn: psycopg.Connection[Any], schema: str | None, name: str) -> tuple[str, str, str]:
    """``(schema, name, kind)`` of a relation, following search_path when ``schema`` is None."""
    ident = sql.Identifier(name) if schema is None else sql.Identifier(schema, name)
    row = conn.execute(
        sql.SQL(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass({})"
        ).format(sql.Literal(ident.as_string(conn))),
    ).fetchone()
    if row is None:
        shown = name if schema is None else f"{schema}.{name}"
        raise SourceError(f"relation {shown} does not exist (or is not on the search_path)")
    return row[0], row[1], _KINDS.get(row[2], "other")


#: The collation of column ``a`` (pg_attribute) of type ``t`` (pg_type), quoted and qualified,
#: when it is not the type's default; NULL otherwise (for a query with parameters).
COLLATION_SQL = (
    "(SELECT format('%%I.%%I', n.nspname, c.collname) FROM pg_collation c JOIN pg_namespace n "
    "ON n.oid = c.collnamespace WHERE c.oid = a.attcollation AND a.attcollation <> "
    "t.typcollation)"
)


def describe_table(conn: psycopg.Connection[Any], schema: str | None, name: str) -> SourceTable:
    nsp, rel, kind = resolve(conn, schema, name)
    cols = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
        + COLLATION_SQL
        + " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = %s::regclass AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attnum",
        (sql.Identifier(nsp, rel).as_string(conn),),
    ).fetchall()
    pk_row = conn.execute(
        "SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i "
        "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s::regclass AND i.indisprimary",
        (sql.Identifier(nsp, rel).as_string(conn),),
    ).fetchone()
    pk = tuple(pk_row[0]) if pk_row and pk_row[0] else None
    return SourceTable(
        nsp,
        rel,
        tuple(Column(n, t, bool(nn), coll) for n, t, nn, coll in cols),
        pk,
        kind,
    )
