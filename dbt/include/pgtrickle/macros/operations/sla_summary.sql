{#- dbt run-operation pgtrickle_sla_summary [--args '{window_hours: 24, format: json}']
    Per stream table over the window (default: setting sla_window_hours): refreshes, failures,
    p50/p99 refresh duration, freshness lag, error rate and error budget remaining. Returns the
    agate table. -#}
{% macro pgtrickle_sla_summary(window_hours=none, format='table') %}
  {%- do pgtrickle_require_adapter('pgtrickle_sla_summary') -%}
  {%- set report = adapter.pgtrickle_sla_report(window_hours) -%}
  {%- do pgtrickle_print(report, format) -%}
  {{ return(report.table) }}
{% endmacro %}
