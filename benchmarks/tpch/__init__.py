"""The TPC-H-derived corpus of dbt-pgtrickle: schema, data generator, 22 queries, mutation cycles.

``queries/qNN.sql`` are the 22 TPC-H queries written for this project (same semantics as the
benchmark's, fixed substitution parameters, every output column with its own name). Only the
five queries that need a ``LIMIT`` (Q2, Q3, Q10, Q18, Q21) keep their ``ORDER BY``; a stream table
has no order, so the others drop it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUERY_DIR = HERE / "queries"

_TOPK = re.compile(r"\border\s+by\s+(?P<keys>.+?)\s+limit\s+(?P<n>\d+)\s*;?\s*$", re.I | re.S)

#: Output columns that identify a row of each query's result (for a unique index on a
#: materialized view, needed by ``REFRESH MATERIALIZED VIEW CONCURRENTLY``). Queries returning
#: one row use their single column.
UNIQUE_KEYS: dict[str, tuple[str, ...]] = {
    "q01": ("l_returnflag", "l_linestatus"),
    "q02": ("p_partkey", "s_name"),
    "q03": ("l_orderkey",),
    "q04": ("o_orderpriority",),
    "q05": ("n_name",),
    "q06": ("revenue",),
    "q07": ("supp_nation", "cust_nation", "l_year"),
    "q08": ("o_year",),
    "q09": ("nation", "o_year"),
    "q10": ("c_custkey",),
    "q11": ("ps_partkey",),
    "q12": ("l_shipmode",),
    "q13": ("c_count",),
    "q14": ("promo_revenue",),
    "q15": ("s_suppkey",),
    "q16": ("p_brand", "p_type", "p_size"),
    "q17": ("avg_yearly",),
    "q18": ("o_orderkey",),
    "q19": ("revenue",),
    "q20": ("s_name",),
    "q21": ("s_name",),
    "q22": ("cntrycode",),
}


@dataclass(frozen=True)
class Query:
    name: str  # q01 .. q22
    sql: str  # the query text, comments stripped of the file's header, no trailing semicolon
    order_keys: str | None = None  # the ORDER BY list of a top-k query (output column names)
    limit: int | None = None
    unlimited_sql: str | None = None  # the query without its final ORDER BY ... LIMIT

    @property
    def stream_table(self) -> str:
        return f"tpch_{self.name}"


def _strip_comments(text: str) -> str:
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
    return "\n".join(lines).strip().rstrip(";").strip()


def load_query(name: str) -> Query:
    text = _strip_comments((QUERY_DIR / f"{name}.sql").read_text())
    m = _TOPK.search(text)
    if m is None:
        return Query(name, text)
    return Query(
        name,
        text,
        order_keys=m.group("keys").strip(),
        limit=int(m.group("n")),
        unlimited_sql=text[: m.start()].rstrip(),
    )


def load_queries(names: list[str] | None = None) -> dict[str, Query]:
    """``{"q01": Query, ...}`` for all 22 queries (or the given names)."""
    wanted = names or sorted(p.stem for p in QUERY_DIR.glob("q*.sql"))
    return {n: load_query(n) for n in wanted}
