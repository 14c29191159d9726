"""The dbt adapter plugin ``type: pgtrickle``: the postgres adapter plus stream tables."""

from dbt.adapters.base import AdapterPlugin

from dbt.adapters.pgtrickle.connections import PgTrickleCredentials
from dbt.adapters.pgtrickle.impl import PgTrickleAdapter
from dbt.include import pgtrickle

Plugin = AdapterPlugin(
    adapter=PgTrickleAdapter,  # type: ignore[arg-type]
    credentials=PgTrickleCredentials,
    include_path=pgtrickle.PACKAGE_PATH,
    dependencies=["postgres"],
)
