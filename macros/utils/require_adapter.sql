{#- The Jinja of dbt-pgtrickle calls the runtime through the pgtrickle adapter. With any other
    profile type, fail with what to do rather than with a missing-method error. -#}
{% macro pgtrickle_require_adapter(what) %}
  {%- if adapter.type() != 'pgtrickle' -%}
    {{ exceptions.raise_compiler_error(
        what ~ " needs the dbt-pgtrickle adapter, but this profile's type is '" ~ adapter.type()
        ~ "'. Install it with `pip install 'dbt-pgtrickle[dbt]'` and set `type: pgtrickle` in the "
        ~ "target of profiles.yml (it takes every postgres setting: host, port, user, password, "
        ~ "dbname, schema, ...).") }}
  {%- endif -%}
{% endmacro %}
