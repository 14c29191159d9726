{#- dbt's other materializations replace a relation by renaming it out of the way (table, view,
    incremental --full-refresh) or by dropping it. When that relation is a stream table, the
    stream table is dropped through the runtime instead, so no catalog row, capture trigger or
    change buffer outlives its table. -#}

{% macro pgtrickle__rename_relation(from_relation, to_relation) -%}
  {%- if from_relation.is_table and adapter.pgtrickle_stream_table(from_relation) is not none -%}
    {%- do pgtrickle_check_no_readers(from_relation, 'replace stream table ' ~ from_relation) -%}
    {{ log("Stream table " ~ from_relation ~ " is replaced by another materialization: dropping the stream table", info=True) }}
    {%- do adapter.pgtrickle_drop(from_relation) -%}
  {%- else -%}
    {{ default__rename_relation(from_relation, to_relation) }}
  {%- endif -%}
{%- endmacro %}

{% macro pgtrickle__drop_relation(relation) -%}
  {%- if relation.is_table and adapter.pgtrickle_stream_table(relation) is not none -%}
    {%- do adapter.pgtrickle_drop(relation) -%}
  {%- else -%}
    {{ default__drop_relation(relation) }}
  {%- endif -%}
{%- endmacro %}

{% macro pgtrickle__drop_schema(relation) -%}
  {%- do adapter.pgtrickle_drop_in_schema(relation) -%}
  {{ postgres__drop_schema(relation) }}
{%- endmacro %}
