"""Aggregation (GROUP BY, aggregates without GROUP BY, HAVING).

Each group is one stream-table row with row id = hash(group key values) (0 for an aggregate
without GROUP BY) and hidden state columns: ``__pgt_count`` = count(*) of the group and, per
aggregate call j, ``__pgt_a_j`` (its value, or the running sum for SUM/AVG) and ``__pgt_n_j``
(count of non-NULL arguments, for SUM/AVG).

Rule, per group g touched by the window ΔS (after WHERE):

* COUNT(*), COUNT(x), SUM(x), AVG(x) over exact numeric types are invertible:
  ``state_new = state_old + Σ_ΔS w·x`` (SUM is NULL when no non-NULL x remains; AVG = sum/n).
* MIN(x)/MAX(x): ``new = least(old, min of inserted x)``; if a removed x could have been the
  extremum (``removed ≤ old`` for MIN, ``≥`` for MAX, or the old state is unknown) the group is
  rescanned.
* Any other aggregate (string_agg, count(DISTINCT …), bool_and, float sums, FILTER, …) and any
  group whose old state is not stored (HAVING hid it) is rescanned: recomputed from the base table
  restricted to that group's key, in the refresh's snapshot.

A group is present iff its count is positive and HAVING holds; an aggregate without GROUP BY always
has its one row (unless HAVING hides it). Work is proportional to the window plus the size of the
rescanned groups.
"""

from __future__ import annotations

from ..ir import AVG, COUNT, COUNT_STAR, MAX, MIN, RESCAN, SUM, AggCall, QueryShape
from . import join
from ._sql import COUNT as COUNT_COL
from ._sql import KEEP, ROW_ID, WEIGHT, from_clause_sql, q, row_hash
from .filter import predicate


def _key(i: int) -> str:
    return q(f"__pgt_key_{i}")


def _a(j: int) -> str:
    return q(f"__pgt_a_{j}")


def _n(j: int) -> str:
    return q(f"__pgt_n_{j}")


def _agg(j: int) -> str:
    return q(f"__pgt_agg_{j}")


def has_n(agg: AggCall) -> bool:
    return agg.kind in (SUM, AVG)


def hidden_columns(shape: QueryShape) -> list[str]:
    """Hidden state columns, in storage order (after the visible ones)."""
    cols = ["__pgt_count"]
    for j, agg in enumerate(shape.aggs):
        cols.append(f"__pgt_a_{j}")
        if has_n(agg):
            cols.append(f"__pgt_n_{j}")
    return cols


def _state_aggregates(shape: QueryShape) -> list[str]:
    """Aggregates computing every state column from base rows (full and rescan)."""
    out = [f"count(*) AS {COUNT_COL}"]
    for j, agg in enumerate(shape.aggs):
        if agg.kind == COUNT_STAR:
            out.append(f"count(*) AS {_a(j)}")
        elif agg.kind == COUNT:
            out.append(f"count({agg.arg}) AS {_a(j)}")
        elif agg.kind in (SUM, AVG):
            out.append(f"sum({agg.arg}) AS {_a(j)}")
            out.append(f"count({agg.arg}) AS {_n(j)}")
        elif agg.kind in (MIN, MAX):
            out.append(f"{agg.kind}({agg.arg}) AS {_a(j)}")
        else:
            out.append(f"{agg.sql} AS {_a(j)}")
    return out


def _finalizers(shape: QueryShape, rel: str) -> list[str]:
    """``__pgt_agg_j`` (the value the user's expressions see) from the state columns of ``rel``."""
    out = []
    for j, agg in enumerate(shape.aggs):
        a, n = f"{rel}.{_a(j)}", f"{rel}.{_n(j)}"
        if agg.kind == SUM:
            expr = f"CASE WHEN {n} > 0 THEN {a} END"
        elif agg.kind == AVG:
            expr = f"CASE WHEN {n} > 0 THEN {a}::numeric / {n}::numeric END"
        else:
            expr = a
        out.append(f"{expr} AS {_agg(j)}")
    return out


def _grouped_base(shape: QueryShape, extra_where: str | None = None, extra_join: str = "") -> str:
    keys = [f"{k} AS {_key(i)}" for i, k in enumerate(shape.group_keys)]
    group_by = f" GROUP BY {', '.join(shape.group_keys)}" if shape.group_keys else ""
    return (
        f"SELECT {', '.join([*keys, *_state_aggregates(shape)])} "
        f"FROM {from_clause_sql(shape.froms)}{extra_join}{predicate(shape, extra_where)}{group_by}"
    )


def _present(shape: QueryShape) -> str:
    """Condition (over finalized columns) for a group to be a visible row."""
    conds = [] if not shape.group_keys else [f"{COUNT_COL} > 0"]
    if shape.having:
        conds.append(f"coalesce(({shape.having}), false)")
    return " AND ".join(conds) if conds else "true"


def _visible(shape: QueryShape) -> str:
    return ", ".join(f"{o.sql} AS {q(o.name)}" for o in shape.outputs)


def _key_refs(shape: QueryShape, rel: str) -> list[str]:
    return [f"{rel}.{_key(i)}" for i in range(len(shape.group_keys))]


def _row_id(shape: QueryShape, rel: str) -> str:
    """Row id of a group: hash(keys), preceded by the grouping set's index under GROUPING SETS
    (a key that is NULL in the data and one masked by the set are different groups)."""
    keys = _key_refs(shape, rel)
    if shape.grouping_set_id is not None:
        keys = [str(shape.grouping_set_id), *keys]
    return row_hash(keys)


def full(shape: QueryShape) -> str:
    """All groups: ``(row id, visible columns, hidden state)``."""
    z, f = q("__pgt_z"), q("__pgt_f")
    hidden = ", ".join(f"{z}.{q(c)}" for c in hidden_columns(shape))
    lateral = (
        f" CROSS JOIN LATERAL (SELECT {', '.join(_finalizers(shape, z))}) AS {f}"
        if shape.aggs
        else ""
    )
    having = f" WHERE coalesce(({shape.having}), false)" if shape.having else ""
    return (
        f"SELECT {_row_id(shape, z)} AS {ROW_ID}, {_visible(shape)}, {hidden} "
        f"FROM ({_grouped_base(shape)}) AS {z}{lateral}{having}"
    )


def _arg(j: int) -> str:
    return q(f"__pgt_arg_{j}")


def _input_exprs(shape: QueryShape) -> list[tuple[str, str]]:
    """What the aggregate reads from each input row: group keys and aggregate arguments."""
    exprs = [(k, f"__pgt_key_{i}") for i, k in enumerate(shape.group_keys)]
    for j, agg in enumerate(shape.aggs):
        if agg.kind in (COUNT, SUM, AVG, MIN, MAX):
            assert agg.arg is not None
            exprs.append((agg.arg, f"__pgt_arg_{j}"))
    return exprs


def _delta_states(shape: QueryShape) -> list[str]:
    """Per-group sums over the input delta (every row has weight +1 or −1)."""
    i = q("__pgt_i")
    w = f"{i}.{WEIGHT}"
    out = [f"sum({w}) AS {q('__pgt_dcount')}"]
    for j, agg in enumerate(shape.aggs):
        arg = f"{i}.{_arg(j)}"
        if agg.kind == COUNT:
            out.append(
                f"sum(CASE WHEN {arg} IS NOT NULL THEN {w} ELSE 0 END) AS {q(f'__pgt_d_{j}')}"
            )
        elif agg.kind in (SUM, AVG):
            out.append(f"sum({arg}) FILTER (WHERE {w} > 0) AS {q(f'__pgt_dp_{j}')}")
            out.append(f"sum({arg}) FILTER (WHERE {w} < 0) AS {q(f'__pgt_dm_{j}')}")
            out.append(
                f"sum(CASE WHEN {arg} IS NOT NULL THEN {w} ELSE 0 END) AS {q(f'__pgt_d_{j}')}"
            )
        elif agg.kind in (MIN, MAX):
            out.append(f"{agg.kind}({arg}) FILTER (WHERE {w} > 0) AS {q(f'__pgt_dp_{j}')}")
            out.append(f"{agg.kind}({arg}) FILTER (WHERE {w} < 0) AS {q(f'__pgt_dm_{j}')}")
    return out


def _new_states(shape: QueryShape) -> tuple[list[str], list[str]]:
    """Algebraic new state per group (``g`` = window sums, ``t`` = stored row) and the
    conditions under which the group must be rescanned instead."""
    g, t = q("__pgt_g"), q("__pgt_t")
    dcount = f"coalesce({g}.{q('__pgt_dcount')}, 0)"
    states = [f"coalesce({t}.{COUNT_COL}, 0) + {dcount} AS {COUNT_COL}"]
    rescan = []
    if shape.having:
        rescan.append(f"{t}.{ROW_ID} IS NULL")
    for j, agg in enumerate(shape.aggs):
        a = f"{t}.{_a(j)}"
        d = f"{g}.{q(f'__pgt_d_{j}')}"
        dp, dm = f"{g}.{q(f'__pgt_dp_{j}')}", f"{g}.{q(f'__pgt_dm_{j}')}"
        if agg.kind == COUNT_STAR:
            states.append(f"coalesce({a}, 0) + {dcount} AS {_a(j)}")
        elif agg.kind == COUNT:
            states.append(f"coalesce({a}, 0) + coalesce({d}, 0) AS {_a(j)}")
        elif agg.kind in (SUM, AVG):
            states.append(f"coalesce({a}, 0) + coalesce({dp}, 0) - coalesce({dm}, 0) AS {_a(j)}")
            states.append(f"coalesce({t}.{_n(j)}, 0) + coalesce({d}, 0) AS {_n(j)}")
        elif agg.kind in (MIN, MAX):
            pick = "least" if agg.kind == MIN else "greatest"
            cmp = "<=" if agg.kind == MIN else ">="
            states.append(f"{pick}({a}, {dp}) AS {_a(j)}")
            rescan.append(f"({dm} IS NOT NULL AND ({a} IS NULL OR {dm} {cmp} {a}))")
        else:
            assert agg.kind == RESCAN
            states.append(f"{a} AS {_a(j)}")  # typed placeholder; the rescan replaces it
            rescan.append("true")
    return states, rescan


def delta(shape: QueryShape, changed: set[str], target: str) -> str:
    """For every touched group: ``(row id, keep, visible columns, hidden state)``.

    ``changed`` holds the stable names of the sources with changes in this refresh; ``target``
    is the quoted, qualified stream table (its stored state is the old state).
    """
    g, t, n, r, s, f = (
        q(x) for x in ("__pgt_g", "__pgt_t", "__pgt_n", "__pgt_r", "__pgt_s", "__pgt_f")
    )
    i = q("__pgt_i")
    key_cols = [f"{i}.{_key(k)}" for k in range(len(shape.group_keys))]
    group_by = f" GROUP BY {', '.join(key_cols)}" if key_cols else ""
    window = (
        f"SELECT {', '.join([*key_cols, *_delta_states(shape)])} "
        f"FROM ({join.delta(shape, _input_exprs(shape), changed)}) AS {i}{group_by}"
    )
    states, rescan_conds = _new_states(shape)
    rescan = " OR ".join(rescan_conds) if rescan_conds else "false"
    g_row_id = _row_id(shape, g)
    new = (
        f"SELECT {', '.join(_key_refs(shape, g) + [f'{g_row_id} AS {ROW_ID}'])}, "
        f"({rescan}) AS {q('__pgt_rescan')}, {', '.join(states)} "
        f"FROM {g} LEFT JOIN {target} AS {t} ON {t}.{ROW_ID} = {g_row_id}"
    )
    if not rescan_conds:
        # Every aggregate is invertible and no state can be missing: no base-table access at all.
        merged = f"SELECT * FROM {n}"
        ctes = f"WITH {g} AS ({window}), {n} AS ({new})"
    else:
        merged = (
            f"SELECT {n}.{ROW_ID}, {', '.join([*_key_refs(shape, n), *_rescan_pick(shape)])} "
            f"FROM {n} LEFT JOIN {r} ON {n}.{q('__pgt_rescan')} AND {r}.{ROW_ID} = {n}.{ROW_ID}"
        )
        ctes = f"WITH {g} AS ({window}), {n} AS ({new}), {r} AS ({_rescanned(shape)})"
    lateral = (
        f" CROSS JOIN LATERAL (SELECT {', '.join(_finalizers(shape, s))}) AS {f}"
        if shape.aggs
        else ""
    )
    hidden = ", ".join(f"{s}.{q(c)}" for c in hidden_columns(shape))
    return (
        f"{ctes} SELECT {ROW_ID}, ({_present(shape)}) AS {KEEP}, {_visible(shape)}, {hidden} "
        f"FROM ({merged}) AS {s}{lateral}"
    )


def _rescanned(shape: QueryShape) -> str:
    """Groups flagged for rescan, recomputed from the base table. Driven by the flagged keys so
    an index on the group key is used; nullable keys need the IS NULL arm."""
    n, rb = q("__pgt_n"), q("__pgt_rb")
    if shape.group_keys:
        matches = []
        pairs = zip(shape.group_keys, shape.group_key_not_null, strict=True)
        for i, (k, not_null) in enumerate(pairs):
            eq = f"{k} = {n}.{_key(i)}"
            matches.append(eq if not_null else f"({eq} OR ({k} IS NULL AND {n}.{_key(i)} IS NULL))")
        join_sql = (
            f" JOIN (SELECT * FROM {n} WHERE {n}.{q('__pgt_rescan')}) AS {n} ON "
            + " AND ".join(matches)
        )
        base = _grouped_base(shape, extra_join=join_sql)
    else:
        flagged = f"EXISTS (SELECT 1 FROM {n} WHERE {n}.{q('__pgt_rescan')})"
        base = _grouped_base(shape, extra_where=flagged)
    return f"SELECT {_row_id(shape, rb)} AS {ROW_ID}, {rb}.* FROM ({base}) AS {rb}"


def _rescan_pick(shape: QueryShape) -> list[str]:
    """Each state column from the rescan when the group was rescanned, else the algebraic one."""
    n, r = q("__pgt_n"), q("__pgt_r")
    flag = f"{n}.{q('__pgt_rescan')}"
    out = [
        f"CASE WHEN {flag} THEN coalesce({r}.{COUNT_COL}, 0) ELSE {n}.{COUNT_COL} END "
        f"AS {COUNT_COL}"
    ]
    for col in hidden_columns(shape)[1:]:
        out.append(f"CASE WHEN {flag} THEN {r}.{q(col)} ELSE {n}.{q(col)} END AS {q(col)}")
    return out
