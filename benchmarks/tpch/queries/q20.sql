-- Q20 potential part promotion: Canadian suppliers with surplus stock of "forest" parts.
select
    s.s_name,
    s.s_address
from supplier s, nation n
where s.s_suppkey in (
      select ps.ps_suppkey
      from partsupp ps
      where ps.ps_partkey in (select p.p_partkey from part p where p.p_name like 'forest%')
        and ps.ps_availqty > (
            select 0.5 * sum(l.l_quantity)
            from lineitem l
            where l.l_partkey = ps.ps_partkey
              and l.l_suppkey = ps.ps_suppkey
              and l.l_shipdate >= date '1994-01-01'
              and l.l_shipdate < date '1995-01-01'
        )
  )
  and s.s_nationkey = n.n_nationkey
  and n.n_name = 'CANADA'
