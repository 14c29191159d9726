"""A time budget for AUTO's differential refreshes.

AUTO picks DIFFERENTIAL from what it knows before running anything (change rows, the measured
cost of earlier refreshes); it cannot know a delta's cost in advance. So a differential refresh
in AUTO mode runs inside a savepoint with a deadline: a fraction (``auto_diff_budget``) of the
stream table's last full refresh (or initial population), doubled for each attempt cancelled
in a row before it up to 0.8, or, once a differential refresh has been measured, twice the
estimate from it (at most a full refresh's time) if that is more (``engine._choose``). Each
statement of the delta gets the time that remains as its ``statement_timeout``; when the
deadline passes, the statement is cancelled, the savepoint is rolled back (the delta's temporary
tables and hidden-table changes with it; the sources' change windows, copied before the choice,
stay) and the refresh recomputes the query in the same snapshot. An AUTO
refresh about whose differential cost nothing is known therefore costs at most
``(1 + auto_diff_budget)`` times a full one, plus noise (a retry after cancelled attempts at
most 1.8 times, ever more rarely); one whose estimate was wrong, at most twice.

The budget is re-armed before every statement that can take long, so the sum of the statements
after the deadline is bounded by the deadline itself: a statement started with ``r`` ms left is
cancelled after ``r`` ms.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

#: How a refresh that fell back from an over-budget differential attempt starts its reason in
#: the history; the next refresh's decision finds such attempts by it.
BUDGET_REASON = "differential refresh passed its time budget"


class OverBudget(Exception):
    """The differential attempt passed its deadline (its statement was cancelled)."""


class Deadline:
    """A deadline ``budget_ms`` from now for the statements of one differential attempt.

    ``statement_timeout_ms`` is the user's own per-statement limit (0: none); a statement gets
    the smaller of the two, and a cancellation counts as over budget only when the budget was
    the smaller one.
    """

    def __init__(self, budget_ms: float, statement_timeout_ms: int) -> None:
        self.budget_ms = budget_ms
        self.user_ms = statement_timeout_ms
        self.ends = time.perf_counter() + budget_ms / 1000
        self._ours = False

    def remaining_ms(self) -> float:
        return (self.ends - time.perf_counter()) * 1000

    def arm(self, conn: psycopg.Connection[Any]) -> None:
        """Limit the next statements to the time left; raises :class:`OverBudget` if none is."""
        left = self.remaining_ms()
        if left <= 0:
            raise OverBudget
        limit = max(1, int(left))
        self._ours = not self.user_ms or limit < self.user_ms
        if not self._ours:
            limit = self.user_ms
        conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(f"{limit}ms")))

    def disarm(self, conn: psycopg.Connection[Any]) -> None:
        """Back to the user's limit for the rest of the transaction."""
        conn.execute(
            sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(f"{self.user_ms}ms"))
        )

    def is_ours(self, exc: psycopg.Error) -> bool:
        """Whether ``exc`` is the cancellation of a statement limited by this budget."""
        return (
            self._ours
            and isinstance(exc, psycopg.errors.QueryCanceled)
            and "statement timeout" in (exc.diag.message_primary or "")
        )


def arm(conn: psycopg.Connection[Any], deadline: Deadline | None) -> None:
    """:meth:`Deadline.arm` when there is a deadline."""
    if deadline is not None:
        deadline.arm(conn)
