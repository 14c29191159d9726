{#-
  materialized='stream_table': a table kept up to date incrementally by dbt-pgtrickle.

  First run: create (and populate unless initialize=false). Later runs compare the model with the
  catalog (sha256 of the compiled SQL as stored at creation, schedule, refresh_mode, indexes, ...):
  nothing changed -> refresh it, so models built on it in this run see fresh data; something
  changed -> on_configuration_change: apply (alter in place: a new query is built beside the old
  table and swapped in within one transaction), continue (warn, keep it, refresh it) or fail.
  --full-refresh applies every change and recomputes the table in full, in place.

  Stream-table work runs on the runtime's own connection and commits there; everything dbt's
  connection has open is committed before each runtime call (see the adapter's impl.py).
-#}
{% materialization stream_table, default %}
  {%- do pgtrickle_require_adapter('the stream_table materialization') -%}

  {%- set target_relation = this.incorporate(type='table') -%}
  {%- set existing_relation = load_cached_relation(this) -%}

  {#- dbt run --empty: refs compile to empty subqueries, which must never become a stream table's
      definition. Check that the SQL runs, leave an existing relation alone, and otherwise create
      an empty plain table for the models built on this one (the next real run replaces it). -#}
  {%- if flags.EMPTY -%}
    {%- call statement('main') -%}
      {%- if existing_relation is none -%}
        {{ get_create_table_as_sql(False, target_relation, sql) }}
      {%- else -%}
        select * from ({{ sql }}) as pgt_empty_check limit 0
      {%- endif -%}
    {%- endcall -%}
    {%- do adapter.pgtrickle_finish_dbt_transaction() -%}
    {{ return({'relations': [target_relation]}) }}
  {%- endif -%}
  {%- set full_refresh_mode = should_full_refresh() -%}
  {%- set grant_config = config.get('grants') -%}
  {%- set cfg = adapter.pgtrickle_config(model.name, {
        'schedule': config.get('schedule'),
        'refresh_mode': config.get('refresh_mode'),
        'initialize': config.get('initialize'),
        'cdc_mode': config.get('cdc_mode'),
        'on_configuration_change': config.get('on_configuration_change'),
        'indexes': config.get('indexes'),
        'placement': config.get('placement'),
        'distribution_column': config.get('distribution_column'),
      }) -%}

  {{ run_hooks(pre_hooks, inside_transaction=False) }}
  {{ run_hooks(pre_hooks, inside_transaction=True) }}

  {%- set contract_config = config.get('contract') -%}
  {%- if contract_config.enforced -%}
    {{ get_assert_columns_equivalent(sql) }}
  {%- endif -%}

  {%- set state = adapter.pgtrickle_stream_table(target_relation) -%}
  {%- set outcome = {'built': false, 'message': '', 'refresh': none} -%}

  {%- if state is none -%}
    {%- if existing_relation is not none -%}
      {%- do pgtrickle_check_no_readers(existing_relation, 'replace ' ~ existing_relation.type ~ ' ' ~ existing_relation ~ ' with a stream table') -%}
      {{ log("Replacing " ~ existing_relation.type ~ " " ~ existing_relation ~ " with a stream table", info=True) }}
      {%- do adapter.drop_relation(existing_relation) -%}
    {%- endif -%}
    {%- set created = adapter.pgtrickle_create(target_relation, sql, cfg) -%}
    {%- do outcome.update({'built': true, 'message': 'CREATE STREAM TABLE ' ~ created.effective_mode}) -%}
  {%- else -%}
    {%- set changes = adapter.pgtrickle_config_changes(target_relation, sql, cfg) -%}
    {%- set rebuild_changes = changes | selectattr('how', 'equalto', 'rebuild') | list -%}
    {%- set change_list = pgtrickle_describe_changes(changes) -%}

    {#- A source dropped and created again (lost capture) needs nothing here: the refresh below
        reinstalls its capture and recomputes every stream table reading it. -#}
    {%- if existing_relation is none or (rebuild_changes and full_refresh_mode) -%}
      {%- if existing_relation is none -%}
        {%- set why = 'it is registered but its table is missing' -%}
      {%- else -%}
        {%- set why = pgtrickle_describe_changes(rebuild_changes) -%}
      {%- endif -%}
      {%- do pgtrickle_check_no_readers(target_relation, 'rebuild stream table ' ~ target_relation ~ ' (' ~ why ~ ')') -%}
      {{ log("Rebuilding stream table " ~ target_relation ~ ": " ~ why, info=True) }}
      {%- do adapter.pgtrickle_drop(target_relation) -%}
      {%- set created = adapter.pgtrickle_create(target_relation, sql, cfg) -%}
      {%- do outcome.update({'built': true, 'recreated': true, 'message': 'RECREATE STREAM TABLE ' ~ created.effective_mode}) -%}
    {%- elif changes -%}
      {%- set policy = cfg.on_configuration_change -%}
      {%- if full_refresh_mode or policy == 'apply' -%}
        {%- if rebuild_changes -%}
          {{ exceptions.raise_compiler_error("stream_table model " ~ model.name ~ ": "
              ~ pgtrickle_describe_changes(rebuild_changes)
              ~ " cannot be changed in place; rebuild it with `dbt run --full-refresh -s "
              ~ model.name ~ "`") }}
        {%- endif -%}
        {{ log("Applying configuration changes to stream table " ~ target_relation ~ ": " ~ change_list, info=True) }}
        {%- set altered = adapter.pgtrickle_alter(target_relation, sql, cfg, changes) -%}
        {%- set query_changed = changes | selectattr('key', 'equalto', 'query') | list | length > 0 -%}
        {%- do outcome.update({'built': query_changed, 'message': 'ALTER STREAM TABLE', 'indexes': true}) -%}
      {%- elif policy == 'continue' -%}
        {{ exceptions.warn("stream_table model " ~ model.name ~ " differs from stream table "
            ~ target_relation ~ " (" ~ change_list ~ "); on_configuration_change is 'continue', "
            ~ "so it is kept as it is") }}
        {%- do outcome.update({'message': 'KEEP STREAM TABLE'}) -%}
      {%- else -%}
        {{ exceptions.raise_compiler_error("stream_table model " ~ model.name ~ " differs from stream table "
            ~ target_relation ~ " (" ~ change_list ~ ") and on_configuration_change is 'fail'; "
            ~ "set it to 'apply' or run with --full-refresh to change the stream table") }}
      {%- endif -%}
    {%- else -%}
      {%- do outcome.update({'message': 'STREAM TABLE UNCHANGED'}) -%}
    {%- endif -%}

    {#- Refresh now, so the models built on this one in this run read fresh data. A stream table
        created with initialize=false stays empty until its first refresh is asked for. -#}
    {%- if not outcome.get('recreated') and (state.status != 'INITIALIZING' or full_refresh_mode) -%}
      {%- do outcome.update({'refresh': adapter.pgtrickle_refresh(target_relation, full=full_refresh_mode)}) -%}
    {%- endif -%}
  {%- endif -%}

  {%- if outcome.built or outcome.get('indexes') -%}
    {%- do adapter.pgtrickle_sync_indexes(target_relation, cfg) -%}
  {%- endif -%}
  {%- if outcome.built and contract_config.enforced -%}
    {%- do pgtrickle_add_constraints(target_relation) -%}
  {%- endif -%}

  {{ run_hooks(post_hooks, inside_transaction=True) }}
  {%- do apply_grants(target_relation, grant_config, should_revoke=not outcome.built) -%}
  {%- do persist_docs(target_relation, model) -%}
  {%- do adapter.pgtrickle_finish_dbt_transaction() -%}
  {{ run_hooks(post_hooks, inside_transaction=False) }}

  {%- set refreshed = outcome.refresh -%}
  {%- if refreshed is not none -%}
    {%- set rows = (refreshed.rows_inserted or 0) + (refreshed.rows_updated or 0) + (refreshed.rows_deleted or 0) -%}
    {%- set message = outcome.message ~ ', REFRESH ' ~ refreshed.action ~ ((' ' ~ rows ~ ' rows') if refreshed.action != 'NO_DATA' else '') -%}
  {%- else -%}
    {%- set message = outcome.message -%}
    {%- set rows = none -%}
  {%- endif -%}
  {%- do store_raw_result('main', message=message, code=outcome.message, rows_affected=rows) -%}
  {{ return({'relations': [target_relation]}) }}
{% endmaterialization %}


{% macro pgtrickle_describe_changes(changes) -%}
  {%- set parts = [] -%}
  {%- for change in changes -%}
    {%- do parts.append(change.describe()) -%}
  {%- endfor -%}
  {{- parts | join('; ') -}}
{%- endmacro %}


{#- Fail when stream tables read `relation`: dropping it would take their change capture away. -#}
{% macro pgtrickle_check_no_readers(relation, doing) %}
  {%- set readers = adapter.pgtrickle_readers(relation) -%}
  {%- if readers -%}
    {{ exceptions.raise_compiler_error("cannot " ~ doing ~ ": stream table(s) "
        ~ readers | join(', ') ~ " read it; drop them first (dbt run-operation pgtrickle_drop_all) "
        ~ "and build them again") }}
  {%- endif -%}
{% endmacro %}


{#- A model contract's constraints, added to a stream table that was just built. -#}
{% macro pgtrickle_add_constraints(relation) %}
  {%- for ddl in adapter.pgtrickle_constraint_statements(relation, model.columns, model.constraints) -%}
    {%- call statement('pgtrickle_constraint') -%}
      {{ ddl }}
    {%- endcall -%}
  {%- endfor -%}
{% endmacro %}
