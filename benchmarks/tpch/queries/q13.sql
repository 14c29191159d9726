-- Q13 customer distribution: how many customers have placed how many (non-complaint) orders.
select
    c_count,
    count(*) as custdist
from (
    select c.c_custkey as cust_key, count(o.o_orderkey) as c_count
    from customer c
    left join orders o
        on c.c_custkey = o.o_custkey
       and o.o_comment not like '%special%requests%'
    group by c.c_custkey
) as c_orders
group by c_count
