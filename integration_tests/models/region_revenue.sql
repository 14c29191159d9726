{#- A stream table on a stream table. -#}
{{ config(refresh_mode='AUTO') }}
select region, count(*) as orders, sum(amount) as revenue
from {{ ref('customer_orders') }}
group by region
