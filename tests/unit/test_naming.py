"""Stable names (DESIGN §2.7): published test vectors."""

import pytest

from dbt_pgtrickle.naming import buffer_table, fnv1a_64, stable_name

# Reference FNV-1a 64-bit vectors (from the FNV specification's test suite).
FNV_VECTORS = [("", "cbf29ce484222325"), ("a", "af63dc4c8601ec8c"), ("foobar", "85944171f73967e8")]

# Our published vectors (docs/internals.md): "schema.table" as stored in the catalog, unquoted.
STABLE_VECTORS = [
    ("public", "orders", "c74da4a21f58f903"),
    ("public", "lineitem", "48f811481e8630b7"),
    ("Sales Data", 'Ördér "x"', "834110c55478ea98"),
]


@pytest.mark.parametrize(("text", "expected"), FNV_VECTORS)
def test_fnv1a_64_reference_vectors(text: str, expected: str) -> None:
    assert f"{fnv1a_64(text.encode()):016x}" == expected


@pytest.mark.parametrize(("schema", "table", "expected"), STABLE_VECTORS)
def test_stable_name_vectors(schema: str, table: str, expected: str) -> None:
    assert stable_name(schema, table) == expected
    assert buffer_table(expected) == f"changes_{expected}"


def test_stable_name_is_16_lower_hex_and_schema_sensitive() -> None:
    a, b = stable_name("public", "t"), stable_name("other", "t")
    assert a != b
    for name in (a, b):
        assert len(name) == 16 and name == name.lower()
        int(name, 16)
