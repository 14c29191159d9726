"""Inner join (ANSI ``JOIN … ON``, ``CROSS JOIN`` and comma joins, self-joins, any condition).

Rule: a join of inputs X₁ … Xₙ is multilinear in its inputs, so with ``Xᵢ_old = Xᵢ_new − ΔXᵢ``

    Δ(X₁ ⋈ … ⋈ Xₙ) = Σ_{∅ ≠ S ⊆ C} (−1)^{|S|+1} · ⋈_{i ∈ S} ΔXᵢ ⋈_{i ∉ S} Xᵢ_new

where C is the set of inputs that changed in this refresh (an unchanged input has ΔX = 0, so only
subsets of C contribute). For two inputs this is the familiar
``ΔA ⋈ B_new + A_new ⋈ ΔB − ΔA ⋈ ΔB`` (equal to ``ΔA ⋈ B_old + A_new ⋈ ΔB``): no old state has
to be reconstructed, every term joins at least one change window, and the database drives each
term from the (small) window into the other inputs through their indexes. The weight of a joined
row is the product of its inputs' weights times the sign of the term; WHERE is applied to every
term (filters are linear). Each alias is its own input, so a self-join of a changed table expands
into three terms. Above :data:`MAX_CHANGED_INPUTS` changed inputs the expansion (2^|C| − 1 terms)
is not worth it and the refresh recomputes.
"""

from __future__ import annotations

from itertools import combinations

from ..ir import QueryShape, SemiJoin
from ._sql import WEIGHT, from_clause_sql, q, semijoin_condition, where_clause
from .scan import changes_relation

MAX_CHANGED_INPUTS = 5


class TooManyChangedInputs(Exception):
    """More inputs changed than the inclusion–exclusion expansion handles."""


def changed_aliases(shape: QueryShape, changed_stables: set[str]) -> list[str]:
    from ...naming import stable_name

    return [
        f.alias
        for f in shape.froms
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


def current(shape: QueryShape, exprs: list[tuple[str, str]], extra_where: str | None = None) -> str:
    """The current rows of the FROM/WHERE block, projected to ``exprs`` (sql, name)."""
    cols = ", ".join(f"{e} AS {q(n)}" for e, n in exprs)
    return f"SELECT {cols} FROM {from_clause_sql(shape.froms)}{where_clause(shape, extra_where)}"


def delta(shape: QueryShape, exprs: list[tuple[str, str]], changed_stables: set[str]) -> str:
    """The Z-set delta of the FROM/WHERE block projected to ``exprs``, plus ``__pgt_w``
    (always +1 or −1: change images carry ±1 and products of ±1 stay ±1)."""
    cols = ", ".join(f"{e} AS {q(n)}" for e, n in exprs)
    from ...naming import stable_name

    parts = []
    for subset, sign in terms(changed_aliases(shape, changed_stables)):
        relations = {}
        for f in shape.froms:
            if f.alias in subset:
                relations[f.alias] = q(
                    changes_relation(stable_name(f.source.schema, f.source.name))
                )
        weight = " * ".join([str(sign), *(f"{q(a)}.{WEIGHT}" for a in subset)])
        parts.append(
            f"SELECT {cols}{', ' if cols else ''}({weight})::integer AS {WEIGHT} "
            f"FROM {from_clause_sql(shape.froms, relations, inner_only=True)}{where_clause(shape)}"
        )
    if len(shape.froms) == 2 and shape.froms[1].join in ("left", "right", "full"):
        parts.extend(_padded_terms(shape, cols, changed_stables))
    if shape.semijoins:
        parts.extend(_semijoin_terms(shape, cols, changed_stables))
    if not parts:  # nothing this query reads changed: an empty, well-typed relation
        return (
            f"SELECT {cols}{', ' if cols else ''}0 AS {WEIGHT} "
            f"FROM {from_clause_sql(shape.froms)} WHERE false"
        )
    return " UNION ALL ".join(parts)


def _padded_terms(shape: QueryShape, cols: str, changed_stables: set[str]) -> list[str]:
    """Delta of the NULL-padded rows of ``P LEFT JOIN N ON c`` (and mirrored for RIGHT, both
    ways for FULL).

    Rule: padded(P, N) = {p ∈ P : no n ∈ N with c(p, n)}, with N's columns NULL. Only rows of P
    whose padding can have changed are looked at: the candidates K = keys of ΔP ∪ keys of the
    rows of P_new matching ΔN. For them

        Δpadded = padded(P_new, N_new)|K − padded(P_old, N_old)|K

    where P_old = P_new (+1) ∪ ΔP (−w) as a Z-set and "no match in N_old" is
    ``count(matches in N_new) − Σ w(matches in ΔN) = 0``. Both preserved sides need a primary key
    (K is a set of keys, looked up through the primary-key index).
    """
    from ...naming import stable_name

    kind = shape.froms[1].join
    on = shape.froms[1].on
    pairs = {"left": [(0, 1)], "right": [(1, 0)], "full": [(0, 1), (1, 0)]}[kind]
    out = []
    for p_i, n_i in pairs:
        p, n = shape.froms[p_i], shape.froms[n_i]
        pa, na = q(p.alias), q(n.alias)
        p_table = f"{q(p.source.schema)}.{q(p.source.name)}"
        n_table = f"{q(n.source.schema)}.{q(n.source.name)}"
        p_changes = q(changes_relation(stable_name(p.source.schema, p.source.name)))
        n_changes = q(changes_relation(stable_name(n.source.schema, n.source.name)))
        p_changed = stable_name(p.source.schema, p.source.name) in changed_stables
        n_changed = stable_name(n.source.schema, n.source.name) in changed_stables
        if not (p_changed or n_changed):
            continue
        assert p.source.primary_key
        pk = ", ".join(f"{pa}.{q(c)}" for c in p.source.primary_key)
        candidates = []
        if p_changed:
            candidates.append(f"SELECT {pk} FROM {p_changes} AS {pa}")
        if n_changed:
            candidates.append(
                f"SELECT {pk} FROM {p_table} AS {pa} JOIN {n_changes} AS {na} ON ({on})"
            )
        in_k = f"({pk}) IN ({' UNION '.join(candidates)})"
        no_match_new = f"NOT EXISTS (SELECT 1 FROM {n_table} AS {na} WHERE ({on}))"
        if n_changed:
            no_match_old = (
                f"(SELECT count(*) FROM {n_table} AS {na} WHERE ({on})) - coalesce((SELECT "
                f"sum({na}.{WEIGHT}) FROM {n_changes} AS {na} WHERE ({on})), 0) = 0"
            )
        else:
            no_match_old = no_match_new
        p_cols = ", ".join(q(c.name) for c in p.source.columns)
        if p_changed:
            p_old = (
                f"(SELECT {p_cols}, 1 AS {WEIGHT} FROM {p_table} UNION ALL "
                f"SELECT {p_cols}, -{WEIGHT} FROM {p_changes})"
            )
        else:
            p_old = f"(SELECT {p_cols}, 1 AS {WEIGHT} FROM {p_table})"
        # The NULL side joins on false: its columns are NULL with their own types, so the
        # user's expressions over them evaluate exactly as in the padded rows of the query.
        padded_new = f"{p_table} AS {pa} LEFT JOIN {n_table} AS {na} ON false"
        padded_old = f"{p_old} AS {pa} LEFT JOIN {n_table} AS {na} ON false"
        sep = ", " if cols else ""
        out.append(
            f"SELECT {cols}{sep}1 AS {WEIGHT} FROM {padded_new}"
            f"{where_clause(shape, f'{in_k} AND {no_match_new}')}"
        )
        out.append(
            f"SELECT {cols}{sep}(-{pa}.{WEIGHT})::integer AS {WEIGHT} FROM {padded_old}"
            f"{where_clause(shape, f'{in_k} AND {no_match_old}')}"
        )
    return out


def _semijoin_terms(shape: QueryShape, cols: str, changed_stables: set[str]) -> list[str]:
    """The part of the delta caused by changes of EXISTS/IN subquery sources.

    Rule: with X the FROM/WHERE block and E the conjunction of the semi-join tests,
    ``Δσ_E(X) = σ_E_new(ΔX) + (σ_E_new − σ_E_old)(X_new) − (σ_E_new − σ_E_old)(ΔX)``.
    The first part is the inclusion–exclusion terms with E tested against the current subquery
    sources (what :func:`where_clause` adds). The other two only involve rows correlated with a
    changed subquery row, weighted +1 / −1 where E flips from false to true / true to false.
    E_old for a changed source B: ``count(matches in B_new) − Σ w(matches in ΔB) > 0`` (= 0 for
    NOT EXISTS).
    """
    from ...naming import stable_name

    def changes_of(sj: SemiJoin) -> str:
        return q(changes_relation(stable_name(sj.source.schema, sj.source.name)))

    changed = [
        sj
        for sj in shape.semijoins
        if stable_name(sj.source.schema, sj.source.name) in changed_stables
    ]
    if not changed:
        return []
    # Rows correlated with a changed subquery row: only their test can have flipped.
    touched = " OR ".join(
        f"EXISTS (SELECT 1 FROM {changes_of(sj)} AS {q(sj.alias)} WHERE ({sj.condition}))"
        for sj in changed
    )
    new_tests, old_tests = [], []
    for sj in shape.semijoins:
        new_tests.append(semijoin_condition(sj))
        if sj in changed:
            table = f"{q(sj.source.schema)}.{q(sj.source.name)}"
            a = q(sj.alias)
            matches = (
                f"((SELECT count(*) FROM {table} AS {a} WHERE ({sj.condition})) - coalesce("
                f"(SELECT sum({a}.{WEIGHT}) FROM {changes_of(sj)} AS {a} WHERE ({sj.condition})),"
                " 0))"
            )
            old_tests.append(f"{matches} = 0" if sj.negated else f"{matches} > 0")
        else:
            old_tests.append(semijoin_condition(sj))
    e_new, e_old = " AND ".join(new_tests), " AND ".join(old_tests)
    changes_differ = f"(({e_new}) <> ({e_old}))"
    flips = f"({touched}) AND {changes_differ}"
    flip = f"(CASE WHEN {e_new} THEN 1 ELSE -1 END)"
    sep = ", " if cols else ""
    current_touched = touched
    if shape.keyed:
        # Drive from the changed subquery rows into the block through its indexes: the block
        # rows they correlate with, by primary key (a plain EXISTS test would be evaluated on
        # every row of the block).
        pks = [f"{q(f.alias)}.{q(c)}" for f in shape.froms for c in f.source.primary_key or ()]
        candidates = " UNION ".join(
            f"SELECT {', '.join(pks)} FROM {from_clause_sql(shape.froms)} "
            f"JOIN {changes_of(sj)} AS {q(sj.alias)} ON ({sj.condition})"
            f"{where_clause(shape, semijoins=False)}"
            for sj in changed
        )
        current_touched = f"({', '.join(pks)}) IN ({candidates})"
    out = [
        f"SELECT {cols}{sep}{flip} AS {WEIGHT} FROM {from_clause_sql(shape.froms)}"
        f"{where_clause(shape, f'{current_touched} AND {changes_differ}', semijoins=False)}"
    ]
    for subset, sign in terms(changed_aliases(shape, changed_stables)):
        relations = {
            f.alias: q(changes_relation(stable_name(f.source.schema, f.source.name)))
            for f in shape.froms
            if f.alias in subset
        }
        weight = " * ".join([str(-sign), flip, *(f"{q(a)}.{WEIGHT}" for a in subset)])
        out.append(
            f"SELECT {cols}{sep}({weight})::integer AS {WEIGHT} "
            f"FROM {from_clause_sql(shape.froms, relations, inner_only=True)}"
            f"{where_clause(shape, flips, semijoins=False)}"
        )
    return out
