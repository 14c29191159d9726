{#- A window function. -#}
{{ config(refresh_mode='AUTO') }}
select id as order_id, customer_id, amount,
       rank() over (partition by customer_id order by amount desc, id) as amount_rank
from {{ ref('orders') }}
