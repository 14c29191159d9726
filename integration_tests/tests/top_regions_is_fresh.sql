-- top_regions (a table built after region_revenue in the same run) equals the live query.
with live as (
  select c.region, count(*) as orders, sum(o.amount) as revenue
  from {{ ref('orders') }} as o join {{ ref('customers') }} as c on c.id = o.customer_id
  group by c.region
), built as (
  select region, orders, revenue from {{ ref('top_regions') }}
)
(select 'missing' as problem, * from (select * from live except all select * from built) as m)
union all
(select 'extra' as problem, * from (select * from built except all select * from live) as e)
