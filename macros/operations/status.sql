{#- dbt run-operation pgtrickle_status [--args '{format: json}']
    Every stream table: modes, status, staleness, last refresh action and error; and the state
    of the scheduler daemon. Returns the agate table. -#}
{% macro pgtrickle_status(format='table') %}
  {%- do pgtrickle_require_adapter('pgtrickle_status') -%}
  {%- set report = adapter.pgtrickle_status_report() -%}
  {%- do pgtrickle_print(report, format) -%}
  {{ return(report.table) }}
{% endmacro %}
