"""Results of the run-operations as agate tables, printed as a text table or as JSON."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import agate
from dbt_common.exceptions import CompilationError

FORMATS = ("table", "json")
_MAX_COLUMN_WIDTH = 60


def plain(value: Any) -> Any:
    """A JSON-friendly value: timestamps as ISO text, intervals in seconds, decimals as numbers."""
    if isinstance(value, dt.timedelta):
        return round(value.total_seconds(), 3)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


@dataclass
class Report:
    """Rows of one operation. ``table`` is an agate table of text cells (what a macro gets),
    :meth:`render` prints it for people (``table``) or programs (``json``)."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    text: str | None = None  # a pre-rendered text body (explain) instead of the grid

    @classmethod
    def of(
        cls,
        title: str,
        columns: list[str],
        rows: list[dict[str, Any]],
        **extra: Any,
    ) -> Report:
        return cls(title, columns, [{c: plain(r.get(c)) for c in columns} for r in rows], extra)

    @property
    def table(self) -> agate.Table:
        text = agate.Text()
        return agate.Table(
            [[_cell(r[c]) for c in self.columns] for r in self.rows],
            self.columns,
            [text] * len(self.columns),
        )

    def as_json(self) -> str:
        body: dict[str, Any] = {self.title: self.rows}
        body.update(plain(self.extra))
        return json.dumps(body, indent=2, default=str)

    def render(self, fmt: str = "table") -> str:
        fmt = str(fmt or "table").lower()
        if fmt not in FORMATS:
            raise CompilationError(f"invalid format {fmt!r}; allowed: {', '.join(FORMATS)}")
        if fmt == "json":
            return self.as_json()
        if self.text is not None:
            return self.text
        if not self.rows:
            return f"{self.title}: none"
        out = io.StringIO()
        self.table.print_table(
            output=out, max_rows=None, max_columns=None, max_column_width=_MAX_COLUMN_WIDTH
        )
        lines = [f"{self.title} ({len(self.rows)})", out.getvalue().rstrip()]
        lines += [f"{k}: {_cell(plain(v))}" for k, v in self.extra.items()]
        return "\n".join(lines)
