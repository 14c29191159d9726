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

from ..ir import QueryShape
from ._sql import WEIGHT, from_clause_sql, q, where_clause
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
            f"FROM {from_clause_sql(shape.froms, relations)}{where_clause(shape)}"
        )
    if not parts:  # nothing this query reads changed: an empty, well-typed relation
        return (
            f"SELECT {cols}{', ' if cols else ''}0 AS {WEIGHT} "
            f"FROM {from_clause_sql(shape.froms)} WHERE false"
        )
    return " UNION ALL ".join(parts)
