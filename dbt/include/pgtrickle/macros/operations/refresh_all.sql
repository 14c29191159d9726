{#- dbt run-operation pgtrickle_refresh_all [--args '{full: true, format: json}']
    Refresh every stream table of the database, each after the stream tables it reads. -#}
{% macro pgtrickle_refresh_all(full=false, format='table') %}
  {%- do pgtrickle_require_adapter('pgtrickle_refresh_all') -%}
  {%- if execute -%}
    {%- set report = adapter.pgtrickle_refresh_all_report(full=full) -%}
    {%- do pgtrickle_print(report, format) -%}
    {{ return(report.table) }}
  {%- endif -%}
{% endmacro %}
