{#- dbt run-operation pgtrickle_drop_all [--args '{scope: database}']
    Drop the stream tables of this project's stream_table models (scope: project, the default)
    or every stream table of the database (scope: database), readers before what they read. -#}
{% macro pgtrickle_drop_all(scope='project', format='table') %}
  {%- do pgtrickle_require_adapter('pgtrickle_drop_all') -%}
  {%- if execute -%}
    {%- if scope == 'database' -%}
      {%- set report = adapter.pgtrickle_drop_all_report(none) -%}
    {%- elif scope == 'project' -%}
      {%- set names = [] -%}
      {%- for relation in pgtrickle_project_stream_tables() -%}
        {%- do names.append(relation.schema ~ '.' ~ relation.identifier) -%}
      {%- endfor -%}
      {%- set report = adapter.pgtrickle_drop_all_report(names) -%}
    {%- else -%}
      {{ exceptions.raise_compiler_error("pgtrickle_drop_all: invalid scope '" ~ scope ~ "'; allowed: project, database") }}
    {%- endif -%}
    {%- do pgtrickle_print(report, format) -%}
    {{ return(report.table) }}
  {%- endif -%}
{% endmacro %}
