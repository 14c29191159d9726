"""A parser of PostgreSQL's ``pgoutput`` logical decoding messages (protocol version 1).

Citus workers are read through ``pg_logical_slot_peek_binary_changes(slot, upto_lsn, upto_n,
'proto_version', '1', 'publication_names', pub)``: one row per message, each message a
``bytea``. :func:`transactions` turns those rows into whole transactions of row changes with
their column values in PostgreSQL's text format (what ``COPY … FROM STDIN`` reads back), so no
type needs special handling here.

Messages used: ``B`` begin, ``C`` commit, ``O`` origin, ``R`` relation, ``Y`` type (ignored),
``I`` insert, ``U`` update, ``D`` delete, ``T`` truncate. A column value is ``None`` for SQL NULL
and :data:`UNCHANGED` for an unchanged TOASTed value the update did not send.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import PgTrickleError


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


#: The value of a TOASTed column an UPDATE left unchanged (pgoutput does not resend it).
UNCHANGED = _Unchanged()

Value = str | None | _Unchanged


class DecodeError(PgTrickleError):
    """A pgoutput message this parser does not understand."""


@dataclass(frozen=True)
class Relation:
    """A relation as pgoutput describes it (``oid`` is the worker's OID of the shard)."""

    oid: int
    schema: str
    name: str
    replica_identity: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class RowChange:
    """One row change: ``action`` ``I``/``U``/``D``, or ``T`` for a TRUNCATE of ``relation``.
    ``old`` is the old row (UPDATE/DELETE; ``None`` when the replica identity did not send a full
    one), ``new`` the new row (INSERT/UPDATE)."""

    relation: Relation
    action: str
    old: tuple[Value, ...] | None = None
    new: tuple[Value, ...] | None = None
    old_is_key_only: bool = False


@dataclass
class Transaction:
    """A committed transaction: ``end_lsn`` is the commit's end (what a slot is advanced to),
    ``origin`` the replication origin name when the changes were replicated (Citus tags its own
    shard moves and splits with one)."""

    xid: int
    end_lsn: int = 0
    origin: str | None = None
    changes: list[RowChange] = field(default_factory=list)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise DecodeError("pgoutput message ends early")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return int(value)

    def byte(self) -> str:
        if self.pos >= len(self.data):
            raise DecodeError("pgoutput message ends early")
        ch = chr(self.data[self.pos])
        self.pos += 1
        return ch

    def string(self) -> str:
        end = self.data.index(b"\0", self.pos)
        text = self.data[self.pos : end].decode()
        self.pos = end + 1
        return text

    def tuple_data(self) -> tuple[Value, ...]:
        values: list[Value] = []
        for _ in range(self.take("!h")):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind == "t":
                size = self.take("!i")
                values.append(self.data[self.pos : self.pos + size].decode())
                self.pos += size
            else:
                raise DecodeError(f"pgoutput column kind {kind!r} is not supported")
        return tuple(values)


def lsn_to_int(lsn: str) -> int:
    """``'16/B374D848'`` → integer."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def transactions(messages: Iterable[bytes]) -> list[Transaction]:
    """Whole transactions from the messages of one peek, in commit order. A trailing transaction
    without its commit (the peek stopped inside it) is left out."""
    relations: dict[int, Relation] = {}
    done: list[Transaction] = []
    current: Transaction | None = None
    for raw in messages:
        r = _Reader(bytes(raw))
        kind = r.byte()
        if kind == "B":
            r.take("!q")  # final lsn
            r.take("!q")  # commit timestamp
            current = Transaction(xid=r.take("!I"))
        elif kind == "C":
            r.take("!b")  # flags
            r.take("!q")  # commit lsn
            end = r.take("!q")
            if current is not None:
                current.end_lsn = end
                done.append(current)
            current = None
        elif kind == "O":
            r.take("!q")
            if current is not None:
                current.origin = r.string()
        elif kind == "R":
            oid = r.take("!I")
            schema, name = r.string(), r.string()
            ident = r.byte()
            cols = []
            for _ in range(r.take("!h")):
                r.take("!b")  # flags (part of the key)
                cols.append(r.string())
                r.take("!I")  # type oid
                r.take("!i")  # typmod
            relations[oid] = Relation(oid, schema or "pg_catalog", name, ident, tuple(cols))
        elif kind == "Y":
            continue
        elif kind in "IUD":
            if current is None:
                raise DecodeError(f"pgoutput {kind} message outside a transaction")
            rel = relations.get(r.take("!I"))
            if rel is None:
                raise DecodeError("pgoutput row change for a relation it did not describe")
            current.changes.append(_row_change(kind, rel, r))
        elif kind == "T":
            if current is None:
                raise DecodeError("pgoutput TRUNCATE outside a transaction")
            count = r.take("!i")
            r.take("!b")  # options (CASCADE, RESTART IDENTITY)
            for _ in range(count):
                rel = relations.get(r.take("!I"))
                if rel is not None:
                    current.changes.append(RowChange(rel, "T"))
        elif kind == "M":
            continue
        else:
            raise DecodeError(f"pgoutput message {kind!r} is not supported")
    return done


def _row_change(kind: str, rel: Relation, r: _Reader) -> RowChange:
    if kind == "I":
        if r.byte() != "N":
            raise DecodeError("pgoutput INSERT without a new tuple")
        return RowChange(rel, "I", new=r.tuple_data())
    old: tuple[Value, ...] | None = None
    key_only = False
    marker = r.byte()
    if marker in "KO":
        old = r.tuple_data()
        key_only = marker == "K"
        if kind == "D":
            return RowChange(rel, "D", old=old, old_is_key_only=key_only)
        marker = r.byte()
    elif kind == "D":
        raise DecodeError("pgoutput DELETE without an old tuple")
    if marker != "N":
        raise DecodeError("pgoutput UPDATE without a new tuple")
    return RowChange(rel, "U", old=old, new=r.tuple_data(), old_is_key_only=key_only)
