"""Compiled delta plans kept per process, so a refresh does not recompile its query every time.

A plan depends on the defining query, the stream table's name, and the catalog as the compiler
saw it: the relations it looked up (resolved through ``search_path`` as written in the query),
their columns, types, NOT NULL flags, primary keys and kinds, a view's definition, and the
functions it asked about by name. A cached plan is keyed by the query and the stream table; it is
used only while a **fingerprint** of exactly those catalog facts is unchanged. The fingerprint is
one statement per refresh:

* its parse takes ``ACCESS SHARE`` locks on every looked-up relation (``(SELECT 1 FROM r WHERE
  false)`` per relation, as the uncached compile's ``SELECT * FROM (query) LIMIT 0`` did), so no
  DDL on them can commit between the check and the refresh's statements;
* it then reads each relation's oid (a dropped-and-recreated table has a new one), kind, columns,
  key and view definition, the named functions' signatures, ``search_path``, the database and the
  server start time (a cache outlives neither a server restart nor a switch of database).

A missing relation makes the fingerprint statement fail like the query itself would. Operators
and casts are not fingerprinted one by one: ``max(oid)`` of ``pg_operator`` and ``pg_cast``
changes when one is created (oids only grow), which is the only way a new one can change how an
unchanged query resolves. The cache is used only inside a transaction (the refresh's), where the
locks last until its end; outside one (``explain``) every call compiles.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from ..catalog.lookup import DatabaseLookup
from ..dvm import compiler

#: Plans kept per process (least recently used dropped first).
MAX_ENTRIES = 512


class _RecordingLookup(DatabaseLookup):
    """A :class:`DatabaseLookup` that remembers which relations and function names it was asked
    about: the catalog facts the plan depends on."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__(conn)
        self.functions: set[str] = set()

    def is_volatile_function(self, name: str) -> bool:
        self.functions.add(name)
        return super().is_volatile_function(name)

    def is_aggregate_function(self, name: str) -> bool:
        self.functions.add(name)
        return super().is_aggregate_function(name)

    @property
    def relations(self) -> list[tuple[str | None, str]]:
        return sorted(self._tables, key=lambda k: (k[0] or "", k[1]))


@dataclass(frozen=True)
class _Entry:
    relations: tuple[tuple[str | None, str], ...]
    functions: tuple[str, ...]
    fingerprint: str
    plan: compiler.DeltaPlan


_cache: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
_lock = threading.Lock()


def clear() -> None:
    """Forget every cached plan."""
    with _lock:
        _cache.clear()


def compiled(
    conn: psycopg.Connection[Any],
    query: str,
    target: str,
    compile_fn: Callable[[DatabaseLookup], compiler.DeltaPlan],
) -> compiler.DeltaPlan:
    """The plan of ``query`` for the stream table ``target``: the cached one when the
    fingerprint of the catalog facts it was compiled from still matches, else
    ``compile_fn(lookup)`` with a recording lookup (its result is cached when compiled inside a
    transaction). ``compile_fn`` runs the compiler (it may also describe the query)."""
    in_transaction = conn.info.transaction_status == TransactionStatus.INTRANS
    key = (query, target)
    if in_transaction:
        with _lock:
            entry = _cache.get(key)
        if entry is not None and _fingerprint(conn, entry.relations, entry.functions) == (
            entry.fingerprint
        ):
            with _lock:
                if key in _cache:
                    _cache.move_to_end(key)
            return entry.plan
    lookup = _RecordingLookup(conn)
    plan: compiler.DeltaPlan = compile_fn(lookup)
    if in_transaction:
        relations = tuple(lookup.relations)
        functions = tuple(sorted(lookup.functions))
        entry = _Entry(relations, functions, _fingerprint(conn, relations, functions), plan)
        with _lock:
            _cache[key] = entry
            _cache.move_to_end(key)
            while len(_cache) > MAX_ENTRIES:
                _cache.popitem(last=False)
    return plan


def _fingerprint(
    conn: psycopg.Connection[Any],
    relations: tuple[tuple[str | None, str], ...],
    functions: tuple[str, ...],
) -> str:
    """One statement: lock ``relations`` (at parse time) and read the catalog facts a plan
    compiled against them depends on, as one text."""
    idents = [sql.Identifier(n) if s is None else sql.Identifier(s, n) for s, n in relations]
    locks = sql.SQL("").join(sql.SQL(", (SELECT 1 FROM {} WHERE false)").format(i) for i in idents)
    rel_texts = [i.as_string(conn) for i in idents]
    row = conn.execute(
        sql.SQL(
            "SELECT concat_ws('|', current_setting('search_path'), current_database(), "
            "pg_postmaster_start_time(), "
            "(SELECT max(oid) FROM pg_operator), (SELECT max(oid) FROM pg_cast), "
            "(SELECT string_agg(concat_ws(';', u.i, c.oid, c.relkind, "
            "(SELECT string_agg(concat_ws(':', a.attname, a.atttypid, a.atttypmod, "
            "a.attnotnull, a.attcollation), ',' ORDER BY a.attnum) FROM pg_attribute a "
            "WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), "
            "(SELECT string_agg(x.indkey::text, ',') FROM pg_index x "
            "WHERE x.indrelid = c.oid AND x.indisprimary), "
            "CASE WHEN c.relkind IN ('v', 'm') THEN md5(pg_get_viewdef(c.oid)) END), "
            "'/' ORDER BY u.i) "
            "FROM unnest({rels}::text[]) WITH ORDINALITY AS u(r, i) "
            "LEFT JOIN pg_class c ON c.oid = to_regclass(u.r)), "
            "(SELECT string_agg(concat_ws(';', p.oid, p.proname, p.prorettype, p.provolatile, "
            "p.prokind, p.proargtypes, p.pronamespace), '/' ORDER BY p.oid) "
            "FROM pg_proc p WHERE p.proname = ANY({funcs}::text[])))"
            "{locks}"
        ).format(
            rels=sql.Literal(rel_texts),
            funcs=sql.Literal(list(functions)),
            locks=locks,
        )
    ).fetchone()
    assert row is not None
    return str(row[0])
