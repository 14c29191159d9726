"""Scan: the delta of a base table is its change window.

Rule: ``Δ(scan S) = { (row image, w) }`` where every captured change contributes its old image with
weight −1 and its new image with weight +1 (an INSERT only the latter, a DELETE only the former).
The window holds exactly the changes committed after the previous refresh's snapshot and visible in
the current one, so summing weights over it gives ``S_new − S_old`` as a Z-set.
The engine materialises the window as a temporary relation; this module names it.
"""

from __future__ import annotations

CHANGES_PREFIX = "__pgt_changes_"


def changes_relation(stable_name: str) -> str:
    """Name of the temporary relation holding a source's change window during a refresh."""
    return f"{CHANGES_PREFIX}{stable_name}"
