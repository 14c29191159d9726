"""The configuration of a ``stream_table`` model, validated, and its difference from the catalog.

:class:`StreamTableConfig` is what a model asks for; :class:`CatalogState` is what the database
has (one row of ``pgtrickle.pgt_stream_tables`` plus the model-managed indexes);
:func:`config_changes` lists what differs, each change saying how it is applied:

``alter``
    query, schedule, refresh mode: ``dbt_pgtrickle.alter_stream_table`` (a new query is built
    beside the old table and swapped in within one transaction);
``indexes``
    configured indexes created or dropped in place;
``rebuild``
    change capture mode and Citus placement (and the query of a stream table on Citus): the
    stream table must be dropped and created again, which dbt does only under ``--full-refresh``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from dbt_common.exceptions import CompilationError

REFRESH_MODES = ("AUTO", "DIFFERENTIAL", "FULL")
CDC_MODES = ("auto", "trigger")
ON_CONFIGURATION_CHANGE = ("apply", "continue", "fail")
PLACEMENTS = ("auto", "local", "reference", "distributed")
INDEX_TYPES = ("btree", "hash", "gist", "spgist", "gin", "brin")

#: Model-managed indexes are named ``<table prefix>__pgt_ix_<hash>``; others are left alone.
INDEX_MARKER = "__pgt_ix_"
_MAX_IDENTIFIER = 63


def clean_query(sql: str) -> str:
    """The compiled SQL as the runtime stores it: without surrounding whitespace and trailing
    semicolons (``dbt_pgtrickle.create_stream_table`` cleans the query the same way)."""
    text = sql.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return text


def query_hash(sql: str) -> str:
    """The ``query_hash`` the catalog stores at creation for this compiled SQL."""
    import dbt_pgtrickle

    return dbt_pgtrickle.query_hash(sql)


def _invalid(model: str, key: str, value: Any, allowed: str) -> CompilationError:
    return CompilationError(
        f"stream_table model {model}: invalid {key} {value!r}; allowed: {allowed}"
    )


@dataclass(frozen=True)
class IndexSpec:
    """One entry of the ``indexes`` config (same keys as dbt-postgres: columns, unique, type).
    ``columns`` are SQL expressions, as in dbt-postgres."""

    columns: tuple[str, ...]
    unique: bool = False
    type: str | None = None

    def name(self, table: str) -> str:
        """A deterministic index name, so reruns recognise indexes they created."""
        digest = hashlib.md5(
            "\x1f".join([*self.columns, str(self.unique), str(self.type)]).encode()
        ).hexdigest()[:12]
        return f"{table[: _MAX_IDENTIFIER - len(INDEX_MARKER) - 12]}{INDEX_MARKER}{digest}"

    @classmethod
    def parse(cls, model: str, raw: Any) -> IndexSpec:
        if not isinstance(raw, dict):
            raise _invalid(model, "indexes entry", raw, "a mapping with columns, unique, type")
        unknown = set(raw) - {"columns", "unique", "type"}
        if unknown:
            raise _invalid(
                model, "indexes key", sorted(unknown)[0], "columns (required), unique, type"
            )
        columns = raw.get("columns")
        if isinstance(columns, str):
            columns = [columns]
        if not columns or not all(isinstance(c, str) and c.strip() for c in columns):
            raise _invalid(model, "indexes columns", columns, "a non-empty list of column names")
        unique = raw.get("unique", False)
        if not isinstance(unique, bool):
            raise _invalid(model, "indexes unique", unique, "true, false")
        kind = raw.get("type")
        if kind is not None and str(kind).lower() not in INDEX_TYPES:
            raise _invalid(model, "indexes type", kind, ", ".join(INDEX_TYPES))
        return cls(tuple(c.strip() for c in columns), unique, kind.lower() if kind else None)


@dataclass(frozen=True)
class StreamTableConfig:
    """The validated stream-table keys of a model's config."""

    schedule: str | None = None
    refresh_mode: str = "AUTO"
    initialize: bool = True
    cdc_mode: str = "auto"
    on_configuration_change: str = "apply"
    indexes: tuple[IndexSpec, ...] = ()
    placement: str = "auto"
    distribution_column: str | None = None

    @classmethod
    def from_model(cls, model: str, raw: dict[str, Any]) -> StreamTableConfig:
        """Validate the keys of a model config; errors name the key and the allowed values."""
        schedule = raw.get("schedule")
        if schedule is not None:
            if not isinstance(schedule, str) or not schedule.strip():
                raise _invalid(
                    model, "schedule", schedule, "a duration like '5m', a cron expression, or null"
                )
            schedule = schedule.strip()
            _check_schedule(model, schedule)
        mode = str(raw.get("refresh_mode") or "AUTO").upper()
        if mode not in REFRESH_MODES:
            raise _invalid(model, "refresh_mode", raw.get("refresh_mode"), ", ".join(REFRESH_MODES))
        initialize = raw.get("initialize", True)
        if initialize is None:
            initialize = True
        if not isinstance(initialize, bool):
            raise _invalid(model, "initialize", initialize, "true, false")
        cdc = str(raw.get("cdc_mode") or "auto").lower()
        if cdc not in CDC_MODES:
            raise _invalid(model, "cdc_mode", raw.get("cdc_mode"), ", ".join(CDC_MODES))
        occ = str(raw.get("on_configuration_change") or "apply").lower()
        if occ not in ON_CONFIGURATION_CHANGE:
            raise _invalid(
                model,
                "on_configuration_change",
                raw.get("on_configuration_change"),
                ", ".join(ON_CONFIGURATION_CHANGE),
            )
        raw_indexes = raw.get("indexes") or []
        if not isinstance(raw_indexes, list):
            raise _invalid(model, "indexes", raw_indexes, "a list of {columns, unique, type}")
        indexes = tuple(IndexSpec.parse(model, i) for i in raw_indexes)
        placement = str(raw.get("placement") or "auto").lower()
        if placement not in PLACEMENTS:
            raise _invalid(model, "placement", raw.get("placement"), ", ".join(PLACEMENTS))
        column = raw.get("distribution_column")
        if placement == "distributed":
            if not isinstance(column, str) or not column.strip():
                raise _invalid(
                    model,
                    "distribution_column",
                    column,
                    "a column of the query (required with placement 'distributed')",
                )
            column = column.strip()
        elif column is not None:
            raise _invalid(
                model,
                "distribution_column",
                column,
                "only with placement 'distributed' (placement is " + repr(placement) + ")",
            )
        return cls(schedule, mode, initialize, cdc, occ, indexes, placement, column)

    def runtime_options(self) -> dict[str, Any]:
        """Keyword arguments for ``dbt_pgtrickle.create_stream_table``."""
        options: dict[str, Any] = {
            "schedule": self.schedule,
            "refresh_mode": self.refresh_mode,
            "initialize": self.initialize,
            "cdc_mode": self.cdc_mode,
        }
        if self.placement in ("reference", "distributed"):
            options["placement"] = self.placement
        if self.distribution_column:
            options["distribution_column"] = self.distribution_column
        return options


def _check_schedule(model: str, schedule: str) -> None:
    """The runtime's own schedule syntax check, so a typo fails before anything is built."""
    from dbt_pgtrickle import ConfigError, check_schedule

    try:
        check_schedule(schedule)
    except ConfigError as exc:
        raise CompilationError(f"stream_table model {model}: {exc}") from None


@dataclass(frozen=True)
class CatalogState:
    """A registered stream table as the catalog describes it."""

    schema: str
    name: str
    query_hash: str
    original_query: str
    schedule: str | None
    requested_mode: str
    effective_mode: str
    status: str
    cdc_mode: str
    placement: str
    options: dict[str, Any] = field(default_factory=dict)
    model_indexes: tuple[str, ...] = ()
    distribution_column: str | None = None
    #: A source is captured from Citus worker slots.
    citus_sources: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class ConfigChange:
    key: str
    current: Any
    wanted: Any
    how: str  # alter | indexes | rebuild

    def describe(self) -> str:
        if self.key == "query":
            return "the compiled SQL changed"
        return f"{self.key}: {self.current!r} -> {self.wanted!r}"


def config_changes(state: CatalogState, sql: str, wanted: StreamTableConfig) -> list[ConfigChange]:
    """What differs between the model (compiled ``sql`` and config) and the catalog."""
    changes: list[ConfigChange] = []
    new_hash = query_hash(sql)
    if new_hash != state.query_hash:
        # On Citus the query is not altered in place (see citus.tables.refuse_query_change).
        on_citus = state.placement != "local" or state.citus_sources
        how = "rebuild" if on_citus else "alter"
        changes.append(ConfigChange("query", state.query_hash, new_hash, how))
    if wanted.schedule != state.schedule:
        changes.append(ConfigChange("schedule", state.schedule, wanted.schedule, "alter"))
    if wanted.refresh_mode != state.requested_mode:
        changes.append(
            ConfigChange("refresh_mode", state.requested_mode, wanted.refresh_mode, "alter")
        )
    if wanted.cdc_mode != "auto" and wanted.cdc_mode != state.cdc_mode:
        changes.append(ConfigChange("cdc_mode", state.cdc_mode, wanted.cdc_mode, "rebuild"))
    if wanted.placement != "auto" and wanted.placement != state.placement:
        changes.append(ConfigChange("placement", state.placement, wanted.placement, "rebuild"))
    current_column = state.distribution_column
    if wanted.placement == "distributed" and wanted.distribution_column != current_column:
        changes.append(
            ConfigChange(
                "distribution_column", current_column, wanted.distribution_column, "rebuild"
            )
        )
    wanted_indexes = sorted(i.name(state.name) for i in wanted.indexes)
    if wanted_indexes != sorted(state.model_indexes):
        changes.append(
            ConfigChange("indexes", sorted(state.model_indexes), wanted_indexes, "indexes")
        )
    return changes
