{#- An inner join of two sources. -#}
{{ config(refresh_mode='AUTO') }}
select o.id as order_id, o.amount, o.status, c.id as customer_id, c.name, c.region
from {{ ref('orders') }} as o
join {{ ref('customers') }} as c on c.id = o.customer_id
