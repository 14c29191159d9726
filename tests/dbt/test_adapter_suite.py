"""dbt's adapter test suite (dbt-tests-adapter) for profile type ``pgtrickle``: the adapter
inherits the postgres adapter, so every ordinary materialization, seed, snapshot, test and
``docs generate`` must behave exactly as with ``type: postgres``.

A selection that covers each kind of dbt work once (about a minute: every class runs several
dbt commands): materializations, seeds, ephemeral models, singular and generic tests,
incremental models with schema changes, snapshots, aliases, the relation cache, persist_docs,
contracts and constraints, docs generate, adapter methods and connection validation.
"""

from __future__ import annotations

import pytest
from dbt.tests.adapter.aliases.test_aliases import BaseAliases
from dbt.tests.adapter.basic.test_adapter_methods import BaseAdapterMethod
from dbt.tests.adapter.basic.test_base import BaseSimpleMaterializations
from dbt.tests.adapter.basic.test_docs_generate import BaseDocsGenerate
from dbt.tests.adapter.basic.test_empty import BaseEmpty
from dbt.tests.adapter.basic.test_ephemeral import BaseEphemeral
from dbt.tests.adapter.basic.test_generic_tests import BaseGenericTests
from dbt.tests.adapter.basic.test_incremental import BaseIncremental
from dbt.tests.adapter.basic.test_singular_tests import BaseSingularTests
from dbt.tests.adapter.basic.test_snapshot_check_cols import BaseSnapshotCheckCols
from dbt.tests.adapter.basic.test_snapshot_timestamp import BaseSnapshotTimestamp
from dbt.tests.adapter.basic.test_validate_connection import BaseValidateConnection
from dbt.tests.adapter.caching.test_caching import BaseCachingLowercaseModel
from dbt.tests.adapter.constraints.test_constraints import (
    BaseConstraintsRollback,
    BaseConstraintsRuntimeDdlEnforcement,
    BaseTableConstraintsColumnsEqual,
)
from dbt.tests.adapter.incremental.test_incremental_on_schema_change import (
    BaseIncrementalOnSchemaChange,
)
from dbt.tests.adapter.persist_docs.test_persist_docs import BasePersistDocs

pytestmark = pytest.mark.dbt


class TestSimpleMaterializationsPgTrickle(BaseSimpleMaterializations):
    pass


class TestSingularTestsPgTrickle(BaseSingularTests):
    pass


class TestGenericTestsPgTrickle(BaseGenericTests):
    pass


class TestEmptyPgTrickle(BaseEmpty):
    pass


class TestEphemeralPgTrickle(BaseEphemeral):
    pass


class TestIncrementalPgTrickle(BaseIncremental):
    pass


class TestSnapshotCheckColsPgTrickle(BaseSnapshotCheckCols):
    pass


class TestSnapshotTimestampPgTrickle(BaseSnapshotTimestamp):
    pass


class TestAdapterMethodsPgTrickle(BaseAdapterMethod):
    pass


class TestValidateConnectionPgTrickle(BaseValidateConnection):
    pass


class TestDocsGeneratePgTrickle(BaseDocsGenerate):
    pass


class TestPersistDocsPgTrickle(BasePersistDocs):
    pass


class TestTableConstraintsColumnsEqualPgTrickle(BaseTableConstraintsColumnsEqual):
    pass


class TestConstraintsRuntimeDdlEnforcementPgTrickle(BaseConstraintsRuntimeDdlEnforcement):
    pass


class TestConstraintsRollbackPgTrickle(BaseConstraintsRollback):
    pass


class TestIncrementalOnSchemaChangePgTrickle(BaseIncrementalOnSchemaChange):
    pass


class TestAliasesPgTrickle(BaseAliases):
    pass


class TestCachingPgTrickle(BaseCachingLowercaseModel):
    pass
