"""Schedules and due times (pure: no database).

A stream table's ``schedule`` is one of

* ``None`` — *on change*: due as soon as its sources have changes it has not applied;
* a duration (``500ms``, ``30s``, ``5m``, ``1h30m``, ``1d``) — a staleness budget: a change
  should be visible at most that long after it committed; see :func:`budget_due`;
* a cron expression with 5 fields (minute hour day month weekday) or 6 (a leading seconds field),
  or an alias (``@yearly``, ``@annually``, ``@monthly``, ``@weekly``, ``@daily``, ``@midnight``,
  ``@hourly``) — due when a fire time has passed since the last refresh (and changes are pending);
* ``calculated`` — never due on its own: refreshed just before a downstream stream table that
  is due reads it, so its schedule is effectively that of its readers.

Nothing is refreshed while no change is pending: an idle database costs a tick one catalog read
and one probe per change buffer, and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
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
#: Share of a duration schedule that a refresh is started early, beyond the expected refresh and
#: tick time, to absorb their variation (see :func:`budget_due`).
BUDGET_SAFETY = 0.05


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: ``kind`` is one of ON_CHANGE, INTERVAL, CRON, CALCULATED."""

    kind: str
    text: str | None = None
    seconds: float = 0.0

    def next_due(self, last_refresh_at: dt.datetime | None) -> dt.datetime | None:
        """Earliest time the stream table may be refreshed again, given pending changes, counted
        from the last refresh alone (a duration: the last refresh plus the duration; the daemon
        uses :func:`budget_due` for durations, which also knows the age of the changes).

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


def budget_due(
    budget_s: float,
    oldest_change: float,
    last_refresh: float | None,
    refresh_s: float,
    tick_s: float,
) -> float:
    """When a stream table with a duration schedule and pending changes is due (seconds on one
    clock).

    The schedule ``budget_s`` is a staleness budget: the oldest pending change (it committed at
    ``oldest_change`` or later) should be visible ``budget_s`` after it committed. A refresh
    started at time *t* makes it visible at about *t* + ``refresh_s`` (the expected refresh
    time), and the daemon starts it about ``tick_s`` after the due time (its tick), so the
    refresh is due ``refresh_s + tick_s`` plus a safety share of 5% of the budget before the
    budget runs out. Under continuous writes that alone would refresh back to back once the
    refresh time approaches the budget; so a refresh also never starts less than half the budget
    after the previous one (started at ``last_refresh``) is expected to have finished. Never
    refreshed (``last_refresh`` None): due at once, as before any duration elapsed.
    """
    if last_refresh is None:
        return float("-inf")
    lead = refresh_s + tick_s + BUDGET_SAFETY * budget_s
    return max(oldest_change + budget_s - lead, last_refresh + refresh_s + budget_s / 2)


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


@functools.lru_cache(maxsize=1024)
def parse(text: str | None) -> Schedule:
    """Parse a stored schedule; raises :class:`ConfigError` naming what is wrong. (Cached: the
    daemon parses every stream table's schedule on every tick.)"""
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
