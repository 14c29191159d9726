"""Joins: inner (ANSI ``JOIN … ON``, ``CROSS JOIN`` and comma joins, self-joins, any condition)
and outer (``LEFT``/``RIGHT``/``FULL``), in a left-deep chain mixing both.

Inner rule: a join of inputs X₁ … Xₙ is multilinear in its inputs. With C = (C₁ … Cₘ) the
inputs that changed in this refresh (an unchanged input has ΔX = 0) and ``Xᵢ_old = Xᵢ_new − ΔXᵢ``,
the telescoping sum

    Δ(X₁ ⋈ … ⋈ Xₙ) = Σ_{i=1…m} C₁_new ⋈ … ⋈ Cᵢ₋₁_new ⋈ ΔCᵢ ⋈ Cᵢ₊₁_old ⋈ … ⋈ Cₘ_old

(the unchanged inputs joined as they are) has one term per changed input (for two it would be
``ΔA ⋈ B_old + A_new ⋈ ΔB``). An old input is read as the weighted union of the table (+1) and
its change window negated, ``X_old = X_new ⊎ −ΔX``, so old state is reconstructed only where a
term's rows probe it: the database drives each term from its change window into the other
inputs through their indexes, and probes an old input's window through the index the engine
builds on its join columns. The inputs are ordered by the size of their
change windows, largest first (``Changed.rows``; equal sizes in FROM order), so the largest
window is never read as an old input and needs no index (the engine follows the same order,
:func:`telescoping_order`). The weight of a joined
row is the product of its inputs' weights; WHERE is applied to every term (filters are linear).
Each alias is its own input, so a self-join of a changed table has two terms.

PostgreSQL keeps no statistics for a UNION ALL subquery, so it estimates the joins with an old
input from default selectivities, and a misestimate can choose a bad plan. The telescoping sum
is therefore used only from :data:`TELESCOPING_FROM` changed aliases of one inner-join block on,
where the alternative has 31 or more terms, and only for a :class:`Changed` set: the engine
passes one for a local stream table, ``explain`` one without sizes (FROM order). Below that, for
a plain set (the engine's choice for Citus sources, whose tables cannot be unioned with a
coordinator's temporary table without being pulled to it), and when the block reads an alias as
a whole row, the rule is inclusion–exclusion over the subsets S of C, which reads no old input:

    Δ(X₁ ⋈ … ⋈ Xₙ) = Σ_{∅ ≠ S ⊆ C} (−1)^{|S|+1} · ⋈_{i ∈ S} ΔXᵢ ⋈_{i ∉ S} Xᵢ_new

with 2^m − 1 terms, each planned and run alone; above :data:`MAX_CHANGED_INPUTS` changed
inputs it is not worth it and the refresh recomputes (the telescoping sum has no such limit).

Outer joins: the chain is expanded into disjoint inner-join *blocks* (:func:`blocks`) whose
union is the FROM/WHERE result. With J the join of the items before T and p the ON condition,

    J ⟕ₚ T = (J ⋈ₚ T) ∪ pad_T(σ[¬∃ t ∈ T: p](J))
    J ⟖ₚ T = (J ⋈ₚ T) ∪ pad_J(σ[¬∃ j ∈ J: p](T))      (J a single table)
    J ⟗ₚ T = (J ⋈ₚ T) ∪ both padded parts

applied item by item, so a block is the inner join of the aliases present in it, the others
NULL-padded (joined ``ON false``, so they are typed NULLs), filtered by the ON conditions of its
present aliases (evaluated with the padded ones NULL), the query's WHERE, and one NOT EXISTS
test per padded alias. ``a JOIN b ON … LEFT JOIN c ON …`` has the blocks {a,b,c} and
{a,b; c padded: ¬∃ c}; ``a LEFT JOIN b … LEFT JOIN c …`` has four. The delta of the chain is
the sum of the blocks' deltas, and a block is a semi-join shape σ_E(X) (X the inner join of its
present aliases, E its NOT EXISTS tests and any EXISTS/IN subqueries of the WHERE), maintained
by the semi-join rule of :func:`_semijoin_terms`: a padded row appears or disappears exactly when
a change flips its test, and old test results are computed from the current table and the
change window (``count(now) − Σ w(changes)``) only for rows correlated with a change whose
weights do not cancel per the columns ON reads, so no old state is reconstructed beyond the keys
the delta touches. A block that can never hold a row is
dropped (an ON condition of a present alias or the WHERE is strict in a padded alias, e.g.
``c.k = b.k`` with b padded), and so is a NOT EXISTS test that can never find a match.
Row identity: the hash of every alias's primary key, the padded aliases' keys NULL, so a padded
row's id differs from every matched row's.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from itertools import combinations

from ..ir import FromItem, QueryShape, SemiJoin
from ._sql import WEIGHT, columns_of, from_clause_sql, q, semijoin_condition, where_clause
from .scan import changes_relation

MAX_CHANGED_INPUTS = 5

#: Fewest changed inputs of one block for which the telescoping sum replaces inclusion–exclusion
#: (whose 2^m − 1 terms are 31 for five). PostgreSQL keeps no statistics for a UNION ALL
#: subquery, so it estimates joins with an old input from default selectivities (TPC-H Q10 at
#: SF 1: the term driven by lineitem's window estimated at 9.4 million rows where 1,445 came,
#: and driven from all 150,000 customers; a refresh of 2.4 s instead of 0.25 s). Measured side
#: by side at SF 1 with 1% of the orders changed: with five changed inputs
#: (Q08, Q09) the 5 telescoping terms took 0.41–0.80 of the 31 terms' time; with four (Q02, Q05,
#: Q07, Q18) 0.73–1.31 of the 15 terms', no better on the whole; with three (Q10) up to 5.4×.
TELESCOPING_FROM = 5


class TooManyChangedInputs(Exception):
    """More inputs changed than the inclusion–exclusion expansion handles."""


class Changed(set[str]):
    """The stable names of the inputs that changed in a refresh, with the row counts of their
    change windows (``rows``; a missing one counts 0): a join's delta is then the telescoping
    sum, its changed inputs ordered by these counts, largest first (see the module docstring).
    A plain set gives the inclusion–exclusion sum."""

    def __init__(self, stables: Iterable[str] = (), rows: Mapping[str, int] | None = None) -> None:
        super().__init__(stables)
        self.rows = dict(rows or {})


def changed_aliases(shape: QueryShape, changed_stables: set[str]) -> list[str]:
    from ...naming import stable_name

    return [
        f.alias
        for f in join_inputs(shape)
        if stable_name(f.source.schema, f.source.name) in changed_stables
    ]


def terms(aliases: list[str]) -> list[tuple[tuple[str, ...], int]]:
    """``(aliases read from their change window, sign)`` for every inclusion–exclusion term."""
    if len(aliases) > MAX_CHANGED_INPUTS:
        raise TooManyChangedInputs(
            f"{len(aliases)} joined inputs changed at once (at most {MAX_CHANGED_INPUTS} are "
            "expanded differentially)"
        )
    out = []
    for size in range(1, len(aliases) + 1):
        for subset in combinations(aliases, size):
            out.append((subset, 1 if size % 2 else -1))
    return out


def join_inputs(block: QueryShape) -> list[FromItem]:
    """The items of an inner-join block that are inputs of its join (not NULL-padded, not a
    set-returning function)."""
    return [f for f in block.froms if f.join != "null" and not f.is_function]


def block_inputs(shape: QueryShape) -> list[list[str]]:
    """The inputs (stable names, once per alias, in FROM order) of each inner-join block of
    ``shape``: the engine finds from them which change windows a telescoping term reads as old
    (:func:`old_inputs`)."""
    from ...naming import stable_name

    return [
        [stable_name(f.source.schema, f.source.name) for f in join_inputs(block)]
        for block in blocks(shape)
    ]


def telescoping_order(inputs: list[str], rows: Mapping[str, int]) -> list[int]:
    """Positions in a block's ``inputs`` (:func:`block_inputs`) of the changed ones (the keys of
    ``rows``, their change windows' sizes) in the order of the telescoping terms: largest window
    first, FROM order among equal ones; empty when the block keeps inclusion–exclusion (fewer
    than :data:`TELESCOPING_FROM` changed inputs)."""
    changed = [i for i, s in enumerate(inputs) if s in rows]
    if len(changed) < TELESCOPING_FROM:
        return []
    return sorted(changed, key=lambda i: (-rows[inputs[i]], i))


def old_inputs(inputs: list[str], rows: Mapping[str, int]) -> set[str]:
    """The inputs of a block that a telescoping term reads as old: all changed ones after the
    first in :func:`telescoping_order`."""
    return {inputs[i] for i in telescoping_order(inputs, rows)[1:]}


@dataclasses.dataclass(frozen=True)
class _Term:
    """One term of a join's delta: the relation read in place of some aliases (a change window
    or an old input), the aliases whose weight the row's weight multiplies, and a sign."""

    relations: dict[str, str]
    weighted: tuple[str, ...]
    sign: int

    def weight(self, *factors: str, negated: bool = False) -> str:
        sign = -self.sign if negated else self.sign
        return " * ".join([str(sign), *factors, *(f"{q(a)}.{WEIGHT}" for a in self.weighted)])


def _join_terms(block: QueryShape, changed_stables: set[str], text: str) -> list[_Term]:
    """The terms of the delta of ``block``'s inner join (see the module docstring): telescoping
    when the changed inputs come with their window sizes (:class:`Changed`), inclusion–exclusion
    otherwise. ``text``: the SQL of a term other than its relations (select list, FROM with its
    ON conditions and functions, WHERE), which says what an old input must provide."""
    from ...naming import stable_name

    items = join_inputs(block)
    stables = [stable_name(f.source.schema, f.source.name) for f in items]

    def window(i: int) -> str:
        return q(changes_relation(stables[i]))

    order: list[int] = []
    if isinstance(changed_stables, Changed):
        rows = {s: changed_stables.rows.get(s, 0) for s in stables if s in changed_stables}
        order = telescoping_order(stables, rows)
    if not order or any(_whole_row(items[i].alias, text) for i in order):
        windows = {f.alias: window(i) for i, f in enumerate(items) if stables[i] in changed_stables}
        return [
            _Term({a: windows[a] for a in subset}, subset, sign)
            for subset, sign in terms(changed_aliases(block, changed_stables))
        ]
    out = []
    for k, i in enumerate(order):
        relations = {items[i].alias: window(i)}
        for j in order[k + 1 :]:
            relations[items[j].alias] = _old_input(items[j], window(j), text)
        out.append(_Term(relations, tuple(items[j].alias for j in order[k:]), 1))
    return out


def _whole_row(alias: str, text: str) -> bool:
    """Whether ``text`` may refer to ``alias`` other than by its columns (a whole-row value
    such as ``to_jsonb(t)`` or ``t.*``): an old input provides the columns read, so such a
    block keeps inclusion–exclusion. ``AS "t"`` (the alias's own definition) is not one."""
    a = re.escape(q(alias))
    return re.search(r'(?<!AS )(?<![."\w])' + a + r"(?!\.\s*\")", text) is not None


def _old_input(item: FromItem, window: str, text: str) -> str:
    """The input under ``item`` before the refresh's changes: its rows (+1) and its change
    window negated, over the columns ``text`` reads of it (the window holds no others; none
    read, as in a cross join: only the weight)."""
    wanted = set(columns_of(item.alias, text))
    cols = "".join(f"{q(c.name)}, " for c in item.source.columns if c.name in wanted)
    table = f"{q(item.source.schema)}.{q(item.source.name)}"
    return (
        f"(SELECT {cols}1 AS {WEIGHT} FROM {table} UNION ALL "
        f"SELECT {cols}(-{WEIGHT})::integer FROM {window})"
    )


def current(shape: QueryShape, exprs: list[tuple[str, str]], extra_where: str | None = None) -> str:
    """The current rows of the FROM/WHERE block, projected to ``exprs`` (sql, name)."""
    cols = ", ".join(f"{e} AS {q(n)}" for e, n in exprs)
    return f"SELECT {cols} FROM {from_clause_sql(shape.froms)}{where_clause(shape, extra_where)}"


def blocks(shape: QueryShape) -> list[QueryShape]:
    """The FROM/WHERE block as disjoint inner-join blocks (outer joins expanded, see the module
    docstring): each block's ``froms`` holds its present aliases (the first one first, without
    its ON) and its padded aliases (``join = "null"``); its NOT EXISTS tests are semi-joins."""
    if not shape.has_outer_joins:
        return [shape]
    froms = shape.froms
    # (present item indexes, NOT EXISTS tests with the aliases they are strict in, index of the
    # block's first item (its ON is not applied: it is the preserved side of a RIGHT/FULL join))
    Partial = tuple[frozenset[int], tuple[tuple[SemiJoin, frozenset[str]], ...], int]
    partial: list[Partial] = [(frozenset({0}), (), 0)]
    for k, item in enumerate(froms[1:], start=1):
        anti = dict(item.anti_tests)
        grown: list[Partial] = []
        for present, tests, first in partial:
            grown.append((present | {k}, tests, first))
            if item.join in ("left", "full"):
                test = (anti[item.alias], item.null_rejects - {item.alias})
                grown.append((present, (*tests, test), first))
            if item.join in ("right", "full"):  # the analyser allows these only at k = 1
                left = froms[0].alias
                grown.append((frozenset({k}), ((anti[left], item.null_rejects - {left}),), k))
        partial = grown
    out = []
    for present, tests, first in partial:
        padded = {f.alias for i, f in enumerate(froms) if i not in present}
        if shape.where_null_rejects & padded or any(
            froms[i].null_rejects & padded for i in present if i != first
        ):
            continue  # a strict condition over a padded alias: never true, no rows
        items = [FromItem(froms[first].alias, froms[first].source)]
        for i, f in enumerate(froms):
            if i == first:
                continue
            if f.is_function:
                items.append(f)  # row-wise over the items before it, in every block
            elif i in present:
                items.append(FromItem(f.alias, f.source, "inner" if f.on else "cross", f.on))
            else:
                items.append(FromItem(f.alias, f.source, "null"))
        live = [test for test, strict_in in tests if not strict_in & padded]
        out.append(dataclasses.replace(shape, froms=items, semijoins=[*shape.semijoins, *live]))
    return out


def delta(shape: QueryShape, exprs: list[tuple[str, str]], changed_stables: set[str]) -> str:
    """The Z-set delta of the FROM/WHERE block projected to ``exprs``, plus ``__pgt_w``
    (always +1 or −1: change images carry ±1 and products of ±1 stay ±1)."""
    cols = ", ".join(f"{e} AS {q(n)}" for e, n in exprs)
    parts = []
    for block in blocks(shape):
        parts.extend(_inner_terms(block, cols, changed_stables))
        if block.semijoins:
            parts.extend(_semijoin_terms(block, cols, changed_stables))
    if not parts:  # nothing this query reads changed: an empty, well-typed relation
        return (
            f"SELECT {cols}{', ' if cols else ''}0 AS {WEIGHT} "
            f"FROM {from_clause_sql(shape.froms)} WHERE false"
        )
    return " UNION ALL ".join(parts)


def _inner_terms(block: QueryShape, cols: str, changed_stables: set[str]) -> list[str]:
    """The terms of an inner-join block's delta (:func:`_join_terms`), its semi-join tests (if
    any) evaluated against the current subquery sources."""
    sep = ", " if cols else ""
    where = where_clause(block)
    text = f"{cols} {from_clause_sql(block.froms, inner_only=True)} {where}"
    return [
        f"SELECT {cols}{sep}({term.weight()})::integer AS {WEIGHT} "
        f"FROM {from_clause_sql(block.froms, term.relations, inner_only=True)}{where}"
        for term in _join_terms(block, changed_stables, text)
    ]


def _identity(block: QueryShape) -> list[str]:
    """Columns identifying the rows of an inner-join block that come from one row of each
    present table: its primary key, or ``(tableoid, ctid)`` for a table without one (stable
    within the refresh's snapshot). Candidates are re-tested exactly, so a set-returning
    function's rows may all be selected together."""
    out: list[str] = []
    for f in block.froms:
        if f.join == "null" or f.is_function:
            continue  # a function's rows: all of them for a row of the items before it
        if f.source.primary_key:
            out.extend(f"{q(f.alias)}.{q(c)}" for c in f.source.primary_key)
        else:
            out.extend((f"{q(f.alias)}.tableoid", f"{q(f.alias)}.ctid"))
    return out


def _semijoin_terms(shape: QueryShape, cols: str, changed_stables: set[str]) -> list[str]:
    """The part of the delta caused by changes of EXISTS/IN subquery sources.

    Rule: with X the FROM/WHERE block and E the conjunction of the semi-join tests,
    ``Δσ_E(X) = σ_E_new(ΔX) + (σ_E_new − σ_E_old)(X_new) − (σ_E_new − σ_E_old)(ΔX)``.
    The first part is the inclusion–exclusion terms with E tested against the current subquery
    sources (what :func:`where_clause` adds). The other two only involve rows correlated with a
    changed subquery row, weighted +1 / −1 where E flips from false to true / true to false.
    E_old for a changed source B: ``count(matches in B_new) − Σ w(matches in ΔB) > 0`` (= 0 for
    NOT EXISTS), tested as "more than s = Σ w(matches in ΔB) match in B_new" with at most s + 1
    of them counted.
    """
    from ...naming import stable_name

    def changes_of(sj: SemiJoin) -> str:
        return q(changes_relation(stable_name(sj.source.schema, sj.source.name)))

    def net_changes_of(sj: SemiJoin) -> str:
        """The changes of the subquery source whose weights do not cancel per the columns the
        condition reads (an update of other columns cannot flip a test). Grouped by the text of
        those columns: text-equal values are equal, so this never drops a change that can flip
        a test (values equal but written differently are kept apart, which only keeps more)."""
        if not sj.keys:
            return changes_of(sj)
        a = q(sj.alias)
        key = f"ROW({', '.join(f'{a}.{q(c)}' for c in sj.keys)})::text"
        return (
            f"(SELECT * FROM {changes_of(sj)} AS {a} WHERE {key} IN (SELECT {key} FROM "
            f"{changes_of(sj)} AS {a} GROUP BY 1 HAVING sum({a}.{WEIGHT}) <> 0))"
        )

    changed = [
        sj
        for sj in shape.semijoins
        if stable_name(sj.source.schema, sj.source.name) in changed_stables
    ]
    if not changed:
        return []
    # Rows correlated with a changed subquery row: only their test can have flipped.
    touched = " OR ".join(
        f"EXISTS (SELECT 1 FROM {net_changes_of(sj)} AS {q(sj.alias)} WHERE ({sj.condition}))"
        for sj in changed
    )

    def counted(sj: SemiJoin) -> str:
        """``FROM`` of at most s + 1 current matches of ``sj``, s the net weight of its matching
        changes: old matches = current matches − s, so an old match existed iff more than s
        match now, and counting no further keeps the test a probe or two however many rows
        match (Q13 at SF 1 counted about 15 orders per customer for 10,440 customers). OFFSET 0
        keeps s one subquery: inlined, it would be evaluated for the LIMIT and again for the
        comparison."""
        a = q(sj.alias)
        s = (
            f"coalesce((SELECT sum({a}.{WEIGHT}) FROM {changes_of(sj)} AS {a} "
            f"WHERE ({sj.condition})), 0)"
        )
        return (
            f"FROM (SELECT {s} AS s OFFSET 0) AS __pgt_s LEFT JOIN LATERAL (SELECT 1 AS one "
            f"FROM {q(sj.source.schema)}.{q(sj.source.name)} AS {a} WHERE ({sj.condition}) "
            "LIMIT greatest(__pgt_s.s, 0) + 1) AS __pgt_m ON true"
        )

    e_new = " AND ".join(semijoin_condition(sj) for sj in shape.semijoins)
    if len(shape.semijoins) == 1:
        # One test (so it is the changed one): it flipped iff "a match now" and "more than s
        # match now" differ, both read from the one count of at most s + 1 matches (s ≥ 0: the
        # first match is among them; s < 0: "more than s" holds). One probe per candidate row
        # instead of two (Q13 at SF 1: 10,440 customers, the second probe about 60 of the
        # 340 ms of the padding term).
        changes_differ = (
            "(SELECT (count(__pgt_m.one) > 0) <> (count(__pgt_m.one) > min(__pgt_s.s)) "
            f"{counted(changed[0])})"
        )
    else:
        old_tests = []
        for sj in shape.semijoins:
            if sj in changed:
                old_match = f"(SELECT count(__pgt_m.one) > min(__pgt_s.s) {counted(sj)})"
                old_tests.append(f"NOT {old_match}" if sj.negated else old_match)
            else:
                old_tests.append(semijoin_condition(sj))
        changes_differ = f"(({e_new}) <> ({' AND '.join(old_tests)}))"
    flips = f"({touched}) AND {changes_differ}"
    flip = f"(CASE WHEN {e_new} THEN 1 ELSE -1 END)"
    sep = ", " if cols else ""
    # Drive from the changed subquery rows into the block through its indexes: the block rows
    # they correlate with, by identity (a plain EXISTS test would be evaluated on every row of
    # the block).
    ids = _identity(shape)
    candidates = " UNION ".join(
        f"SELECT {', '.join(ids)} FROM {from_clause_sql(shape.froms)} "
        f"JOIN {net_changes_of(sj)} AS {q(sj.alias)} ON ({sj.condition})"
        f"{where_clause(shape, semijoins=False)}"
        for sj in changed
    )
    current_touched = f"({', '.join(ids)}) IN ({candidates})"
    out = [
        f"SELECT {cols}{sep}{flip} AS {WEIGHT} FROM {from_clause_sql(shape.froms)}"
        f"{where_clause(shape, f'{current_touched} AND {changes_differ}', semijoins=False)}"
    ]
    where = where_clause(shape, flips, semijoins=False)
    text = f"{cols} {from_clause_sql(shape.froms, inner_only=True)} {where}"
    for term in _join_terms(shape, changed_stables, text):
        out.append(
            f"SELECT {cols}{sep}({term.weight(flip, negated=True)})::integer AS {WEIGHT} "
            f"FROM {from_clause_sql(shape.froms, term.relations, inner_only=True)}{where}"
        )
    return out
