{#- Fails (one row per problem) unless the model is a registered, populated stream table whose
    last refresh succeeded, whose change capture is intact, and (with max_staleness, a
    PostgreSQL interval such as '10 minutes') that was refreshed recently enough. -#}
{% test stream_table_healthy(model, max_staleness=none) %}
  {%- do pgtrickle_require_adapter('the stream_table_healthy test') -%}
  {%- set problems = [] -%}
  {%- if execute -%}
    {%- set state = adapter.pgtrickle_stream_table(model) -%}
    {%- if state is none -%}
      {%- do problems.append(model ~ ' is not a stream table') -%}
    {%- else -%}
      {%- for row in adapter.pgtrickle_capture_report(model).rows if not row.healthy -%}
        {%- do problems.append('capture of ' ~ row.source ~ ': ' ~ row.problem) -%}
      {%- endfor -%}
    {%- endif -%}
  {%- endif -%}
  {%- if problems or not execute %}
select problem from (values
  {%- for problem in problems %}
  ({{ pgtrickle_literal(problem) }}){{ ',' if not loop.last }}
  {%- else %}
  (null::text)
  {%- endfor %}
) as p (problem) where problem is not null
  {%- else %}
select problem from (
  select case
           when status <> 'ACTIVE' then 'status is ' || status
           when last_refresh_status = 'FAILED' then 'last refresh failed: ' || coalesce(last_error, 'unknown error')
           {%- if max_staleness %}
           when staleness > interval {{ pgtrickle_literal(max_staleness) }} then 'last refreshed ' || staleness::text || ' ago'
           {%- endif %}
         end as problem
  from pgtrickle.stream_tables
  where pgt_schema = {{ pgtrickle_literal(model.schema) }} and pgt_name = {{ pgtrickle_literal(model.identifier) }}
) as p
where problem is not null
  {%- endif %}
{% endtest %}
