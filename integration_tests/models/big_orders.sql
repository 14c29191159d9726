{#- A filtered projection with a contract and grants; the scenario also switches it to a table
    and back (var big_orders_materialized). -#}
{{ config(
    materialized=var('big_orders_materialized', 'stream_table'),
    refresh_mode='DIFFERENTIAL',
    contract={'enforced': true},
    grants={'select': [var('reader_role')]} if var('reader_role', none) else {},
) }}
select id, customer_id, amount
from {{ ref('orders') }}
where amount >= 100
