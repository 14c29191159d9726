"""Stable names (DESIGN §2.7) are the same on every node: the same table created on two servers,
with different OIDs, gets the same buffer, slot and trigger names."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

import dbt_pgtrickle as pgt
from dbt_pgtrickle.naming import buffer_table, replication_slot, trigger_name


def test_same_table_on_two_servers_same_names(citus_cluster) -> None:
    found = []
    name = f"pgt_names_{uuid.uuid4().hex[:8]}"
    for i, node in enumerate(citus_cluster.nodes[:2]):
        with psycopg.connect(node.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with psycopg.connect(node.dsn(name), autocommit=True) as c:
            pgt.install(c)
            for k in range(3 * i + 1):  # shift the OIDs on one server
                c.execute(f"CREATE TABLE filler_{k} (x int)")
            c.execute('CREATE SCHEMA "Sales Ä"')
            c.execute('CREATE TABLE "Sales Ä"."Orders ""x""" (id int PRIMARY KEY)')
            oid, stable = c.execute(
                'SELECT \'"Sales Ä"."Orders ""x"""\'::regclass::oid, '
                "pgtrickle.stable_name('Sales Ä', 'Orders \"x\"')"
            ).fetchone()  # type: ignore[misc]
            found.append((oid, stable))
        with psycopg.connect(node.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    (oid_a, name_a), (oid_b, name_b) = found
    assert oid_a != oid_b
    assert name_a == name_b == pgt.stable_name("Sales Ä", 'Orders "x"')
    assert buffer_table(name_a) == f"changes_{name_a}"
    assert replication_slot(name_a) == f"pgtrickle_{name_a}"
    assert trigger_name(name_a, "ins") == f"pgtrickle_cdc_ins_{name_a}"
    assert len(replication_slot(name_a)) <= 63
