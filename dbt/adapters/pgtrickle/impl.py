"""The pgtrickle adapter: the postgres adapter, plus the stream-table runtime for Jinja.

Every ``pgtrickle_*`` method below is ``@available`` to macros. Methods that change stream tables
call the runtime (:mod:`dbt_pgtrickle`) on a psycopg 3 connection of their own, opened from the
profile's credentials, and the runtime runs and commits its own transactions. Before such a call
the dbt connection of the calling thread commits what it has open
(:meth:`PgTrickleAdapter.pgtrickle_finish_dbt_transaction`): a lock held by an uncommitted dbt
statement (say, dropping the view a stream table replaces) would otherwise block the runtime's
connection while dbt waits for the runtime.

Runtime errors become dbt errors naming the relation, so ``dbt run`` prints them as it prints a
database error.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from dbt.adapters.base import available
from dbt.adapters.base.relation import BaseRelation
from dbt.adapters.postgres.impl import PostgresAdapter
from dbt_common.exceptions import CompilationError, DbtDatabaseError, DbtRuntimeError
from psycopg import sql
from psycopg.rows import dict_row

import dbt_pgtrickle
from dbt.adapters.pgtrickle.connections import PgTrickleConnectionManager
from dbt.adapters.pgtrickle.relation_configs import (
    INDEX_MARKER,
    CatalogState,
    ConfigChange,
    StreamTableConfig,
    clean_query,
    config_changes,
)
from dbt.adapters.pgtrickle.reports import Report
from dbt_pgtrickle.errors import is_retryable
from dbt_pgtrickle.naming import trigger_name

T = TypeVar("T")

_CAPTURE_EVENTS = ("ins", "upd", "del", "trunc")
_ATTEMPTS = 3

STATUS_COLUMNS = [
    "schema",
    "name",
    "requested_mode",
    "effective_mode",
    "status",
    "schedule",
    "last_refresh_at",
    "staleness",
    "last_action",
    "last_refresh_status",
    "consecutive_failures",
    "last_error",
    "fallback_reason",
]
REFRESH_COLUMNS = [
    "name",
    "action",
    "rows_in",
    "rows_inserted",
    "rows_updated",
    "rows_deleted",
    "duration_ms",
    "fallback_reason",
]
SCHEDULER_COLUMNS = [
    "holder",
    "pid",
    "host",
    "state",
    "alive",
    "started_at",
    "last_tick_at",
    "last_beat_at",
    "poll_interval_ms",
    "metrics_port",
    "leases",
]
CAPTURE_COLUMNS = [
    "source",
    "stable_name",
    "cdc_mode",
    "triggers",
    "pending_rows",
    "consumers",
    "healthy",
    "problem",
]


def _refresh_row(result: Any) -> dict[str, Any]:
    row = {c: getattr(result, c, None) for c in REFRESH_COLUMNS}
    row["duration_ms"] = round(float(row["duration_ms"] or 0.0), 1)
    return row


def runtime_name(schema: str, name: str) -> str:
    """``"schema"."name"`` as the runtime parses names (quotes keep case and dots)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, name))


class PgTrickleAdapter(PostgresAdapter):
    ConnectionManager = PgTrickleConnectionManager

    @classmethod
    def type(cls) -> str:
        return "pgtrickle"

    # -- plumbing --------------------------------------------------------------------------

    def _conninfo(self) -> str:
        conninfo: str = self.config.credentials.runtime_conninfo()
        return conninfo

    @contextmanager
    def _runtime(self, what: str) -> Iterator[str]:
        """The runtime's connection string, with its errors turned into dbt errors."""
        try:
            yield self._conninfo()
        except dbt_pgtrickle.ConfigError as exc:
            raise CompilationError(f"{what}: {exc}") from None
        except dbt_pgtrickle.PgTrickleError as exc:
            raise DbtRuntimeError(f"{what}: {exc}") from None
        except psycopg.Error as exc:
            raise DbtDatabaseError(f"{what}: {str(exc).strip()}") from None

    def _call(self, what: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a runtime function with this profile's connection string; retried when it fails
        with a transient SQLSTATE (deadlock, serialization failure, lock timeout): dbt's threads
        create stream tables on shared sources at the same time, and each runtime call is one
        transaction that leaves nothing behind when it fails."""
        for attempt in range(1, _ATTEMPTS + 1):
            with self._runtime(what) as conninfo:
                try:
                    return func(conninfo, *args, **kwargs)
                except dbt_pgtrickle.PgTrickleError as exc:
                    if attempt == _ATTEMPTS or not is_retryable(exc.sqlstate):
                        raise
            time.sleep(0.2 * attempt + random.random() * 0.3)
        raise AssertionError("unreachable")

    def _ensure_installed(self) -> None:
        """Create or upgrade the catalog (idempotent; the runtime serialises concurrent calls)."""
        self._call("installing the pgtrickle catalog", dbt_pgtrickle.install)

    def _query(self, query: sql.Composed | str, params: Any = None) -> list[dict[str, Any]]:
        """Read rows on a runtime connection (catalog reads only; never writes)."""
        with (
            self._runtime("reading the pgtrickle catalog") as conninfo,
            psycopg.connect(conninfo, autocommit=True) as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []

    def _catalog_installed(self) -> bool:
        rows = self._query("SELECT to_regclass('pgtrickle.pgt_stream_tables') IS NOT NULL AS ok")
        return bool(rows[0]["ok"])

    @staticmethod
    def _name(relation: BaseRelation | str) -> str:
        if isinstance(relation, str):
            return relation
        return runtime_name(str(relation.schema), str(relation.identifier))

    # -- transactions ----------------------------------------------------------------------

    @available
    def pgtrickle_finish_dbt_transaction(self) -> str:
        """Commit whatever this thread's dbt connection has open (dbt's own transaction, or one
        psycopg2 opened implicitly), so the runtime's connection never waits for it."""
        connection = self.connections.get_if_exists()
        if connection is None or connection.state != "open":
            return ""
        if connection.transaction_open:
            self.connections.commit()
        handle = connection.handle
        status = getattr(handle, "get_transaction_status", None)
        if status is not None and status() != 0:  # psycopg2: 0 = idle
            handle.commit()
        return ""

    # -- configuration ---------------------------------------------------------------------

    @available
    def pgtrickle_config(self, model_name: str, raw: dict[str, Any]) -> StreamTableConfig:
        """The validated stream-table config of a model (errors name the key and the values)."""
        return StreamTableConfig.from_model(model_name, dict(raw))

    @available
    def pgtrickle_stream_table(self, relation: BaseRelation) -> dict[str, Any] | None:
        """The catalog's view of the stream table at ``relation``, or ``None`` if there is none."""
        state = self._state(relation)
        return state.as_dict() if state else None

    def _state(self, relation: BaseRelation) -> CatalogState | None:
        if not self._catalog_installed():
            return None
        rows = self._query(
            "SELECT pgt_schema, pgt_name, query_hash, original_query, schedule, requested_mode, "
            "effective_mode, status, cdc_mode, placement, options, distribution_column, "
            "EXISTS (SELECT FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_change_tracking "
            "t USING (source_stable_name) WHERE d.pgt_id = pgt_stream_tables.pgt_id "
            "AND t.cdc_mode = 'citus_slot') AS citus_sources, "
            "ARRAY(SELECT i.relname::text FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "      WHERE x.indrelid = to_regclass(format('%%I.%%I', pgt_schema, pgt_name)) "
            "        AND strpos(i.relname, %s) > 0 ORDER BY 1) AS model_indexes "
            "FROM pgtrickle.pgt_stream_tables WHERE pgt_schema = %s AND pgt_name = %s",
            (INDEX_MARKER, relation.schema, relation.identifier),
        )
        if not rows:
            return None
        r = rows[0]
        return CatalogState(
            schema=r["pgt_schema"],
            name=r["pgt_name"],
            query_hash=r["query_hash"],
            original_query=r["original_query"],
            schedule=r["schedule"],
            requested_mode=r["requested_mode"],
            effective_mode=r["effective_mode"],
            status=r["status"],
            cdc_mode=r["cdc_mode"],
            placement=r["placement"],
            options=dict(r["options"] or {}),
            model_indexes=tuple(r["model_indexes"] or ()),
            distribution_column=r["distribution_column"],
            citus_sources=bool(r["citus_sources"]),
        )

    @available
    def pgtrickle_config_changes(
        self, relation: BaseRelation, compiled_sql: str, config: StreamTableConfig
    ) -> list[ConfigChange]:
        """How the model differs from its registered stream table (empty: nothing to do)."""
        state = self._state(relation)
        if state is None:
            raise DbtRuntimeError(f"{relation} is not a stream table")
        return config_changes(state, compiled_sql, config)

    @available
    def pgtrickle_readers(self, relation: BaseRelation) -> list[str]:
        """Stream tables that read ``relation`` (they must go before it can be dropped)."""
        if not self._catalog_installed():
            return []
        rows = self._query(
            "SELECT DISTINCT st.pgt_schema || '.' || st.pgt_name AS name "
            "FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) "
            "WHERE d.source_schema = %s AND d.source_name = %s ORDER BY 1",
            (relation.schema, relation.identifier),
        )
        return [r["name"] for r in rows]

    # -- the materialization's steps -------------------------------------------------------

    @available
    def pgtrickle_create(
        self, relation: BaseRelation, compiled_sql: str, config: StreamTableConfig
    ) -> dict[str, Any]:
        """Create (and unless ``initialize: false`` populate) the stream table."""
        self.pgtrickle_finish_dbt_transaction()
        self._ensure_installed()
        self._check_placement(relation, config)
        row = self._call(
            f"creating stream table {relation}",
            dbt_pgtrickle.create_stream_table,
            self._name(relation),
            clean_query(compiled_sql),
            **config.runtime_options(),
        )
        self.cache_added(relation.incorporate(type="table"))
        return dict(row)

    def _check_placement(self, relation: BaseRelation, config: StreamTableConfig) -> None:
        if config.placement not in ("reference", "distributed"):
            return
        rows = self._query("SELECT count(*) AS n FROM pg_extension WHERE extname = 'citus'")
        if not rows[0]["n"]:
            raise CompilationError(
                f"stream_table model {relation}: placement {config.placement!r} needs the Citus "
                "extension in the target database; use placement 'auto' or 'local' here"
            )

    @available
    def pgtrickle_alter(
        self,
        relation: BaseRelation,
        compiled_sql: str,
        config: StreamTableConfig,
        changes: list[ConfigChange],
    ) -> dict[str, Any]:
        """Apply the ``alter`` changes (query, schedule, refresh mode) in place."""
        wanted: dict[str, Any] = {}
        for change in changes:
            if change.key == "query":
                wanted["query"] = clean_query(compiled_sql)
            elif change.key == "schedule":
                wanted["schedule"] = config.schedule
            elif change.key == "refresh_mode":
                wanted["refresh_mode"] = config.refresh_mode
        if not wanted:
            return {}
        self.pgtrickle_finish_dbt_transaction()
        row = self._call(
            f"altering stream table {relation}",
            dbt_pgtrickle.alter_stream_table,
            self._name(relation),
            **wanted,
        )
        return dict(row)

    @available
    def pgtrickle_sync_indexes(
        self, relation: BaseRelation, config: StreamTableConfig
    ) -> list[str]:
        """Create the configured indexes that are missing and drop model-managed ones no longer
        configured. Returns the statements run."""
        identifier = str(relation.identifier)
        target = sql.Identifier(str(relation.schema), identifier)
        wanted = {spec.name(identifier): spec for spec in config.indexes}
        existing = set(self._state(relation).model_indexes)  # type: ignore[union-attr]
        statements: list[sql.Composed] = []
        for name in sorted(existing - set(wanted)):
            statements.append(
                sql.SQL("DROP INDEX IF EXISTS {}").format(
                    sql.Identifier(str(relation.schema), name)
                )
            )
        for name, spec in sorted(wanted.items()):
            if name in existing:
                continue
            statements.append(
                sql.SQL("CREATE {}INDEX IF NOT EXISTS {} ON {}{} ({})").format(
                    sql.SQL("UNIQUE " if spec.unique else ""),
                    sql.Identifier(name),
                    target,
                    sql.SQL(f" USING {spec.type}" if spec.type else ""),
                    sql.SQL(", ").join(sql.SQL(c) for c in spec.columns),
                )
            )
        if not statements:
            return []
        self.pgtrickle_finish_dbt_transaction()
        with (
            self._runtime(f"indexes of {relation}") as conninfo,
            psycopg.connect(conninfo, autocommit=True) as conn,
            conn.transaction(),
        ):
            texts = [s.as_string(conn) for s in statements]
            for stmt in statements:
                conn.execute(stmt)
        return texts

    @available
    def pgtrickle_refresh(self, relation: BaseRelation | str, full: bool = False) -> dict[str, Any]:
        """Refresh one stream table now (``full``: recompute)."""
        self.pgtrickle_finish_dbt_transaction()
        result = self._call(
            f"refreshing stream table {relation}",
            dbt_pgtrickle.refresh_stream_table,
            self._name(relation),
            full=full,
            initiated_by="dbt",
        )
        return _refresh_row(result)

    @available
    def pgtrickle_drop(self, relation: BaseRelation | str) -> str:
        """Drop a stream table with its catalog rows and the capture no one else uses."""
        self.pgtrickle_finish_dbt_transaction()
        self._call(
            f"dropping stream table {relation}",
            dbt_pgtrickle.drop_stream_table,
            self._name(relation),
        )
        if not isinstance(relation, str):
            self.cache_dropped(relation)
        return ""

    @available
    def pgtrickle_drop_in_schema(self, schema_relation: BaseRelation) -> list[str]:
        """Drop every stream table in a schema, readers first (before the schema is dropped,
        so no catalog row outlives its table)."""
        if not self._catalog_installed():
            return []
        schema = str(schema_relation.schema)
        with self._runtime(f"listing the stream tables of schema {schema}") as conninfo:
            order = dbt_pgtrickle.refresh_order(conninfo)
        doomed = [(s, n) for s, n in reversed(order) if s == schema]
        for s, n in doomed:
            self.pgtrickle_drop(runtime_name(s, n))
        return [f"{s}.{n}" for s, n in doomed]

    @available
    def pgtrickle_constraint_statements(
        self,
        relation: BaseRelation,
        columns: dict[str, dict[str, Any]] | None,
        constraints: list[dict[str, Any]] | None,
    ) -> list[str]:
        """``ALTER TABLE`` statements adding a contract's constraints to a built stream table
        (the runtime creates the table from the query; constraints come after)."""
        target = relation.render()
        model_level: list[dict[str, Any]] = list(constraints or [])
        statements = []
        for name, column in (columns or {}).items():
            quoted = self.quote(name) if column.get("quote") else name
            for constraint in column.get("constraints") or []:
                if constraint.get("type") == "not_null":
                    statements.append(f"alter table {target} alter column {quoted} set not null")
                elif constraint.get("type") != "custom":
                    model_level.append({**constraint, "columns": [quoted]})
        statements += [
            f"alter table {target} add {ddl}"
            for ddl in self.render_raw_model_constraints(model_level)
        ]
        return statements

    # -- tests -----------------------------------------------------------------------------

    @available
    def pgtrickle_visible_columns(self, relation: BaseRelation) -> list[str]:
        """Columns of a stream table without the hidden ``__pgt_*`` ones, in table order."""
        rows = self._query(
            "SELECT attname::text AS name FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
            "AND left(attname, 6) <> '__pgt_' ORDER BY attnum",
            (self._name(relation),),
        )
        return [r["name"] for r in rows]

    # -- operations ------------------------------------------------------------------------

    @available
    def pgtrickle_status_report(self) -> Report:
        if not self._catalog_installed():
            return Report.of("stream_tables", STATUS_COLUMNS, [], scheduler="not installed")
        rows = self._call("pgtrickle_status", dbt_pgtrickle.status)
        columns = STATUS_COLUMNS + [k for k in (rows[0] if rows else {}) if k not in STATUS_COLUMNS]
        return Report.of("stream_tables", columns, rows, scheduler=self._scheduler_state())

    def _scheduler_state(self) -> Any:
        """The live schedulers serving this database (their holder and last tick), or a
        sentence saying that none is running."""
        rows = self._call("scheduler status", dbt_pgtrickle.scheduler_status)
        alive = [
            {k: r.get(k) for k in ("holder", "pid", "host", "last_tick_at")}
            for r in rows
            if r.get("alive")
        ]
        return (
            alive
            or "no scheduler is running (dbt run-operation pgtrickle_scheduler --args '{action: start}')"
        )

    @available
    def pgtrickle_refresh_report(self, names: list[str], full: bool = False) -> Report:
        rows = [self.pgtrickle_refresh(name, full=full) for name in names]
        return Report.of("refreshed", REFRESH_COLUMNS, rows)

    @available
    def pgtrickle_refresh_all_report(self, full: bool = False) -> Report:
        self.pgtrickle_finish_dbt_transaction()
        results = self._call(
            "pgtrickle_refresh_all", dbt_pgtrickle.refresh_all, full=full, initiated_by="dbt"
        )
        rows = [_refresh_row(r) for r in results]
        return Report.of("refreshed", REFRESH_COLUMNS, rows)

    @available
    def pgtrickle_explain_report(self, relation: BaseRelation | str) -> Report:
        name = self._name(relation)
        with self._runtime(f"explaining {relation}") as conninfo:
            data = dbt_pgtrickle.explain_stream_table(conninfo, name, format="json")
            text = dbt_pgtrickle.explain_stream_table(conninfo, name, format="text")
        operators = [dict(o) for o in data.get("operators", [])]
        columns = sorted({k for o in operators for k in o}, key=lambda k: (k != "operator", k))
        report = Report.of(
            "operators", columns, operators, **{k: v for k, v in data.items() if k != "operators"}
        )
        report.text = text
        return report

    @available
    def pgtrickle_drop_all_report(self, names: list[str] | None = None) -> Report:
        """Drop the named stream tables (``None``: every one in the database), readers first."""
        if not self._catalog_installed():
            return Report.of("dropped", ["name"], [])
        with self._runtime("pgtrickle_drop_all") as conninfo:
            order = dbt_pgtrickle.refresh_order(conninfo)
        wanted = None if names is None else {n.lower() for n in names}
        dropped = []
        for schema, name in reversed(order):
            if wanted is not None and f"{schema}.{name}".lower() not in wanted:
                continue
            self.pgtrickle_drop(runtime_name(schema, name))
            dropped.append({"name": f"{schema}.{name}"})
        return Report.of("dropped", ["name"], dropped)

    @available
    def pgtrickle_sla_report(self, window_hours: int | None = None) -> Report:
        """Per stream table: p50/p99 refresh duration, freshness lag, error rate and error
        budget left over ``window_hours`` (default: setting ``sla_window_hours``)."""
        self._ensure_installed()
        hours = None if window_hours is None else int(window_hours)
        rows = self._call("pgtrickle_sla_summary", dbt_pgtrickle.sla_summary, window_hours=hours)
        columns = list(rows[0]) if rows else ["name"]
        return Report.of("sla", columns, rows, window_hours=hours)

    @available
    def pgtrickle_scheduler_report(self, action: str) -> Report:
        """Start or stop the background scheduler daemon of this database (``pgtrickle
        scheduler start|stop``), then list the schedulers serving it."""
        from dbt_pgtrickle.scheduler import process

        verb = str(action or "status").lower()
        if verb not in ("start", "stop", "status"):
            raise CompilationError(
                f"pgtrickle_scheduler: invalid action {action!r}; allowed: start, stop, status"
            )
        self._ensure_installed()
        outcome: dict[str, Any] = {}
        if verb == "start":
            pid, files = self._call("pgtrickle_scheduler start", process.start)
            outcome = {"started": pid, "log_file": str(files.log_file)}
        elif verb == "stop":
            stopped = self._call("pgtrickle_scheduler stop", process.stop)
            outcome = {"stopped": stopped if stopped is not None else "none was running"}
        rows = self._call("pgtrickle_scheduler status", dbt_pgtrickle.scheduler_status)
        return Report.of("schedulers", SCHEDULER_COLUMNS, rows, **outcome)

    @available
    def pgtrickle_capture_report(self, relation: BaseRelation | None = None) -> Report:
        """Change capture of every captured source (or of the sources of one stream table):
        are its triggers in place, how many change rows wait, who reads it."""
        if not self._catalog_installed():
            return Report.of("captured_sources", CAPTURE_COLUMNS, [])
        where, params = "", ()
        if relation is not None:
            where = (
                "WHERE t.source_stable_name IN (SELECT d.source_stable_name FROM "
                "pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) "
                "WHERE st.pgt_schema = %s AND st.pgt_name = %s)"
            )
            params = (relation.schema, relation.identifier)  # type: ignore[assignment]
        sources = self._query(
            "SELECT t.source_schema, t.source_name, t.source_stable_name, t.cdc_mode, "
            "t.buffer_table, to_regclass(format('%%I.%%I', t.source_schema, t.source_name)) "
            "IS NOT NULL AS source_exists, to_regclass(t.buffer_table) IS NOT NULL AS "
            "buffer_exists, (SELECT string_agg(st.pgt_schema || '.' || st.pgt_name, ', ' "
            "ORDER BY 1) FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables st "
            "USING (pgt_id) WHERE d.source_stable_name = t.source_stable_name) AS consumers "
            f"FROM pgtrickle.pgt_change_tracking t {where} ORDER BY 1, 2",
            params,
        )
        rows = [self._capture_row(s) for s in sources]
        return Report.of("captured_sources", CAPTURE_COLUMNS, rows)

    def _capture_row(self, s: dict[str, Any]) -> dict[str, Any]:
        row = {
            "source": f"{s['source_schema']}.{s['source_name']}",
            "stable_name": s["source_stable_name"],
            "cdc_mode": s["cdc_mode"],
            "consumers": s["consumers"],
            "triggers": None,
            "pending_rows": None,
            "healthy": True,
            "problem": None,
        }
        if s["cdc_mode"] != "trigger":
            return row  # not captured (a view, a foreign table): refreshed in full
        if not s["source_exists"]:
            row.update(healthy=False, problem="the source table no longer exists")
            return row
        names = [trigger_name(s["source_stable_name"], e) for e in _CAPTURE_EVENTS]
        found = self._query(
            "SELECT count(*) AS n FROM pg_trigger WHERE tgrelid = to_regclass(%s) "
            "AND tgname = ANY(%s) AND tgenabled <> 'D'",
            (runtime_name(s["source_schema"], s["source_name"]), names),
        )[0]["n"]
        row["triggers"] = f"{found}/{len(names)}"
        if found < len(names):
            row.update(
                healthy=False,
                problem="capture triggers are missing or disabled (was the source dropped and "
                "created again, e.g. by a table model or a full-refresh seed?)",
            )
        if not s["buffer_exists"]:
            row.update(healthy=False, problem="the change buffer is missing")
            return row
        row["pending_rows"] = self._query(
            sql.SQL("SELECT count(*) AS n FROM {}").format(
                sql.Identifier(*str(s["buffer_table"]).split(".", 1))
            )
        )[0]["n"]
        return row
