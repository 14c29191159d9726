"""Stable names of internal objects (DESIGN §2.7).

A source table ``schema.table`` gets ``stable_name = lower-hex FNV-1a-64`` of the UTF-8 text
``"schema.table"`` (unquoted names, exactly as stored in the catalog). The same table has the same
stable name on every Citus node and after ``pg_dump``/restore, because no OID is involved.
Buffers, trigger functions and triggers are named from it.
"""

from __future__ import annotations

FNV_OFFSET_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK = 0xFFFFFFFFFFFFFFFF

CHANGES_SCHEMA = "pgtrickle_changes"
CATALOG_SCHEMA = "pgtrickle"


def fnv1a_64(data: bytes) -> int:
    """FNV-1a, 64-bit."""
    h = FNV_OFFSET_BASIS
    for byte in data:
        h ^= byte
        h = (h * FNV_PRIME) & _MASK
    return h


def stable_name(schema: str, table: str) -> str:
    """16 lower-case hex digits identifying ``schema.table``."""
    return f"{fnv1a_64(f'{schema}.{table}'.encode()):016x}"


def buffer_table(stable: str) -> str:
    """Name (in :data:`CHANGES_SCHEMA`) of the change buffer of a source."""
    return f"changes_{stable}"


def trigger_function(stable: str) -> str:
    """Name (in :data:`CHANGES_SCHEMA`) of the capture function of a source, per event."""
    return f"capture_{stable}"


def trigger_name(stable: str, event: str) -> str:
    """Name of the capture trigger for ``event`` (ins, upd, del, trunc) on a source."""
    return f"pgtrickle_cdc_{event}_{stable}"


def replication_slot(stable: str) -> str:
    """Name of the logical replication slot capturing a Citus source, the same on every node."""
    return f"pgtrickle_{stable}"
