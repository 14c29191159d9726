{#- An aggregate over one source: maintained differentially (the scenario asserts DIFFERENTIAL
    refreshes in the history). -#}
{{ config(
    refresh_mode=var('orders_by_status_mode', 'DIFFERENTIAL'),
    schedule=var('orders_by_status_schedule', '1m'),
    on_configuration_change=var('on_configuration_change', 'apply'),
    indexes=[{'columns': ['status'], 'unique': true}],
) }}
select status, count(*) as orders, sum(amount) as revenue, min(amount) as smallest, max(amount) as largest
from {{ ref('orders') }}
group by status
