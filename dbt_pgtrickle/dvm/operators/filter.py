"""Filter (WHERE): linear.

Rule: ``Δ(σ_p S) = σ_p(ΔS)``. A row belongs to the result iff ``p`` evaluates to TRUE; FALSE and
NULL (three-valued logic) both exclude it, in the recomputation and in the delta alike, because the
same predicate text is applied to the full table and to every change image. An UPDATE that moves a
row into or out of ``p`` is an old image (−1) and a new image (+1), each filtered on its own.
"""

from __future__ import annotations

from ..ir import QueryShape
from ._sql import where_clause


def predicate(shape: QueryShape, extra: str | None = None) -> str:
    """The WHERE clause of ``shape`` (possibly with an extra conjunct) for either side."""
    return where_clause(shape, extra)
