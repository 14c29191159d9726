-- Q4 order priority checking: orders of 1993-Q3 with at least one line received after its commit date.
select
    o_orderpriority,
    count(*) as order_count
from orders o
where o.o_orderdate >= date '1993-07-01'
  and o.o_orderdate < date '1993-10-01'
  and exists (
      select 1 from lineitem l
      where l.l_orderkey = o.o_orderkey
        and l.l_commitdate < l.l_receiptdate
  )
group by o_orderpriority
