"""LATERAL set-returning functions in FROM (``unnest``, ``jsonb_array_elements[_text]``,
``jsonb_each[_text]``, ``generate_series``, … — the list is ``_sqlglot._SRF_COLUMNS``), joined
``CROSS JOIN LATERAL``, by comma, ``JOIN LATERAL … ON`` or ``LEFT JOIN LATERAL … ON``, with or
without ``WITH ORDINALITY``.

Rule: with J the join of the FROM items before the function f, ``J ⋈lat f`` maps each row r of J
to the rows f(r) (for LEFT JOIN LATERAL: those satisfying ON, or one row padded with NULLs). f is
immutable, so f(r) depends on r alone and never changes by itself, and the map is linear:

    Δ(J ⋈lat f) = ΔJ ⋈lat f

An old image of r yields exactly the rows r produced before (weight −1), a new image the rows it
produces now (+1). The function is therefore no input of the join rule (:mod:`.join`): it is
rendered LATERAL after its items in every term, whether they read a table or a change window, and
in every outer-join block (a LEFT JOIN LATERAL stays a LEFT JOIN: it is row-wise, nothing to
expand). Work is the change window times the function's rows per changed row.

Row identity: f is always called ``WITH ORDINALITY`` (a hidden ``__pgt_ord`` column unless the
query names its own), and a keyed row's id is the hash of the tables' primary keys and each
function's ordinality: the n-th element of a row's array is the same stream-table row until the
array changes. A padded LEFT JOIN LATERAL row has ordinality NULL, distinct from every element.
Over a table without a primary key rows are a multiset keyed by content, as for any projection.
"""

from __future__ import annotations

from ..ir import FromItem
from ._sql import q


def join_sql(item: FromItem) -> str:
    """The FROM-clause text joining the set-returning function ``item`` to the items before it."""
    cols = ", ".join(q(c) for c in item.function_columns)
    ref = f"LATERAL {item.function} WITH ORDINALITY AS {q(item.alias)}({cols})"
    if item.join == "lateral_left":
        return f"LEFT JOIN {ref} ON ({item.on or 'true'})"
    if item.on:
        return f"JOIN {ref} ON ({item.on})"
    return f"CROSS JOIN {ref}"
