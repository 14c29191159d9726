"""The database-side schema of dbt-pgtrickle: forward migrations and the current schema.

A fresh install runs :data:`CURRENT_SCHEMA` (the whole schema at :data:`SCHEMA_VERSION`) in one go;
an older install runs the migrations after its recorded version, in order. Both must end identical;
``tests/db/test_install.py`` compares the two catalogs object by object. When you change the
schema, add a migration *and* update :data:`CURRENT_SCHEMA`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


_STATUS_VIEW = """
CREATE VIEW pgtrickle.stream_tables AS
SELECT st.pgt_id,
       st.pgt_schema,
       st.pgt_name,
       st.requested_mode,
       st.effective_mode,
       st.status,
       st.schedule,
       st.last_refresh_at,
       now() - st.last_refresh_at AS staleness,
       st.consecutive_failures,
       st.last_error,
       st.fallback_reason,
       last.action AS last_action,
       last.status AS last_refresh_status
  FROM pgtrickle.pgt_stream_tables st
  LEFT JOIN LATERAL (
       SELECT h.action, h.status FROM pgtrickle.pgt_refresh_history h
        WHERE h.pgt_id = st.pgt_id ORDER BY h.refresh_id DESC LIMIT 1) last ON true;
"""

_HELPERS = """
CREATE FUNCTION pgtrickle.stable_name(p_schema text, p_name text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
-- FNV-1a 64 of UTF-8 "schema.name" as 16 lower-case hex digits (DESIGN 2.7); the same function
-- as dbt_pgtrickle.naming.stable_name, so any node can name a source's internal objects.
DECLARE
    data bytea := convert_to(p_schema || '.' || p_name, 'UTF8');
    h numeric := 14695981039346656037;
    low integer;
BEGIN
    FOR i IN 0 .. length(data) - 1 LOOP
        low := mod(h, 256)::integer;
        h := h - low + (low # get_byte(data, i));
        h := mod(h * 1099511628211, 18446744073709551616);
    END LOOP;
    IF h >= 9223372036854775808 THEN
        h := h - 18446744073709551616;
    END IF;
    RETURN lpad(to_hex(h::bigint), 16, '0');
END
$fn$;
"""

_V1 = """
CREATE TABLE pgtrickle.pgt_schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    runtime_version text NOT NULL
);

CREATE TABLE pgtrickle.pgt_stream_tables (
    pgt_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pgt_schema text NOT NULL,
    pgt_name text NOT NULL,
    defining_query text NOT NULL,
    original_query text NOT NULL,
    query_hash text NOT NULL,
    schedule text,
    requested_mode text NOT NULL,
    effective_mode text NOT NULL,
    status text NOT NULL DEFAULT 'INITIALIZING',
    frontier pg_snapshot,
    needs_full boolean NOT NULL DEFAULT false,
    placement text NOT NULL DEFAULT 'local',
    fallback_reason text,
    plan jsonb,
    last_refresh_at timestamptz,
    last_error text,
    consecutive_failures integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (pgt_schema, pgt_name),
    CHECK (requested_mode IN ('AUTO', 'DIFFERENTIAL', 'FULL')),
    CHECK (effective_mode IN ('DIFFERENTIAL', 'FULL'))
);

CREATE TABLE pgtrickle.pgt_change_tracking (
    source_stable_name text PRIMARY KEY,
    source_schema text NOT NULL,
    source_name text NOT NULL,
    buffer_table text NOT NULL,
    cdc_mode text NOT NULL DEFAULT 'trigger',
    captured_columns jsonb NOT NULL,
    primary_key text[],
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_schema, source_name)
);

CREATE TABLE pgtrickle.pgt_dependencies (
    pgt_id bigint NOT NULL REFERENCES pgtrickle.pgt_stream_tables (pgt_id) ON DELETE CASCADE,
    source_stable_name text NOT NULL
        REFERENCES pgtrickle.pgt_change_tracking (source_stable_name),
    source_schema text NOT NULL,
    source_name text NOT NULL,
    source_placement text NOT NULL DEFAULT 'local',
    PRIMARY KEY (pgt_id, source_stable_name)
);

CREATE TABLE pgtrickle.pgt_refresh_history (
    refresh_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pgt_id bigint,
    pgt_schema text NOT NULL,
    pgt_name text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    action text NOT NULL,
    status text NOT NULL,
    rows_in bigint,
    rows_inserted bigint,
    rows_deleted bigint,
    duration_ms double precision,
    fallback_reason text,
    sqlstate text,
    error_message text,
    initiated_by text NOT NULL DEFAULT 'api',
    CHECK (action IN ('FULL', 'DIFFERENTIAL', 'NO_DATA')),
    CHECK (status IN ('RUNNING', 'COMPLETED', 'FAILED'))
);

CREATE TABLE pgtrickle.pgt_st_locks (
    lock_key text PRIMARY KEY,
    holder text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE TABLE pgtrickle.pgt_worker_slots (
    node_name text NOT NULL,
    node_port integer NOT NULL,
    slot_name text NOT NULL,
    source_stable_name text NOT NULL,
    confirmed_lsn pg_lsn,
    last_poll_at timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0,
    PRIMARY KEY (node_name, node_port, slot_name)
);

CREATE TABLE pgtrickle.pgt_subscriptions (
    pgt_id bigint NOT NULL REFERENCES pgtrickle.pgt_stream_tables (pgt_id) ON DELETE CASCADE,
    channel text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pgt_id, channel)
);
"""

_V2 = (
    """
CREATE TABLE pgtrickle.pgt_settings (
    name text PRIMARY KEY,
    value text NOT NULL
);

ALTER TABLE pgtrickle.pgt_refresh_history
    ADD COLUMN rows_updated bigint,
    ADD COLUMN frontier_before text,
    ADD COLUMN frontier_after text;

CREATE INDEX pgt_refresh_history_started_at_idx
    ON pgtrickle.pgt_refresh_history (started_at);
CREATE INDEX pgt_refresh_history_pgt_id_idx
    ON pgtrickle.pgt_refresh_history (pgt_id, started_at);

ALTER TABLE pgtrickle.pgt_stream_tables
    ADD COLUMN last_error_sqlstate text,
    ADD COLUMN initialize boolean NOT NULL DEFAULT true,
    ADD COLUMN cdc_mode text NOT NULL DEFAULT 'trigger',
    ADD COLUMN options jsonb NOT NULL DEFAULT '{}'::jsonb;

"""
    + _STATUS_VIEW
    + _HELPERS
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "catalog tables", _V1),
    Migration(2, "settings, history columns and indexes, status view", _V2),
)

SCHEMA_VERSION = MIGRATIONS[-1].version

CURRENT_SCHEMA = (
    """
CREATE TABLE pgtrickle.pgt_schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    runtime_version text NOT NULL
);

CREATE TABLE pgtrickle.pgt_settings (
    name text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE pgtrickle.pgt_stream_tables (
    pgt_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pgt_schema text NOT NULL,
    pgt_name text NOT NULL,
    defining_query text NOT NULL,
    original_query text NOT NULL,
    query_hash text NOT NULL,
    schedule text,
    requested_mode text NOT NULL,
    effective_mode text NOT NULL,
    status text NOT NULL DEFAULT 'INITIALIZING',
    frontier pg_snapshot,
    needs_full boolean NOT NULL DEFAULT false,
    placement text NOT NULL DEFAULT 'local',
    fallback_reason text,
    plan jsonb,
    last_refresh_at timestamptz,
    last_error text,
    consecutive_failures integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    last_error_sqlstate text,
    initialize boolean NOT NULL DEFAULT true,
    cdc_mode text NOT NULL DEFAULT 'trigger',
    options jsonb NOT NULL DEFAULT '{}'::jsonb,
    UNIQUE (pgt_schema, pgt_name),
    CHECK (requested_mode IN ('AUTO', 'DIFFERENTIAL', 'FULL')),
    CHECK (effective_mode IN ('DIFFERENTIAL', 'FULL'))
);

CREATE TABLE pgtrickle.pgt_change_tracking (
    source_stable_name text PRIMARY KEY,
    source_schema text NOT NULL,
    source_name text NOT NULL,
    buffer_table text NOT NULL,
    cdc_mode text NOT NULL DEFAULT 'trigger',
    captured_columns jsonb NOT NULL,
    primary_key text[],
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_schema, source_name)
);

CREATE TABLE pgtrickle.pgt_dependencies (
    pgt_id bigint NOT NULL REFERENCES pgtrickle.pgt_stream_tables (pgt_id) ON DELETE CASCADE,
    source_stable_name text NOT NULL
        REFERENCES pgtrickle.pgt_change_tracking (source_stable_name),
    source_schema text NOT NULL,
    source_name text NOT NULL,
    source_placement text NOT NULL DEFAULT 'local',
    PRIMARY KEY (pgt_id, source_stable_name)
);

CREATE TABLE pgtrickle.pgt_refresh_history (
    refresh_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pgt_id bigint,
    pgt_schema text NOT NULL,
    pgt_name text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    action text NOT NULL,
    status text NOT NULL,
    rows_in bigint,
    rows_inserted bigint,
    rows_deleted bigint,
    duration_ms double precision,
    fallback_reason text,
    sqlstate text,
    error_message text,
    initiated_by text NOT NULL DEFAULT 'api',
    rows_updated bigint,
    frontier_before text,
    frontier_after text,
    CHECK (action IN ('FULL', 'DIFFERENTIAL', 'NO_DATA')),
    CHECK (status IN ('RUNNING', 'COMPLETED', 'FAILED'))
);
CREATE INDEX pgt_refresh_history_started_at_idx
    ON pgtrickle.pgt_refresh_history (started_at);
CREATE INDEX pgt_refresh_history_pgt_id_idx
    ON pgtrickle.pgt_refresh_history (pgt_id, started_at);

CREATE TABLE pgtrickle.pgt_st_locks (
    lock_key text PRIMARY KEY,
    holder text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE TABLE pgtrickle.pgt_worker_slots (
    node_name text NOT NULL,
    node_port integer NOT NULL,
    slot_name text NOT NULL,
    source_stable_name text NOT NULL,
    confirmed_lsn pg_lsn,
    last_poll_at timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0,
    PRIMARY KEY (node_name, node_port, slot_name)
);

CREATE TABLE pgtrickle.pgt_subscriptions (
    pgt_id bigint NOT NULL REFERENCES pgtrickle.pgt_stream_tables (pgt_id) ON DELETE CASCADE,
    channel text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pgt_id, channel)
);
"""
    + _STATUS_VIEW
    + _HELPERS
)
