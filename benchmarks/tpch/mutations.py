"""Mutation cycles over the TPC-H-shaped database, in the spirit of TPC-H's refresh functions.

One :meth:`Mutator.cycle` with change fraction ``f`` touches about ``f`` of the orders in total:
five kinds of order change (two kinds of line-item update, order updates, deletes and inserts)
each draw a fifth of ``f`` (at least one order each). Customers, parts and suppliers are updated
at ``f / 5`` each and partsupp at ``f / 20`` of the parts (at least one row each), so that a
dimension change, which reaches every order joined to it, adds about as much again as one kind of
order change. Two transactions:

1. *updates that move rows between groups and change join keys*:
   line items of some orders get a new return flag, ship mode, quantity and discount (Q1, Q6,
   Q12, Q19 groups and filters) or a new supplier — another supplier of the same part, so the
   Q9 join with partsupp still matches — and shifted commit/receipt dates (Q4, Q12, Q21);
   orders get a new priority, customer (any customer, also one who never ordered: Q13, Q22),
   status and comment; customers a new market segment, nation (with the matching phone country
   code) and balance; parts a new brand, container, size, type and sometimes name; suppliers a
   new nation, balance and comment (with or without "Customer … Complaints", Q16); partsupp rows
   a new cost and available quantity.
2. *TPC-H RF2 and RF1*: delete some orders with their line items (possibly ones just updated),
   then insert as many new orders with 1–7 line items (``datagen.add_orders``) and update a few
   lines of the new orders in the same transaction (insert-then-update of one row in one window).

Deterministic: the orders and rows are drawn by ``random.Random(seed)`` and by hashes salted
with the seed and the cycle number, so the same (database, seed) sequence gives the same data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import psycopg

from . import datagen

KINDS = 5  # kinds of order change per cycle; each draws a fifth of the cycle's orders


@dataclass
class CycleStats:
    cycle: int
    orders_touched: int  # distinct orders inserted, deleted or updated (lines included)
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


class Mutator:
    """Applies mutation cycles to a database loaded by :func:`datagen.load`."""

    def __init__(self, conn: psycopg.Connection[Any], sizes: datagen.Sizes, seed: int = 7) -> None:
        self.conn = conn
        self.sizes = sizes
        self.seed = seed
        self.rng = random.Random(seed)
        self.cycles = 0
        self.touched: set[int] = set()  # the order keys the current cycle changed
        datagen.install_helpers(conn)
        keys = conn.execute("SELECT o_orderkey FROM orders ORDER BY o_orderkey").fetchall()
        self.live: list[int] = [k for (k,) in keys]
        top = max(self.live, default=0)
        # the index of the highest order key in use (see datagen.orderkey); new orders follow it
        self.next_index = (top - 1) // 32 * 8 + (top - 1) % 32 + 2 if top else 1

    # -- drawing ---------------------------------------------------------------------------

    def _take(self, n: int) -> list[int]:
        """``n`` distinct live order keys (they stay live)."""
        n = min(n, len(self.live))
        keys = sorted(self.rng.sample(self.live, n))
        self.touched.update(keys)
        return keys

    def _remove(self, n: int) -> list[int]:
        """``n`` distinct live order keys, removed from the live set."""
        n = min(n, len(self.live))
        picked = sorted(self.rng.sample(range(len(self.live)), n), reverse=True)
        out = []
        for i in picked:
            out.append(self.live[i])
            self.live[i] = self.live[-1]
            self.live.pop()
        self.touched.update(out)
        return sorted(out)

    def _salt(self, k: int) -> int:
        return self.seed * 1_000_000 + self.cycles * 100 + k

    # -- one cycle -------------------------------------------------------------------------

    def cycle(self, fraction: float) -> CycleStats:
        self.cycles += 1
        self.touched = set()
        n = max(1, round(fraction * len(self.live) / KINDS))  # orders per kind of change
        dim = fraction / KINDS  # the fraction of each dimension table updated
        stats = CycleStats(self.cycles, 0)
        rows = stats.rows
        c = self.conn
        sz = self.sizes

        def run(label: str, query: str, params: dict[str, Any]) -> None:
            rows[label] = rows.get(label, 0) + max(c.execute(query, params).rowcount, 0)

        with c.transaction():
            run(
                "lineitem: flag/mode/quantity/discount",
                "UPDATE lineitem SET "
                "l_returnflag = (ARRAY['R','A','N'])[tpch_gen.r(l_orderkey * 8 + l_linenumber, "
                "%(s)s, 1, 3)], "
                "l_shipmode = (ARRAY['REG AIR','AIR','RAIL','SHIP','TRUCK','MAIL','FOB'])"
                "[tpch_gen.r(l_orderkey * 8 + l_linenumber, %(s)s + 1, 1, 7)], "
                "l_quantity = tpch_gen.r(l_orderkey * 8 + l_linenumber, %(s)s + 2, 1, 50), "
                "l_discount = tpch_gen.r(l_orderkey * 8 + l_linenumber, %(s)s + 3, 0, 10) / 100.0 "
                "WHERE l_orderkey = ANY(%(k)s) AND l_linenumber <= 3",
                {"s": self._salt(1), "k": self._take(n)},
            )
            run(
                "lineitem: supplier (join key) and dates",
                "UPDATE lineitem l SET l_suppkey = x.new_supp, "
                "l_commitdate = l.l_commitdate + x.shift, l_receiptdate = l.l_receiptdate - x.shift "
                "FROM (SELECT l2.l_orderkey, l2.l_linenumber, "
                "  (tpch_gen.r(l2.l_orderkey * 8 + l2.l_linenumber, %(s)s, -20, 20))::int AS shift, "
                "  (SELECT ps.ps_suppkey FROM partsupp ps WHERE ps.ps_partkey = l2.l_partkey "
                "     AND ps.ps_suppkey <> l2.l_suppkey "
                "   ORDER BY tpch_gen.u(ps.ps_suppkey, %(s)s + l2.l_orderkey) LIMIT 1) AS new_supp "
                " FROM lineitem l2 WHERE l2.l_orderkey = ANY(%(k)s)) AS x "
                "WHERE l.l_orderkey = x.l_orderkey AND l.l_linenumber = x.l_linenumber "
                "AND x.new_supp IS NOT NULL",
                {"s": self._salt(2), "k": self._take(n)},
            )
            run(
                "orders: priority/customer (join key)/status/comment",
                "UPDATE orders SET "
                "o_orderpriority = (ARRAY['1-URGENT','2-HIGH','3-MEDIUM','4-NOT SPECIFIED','5-LOW'])"
                "[tpch_gen.r(o_orderkey, %(s)s, 1, 5)], "
                "o_custkey = tpch_gen.r(o_orderkey, %(s)s + 1, 1, %(customers)s), "
                "o_orderstatus = (ARRAY['F','O','P'])[tpch_gen.r(o_orderkey, %(s)s + 2, 1, 3)], "
                "o_comment = CASE WHEN tpch_gen.u(o_orderkey, %(s)s + 3) < 0.3 "
                "  THEN left('special ' || o_comment || ' requests', 79) ELSE o_comment END "
                "WHERE o_orderkey = ANY(%(k)s)",
                {"s": self._salt(3), "k": self._take(n), "customers": sz.customers},
            )
            run(
                "customer: segment/nation/balance",
                "UPDATE customer SET "
                "c_mktsegment = (ARRAY['AUTOMOBILE','BUILDING','FURNITURE','HOUSEHOLD',"
                "'MACHINERY'])[tpch_gen.r(c_custkey, %(s)s, 1, 5)], "
                "c_nationkey = x.nk, "
                "c_phone = (x.nk + 10)::text || substr(c_phone, 3), "
                "c_acctbal = round((-999.99 + tpch_gen.u(c_custkey, %(s)s + 2) * 10999.98)"
                "::numeric, 2) "
                "FROM (SELECT k, tpch_gen.r(k, %(s)s + 1, 0, 24)::int AS nk "
                "      FROM unnest(%(k)s::int[]) AS k) AS x WHERE c_custkey = x.k",
                {"s": self._salt(4), "k": self._keys(dim, sz.customers)},
            )
            run(
                "part: brand/container/size/type/name",
                "UPDATE part SET "
                "p_brand = 'Brand#' || tpch_gen.r(p_partkey, %(s)s, 1, 5) "
                "  || tpch_gen.r(p_partkey, %(s)s + 1, 1, 5), "
                "p_container = (ARRAY['SM','LG','MED','JUMBO','WRAP'])"
                "[tpch_gen.r(p_partkey, %(s)s + 2, 1, 5)] || ' ' || "
                "(ARRAY['CASE','BOX','BAG','JAR','PKG','PACK','CAN','DRUM'])"
                "[tpch_gen.r(p_partkey, %(s)s + 3, 1, 8)], "
                "p_size = tpch_gen.r(p_partkey, %(s)s + 4, 1, 50), "
                "p_type = CASE WHEN tpch_gen.u(p_partkey, %(s)s + 5) < 0.5 THEN p_type "
                "  ELSE (ARRAY['STANDARD','SMALL','MEDIUM','LARGE','ECONOMY','PROMO'])"
                "[tpch_gen.r(p_partkey, %(s)s + 6, 1, 6)] || substr(p_type, strpos(p_type, ' ')) "
                "  END, "
                "p_name = CASE WHEN tpch_gen.u(p_partkey, %(s)s + 7) < 0.3 "
                "  THEN left((ARRAY['forest','green','lime','navy'])"
                "[tpch_gen.r(p_partkey, %(s)s + 8, 1, 4)] || ' ' || p_name, 55) "
                "  ELSE p_name END "
                "WHERE p_partkey = ANY(%(k)s)",
                {"s": self._salt(5), "k": self._keys(dim, sz.parts)},
            )
            run(
                "supplier: nation/balance/comment",
                "UPDATE supplier SET "
                "s_nationkey = tpch_gen.r(s_suppkey, %(s)s, 0, 24), "
                "s_acctbal = round((-999.99 + tpch_gen.u(s_suppkey, %(s)s + 1) * 10999.98)"
                "::numeric, 2), "
                "s_comment = CASE WHEN s_comment LIKE '%%Customer%%Complaints%%' "
                "  THEN 'quickly ironic deposits' "
                "  ELSE left('Customer slyly Complaints ' || s_comment, 101) END "
                "WHERE s_suppkey = ANY(%(k)s)",
                {"s": self._salt(6), "k": self._keys(dim, sz.suppliers)},
            )
            run(
                "partsupp: cost/available quantity",
                "UPDATE partsupp SET "
                "ps_supplycost = round((1 + tpch_gen.u(ps_partkey * 8 + ps_suppkey, %(s)s) * 999)"
                "::numeric, 2), "
                "ps_availqty = tpch_gen.r(ps_partkey * 8 + ps_suppkey, %(s)s + 1, 1, 9999) "
                "WHERE ps_partkey = ANY(%(k)s)",
                {"s": self._salt(7), "k": self._keys(dim / 4, sz.parts)},
            )
        with c.transaction():
            gone = self._remove(n)
            run(
                "lineitem: delete (RF2)",
                "DELETE FROM lineitem WHERE l_orderkey = ANY(%(k)s)",
                {"k": gone},
            )
            run(
                "orders: delete (RF2)",
                "DELETE FROM orders WHERE o_orderkey = ANY(%(k)s)",
                {"k": gone},
            )
            first, last = self.next_index, self.next_index + n - 1
            n_orders, n_lines = datagen.add_orders(c, sz, first, last, self._salt(8))
            rows["orders: insert (RF1)"] = n_orders
            rows["lineitem: insert (RF1)"] = n_lines
            new_keys = [datagen.orderkey(i) for i in range(first, last + 1)]
            self.live.extend(new_keys)
            self.touched.update(new_keys)
            self.next_index = last + 1
            run(
                "lineitem: update new lines (same transaction)",
                "UPDATE lineitem SET l_quantity = l_quantity + 1, l_tax = 0.08 "
                "WHERE l_orderkey = ANY(%(k)s) AND l_linenumber = 1",
                {"k": new_keys[: max(1, n // 4)]},
            )
        stats.orders_touched = len(self.touched)
        return stats

    def _keys(self, fraction: float, size: int) -> list[int]:
        """Distinct keys 1..size, about ``fraction`` of them (at least one)."""
        n = min(size, max(1, round(fraction * size)))
        return sorted(self.rng.sample(range(1, size + 1), n))
