{#- A projection of a source without a primary key, read by nothing else. -#}
select sku, title, price from {{ ref('products') }}
