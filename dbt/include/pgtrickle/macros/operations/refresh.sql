{#- dbt run-operation pgtrickle_refresh --args '{model_name: NAME, full: false, format: table}'
    Refresh one stream table now (a model name of this project, or schema.name). -#}
{% macro pgtrickle_refresh(model_name=none, full=false, format='table') %}
  {%- do pgtrickle_require_adapter('pgtrickle_refresh') -%}
  {%- if execute -%}
    {%- set report = adapter.pgtrickle_refresh_report([pgtrickle_resolve(model_name)], full=full) -%}
    {%- do pgtrickle_print(report, format) -%}
    {{ return(report.table) }}
  {%- endif -%}
{% endmacro %}
