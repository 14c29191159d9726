"""Schedules and due times (pure: no database).

A stream table's ``schedule`` is one of

* ``None`` — *on change*: due as soon as its sources have changes it has not applied;
* a duration (``500ms``, ``30s``, ``5m``, ``1h30m``, ``1d``) — the most staleness accepted: due
  when changes are pending and the last refresh is at least that long ago;
* a cron expression with 5 fields (minute hour day month weekday) or 6 (a leading seconds field),
  or an alias (``@yearly``, ``@annually``, ``@monthly``, ``@weekly``, ``@daily``, ``@midnight``,
  ``@hourly``) — due when a fire time has passed since the last refresh (and changes are pending);
* ``calculated`` — never due on its own: refreshed just before a downstream stream table that
  is due reads it, so its schedule is effectively that of its readers.

Nothing is refreshed while no change is pending: an idle database costs a tick one catalog read
and an index probe per candidate change buffer, and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from croniter import croniter  # type: ignore[import-untyped]

from ..errors import ConfigError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^(?:\d+(?:ms|s|m|h|d))+$")
_PART = re.compile(r"(\d+)(ms|s|m|h|d)")
ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")

ON_CHANGE = "on_change"
INTERVAL = "interval"
CRON = "cron"
CALCULATED = "calculated"


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: ``kind`` is one of ON_CHANGE, INTERVAL, CRON, CALCULATED."""

    kind: str
    text: str | None = None
    seconds: float = 0.0

    def next_due(self, last_refresh_at: dt.datetime | None) -> dt.datetime | None:
        """Earliest time the stream table may be refreshed again, given pending changes.

        ``None`` means "not by itself" (``calculated``); a time in the past means "now". A stream
        table never refreshed is due at once (``datetime.min``)."""
        if self.kind == CALCULATED:
            return None
        if last_refresh_at is None or self.kind == ON_CHANGE:
            return dt.datetime.min.replace(tzinfo=dt.timezone.utc)
        if self.kind == INTERVAL:
            return last_refresh_at + dt.timedelta(seconds=self.seconds)
        return cron_next(str(self.text), last_refresh_at)

    def is_due(self, last_refresh_at: dt.datetime | None, now: dt.datetime) -> bool:
        due = self.next_due(last_refresh_at)
        return due is not None and due <= now


def parse_duration(text: str) -> float:
    """Seconds in a duration like ``1h30m`` or ``250ms``; :class:`ConfigError` when invalid."""
    compact = text.strip().lower()
    if not _DURATION.match(compact):
        raise ConfigError(f"{text!r} is not a duration like '30s', '5m', '1h30m' or '500ms'")
    return sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(compact))


def _cron_fields(text: str) -> tuple[str, bool]:
    """The expression for croniter and whether its first field is seconds."""
    if text.startswith("@"):
        if text not in ALIASES:
            raise ConfigError(f"unknown cron alias {text!r}; known: {', '.join(ALIASES)}")
        return text, False
    fields = text.split()
    if len(fields) not in (5, 6):
        raise ConfigError(f"cron expression {text!r} needs 5 or 6 fields, it has {len(fields)}")
    return " ".join(fields), len(fields) == 6


def cron_next(text: str, after: dt.datetime) -> dt.datetime:
    """The first fire time of cron ``text`` strictly after ``after`` (same time zone)."""
    expr, seconds_first = _cron_fields(text)
    it = croniter(expr, after, second_at_beginning=seconds_first)
    nxt: dt.datetime = it.get_next(dt.datetime)
    return nxt


def parse(text: str | None) -> Schedule:
    """Parse a stored schedule; raises :class:`ConfigError` naming what is wrong."""
    if text is None or not str(text).strip():
        return Schedule(ON_CHANGE)
    value = str(text).strip()
    if value.lower() == CALCULATED:
        return Schedule(CALCULATED, value)
    if _DURATION.match(value.lower()):
        return Schedule(INTERVAL, value, parse_duration(value))
    expr, seconds_first = _cron_fields(value)
    if not croniter.is_valid(expr, second_at_beginning=seconds_first):
        raise ConfigError(f"{value!r} is not a valid cron expression")
    return Schedule(CRON, value)
