{#- dbt run-operation pgtrickle_check_cdc_health [--args '{fail_on_problem: false}']
    Change capture of every captured source: triggers in place, change rows waiting, readers.
    Fails (exit status 1) when a source's capture is broken, unless fail_on_problem is false. -#}
{% macro pgtrickle_check_cdc_health(format='table', fail_on_problem=true) %}
  {%- do pgtrickle_require_adapter('pgtrickle_check_cdc_health') -%}
  {%- if execute -%}
    {%- set report = adapter.pgtrickle_capture_report() -%}
    {%- do pgtrickle_print(report, format) -%}
    {%- set broken = report.rows | selectattr('healthy', 'equalto', false) | list -%}
    {%- if broken and fail_on_problem -%}
      {%- set lines = [] -%}
      {%- for row in broken -%}
        {%- do lines.append(row.source ~ ': ' ~ row.problem) -%}
      {%- endfor -%}
      {{ exceptions.raise_compiler_error("change capture is broken for " ~ lines | join('; ')
          ~ ". Run `dbt run -s <the stream tables reading it>` to rebuild them.") }}
    {%- endif -%}
    {{ return(report.table) }}
  {%- endif -%}
{% endmacro %}
