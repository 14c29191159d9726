{#- dbt run-operation pgtrickle_explain --args '{model_name: NAME, format: json}'
    The operator tree with each operator's delta cost, the fallback reason and the generated
    SQL. format: table (readable text, the default) or json. -#}
{% macro pgtrickle_explain(model_name=none, format='table') %}
  {%- do pgtrickle_require_adapter('pgtrickle_explain') -%}
  {%- if execute -%}
    {%- set relation = pgtrickle_resolve(model_name) -%}
    {%- set report = adapter.pgtrickle_explain_report(relation) -%}
    {%- do pgtrickle_print(report, 'table' if format == 'text' else format) -%}
    {{ return(report.table) }}
  {%- endif -%}
{% endmacro %}
