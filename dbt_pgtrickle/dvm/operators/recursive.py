"""Recursive CTEs: ``WITH RECURSIVE r(c…) AS (base₁ UNION … UNION step) SELECT … FROM r WHERE …``.

Semantics. ``UNION`` makes ``r`` a *set*: the least fixpoint ``R = lfp(X ↦ B ∪ S(X))`` of the
base blocks ``B`` and the step ``S`` (one FROM/WHERE block that reads ``r`` exactly once, inner-
joined with base tables). On a finite domain the fixpoint is finite, so every evaluation below
terminates whenever the query itself does. ``UNION ALL`` counts derivations (paths) instead; a
delta of path counts can run forever in a state that mixes old and new rows even when the query
terminates in both, so it is not maintained (FULL, with a message suggesting UNION).

State. ``R`` is kept in a backing table ``pgtrickle_changes.rec_<hash of the stream table>``
(row id = hash of the row, an index on it and on every column of ``r`` the step joins on). The
stream table is the outer ``SELECT … FROM r WHERE …`` kept as a multiset over ``R``:
``Δ(stream table) = π σ (ΔR)`` with ``ΔR = N − D`` below.

Rule (delete and rederive, with semi-naive insertion). Per changed source alias, its change window
is consolidated per value of the columns the block reads: ``Ins`` = values whose weights sum to
more than 0 (they are in the new table), ``Del`` = values summing to less than 0 (they were in the
old table; a superset of what really disappeared, which only makes ``D`` larger). Then

1. **Over-delete** ``D ⊆ R``: facts with a derivation that uses a ``Del`` row (base blocks and step
   with one alias read from ``Del``, the other changed aliases from ``new ∪ Del`` ⊇ old, ``r`` from
   ``R``), closed under the step (``r`` read from ``D``). A fact of ``R − D`` has a derivation
   free of deleted rows and of ``D``, so by induction on its derivation ``K = R − D ⊆ R_new``.
2. ``R := K`` (delete ``D`` from the backing table).
3. **Rederive and insert** ``N``: seeds are the facts of ``D`` still produced by a base block or
   by the step over ``K`` in the new state, and every fact produced by a base block or by the step
   over ``K`` with one changed alias read from ``Ins``; seeds and everything the step derives from
   them (new state, ``r`` read from ``N``) are kept unless already in ``K``. Since the operator is
   monotone and ``K ⊆ R_new``, ``K ∪ N`` is closed and equal to ``R_new``.
4. ``R := K ∪ N``; ``ΔR = N − D`` (a fact both over-deleted and rederived cancels).

Cost. Insert-only changes touch the new facts and what they join (semi-naive, through the backing
table's indexes): O(Δ + new facts). Deletions touch everything derivable from the deleted rows
(step 1) and re-test those facts against the sources (step 3), which can reach all of ``R``; the
re-test joins each fact by equality with the block's outputs, so it is driven from ``D`` through
the sources' indexes (facts with NULLs take a membership test gated on D holding one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...naming import stable_name
from ..ir import QueryShape
from ._sql import ROW_ID, WEIGHT, from_clause_sql, q, row_hash, where_clause
from .project import consolidate_multiset
from .scan import changes_relation

OVER_DELETED = "__pgt_rec_d"  # temp table: D (row id, columns of r)
DERIVED = "__pgt_rec_n"  # temp table: N


@dataclass(frozen=True)
class Recursion:
    """A maintained recursive CTE and the query over it."""

    name: str  # the CTE's name
    columns: tuple[str, ...]
    types: tuple[str, ...]  # PostgreSQL types of the columns (the non-recursive term's)
    bases: tuple[QueryShape, ...]  # the non-recursive blocks, outputs named by ``columns``
    step: QueryShape  # the recursive block
    step_alias: str  # the alias the step reads r under
    outer: QueryShape  # the query over r (one FROM item: r)
    backing: str  # quoted, qualified backing table

    @property
    def outer_alias(self) -> str:
        return self.outer.froms[0].alias

    def _blocks(self) -> list[tuple[QueryShape, str | None]]:
        return [*((b, None) for b in self.bases), (self.step, self.step_alias)]


def _casts(rec: Recursion, shape: QueryShape) -> list[str]:
    return [f"CAST(({o.sql}) AS {t})" for o, t in zip(shape.outputs, rec.types, strict=True)]


def _row(rec: Recursion, shape: QueryShape) -> list[tuple[str, str]]:
    """(expression, name) of a block's row in the backing table's layout: row id, columns."""
    exprs = _casts(rec, shape)
    return [(row_hash(exprs), "__pgt_row_id"), *zip(exprs, rec.columns, strict=True)]


def _member(rec: Recursion, shape: QueryShape, relation: str) -> str:
    """Whether the block's output row is in ``relation`` (row id, columns of r)."""
    k = q("__pgt_k")
    exprs = _casts(rec, shape)
    conds = [f"{k}.{ROW_ID} = {row_hash(exprs)}"]
    conds += [
        f"{k}.{q(c)} IS NOT DISTINCT FROM {e}" for c, e in zip(rec.columns, exprs, strict=True)
    ]
    return f"EXISTS (SELECT 1 FROM {relation} AS {k} WHERE {' AND '.join(conds)})"


def _select(
    rec: Recursion, shape: QueryShape, relations: dict[str, str], extra: str | None = None
) -> str:
    cols = ", ".join(f"{e} AS {q(n)}" for e, n in _row(rec, shape))
    return (
        f"SELECT {cols} FROM {from_clause_sql(shape.froms, relations)}{where_clause(shape, extra)}"
    )


def _rederive(rec: Recursion, shape: QueryShape, relations: dict[str, str]) -> list[str]:
    """The facts of D the block still produces. Facts without NULLs are found by equality with
    the block's outputs, so the database drives the block from D through the inputs' indexes;
    the (rarer) facts with a NULL column by a membership test gated on D holding any."""
    d, o = q(OVER_DELETED), q("__pgt_o")
    exprs = _casts(rec, shape)
    cols = ", ".join(f"{e} AS {q(n)}" for e, n in _row(rec, shape))
    equal = " AND ".join(f"{e} = {o}.{q(c)}" for c, e in zip(rec.columns, exprs, strict=True))
    by_equality = (
        f"SELECT {cols} FROM {d} AS {o}, {from_clause_sql(shape.froms, relations)}"
        f"{where_clause(shape, equal)}"
    )
    any_null = " OR ".join(f"{q(c)} IS NULL" for c in rec.columns)
    gate = f"EXISTS (SELECT 1 FROM {d} WHERE {any_null})"
    with_nulls = _select(rec, shape, relations, f"{gate} AND {_member(rec, shape, d)}")
    return [by_equality, with_nulls]


def _used_columns(shape: QueryShape, alias: str) -> list[str]:
    """Columns of ``alias`` the block reads (rendered SQL always quotes and qualifies them)."""
    text = " ".join(
        [*(o.sql for o in shape.outputs), shape.where or "", *(f.on or "" for f in shape.froms)]
    )
    quoted = re.escape(q(alias)) + r'\."((?:[^"]|"")+)"'
    return list(dict.fromkeys(c.replace('""', '"') for c in re.findall(quoted, text)))


def _changed(shape: QueryShape, changed: set[str], skip: str | None) -> list[str]:
    return [
        f.alias
        for f in shape.froms
        if f.alias != skip and stable_name(f.source.schema, f.source.name) in changed
    ]


def _window(shape: QueryShape, alias: str, sign: str) -> str:
    """The alias's change window consolidated per value of the columns read: values whose net
    weight compares to 0 by ``sign`` (``>``: Ins, ``<``: Del)."""
    item = next(f for f in shape.froms if f.alias == alias)
    cols = ", ".join(q(c) for c in _used_columns(shape, alias))
    window = q(changes_relation(stable_name(item.source.schema, item.source.name)))
    return f"(SELECT {cols} FROM {window} GROUP BY {cols or '()'} HAVING sum({WEIGHT}) {sign} 0)"


def _old_superset(shape: QueryShape, alias: str) -> str:
    """The new table plus the rows of Del: a superset of the alias's old rows."""
    item = next(f for f in shape.froms if f.alias == alias)
    cols = ", ".join(q(c) for c in _used_columns(shape, alias))
    table = f"{q(item.source.schema)}.{q(item.source.name)}"
    return f"(SELECT {cols} FROM {table} UNION ALL SELECT {cols} FROM {_window(shape, alias, '<')} AS {q('__pgt_del')})"


def _union(parts: list[str], rec: Recursion) -> str:
    if not parts:
        cols = ", ".join(
            f"NULL::{t} AS {q(c)}" for c, t in zip(rec.columns, rec.types, strict=True)
        )
        return f"SELECT NULL::bigint AS {ROW_ID}, {cols} WHERE false"
    return " UNION ".join(f"({p})" for p in parts)


def _cte_columns(rec: Recursion) -> str:
    return ", ".join(q(c) for c in ["__pgt_row_id", *rec.columns])


def full_r(rec: Recursion) -> str:
    """All of R (row id, columns): the query's own recursion, evaluated by PostgreSQL."""
    w = q("__pgt_r")
    parts = [_select(rec, shape, {alias: w} if alias else {}) for shape, alias in rec._blocks()]
    return f"WITH RECURSIVE {w}({_cte_columns(rec)}) AS ({' UNION '.join(parts)}) SELECT * FROM {w}"


def full(rec: Recursion) -> str:
    """The stream table's rows from the backing table: the outer query over R, as a multiset."""
    z = q("__pgt_z")
    outs = ", ".join(f"{o.sql} AS {q(o.name)}" for o in rec.outer.outputs)
    relation = {rec.outer_alias: rec.backing}
    inner = (
        f"SELECT {outs} FROM {from_clause_sql(rec.outer.froms, relation)}{where_clause(rec.outer)}"
    )
    ids = row_hash([f"{z}.{q(o.name)}" for o in rec.outer.outputs])
    return f"SELECT {ids} AS {ROW_ID}, {z}.* FROM ({inner}) AS {z}"


def backing_ddl(rec: Recursion) -> list[str]:
    """Statements creating the (empty) backing table and its indexes."""
    stmts = [
        f"CREATE TABLE {rec.backing} AS {full_r(rec)} WITH NO DATA",
        f"CREATE INDEX ON {rec.backing} ({ROW_ID})",
    ]
    joined = " ".join([rec.step.where or "", *(f.on or "" for f in rec.step.froms)])
    quoted = re.escape(q(rec.step_alias)) + r'\."((?:[^"]|"")+)"'
    for col in dict.fromkeys(c.replace('""', '"') for c in re.findall(quoted, joined)):
        stmts.append(f"CREATE INDEX ON {rec.backing} ({q(col)})")
    return stmts


def populate(rec: Recursion) -> list[str]:
    """Statements (re)computing the backing table (creation and full refreshes); the statistics
    guide the first differential refreshes' probes."""
    return [
        f"DELETE FROM {rec.backing}",
        f"INSERT INTO {rec.backing} {full_r(rec)}",
        f"ANALYZE {rec.backing}",
    ]


def maintain(rec: Recursion, changed: set[str]) -> list[str]:
    """Statements run after the change windows exist: build D, delete it from the backing table,
    build N, add it. The delta (:func:`delta`) then reads D and N."""
    rb, d, n = rec.backing, q(OVER_DELETED), q(DERIVED)
    cte = q("__pgt_x")
    # 1. Over-delete.
    seeds = []
    for shape, r_alias in rec._blocks():
        for alias in _changed(shape, changed, r_alias):
            relations = {a: _old_superset(shape, a) for a in _changed(shape, changed, r_alias)}
            relations[alias] = _window(shape, alias, "<")
            if r_alias:
                relations[r_alias] = rb
            seeds.append(_select(rec, shape, relations, _member(rec, shape, rb)))
    step_old = {a: _old_superset(rec.step, a) for a in _changed(rec.step, changed, rec.step_alias)}
    step_old[rec.step_alias] = cte
    over_delete = (
        f"CREATE TEMP TABLE {d} ON COMMIT DROP AS WITH RECURSIVE {cte}({_cte_columns(rec)}) AS "
        f"({_union(seeds, rec)} UNION {_select(rec, rec.step, step_old, _member(rec, rec.step, rb))}) "
        f"SELECT * FROM {cte}"
    )
    remove = (
        f"DELETE FROM {rb} AS {q('__pgt_t')} USING {d} AS {q('__pgt_o')} WHERE "
        + " AND ".join(
            [f"{q('__pgt_t')}.{ROW_ID} = {q('__pgt_o')}.{ROW_ID}"]
            + [
                f"{q('__pgt_t')}.{q(c)} IS NOT DISTINCT FROM {q('__pgt_o')}.{q(c)}"
                for c in rec.columns
            ]
        )
    )
    # 3. Rederive (facts of D still derivable) and insert (facts using an inserted row).
    seeds = []
    for shape, r_alias in rec._blocks():
        base = {r_alias: rb} if r_alias else {}
        seeds.extend(_rederive(rec, shape, base))
        for alias in _changed(shape, changed, r_alias):
            relations = {**base, alias: _window(shape, alias, ">")}
            seeds.append(_select(rec, shape, relations))
    derive = (
        f"CREATE TEMP TABLE {n} ON COMMIT DROP AS WITH RECURSIVE {cte}({_cte_columns(rec)}) AS "
        f"(SELECT * FROM ({_union(seeds, rec)}) AS {q('__pgt_s')} WHERE NOT EXISTS (SELECT 1 "
        f"FROM {rb} AS {q('__pgt_k')} WHERE {q('__pgt_k')}.{ROW_ID} = {q('__pgt_s')}.{ROW_ID} AND "
        + " AND ".join(
            f"{q('__pgt_k')}.{q(c)} IS NOT DISTINCT FROM {q('__pgt_s')}.{q(c)}" for c in rec.columns
        )
        + f") UNION {_select(rec, rec.step, {rec.step_alias: cte}, f'NOT {_member(rec, rec.step, rb)}')}) "
        f"SELECT * FROM {cte}"
    )
    cols = _cte_columns(rec)
    return [
        *_DRIVE_FROM_THE_DELTA,
        over_delete,
        f"ANALYZE {d}",
        remove,
        derive,
        *_RESTORE_PLANNER,
        f"ANALYZE {n}",
        f"INSERT INTO {rb} ({cols}) SELECT {cols} FROM {n}",
    ]


# The planner sizes a recursive CTE's working table at ten times its seed per level, so for a
# delta-sized seed it picks hash joins that read all of R (and all of the step's sources) to
# answer a few index probes, and JIT-compiles the statement besides. While D and N are built,
# joins are nested loops driven from the seed through the indexes; the settings are restored
# (they are transaction-local in any case) before the rest of the refresh.
_PLANNER_SETTINGS = ("jit", "enable_hashjoin", "enable_mergejoin")
_DRIVE_FROM_THE_DELTA = tuple(
    f"SELECT set_config('pgtrickle.saved_{g}', current_setting('{g}'), true), "
    f"set_config('{g}', 'off', true)"
    for g in _PLANNER_SETTINGS
)
_RESTORE_PLANNER = tuple(
    f"SELECT set_config('{g}', current_setting('pgtrickle.saved_{g}'), true)"
    for g in _PLANNER_SETTINGS
)


def delta(rec: Recursion) -> str:
    """The stream table's net change: the outer query over N (+1) and over D (−1)."""
    names = [o.name for o in rec.outer.outputs]
    outs = ", ".join(f"{o.sql} AS {q(o.name)}" for o in rec.outer.outputs)
    parts = []
    for relation, weight in ((q(DERIVED), 1), (q(OVER_DELETED), -1)):
        frm = from_clause_sql(rec.outer.froms, {rec.outer_alias: relation})
        sep = ", " if outs else ""
        parts.append(f"SELECT {outs}{sep}{weight} AS {WEIGHT} FROM {frm}{where_clause(rec.outer)}")
    return consolidate_multiset(names, " UNION ALL ".join(parts))
