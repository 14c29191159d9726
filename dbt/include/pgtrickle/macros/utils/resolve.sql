{#- The relation of a stream_table model named `model_name` in this project, or the relation
    `schema.name` when the name is qualified. -#}
{% macro pgtrickle_resolve(model_name) %}
  {%- if model_name is none or model_name == '' -%}
    {{ exceptions.raise_compiler_error("model_name is required, e.g. --args '{model_name: my_stream_table}'") }}
  {%- endif -%}
  {%- if '.' in model_name -%}
    {%- set parts = model_name.split('.') -%}
    {{ return(api.Relation.create(schema=parts[-2], identifier=parts[-1], type='table')) }}
  {%- endif -%}
  {%- for node in graph.nodes.values() if node.resource_type == 'model' and node.name == model_name -%}
    {%- if node.config.materialized != 'stream_table' -%}
      {{ exceptions.raise_compiler_error("model " ~ model_name ~ " is materialized as "
          ~ node.config.materialized ~ ", not stream_table") }}
    {%- endif -%}
    {{ return(api.Relation.create(database=node.database, schema=node.schema,
                                  identifier=node.alias, type='table')) }}
  {%- endfor -%}
  {{ exceptions.raise_compiler_error("no model named " ~ model_name
      ~ " in this project; pass a stream_table model name or schema.name") }}
{% endmacro %}

{#- The relations of every stream_table model of this project. -#}
{% macro pgtrickle_project_stream_tables() %}
  {%- set found = [] -%}
  {%- for node in graph.nodes.values() if node.resource_type == 'model'
        and node.config.materialized == 'stream_table' -%}
    {%- do found.append(api.Relation.create(database=node.database, schema=node.schema,
                                            identifier=node.alias, type='table')) -%}
  {%- endfor -%}
  {{ return(found) }}
{% endmacro %}

{% macro pgtrickle_print(report, format) %}
  {%- if execute -%}
    {{ print(report.render(format)) }}
  {%- endif -%}
{% endmacro %}

{% macro pgtrickle_literal(text) -%}
  '{{ text | replace("'", "''") }}'
{%- endmacro %}
