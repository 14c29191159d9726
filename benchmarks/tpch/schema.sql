-- TPC-H-shaped schema for the dbt-pgtrickle correctness corpus and refresh benchmark.
-- Eight tables with primary keys, plus indexes on the columns the 22 queries join and filter on
-- (a differential refresh drives its delta through the other inputs' indexes).
-- No foreign-key constraints: the mutation cycles delete orders with their line items in one
-- transaction, and the refresh engine does not rely on declared foreign keys.

CREATE TABLE region (
    r_regionkey integer PRIMARY KEY,
    r_name      varchar(25) NOT NULL,
    r_comment   varchar(152)
);

CREATE TABLE nation (
    n_nationkey integer PRIMARY KEY,
    n_name      varchar(25) NOT NULL,
    n_regionkey integer NOT NULL,
    n_comment   varchar(152)
);
CREATE INDEX nation_regionkey_idx ON nation (n_regionkey);

CREATE TABLE supplier (
    s_suppkey   integer PRIMARY KEY,
    s_name      varchar(25) NOT NULL,
    s_address   varchar(40) NOT NULL,
    s_nationkey integer NOT NULL,
    s_phone     varchar(15) NOT NULL,
    s_acctbal   numeric(15, 2) NOT NULL,
    s_comment   varchar(101) NOT NULL
);
CREATE INDEX supplier_nationkey_idx ON supplier (s_nationkey);

CREATE TABLE customer (
    c_custkey    integer PRIMARY KEY,
    c_name       varchar(25) NOT NULL,
    c_address    varchar(40) NOT NULL,
    c_nationkey  integer NOT NULL,
    c_phone      varchar(15) NOT NULL,
    c_acctbal    numeric(15, 2) NOT NULL,
    c_mktsegment varchar(10) NOT NULL,
    c_comment    varchar(117) NOT NULL
);
CREATE INDEX customer_nationkey_idx ON customer (c_nationkey);

CREATE TABLE part (
    p_partkey     integer PRIMARY KEY,
    p_name        varchar(55) NOT NULL,
    p_mfgr        varchar(25) NOT NULL,
    p_brand       varchar(10) NOT NULL,
    p_type        varchar(25) NOT NULL,
    p_size        integer NOT NULL,
    p_container   varchar(10) NOT NULL,
    p_retailprice numeric(15, 2) NOT NULL,
    p_comment     varchar(23) NOT NULL
);

CREATE TABLE partsupp (
    ps_partkey    integer NOT NULL,
    ps_suppkey    integer NOT NULL,
    ps_availqty   integer NOT NULL,
    ps_supplycost numeric(15, 2) NOT NULL,
    ps_comment    varchar(199) NOT NULL,
    PRIMARY KEY (ps_partkey, ps_suppkey)
);
CREATE INDEX partsupp_suppkey_idx ON partsupp (ps_suppkey);

CREATE TABLE orders (
    o_orderkey      bigint PRIMARY KEY,
    o_custkey       integer NOT NULL,
    o_orderstatus   char(1) NOT NULL,
    o_totalprice    numeric(15, 2) NOT NULL,
    o_orderdate     date NOT NULL,
    o_orderpriority varchar(15) NOT NULL,
    o_clerk         varchar(15) NOT NULL,
    o_shippriority  integer NOT NULL,
    o_comment       varchar(79) NOT NULL
);
CREATE INDEX orders_custkey_idx ON orders (o_custkey);
CREATE INDEX orders_orderdate_idx ON orders (o_orderdate);

CREATE TABLE lineitem (
    l_orderkey      bigint NOT NULL,
    l_partkey       integer NOT NULL,
    l_suppkey       integer NOT NULL,
    l_linenumber    integer NOT NULL,
    l_quantity      numeric(15, 2) NOT NULL,
    l_extendedprice numeric(15, 2) NOT NULL,
    l_discount      numeric(15, 2) NOT NULL,
    l_tax           numeric(15, 2) NOT NULL,
    l_returnflag    char(1) NOT NULL,
    l_linestatus    char(1) NOT NULL,
    l_shipdate      date NOT NULL,
    l_commitdate    date NOT NULL,
    l_receiptdate   date NOT NULL,
    l_shipinstruct  varchar(25) NOT NULL,
    l_shipmode      varchar(10) NOT NULL,
    l_comment       varchar(44) NOT NULL,
    PRIMARY KEY (l_orderkey, l_linenumber)
);
CREATE INDEX lineitem_partkey_idx ON lineitem (l_partkey);
CREATE INDEX lineitem_suppkey_idx ON lineitem (l_suppkey);
CREATE INDEX lineitem_part_supp_idx ON lineitem (l_partkey, l_suppkey);
CREATE INDEX lineitem_shipdate_idx ON lineitem (l_shipdate);
