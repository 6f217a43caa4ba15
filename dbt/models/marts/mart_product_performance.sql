with

products as (
    select * from {{ ref('stg_products') }}
),

sold as (
    select
        product_id,
        -- DuckDB sums bigints to a 128-bit hugeint; the contract, and BI tools, take a bigint.
        cast(sum(units_sold) as bigint) as units_sold,
        cast(sum(orders) as bigint) as orders,
        sum(revenue) as revenue
    from {{ ref('int_product_sales_daily') }}
    group by product_id
)

select
    products.product_id,
    products.sku,
    products.product_name,
    products.category,
    products.price,
    coalesce(sold.units_sold, 0) as units_sold,
    coalesce(sold.orders, 0) as orders,
    coalesce(sold.revenue, 0) as revenue,
    rank() over (partition by products.category order by coalesce(sold.revenue, 0) desc) as revenue_rank_in_category
from products
left join sold using (product_id)
