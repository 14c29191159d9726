{#- Fails (one row per differing row) unless the stream table equals its defining query as a
    multiset: symmetric EXCEPT ALL over the visible columns. `query` compares with another SQL
    text instead of the one the catalog stores. -#}
{% test stream_table_matches_query(model, query=none) %}
  {%- do pgtrickle_require_adapter('the stream_table_matches_query test') -%}
  {%- set state = adapter.pgtrickle_stream_table(model) if execute else none -%}
  {%- if state is none %}
select {{ pgtrickle_literal(model ~ ' is not a stream table') }} as pgt_problem where {{ 'true' if execute else 'false' }}
  {%- else -%}
  {%- set columns = [] -%}
  {%- for name in adapter.pgtrickle_visible_columns(model) -%}
    {%- do columns.append(adapter.quote(name)) -%}
  {%- endfor -%}
  {%- set column_list = columns | join(', ') %}
with stream_table as (
  select {{ column_list }} from {{ model }}
), defining_query as (
  select {{ column_list }} from (
{{ query or state.original_query }}
  ) as pgt_query
), missing as (
  select * from defining_query except all select * from stream_table
), extra as (
  select * from stream_table except all select * from defining_query
)
select 'missing from the stream table' as pgt_problem, * from missing
union all
select 'not in the query result' as pgt_problem, * from extra
  {%- endif %}
{% endtest %}
