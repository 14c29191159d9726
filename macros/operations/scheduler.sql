{#- dbt run-operation pgtrickle_scheduler --args '{action: start|stop|status}'
    Start, stop or inspect the scheduler daemon that keeps stream tables fresh on schedule. -#}
{% macro pgtrickle_scheduler(action='status', format='table') %}
  {%- do pgtrickle_require_adapter('pgtrickle_scheduler') -%}
  {%- if execute -%}
    {%- set report = adapter.pgtrickle_scheduler_report(action) -%}
    {%- do pgtrickle_print(report, format) -%}
    {{ return(report.table) }}
  {%- endif -%}
{% endmacro %}
