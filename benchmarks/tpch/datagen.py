"""A TPC-H-shaped data generator in pure SQL (``generate_series`` and hashing), at any scale factor.

Not the official ``dbgen``: the row counts, key structure and value domains follow the TPC-H
specification closely enough that the 22 queries of ``queries/`` select rows, but the values are
our own. Everything is deterministic: a value is a function of its row key, a column number and
the seed, computed with ``hashint8extended`` (PostgreSQL's stable 64-bit integer hash), so the
same ``(scale, seed)`` produces the same database on every server and in every session, and the
mutation cycles (``mutations.py``) can generate further orders with the same functions.

Row counts at scale factor ``sf`` (each at least 1): supplier 10,000·sf, customer 150,000·sf,
part 200,000·sf, partsupp 4 per part, orders 1,500,000·sf, lineitem 1–7 per order (≈ 4).
As in TPC-H, order keys are sparse (8 used out of every 32), customers whose key is a multiple of
3 place no orders, and each line item's supplier is one of the four that supply its part.

Usage::

    from benchmarks.tpch import datagen
    datagen.load(conn, scale=0.01)          # schema.sql + data + ANALYZE
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent

# Cut-off date of TPC-H: line items shipped after it are still open ('O'), and only items
# received by it can be returned ('R'/'A').
CURRENT_DATE = "1995-06-17"
START_DATE = "1992-01-01"
# Orders are placed from START_DATE up to 1998-08-02 (the last day that still lets every line
# ship within 121 days, before 1998-12-01).
ORDER_DAYS = 2405

NATIONS = [
    (0, "ALGERIA", 0),
    (1, "ARGENTINA", 1),
    (2, "BRAZIL", 1),
    (3, "CANADA", 1),
    (4, "EGYPT", 4),
    (5, "ETHIOPIA", 0),
    (6, "FRANCE", 3),
    (7, "GERMANY", 3),
    (8, "INDIA", 2),
    (9, "INDONESIA", 2),
    (10, "IRAN", 4),
    (11, "IRAQ", 4),
    (12, "JAPAN", 2),
    (13, "JORDAN", 4),
    (14, "KENYA", 0),
    (15, "MOROCCO", 0),
    (16, "MOZAMBIQUE", 0),
    (17, "PERU", 1),
    (18, "CHINA", 2),
    (19, "ROMANIA", 3),
    (20, "SAUDI ARABIA", 4),
    (21, "VIETNAM", 2),
    (22, "RUSSIA", 3),
    (23, "UNITED KINGDOM", 3),
    (24, "UNITED STATES", 1),
]
REGIONS = ["AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST"]
SEGMENTS = ["AUTOMOBILE", "BUILDING", "FURNITURE", "HOUSEHOLD", "MACHINERY"]
PRIORITIES = ["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"]
SHIP_MODES = ["REG AIR", "AIR", "RAIL", "SHIP", "TRUCK", "MAIL", "FOB"]
SHIP_INSTRUCT = ["DELIVER IN PERSON", "COLLECT COD", "NONE", "TAKE BACK RETURN"]
TYPE_1 = ["STANDARD", "SMALL", "MEDIUM", "LARGE", "ECONOMY", "PROMO"]
TYPE_2 = ["ANODIZED", "BURNISHED", "PLATED", "POLISHED", "BRUSHED"]
TYPE_3 = ["TIN", "NICKEL", "BRASS", "STEEL", "COPPER"]
CONTAINER_1 = ["SM", "LG", "MED", "JUMBO", "WRAP"]
CONTAINER_2 = ["CASE", "BOX", "BAG", "JAR", "PKG", "PACK", "CAN", "DRUM"]
COLORS = [
    "almond",
    "antique",
    "aquamarine",
    "azure",
    "beige",
    "bisque",
    "black",
    "blanched",
    "blue",
    "blush",
    "brown",
    "burlywood",
    "burnished",
    "chartreuse",
    "chiffon",
    "chocolate",
    "coral",
    "cornflower",
    "cornsilk",
    "cream",
    "cyan",
    "dark",
    "deep",
    "dim",
    "dodger",
    "drab",
    "firebrick",
    "floral",
    "forest",
    "frosted",
    "gainsboro",
    "ghost",
    "goldenrod",
    "green",
    "grey",
    "honeydew",
    "hot",
    "indian",
    "ivory",
    "khaki",
    "lace",
    "lavender",
    "lawn",
    "lemon",
    "light",
    "lime",
    "linen",
    "magenta",
    "maroon",
    "medium",
    "metallic",
    "midnight",
    "mint",
    "misty",
    "moccasin",
    "navajo",
    "navy",
    "olive",
    "orange",
    "orchid",
    "pale",
    "papaya",
    "peach",
    "peru",
    "pink",
    "plum",
    "powder",
    "puff",
    "purple",
    "red",
    "rose",
    "rosy",
    "royal",
    "saddle",
    "salmon",
    "sandy",
    "seashell",
    "sienna",
    "sky",
    "slate",
    "smoke",
    "snow",
    "spring",
    "steel",
    "tan",
    "thistle",
    "tomato",
    "turquoise",
    "violet",
    "wheat",
    "white",
    "yellow",
]
WORDS = [
    "furiously",
    "carefully",
    "quickly",
    "slyly",
    "blithely",
    "regular",
    "final",
    "express",
    "pending",
    "ironic",
    "bold",
    "even",
    "special",
    "requests",
    "deposits",
    "packages",
    "accounts",
    "instructions",
    "theodolites",
    "pinto",
    "beans",
    "foxes",
    "ideas",
    "dependencies",
    "platelets",
    "asymptotes",
    "courts",
    "dolphins",
    "sleep",
    "wake",
    "haggle",
    "nag",
    "use",
    "boost",
    "cajole",
    "detect",
    "among",
    "above",
    "along",
    "across",
    "fluffily",
    "unusual",
    "silent",
]


@dataclass(frozen=True)
class Sizes:
    suppliers: int
    customers: int
    parts: int
    orders: int

    @classmethod
    def at(cls, scale: float) -> Sizes:
        def n(base: int) -> int:
            return max(1, round(base * scale))

        return cls(n(10_000), n(150_000), n(200_000), n(1_500_000))


def _arr(values: list[str]) -> str:
    """A SQL text[] literal of fixed vocabulary (our own constants, no user input)."""
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"ARRAY[{quoted}]::text[]"


# The helper functions live in their own schema so they never mix with the sources.
# tpch_gen.u(key, salt): uniform [0, 1); tpch_gen.r(key, salt, lo, hi): integer in [lo, hi];
# tpch_gen.pick(key, salt, words): one element; tpch_gen.text_of(key, salt, n, words): n words.
HELPERS = f"""
CREATE SCHEMA IF NOT EXISTS tpch_gen;
CREATE OR REPLACE FUNCTION tpch_gen.u(k bigint, s bigint) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ((hashint8extended(k, s) >> 11) & 9007199254740991)::double precision
             / 9007199254740992.0 $$;
CREATE OR REPLACE FUNCTION tpch_gen.r(k bigint, s bigint, lo bigint, hi bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT lo + floor(tpch_gen.u(k, s) * (hi - lo + 1))::bigint $$;
CREATE OR REPLACE FUNCTION tpch_gen.pick(k bigint, s bigint, words text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT words[tpch_gen.r(k, s, 1, cardinality(words))] $$;
CREATE OR REPLACE FUNCTION tpch_gen.text_of(k bigint, s bigint, n integer, words text[])
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT string_agg(words[tpch_gen.r(k * 64 + j, s, 1, cardinality(words))], ' ' ORDER BY j)
      FROM generate_series(1, n) AS j $$;
CREATE OR REPLACE FUNCTION tpch_gen.orderkey(i bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ((i - 1) / 8) * 32 + (i - 1) % 8 + 1 $$;
CREATE OR REPLACE FUNCTION tpch_gen.words() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT {_arr(WORDS)} $$;
"""


def salt(seed: int, column: int) -> int:
    """The hash seed of one generated column."""
    return seed * 1_000 + column


def install_helpers(conn: psycopg.Connection[Any]) -> None:
    conn.execute(HELPERS)


def drop_helpers(conn: psycopg.Connection[Any]) -> None:
    conn.execute("DROP SCHEMA IF EXISTS tpch_gen CASCADE")


def create_schema(conn: psycopg.Connection[Any]) -> None:
    conn.execute((HERE / "schema.sql").read_text())


def _params(seed: int, sizes: Sizes, **extra: Any) -> dict[str, Any]:
    return {
        "seed": seed,
        "suppliers": sizes.suppliers,
        "customers": sizes.customers,
        "parts": sizes.parts,
        "orders": sizes.orders,
        **extra,
    }


def _s(col: int) -> str:
    """SQL for the salt of generated column ``col`` (the seed is the %(seed)s parameter)."""
    return f"(%(seed)s::bigint * 1000 + {col})"


REGION_SQL = "INSERT INTO region VALUES " + ", ".join(
    f"({i}, '{name}', 'region ' || {i})" for i, name in enumerate(REGIONS)
)
NATION_SQL = "INSERT INTO nation VALUES " + ", ".join(
    f"({k}, '{name}', {r}, 'nation ' || {k})" for k, name, r in NATIONS
)

SUPPLIER_SQL = f"""
INSERT INTO supplier
SELECT k,
       'Supplier#' || lpad(k::text, 9, '0'),
       substr(md5(k::text || 'sa'), 1, 10 + tpch_gen.r(k, {_s(1)}, 0, 20)::int),
       nk,
       (nk + 10)::text || '-' || tpch_gen.r(k, {_s(2)}, 100, 999) || '-'
           || tpch_gen.r(k, {_s(3)}, 100, 999) || '-' || tpch_gen.r(k, {_s(4)}, 1000, 9999),
       round((-999.99 + tpch_gen.u(k, {_s(5)}) * 10999.98)::numeric, 2),
       left(tpch_gen.text_of(k, {_s(6)}, 5, tpch_gen.words())
            || CASE WHEN tpch_gen.u(k, {_s(7)}) < 0.05
                    THEN ' Customer ' || tpch_gen.pick(k, {_s(8)}, tpch_gen.words()) || ' Complaints'
                    WHEN tpch_gen.u(k, {_s(7)}) < 0.10
                    THEN ' Customer ' || tpch_gen.pick(k, {_s(8)}, tpch_gen.words()) || ' Recommends'
                    ELSE '' END, 101)
FROM generate_series(1, %(suppliers)s) AS k,
     LATERAL (SELECT tpch_gen.r(k, {_s(9)}, 0, 24)::int AS nk) AS n
"""

CUSTOMER_SQL = f"""
INSERT INTO customer
SELECT k,
       'Customer#' || lpad(k::text, 9, '0'),
       substr(md5(k::text || 'ca'), 1, 10 + tpch_gen.r(k, {_s(11)}, 0, 20)::int),
       nk,
       (nk + 10)::text || '-' || tpch_gen.r(k, {_s(12)}, 100, 999) || '-'
           || tpch_gen.r(k, {_s(13)}, 100, 999) || '-' || tpch_gen.r(k, {_s(14)}, 1000, 9999),
       round((-999.99 + tpch_gen.u(k, {_s(15)}) * 10999.98)::numeric, 2),
       tpch_gen.pick(k, {_s(16)}, {_arr(SEGMENTS)}),
       left(tpch_gen.text_of(k, {_s(17)}, 6, tpch_gen.words()), 117)
FROM generate_series(1, %(customers)s) AS k,
     LATERAL (SELECT tpch_gen.r(k, {_s(10)}, 0, 24)::int AS nk) AS n
"""

PART_SQL = f"""
INSERT INTO part
SELECT k,
       tpch_gen.text_of(k, {_s(21)}, 5, {_arr(COLORS)}),
       'Manufacturer#' || m,
       'Brand#' || m || tpch_gen.r(k, {_s(22)}, 1, 5),
       tpch_gen.pick(k, {_s(23)}, {_arr(TYPE_1)}) || ' '
           || tpch_gen.pick(k, {_s(24)}, {_arr(TYPE_2)}) || ' '
           || tpch_gen.pick(k, {_s(25)}, {_arr(TYPE_3)}),
       tpch_gen.r(k, {_s(26)}, 1, 50),
       tpch_gen.pick(k, {_s(27)}, {_arr(CONTAINER_1)}) || ' '
           || tpch_gen.pick(k, {_s(28)}, {_arr(CONTAINER_2)}),
       (90000 + mod(k / 10, 20001) + 100 * mod(k, 1000)) / 100.0,
       left(tpch_gen.text_of(k, {_s(29)}, 3, tpch_gen.words()), 23)
FROM generate_series(1, %(parts)s) AS k,
     LATERAL (SELECT tpch_gen.r(k, {_s(20)}, 1, 5) AS m) AS mm
"""

# The i-th supplier (i = 0..3) of part p, as in TPC-H: spread over the whole supplier range.
SUPPLIER_OF = (
    "(mod({p} + {i} * (%(suppliers)s / 4 + ({p} - 1) / %(suppliers)s), %(suppliers)s) + 1)::int"
)
_PS_SUPP = SUPPLIER_OF.format(p="p", i="i")
_LI_SUPP = SUPPLIER_OF.format(
    p="pk", i="tpch_gen.r(ok * 8 + ln, %(seed)s::bigint * 1000 + 42, 0, 3)"
)

PARTSUPP_SQL = f"""
INSERT INTO partsupp
SELECT DISTINCT ON (p, sk) p, sk,
       tpch_gen.r(p * 4 + i, {_s(31)}, 1, 9999),
       round((1 + tpch_gen.u(p * 4 + i, {_s(32)}) * 999)::numeric, 2),
       left(tpch_gen.text_of(p * 4 + i, {_s(33)}, 8, tpch_gen.words()), 199)
FROM generate_series(1, %(parts)s) AS p, generate_series(0, 3) AS i,
     LATERAL (SELECT {_PS_SUPP} AS sk) AS s
ORDER BY p, sk, i
"""

# Line items of the orders with index first..last (order key = tpch_gen.orderkey(index)).
# The order date is recomputed from the order key, so line items need not read orders.
LINEITEM_SQL = f"""
INSERT INTO lineitem
SELECT ok, pk,
       {_LI_SUPP},
       ln, qty,
       round(qty * (90000 + mod(pk / 10, 20001) + 100 * mod(pk, 1000)) / 100.0, 2),
       tpch_gen.r(ok * 8 + ln, {_s(43)}, 0, 10) / 100.0,
       tpch_gen.r(ok * 8 + ln, {_s(44)}, 0, 8) / 100.0,
       CASE WHEN rd <= DATE '{CURRENT_DATE}'
            THEN CASE WHEN tpch_gen.u(ok * 8 + ln, {_s(45)}) < 0.5 THEN 'R' ELSE 'A' END
            ELSE 'N' END,
       CASE WHEN sd > DATE '{CURRENT_DATE}' THEN 'O' ELSE 'F' END,
       sd, cd, rd,
       tpch_gen.pick(ok * 8 + ln, {_s(46)}, {_arr(SHIP_INSTRUCT)}),
       tpch_gen.pick(ok * 8 + ln, {_s(47)}, {_arr(SHIP_MODES)}),
       left(tpch_gen.text_of(ok * 8 + ln, {_s(48)}, 4, tpch_gen.words()), 44)
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS oi,
     LATERAL (SELECT tpch_gen.orderkey(oi) AS ok) AS o,
     LATERAL (SELECT DATE '{START_DATE}' + tpch_gen.r(ok, {_s(50)}, 0, {ORDER_DAYS})::int AS od)
         AS d,
     LATERAL generate_series(1, tpch_gen.r(ok, {_s(51)}, 1, 7)::int) AS ln,
     LATERAL (SELECT tpch_gen.r(ok * 8 + ln, {_s(40)}, 1, %(parts)s)::int AS pk,
                     tpch_gen.r(ok * 8 + ln, {_s(41)}, 1, 50)::numeric AS qty,
                     od + tpch_gen.r(ok * 8 + ln, {_s(52)}, 1, 121)::int AS sd,
                     od + tpch_gen.r(ok * 8 + ln, {_s(53)}, 30, 90)::int AS cd) AS a,
     LATERAL (SELECT sd + tpch_gen.r(ok * 8 + ln, {_s(54)}, 1, 30)::int AS rd) AS b
"""

# Orders with index first..last; status and total price summarise their line items (load the
# line items first). Customers whose key is a multiple of 3 never order.
ORDERS_SQL = f"""
INSERT INTO orders
SELECT ok, ck,
       CASE WHEN li.n_open = li.n THEN 'O' WHEN li.n_open = 0 THEN 'F' ELSE 'P' END,
       li.total,
       DATE '{START_DATE}' + tpch_gen.r(ok, {_s(50)}, 0, {ORDER_DAYS})::int,
       tpch_gen.pick(ok, {_s(55)}, {_arr(PRIORITIES)}),
       'Clerk#' || lpad(tpch_gen.r(ok, {_s(56)}, 1, greatest(%(orders)s / 1000, 1))::text, 9, '0'),
       0,
       left(tpch_gen.text_of(ok, {_s(57)}, 6, tpch_gen.words()), 79)
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS oi,
     LATERAL (SELECT tpch_gen.orderkey(oi) AS ok) AS o,
     LATERAL (SELECT tpch_gen.r(ok, {_s(58)}, 1, %(customers)s)::int AS c) AS c0,
     LATERAL (SELECT CASE WHEN mod(c, 3) <> 0 THEN c WHEN c < %(customers)s THEN c + 1 ELSE 1 END
              AS ck) AS c1,
     LATERAL (SELECT count(*) AS n, count(*) FILTER (WHERE l_linestatus = 'O') AS n_open,
                     round(sum(l_extendedprice * (1 + l_tax) * (1 - l_discount)), 2) AS total
              FROM lineitem WHERE l_orderkey = ok) AS li
"""


def orderkey(index: int) -> int:
    """The order key of the ``index``-th order (1-based; 8 of every 32 keys are used)."""
    return ((index - 1) // 8) * 32 + (index - 1) % 8 + 1


def add_orders(
    conn: psycopg.Connection[Any], sizes: Sizes, first: int, last: int, seed: int
) -> tuple[int, int]:
    """Generate the orders with index ``first..last`` and their line items (both tables).
    Used by the initial load and by the mutation cycles' new orders. Returns the numbers of
    orders and line items inserted."""
    params = _params(seed, sizes, first=first, last=last)
    lines = conn.execute(LINEITEM_SQL, params).rowcount
    orders = conn.execute(ORDERS_SQL, params).rowcount
    return orders, lines


def generate(conn: psycopg.Connection[Any], scale: float, seed: int = 1) -> Sizes:
    """Fill the (empty) tables of ``schema.sql`` at scale factor ``scale``."""
    sizes = Sizes.at(scale)
    install_helpers(conn)
    params = _params(seed, sizes)
    conn.execute(REGION_SQL)
    conn.execute(NATION_SQL)
    conn.execute(SUPPLIER_SQL, params)
    conn.execute(CUSTOMER_SQL, params)
    conn.execute(PART_SQL, params)
    conn.execute(PARTSUPP_SQL, params)
    add_orders(conn, sizes, 1, sizes.orders, seed)
    return sizes


#: Column statistics ANALYZE's sample gets wrong, set as a DBA would. ``lineitem`` is stored in
#: ``l_orderkey`` order with 1 to 7 lines per order (4 on average); sampling 30,000 of its rows,
#: ANALYZE estimated 400,000 to 420,000 distinct order keys at SF 1 (there are 1,500,000), so the
#: planner expected about 15 line items per order. A differential refresh then hash-joined a
#: change window of orders with every line item of the Saudi suppliers (Q21: 164,000 rows, about
#: a second) instead of probing the line items of each changed order (50 ms). The mutations delete
#: and insert whole orders and never change ``l_orderkey``, so the ratio holds at every scale
#: factor and after every cycle.
N_DISTINCT = {("lineitem", "l_orderkey"): -0.25}


def analyze(conn: psycopg.Connection[Any]) -> None:
    for (table, column), n_distinct in N_DISTINCT.items():
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET (n_distinct = {n_distinct})")
    for table in ("region", "nation", "supplier", "customer", "part", "partsupp", "orders"):
        conn.execute(f"VACUUM (ANALYZE) {table}")
    conn.execute("VACUUM (ANALYZE) lineitem")


def load(conn: psycopg.Connection[Any], scale: float, seed: int = 1) -> Sizes:
    """Create the schema, generate the data at ``scale`` and analyse it (autocommit ``conn``)."""
    create_schema(conn)
    sizes = generate(conn, scale, seed)
    analyze(conn)
    return sizes


def table_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for table in (
        "region",
        "nation",
        "supplier",
        "customer",
        "part",
        "partsupp",
        "orders",
        "lineitem",
    ):
        out[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
    return out
