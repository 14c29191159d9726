{#- An outer join with an aggregate on top: customers without orders keep a row. -#}
{{ config(refresh_mode='AUTO') }}
select c.id as customer_id, c.name, count(o.id) as orders, coalesce(sum(o.amount), 0) as total
from {{ ref('customers') }} as c
left join {{ ref('orders') }} as o on o.customer_id = c.id
group by c.id, c.name
