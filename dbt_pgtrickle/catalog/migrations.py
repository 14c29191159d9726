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

# Scheduler (docs/scheduler.md): heartbeat rows, subscription notifications, pending-change
# probe, SLA summary. Objects here must also be in CURRENT_SCHEMA (through _SCHEDULER).
_SCHEDULER_TABLES = """
CREATE TABLE pgtrickle.pgt_scheduler (
    holder text PRIMARY KEY,
    pid integer NOT NULL,
    host text NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_tick_at timestamptz NOT NULL DEFAULT now(),
    last_beat_at timestamptz NOT NULL DEFAULT now(),
    state text NOT NULL DEFAULT 'running',
    poll_interval_ms integer NOT NULL,
    metrics_port integer
);

CREATE TABLE pgtrickle.pgt_notify_state (
    pgt_id bigint PRIMARY KEY REFERENCES pgtrickle.pgt_stream_tables (pgt_id) ON DELETE CASCADE,
    last_notified_at timestamptz NOT NULL
);

CREATE TABLE pgtrickle.pgt_notify_queue (
    refresh_id bigint PRIMARY KEY,
    pgt_id bigint NOT NULL REFERENCES pgtrickle.pgt_stream_tables (pgt_id) ON DELETE CASCADE,
    rows_inserted bigint NOT NULL,
    rows_updated bigint NOT NULL,
    rows_deleted bigint NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX pgt_notify_queue_pgt_id_idx ON pgtrickle.pgt_notify_queue (pgt_id);

CREATE INDEX pgt_refresh_history_running_idx
    ON pgtrickle.pgt_refresh_history (pgt_id) WHERE status = 'RUNNING';
"""

_SCHEDULER_FUNCTIONS = """
CREATE FUNCTION pgtrickle.has_pending_changes(p_pgt_id bigint) RETURNS boolean
LANGUAGE plpgsql STABLE AS $fn$
-- Whether the stream table has change rows it has not applied (always true before its first
-- population and when a source's changes are not captured). One index probe per source buffer.
DECLARE
    f pg_snapshot;
    src record;
    found boolean;
BEGIN
    SELECT frontier INTO f FROM pgtrickle.pgt_stream_tables WHERE pgt_id = p_pgt_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF f IS NULL THEN
        RETURN true;
    END IF;
    FOR src IN
        SELECT d.source_stable_name AS stable, t.cdc_mode
          FROM pgtrickle.pgt_dependencies d
          JOIN pgtrickle.pgt_change_tracking t USING (source_stable_name)
         WHERE d.pgt_id = p_pgt_id
    LOOP
        IF src.cdc_mode = 'none' THEN
            RETURN true;
        END IF;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I b WHERE b.__pgt_xid >= '
                       'pg_snapshot_xmin($1) AND NOT pg_visible_in_snapshot(b.__pgt_xid, $1))',
                       'pgtrickle_changes', 'changes_' || src.stable)
           INTO found USING f;
        IF found THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END
$fn$;

CREATE FUNCTION pgtrickle.stream_table_id(p_name text) RETURNS bigint
LANGUAGE plpgsql STABLE AS $fn$
-- pgt_id of NAME or SCHEMA.NAME (SQL identifier rules: unquoted parts fold to lower case).
DECLARE
    parts text[] := parse_ident(p_name);
    id bigint;
BEGIN
    IF array_length(parts, 1) = 1 THEN
        parts := ARRAY['public', parts[1]];
    ELSIF array_length(parts, 1) <> 2 THEN
        RAISE EXCEPTION 'invalid stream table name %: use NAME or SCHEMA.NAME', p_name
            USING ERRCODE = '22023';
    END IF;
    SELECT pgt_id INTO id FROM pgtrickle.pgt_stream_tables
     WHERE pgt_schema = parts[1] AND pgt_name = parts[2];
    IF id IS NULL THEN
        RAISE EXCEPTION 'no stream table named %.%', parts[1], parts[2] USING ERRCODE = '42P01';
    END IF;
    RETURN id;
END
$fn$;

CREATE FUNCTION pgtrickle.subscribe(p_name text, p_channel text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
-- After each refresh of the stream table that changes rows, NOTIFY p_channel with a JSON payload.
-- Returns false when the subscription already existed.
BEGIN
    IF p_channel IS NULL OR p_channel = '' OR octet_length(p_channel) > 63 THEN
        RAISE EXCEPTION 'channel must be 1 to 63 bytes long' USING ERRCODE = '22023';
    END IF;
    INSERT INTO pgtrickle.pgt_subscriptions (pgt_id, channel)
    VALUES (pgtrickle.stream_table_id(p_name), p_channel) ON CONFLICT DO NOTHING;
    RETURN FOUND;
END
$fn$;

CREATE FUNCTION pgtrickle.unsubscribe(p_name text, p_channel text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
-- Returns false when there was no such subscription.
BEGIN
    DELETE FROM pgtrickle.pgt_subscriptions
     WHERE pgt_id = pgtrickle.stream_table_id(p_name) AND channel = p_channel;
    RETURN FOUND;
END
$fn$;

CREATE FUNCTION pgtrickle.list_subscriptions()
RETURNS TABLE (stream_table text, channel text, created_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
SELECT st.pgt_schema || '.' || st.pgt_name, s.channel, s.created_at
  FROM pgtrickle.pgt_subscriptions s JOIN pgtrickle.pgt_stream_tables st USING (pgt_id)
 ORDER BY 1, 2
$fn$;

CREATE FUNCTION pgtrickle.flush_notifications(p_coalesce_ms integer, p_pgt_id bigint DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $fn$
-- Send the queued refresh notifications of each stream table last notified at least
-- p_coalesce_ms ago: one NOTIFY per channel with the sums since the previous one. Returns the
-- number of stream tables notified. Concurrent callers skip each other's rows.
DECLARE
    st record;
    agg record;
    sub record;
    payload text;
    sent integer := 0;
BEGIN
    FOR st IN
        SELECT s.pgt_id, s.pgt_schema, s.pgt_name
          FROM pgtrickle.pgt_stream_tables s
         WHERE (p_pgt_id IS NULL OR s.pgt_id = p_pgt_id)
           AND EXISTS (SELECT 1 FROM pgtrickle.pgt_notify_queue q WHERE q.pgt_id = s.pgt_id)
           AND NOT EXISTS (
               SELECT 1 FROM pgtrickle.pgt_notify_state n
                WHERE n.pgt_id = s.pgt_id
                  AND n.last_notified_at > clock_timestamp()
                      - make_interval(secs => p_coalesce_ms / 1000.0))
         ORDER BY s.pgt_id
           FOR UPDATE OF s SKIP LOCKED
    LOOP
        WITH gone AS (
            DELETE FROM pgtrickle.pgt_notify_queue WHERE pgt_id = st.pgt_id RETURNING *)
        SELECT max(refresh_id) AS refresh_id, count(*) AS refreshes,
               sum(rows_inserted) AS inserted, sum(rows_updated) AS updated,
               sum(rows_deleted) AS deleted
          INTO agg FROM gone;
        CONTINUE WHEN agg.refreshes = 0;
        payload := json_build_object(
            'name', st.pgt_schema || '.' || st.pgt_name, 'refresh_id', agg.refresh_id,
            'inserted', agg.inserted, 'updated', agg.updated, 'deleted', agg.deleted,
            'refreshes', agg.refreshes)::text;
        FOR sub IN SELECT channel FROM pgtrickle.pgt_subscriptions WHERE pgt_id = st.pgt_id LOOP
            PERFORM pg_notify(sub.channel, payload);
        END LOOP;
        INSERT INTO pgtrickle.pgt_notify_state (pgt_id, last_notified_at)
        VALUES (st.pgt_id, clock_timestamp())
        ON CONFLICT (pgt_id) DO UPDATE SET last_notified_at = EXCLUDED.last_notified_at;
        sent := sent + 1;
    END LOOP;
    RETURN sent;
END
$fn$;

CREATE FUNCTION pgtrickle.sla_summary(p_window_hours integer DEFAULT NULL)
RETURNS TABLE (stream_table text, refreshes bigint, failures bigint, p50_ms double precision,
               p99_ms double precision, freshness_lag interval, error_rate double precision,
               error_budget_remaining double precision)
LANGUAGE sql STABLE AS $fn$
-- Per stream table over the last p_window_hours (default: setting sla_window_hours): refreshes
-- finished, failures, p50/p99 duration of completed refreshes, freshness lag (time since the last
-- refresh while changes are pending, else 0), error rate, and the share of the error budget left
-- (1 - error_rate / (1 - sla_target)). The defaults here match dbt_pgtrickle/settings.py.
WITH cfg AS (
    SELECT coalesce(p_window_hours,
                    (SELECT value::integer FROM pgtrickle.pgt_settings
                      WHERE name = 'sla_window_hours'), 24) AS hours,
           coalesce((SELECT value::double precision FROM pgtrickle.pgt_settings
                      WHERE name = 'sla_target'), 0.99) AS target
), h AS (
    SELECT h.pgt_id,
           count(*) FILTER (WHERE h.status <> 'RUNNING') AS refreshes,
           count(*) FILTER (WHERE h.status = 'FAILED') AS failures,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY h.duration_ms)
               FILTER (WHERE h.status = 'COMPLETED') AS p50,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY h.duration_ms)
               FILTER (WHERE h.status = 'COMPLETED') AS p99
      FROM pgtrickle.pgt_refresh_history h CROSS JOIN cfg
     WHERE h.started_at >= now() - make_interval(hours => cfg.hours)
     GROUP BY h.pgt_id
)
SELECT st.pgt_schema || '.' || st.pgt_name,
       coalesce(h.refreshes, 0),
       coalesce(h.failures, 0),
       h.p50,
       h.p99,
       CASE WHEN st.last_refresh_at IS NULL THEN NULL
            WHEN pgtrickle.has_pending_changes(st.pgt_id) THEN now() - st.last_refresh_at
            ELSE interval '0' END,
       CASE WHEN coalesce(h.refreshes, 0) = 0 THEN 0::double precision
            ELSE h.failures::double precision / h.refreshes END,
       CASE WHEN coalesce(h.refreshes, 0) = 0 THEN 1::double precision
            WHEN cfg.target >= 1 THEN (h.failures = 0)::integer::double precision
            ELSE greatest(0, 1 - (h.failures::double precision / h.refreshes)
                                 / (1 - cfg.target)) END
  FROM pgtrickle.pgt_stream_tables st CROSS JOIN cfg LEFT JOIN h USING (pgt_id)
 ORDER BY 1
$fn$;
"""

# Capture functions created before version 3 learn to wake the scheduler (the same statement
# cdc/triggers.py now generates); fresh installs have none yet.
_WAKE_EXISTING_CAPTURE = """
DO $do$
DECLARE
    f record;
    stable text;
BEGIN
    FOR f IN
        SELECT p.oid, p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'pgtrickle_changes' AND p.proname ~ '^capture_[0-9a-f]{16}_'
           AND p.prosrc NOT LIKE '%pgtrickle_wake%'
    LOOP
        stable := substring(f.proname FROM '^capture_([0-9a-f]{16})_');
        EXECUTE replace(pg_get_functiondef(f.oid), 'RETURN NULL; END',
            format('IF current_setting(''pgtrickle.wake'', true) IS DISTINCT FROM ''off'' THEN '
                   'PERFORM pg_notify(''pgtrickle_wake'', %L); END IF; RETURN NULL; END', stable));
    END LOOP;
END
$do$;
"""

_SCHEDULER = _SCHEDULER_TABLES + _SCHEDULER_FUNCTIONS

# Citus (docs/citus.md): placement of sources and stream tables, per-node import positions of
# distributed sources, worker slot health, and the pgtrickle.citus_status view. Objects here must
# also be in CURRENT_SCHEMA (through _CITUS_VIEW; the columns are written out there).
_CITUS_COLUMNS = """
ALTER TABLE pgtrickle.pgt_stream_tables
    ADD COLUMN distribution_column text,
    ADD COLUMN citus_colocated_with text;

ALTER TABLE pgtrickle.pgt_change_tracking
    ADD COLUMN source_placement text NOT NULL DEFAULT 'local',
    ADD COLUMN distribution_column text,
    ADD COLUMN frontier_per_node jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN shard_nodes jsonb NOT NULL DEFAULT '{}'::jsonb;

ALTER TABLE pgtrickle.pgt_worker_slots
    ADD COLUMN node_id integer,
    ADD COLUMN created_lsn pg_lsn,
    ADD COLUMN created_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN last_error text,
    ADD COLUMN flagged_at timestamptz;
"""

_CITUS_VIEW = """
CREATE VIEW pgtrickle.citus_status AS
SELECT st.pgt_schema || '.' || st.pgt_name AS stream_table,
       st.placement AS st_placement,
       st.distribution_column,
       st.citus_colocated_with,
       t.source_schema || '.' || t.source_name AS source,
       t.source_placement,
       w.node_name,
       w.node_port,
       w.slot_name,
       t.frontier_per_node ->> w.node_id::text AS imported_lsn,
       w.confirmed_lsn AS worker_confirmed_lsn,
       w.last_poll_at,
       w.consecutive_failures,
       w.flagged_at IS NOT NULL AS flagged,
       w.last_error,
       l.holder AS lease_holder,
       l.expires_at AS lease_expires_at,
       CASE WHEN l.lock_key IS NULL THEN 'free'
            WHEN l.expires_at < clock_timestamp() THEN 'expired'
            ELSE 'held' END AS lease_health
  FROM pgtrickle.pgt_stream_tables st
  JOIN pgtrickle.pgt_dependencies d USING (pgt_id)
  JOIN pgtrickle.pgt_change_tracking t USING (source_stable_name)
  LEFT JOIN pgtrickle.pgt_worker_slots w USING (source_stable_name)
  LEFT JOIN pgtrickle.pgt_st_locks l ON l.lock_key = 'refresh:' || st.pgt_id
 WHERE t.source_placement <> 'local' OR st.placement <> 'local';
"""

# One pending-change probe for many stream tables (docs/scheduler.md): each change buffer is read
# once, whatever the number of its readers. has_pending_changes (one stream table, one probe per
# source buffer) stays as it is: it is the cheaper call for a single stream table, and the tests
# check that both answer alike. Objects here must also be in CURRENT_SCHEMA.
_PENDING_PROBE = """
CREATE FUNCTION pgtrickle.pending_stream_tables(p_ids bigint[] DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql STABLE AS $fn$
-- The stream tables among p_ids (every one when NULL) for which has_pending_changes is true,
-- each once, in no particular order. Always pending: not populated yet (no frontier), or a
-- source whose changes are not captured (cdc_mode 'none'). A change row with xid x is pending
-- for a reader whose frontier is f when x >= pg_snapshot_xmin(f) and x is not visible in f, that
-- is when x >= pg_snapshot_xmax(f) or x is one of pg_snapshot_xip(f) (a transaction f saw in
-- progress). So each buffer is probed once for its largest xid at or above the smallest xmax
-- of its readers' frontiers, and once for each distinct in-progress xid of those frontiers
-- (none in a quiet database); each reader's frontier is compared with the result. TRUNCATE
-- markers and rows imported from Citus workers are buffer rows like any other.
DECLARE
    found bigint[];
    buf record;
    top xid8;
    seen xid8[];
BEGIN
    IF p_ids IS NULL THEN
        p_ids := ARRAY(SELECT pgt_id FROM pgtrickle.pgt_stream_tables);
    END IF;
    found := ARRAY(
        SELECT st.pgt_id FROM pgtrickle.pgt_stream_tables st
         WHERE st.pgt_id = ANY (p_ids)
           AND (st.frontier IS NULL OR EXISTS (
                SELECT 1 FROM pgtrickle.pgt_dependencies d
                  JOIN pgtrickle.pgt_change_tracking t USING (source_stable_name)
                 WHERE d.pgt_id = st.pgt_id AND t.cdc_mode = 'none')));
    FOR buf IN
        SELECT d.source_stable_name AS stable,
               array_agg(st.pgt_id) AS ids,
               array_agg(st.frontier) AS frontiers,
               min(pg_snapshot_xmax(st.frontier)) AS low,
               ARRAY(SELECT DISTINCT x FROM unnest(array_agg(st.frontier)) f,
                            pg_snapshot_xip(f) x) AS xips
          FROM pgtrickle.pgt_stream_tables st
          JOIN pgtrickle.pgt_dependencies d USING (pgt_id)
         WHERE st.pgt_id = ANY (p_ids) AND st.pgt_id <> ALL (found)
         GROUP BY d.source_stable_name
    LOOP
        EXECUTE format('SELECT max(b.__pgt_xid) FROM %I.%I b WHERE b.__pgt_xid >= $1',
                       'pgtrickle_changes', 'changes_' || buf.stable)
           INTO top USING buf.low;
        seen := '{}';
        IF cardinality(buf.xips) > 0 THEN
            EXECUTE format('SELECT ARRAY(SELECT x FROM unnest($1) x WHERE EXISTS '
                           '(SELECT 1 FROM %I.%I b WHERE b.__pgt_xid = x))',
                           'pgtrickle_changes', 'changes_' || buf.stable)
               INTO seen USING buf.xips;
        END IF;
        CONTINUE WHEN top IS NULL AND cardinality(seen) = 0;
        found := found || ARRAY(
            SELECT r.id FROM unnest(buf.ids, buf.frontiers) r(id, f)
             WHERE top >= pg_snapshot_xmax(r.f)
                OR EXISTS (SELECT 1 FROM pg_snapshot_xip(r.f) x WHERE x = ANY (seen)));
    END LOOP;
    RETURN QUERY SELECT DISTINCT unnest(found);
END
$fn$;
"""

# Change buffers (cdc/triggers.py, cdc/unlogged.py): the crash sentinel of unlogged buffers, and
# the pending-change probes using the buffers' BRIN index and reporting readers whose unlogged
# buffers were emptied. Objects here must also be in CURRENT_SCHEMA.
_CHANGE_BUFFERS = """
CREATE UNLOGGED TABLE pgtrickle.pgt_unlogged_sentinel (
    pgt_id bigint PRIMARY KEY
);

CREATE OR REPLACE FUNCTION pgtrickle.has_pending_changes(p_pgt_id bigint) RETURNS boolean
LANGUAGE plpgsql STABLE AS $fn$
-- Whether the stream table has change rows it has not applied (always true before its first
-- population, when a source's changes are not captured, and when its unlogged change buffers
-- were emptied by a crash: see cdc/unlogged.py). One BRIN-bounded probe per source buffer.
DECLARE
    f pg_snapshot;
    src record;
    found boolean;
BEGIN
    SELECT frontier INTO f FROM pgtrickle.pgt_stream_tables WHERE pgt_id = p_pgt_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF f IS NULL THEN
        RETURN true;
    END IF;
    FOR src IN
        SELECT d.source_stable_name AS stable, t.cdc_mode, c.relpersistence = 'u' AS unlogged
          FROM pgtrickle.pgt_dependencies d
          JOIN pgtrickle.pgt_change_tracking t USING (source_stable_name)
          LEFT JOIN pg_class c ON c.relname = 'changes_' || d.source_stable_name
                              AND c.relnamespace = 'pgtrickle_changes'::regnamespace
         WHERE d.pgt_id = p_pgt_id
    LOOP
        IF src.cdc_mode = 'none' THEN
            RETURN true;
        END IF;
        IF src.unlogged AND NOT EXISTS (SELECT 1 FROM pgtrickle.pgt_unlogged_sentinel s
                                         WHERE s.pgt_id = p_pgt_id) THEN
            RETURN true;
        END IF;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I b WHERE b.__pgt_xid >= '
                       'pg_snapshot_xmin($1) AND ((b.__pgt_xid)::text)::bigint >= '
                       '(pg_snapshot_xmin($1)::text)::bigint '
                       'AND NOT pg_visible_in_snapshot(b.__pgt_xid, $1))',
                       'pgtrickle_changes', 'changes_' || src.stable)
           INTO found USING f;
        IF found THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END
$fn$;

CREATE OR REPLACE FUNCTION pgtrickle.pending_stream_tables(p_ids bigint[] DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql STABLE AS $fn$
-- The stream tables among p_ids (every one when NULL) for which has_pending_changes is true,
-- each once, in no particular order. Always pending: not populated yet (no frontier), or a
-- source whose changes are not captured (cdc_mode 'none'). A change row with xid x is pending
-- for a reader whose frontier is f when x >= pg_snapshot_xmin(f) and x is not visible in f, that
-- is when x >= pg_snapshot_xmax(f) or x is one of pg_snapshot_xip(f) (a transaction f saw in
-- progress). The buffer's index is a BRIN index (cdc/triggers.py), which finds rows at or above
-- a bound cheaply but not the largest xid, so each buffer is probed for "a row at or above the
-- smallest xmax of its readers' frontiers" (one probe in a quiet database) and, if there is
-- one, binary-searched for top, the largest of those xmaxes with a row at or above it (whether
-- there is one falls as the xmax grows); a reader is pending when its xmax is at most top. And
-- once for each distinct in-progress xid of those frontiers (none in a quiet database). Every
-- probe repeats its condition on the expression of the BRIN index. TRUNCATE markers and rows
-- imported from Citus workers are buffer rows like any other. Also always pending: a reader of
-- an unlogged buffer whose sentinel row is gone (cdc/unlogged.py).
DECLARE
    found bigint[];
    buf record;
    top xid8;
    seen xid8[];
    probe text;
    hit boolean;
    lo integer;
    hi integer;
    mid integer;
BEGIN
    IF p_ids IS NULL THEN
        p_ids := ARRAY(SELECT pgt_id FROM pgtrickle.pgt_stream_tables);
    END IF;
    found := ARRAY(
        SELECT st.pgt_id FROM pgtrickle.pgt_stream_tables st
         WHERE st.pgt_id = ANY (p_ids)
           AND (st.frontier IS NULL OR EXISTS (
                SELECT 1 FROM pgtrickle.pgt_dependencies d
                  JOIN pgtrickle.pgt_change_tracking t USING (source_stable_name)
                 WHERE d.pgt_id = st.pgt_id AND t.cdc_mode = 'none')
            OR (EXISTS (SELECT 1 FROM pgtrickle.pgt_dependencies d
                          JOIN pg_class c ON c.relname = 'changes_' || d.source_stable_name
                                         AND c.relnamespace = 'pgtrickle_changes'::regnamespace
                         WHERE d.pgt_id = st.pgt_id AND c.relpersistence = 'u')
                AND NOT EXISTS (SELECT 1 FROM pgtrickle.pgt_unlogged_sentinel s
                                 WHERE s.pgt_id = st.pgt_id))));
    FOR buf IN
        SELECT d.source_stable_name AS stable,
               array_agg(st.pgt_id) AS ids,
               array_agg(st.frontier) AS frontiers,
               ARRAY(SELECT DISTINCT pg_snapshot_xmax(f) FROM unnest(array_agg(st.frontier)) f
                      ORDER BY 1) AS xmaxes,
               ARRAY(SELECT DISTINCT x FROM unnest(array_agg(st.frontier)) f,
                            pg_snapshot_xip(f) x) AS xips
          FROM pgtrickle.pgt_stream_tables st
          JOIN pgtrickle.pgt_dependencies d USING (pgt_id)
         WHERE st.pgt_id = ANY (p_ids) AND st.pgt_id <> ALL (found)
         GROUP BY d.source_stable_name
    LOOP
        probe := format('SELECT EXISTS (SELECT 1 FROM %I.%I b WHERE b.__pgt_xid >= $1 '
                        'AND ((b.__pgt_xid)::text)::bigint >= ($1::text)::bigint)',
                        'pgtrickle_changes', 'changes_' || buf.stable);
        top := NULL;
        EXECUTE probe INTO hit USING buf.xmaxes[1];
        IF hit THEN
            top := buf.xmaxes[1];
            lo := 2;
            hi := cardinality(buf.xmaxes);
            WHILE lo <= hi LOOP
                mid := (lo + hi) / 2;
                EXECUTE probe INTO hit USING buf.xmaxes[mid];
                IF hit THEN
                    top := buf.xmaxes[mid];
                    lo := mid + 1;
                ELSE
                    hi := mid - 1;
                END IF;
            END LOOP;
        END IF;
        seen := '{}';
        IF cardinality(buf.xips) > 0 THEN
            EXECUTE format('SELECT ARRAY(SELECT x FROM unnest($1) x WHERE EXISTS '
                           '(SELECT 1 FROM %I.%I b WHERE b.__pgt_xid = x '
                           'AND ((b.__pgt_xid)::text)::bigint = (x::text)::bigint))',
                           'pgtrickle_changes', 'changes_' || buf.stable)
               INTO seen USING buf.xips;
        END IF;
        CONTINUE WHEN top IS NULL AND cardinality(seen) = 0;
        found := found || ARRAY(
            SELECT r.id FROM unnest(buf.ids, buf.frontiers) r(id, f)
             WHERE top >= pg_snapshot_xmax(r.f)
                OR EXISTS (SELECT 1 FROM pg_snapshot_xip(r.f) x WHERE x = ANY (seen)));
    END LOOP;
    RETURN QUERY SELECT DISTINCT unnest(found);
END
$fn$;
"""

# Buffers created before version 6 trade their B-tree on __pgt_xid for the BRIN index that
# cdc/triggers.py now creates (same name, same definition as xid_index_statement).
_BRIN_EXISTING_BUFFERS = """
DO $do$
DECLARE
    b record;
BEGIN
    FOR b IN
        SELECT c.relname FROM pgtrickle.pgt_change_tracking t
          JOIN pg_class c ON c.relname = 'changes_' || t.source_stable_name
                         AND c.relnamespace = 'pgtrickle_changes'::regnamespace
    LOOP
        EXECUTE format('DROP INDEX IF EXISTS %I.%I', 'pgtrickle_changes', b.relname || '_xid');
        EXECUTE format('CREATE INDEX %I ON %I.%I USING brin ((((__pgt_xid)::text)::bigint)) '
                       'WITH (pages_per_range = 32, autosummarize = on)',
                       b.relname || '_xid', 'pgtrickle_changes', b.relname);
    END LOOP;
END
$do$;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "catalog tables", _V1),
    Migration(2, "settings, history columns and indexes, status view", _V2),
    Migration(
        3,
        "scheduler: heartbeat, notifications, pending probe, SLA summary, wake",
        _SCHEDULER + _WAKE_EXISTING_CAPTURE,
    ),
    Migration(
        4,
        "citus: placements, per-node import positions, worker slot health, citus_status",
        _CITUS_COLUMNS + _CITUS_VIEW,
    ),
    Migration(5, "scheduler: one pending-change probe per change buffer", _PENDING_PROBE),
    Migration(
        6,
        "change buffers: BRIN xid index, unlogged-buffer crash sentinel, pending probes",
        _CHANGE_BUFFERS + _BRIN_EXISTING_BUFFERS,
    ),
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
    distribution_column text,
    citus_colocated_with text,
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
    source_placement text NOT NULL DEFAULT 'local',
    distribution_column text,
    frontier_per_node jsonb NOT NULL DEFAULT '{}'::jsonb,
    shard_nodes jsonb NOT NULL DEFAULT '{}'::jsonb,
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
    node_id integer,
    created_lsn pg_lsn,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    flagged_at timestamptz,
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
    + _SCHEDULER
    + _CITUS_VIEW
    + _PENDING_PROBE
    + _CHANGE_BUFFERS
)
