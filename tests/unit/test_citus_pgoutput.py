"""The pgoutput decoder on hand-built protocol messages (pure: no database)."""

from __future__ import annotations

import struct

import pytest

from dbt_pgtrickle.citus import pgoutput


def _s(text: str) -> bytes:
    return text.encode() + b"\0"


def _tuple(*values: str | None | object) -> bytes:
    out = struct.pack("!h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is pgoutput.UNCHANGED:
            out += b"u"
        else:
            data = str(v).encode()
            out += b"t" + struct.pack("!i", len(data)) + data
    return out


def begin(xid: int) -> bytes:
    return b"B" + struct.pack("!qqI", 0, 0, xid)


def commit(end: int) -> bytes:
    return b"C" + struct.pack("!bqqq", 0, end - 8, end, 0)


def relation(oid: int, schema: str, name: str, cols: list[str]) -> bytes:
    out = (
        b"R" + struct.pack("!I", oid) + _s(schema) + _s(name) + b"f" + struct.pack("!h", len(cols))
    )
    for c in cols:
        out += struct.pack("!b", 0) + _s(c) + struct.pack("!Ii", 25, -1)
    return out


def test_insert_update_delete_truncate_and_unicode() -> None:
    msgs = [
        begin(7),
        relation(16384, "public", "orders", ["id", "näme"]),
        b"I" + struct.pack("!I", 16384) + b"N" + _tuple("1", "ä'b"),
        b"U" + struct.pack("!I", 16384) + b"O" + _tuple("1", "ä'b") + b"N" + _tuple("1", None),
        b"D" + struct.pack("!I", 16384) + b"O" + _tuple("1", None),
        b"T" + struct.pack("!ib", 1, 0) + struct.pack("!I", 16384),
        commit(0x1_0000_0100),
    ]
    (txn,) = pgoutput.transactions(msgs)
    assert txn.xid == 7 and txn.end_lsn == 0x1_0000_0100 and txn.origin is None
    actions = [(c.action, c.old, c.new) for c in txn.changes]
    assert actions == [
        ("I", None, ("1", "ä'b")),
        ("U", ("1", "ä'b"), ("1", None)),
        ("D", ("1", None), None),
        ("T", None, None),
    ]
    assert txn.changes[0].relation.columns == ("id", "näme")
    assert pgoutput.int_to_lsn(txn.end_lsn) == "1/100"
    assert pgoutput.lsn_to_int("1/100") == txn.end_lsn


def test_key_only_old_row_and_unchanged_toast_are_marked() -> None:
    msgs = [
        begin(8),
        relation(1, "s", "t_102008", ["id", "doc"]),
        b"U"
        + struct.pack("!I", 1)
        + b"K"
        + _tuple("1", None)
        + b"N"
        + _tuple("1", pgoutput.UNCHANGED),
        commit(64),
    ]
    (txn,) = pgoutput.transactions(msgs)
    change = txn.changes[0]
    assert change.old_is_key_only
    assert change.new == ("1", pgoutput.UNCHANGED)


def test_origin_and_incomplete_trailing_transaction() -> None:
    msgs = [
        begin(9),
        b"O" + struct.pack("!q", 0) + _s("citus_internal_1"),
        commit(100),
        begin(10),
        relation(1, "s", "t", ["id"]),
        b"I" + struct.pack("!I", 1) + b"N" + _tuple("5"),
    ]
    (txn,) = pgoutput.transactions(msgs)
    assert txn.origin == "citus_internal_1"


def test_unknown_message_is_an_error_naming_it() -> None:
    with pytest.raises(pgoutput.DecodeError, match="'Z'"):
        pgoutput.transactions([b"Z"])
