{#- An ordinary table built on a stream table: it must see the stream table refreshed in the
    same dbt run. -#}
{{ config(materialized='table') }}
select region, orders, revenue from {{ ref('region_revenue') }}
