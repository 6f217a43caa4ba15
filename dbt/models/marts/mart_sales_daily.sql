with

orders as (
    select * from {{ ref('stg_orders') }}
),

revenue as (
    select * from {{ ref('stg_daily_revenue') }}
),

daily_orders as (
    select
        order_date,
        count(*) as orders,
        count(*) filter (where not is_cancelled) as paid_orders
    from orders
    group by order_date
),

-- Revenue is gold's (daily_revenue), never derived here again: a day is the sum of its categories.
daily_revenue as (
    select
        order_date,
        sum(units) as units,
        sum(gross_revenue) as gross_revenue,
        sum(cancelled_revenue) as cancelled_revenue
    from revenue
    group by order_date
)

-- A full join: a day with revenue keeps it even with no order of that day in staging.
select
    order_date,
    coalesce(daily_orders.orders, 0) as orders,
    coalesce(daily_orders.paid_orders, 0) as paid_orders,
    -- DuckDB sums bigints to a 128-bit hugeint; the contract, and BI tools, take a bigint.
    cast(coalesce(daily_revenue.units, 0) as bigint) as units,
    coalesce(daily_revenue.gross_revenue, 0) as gross_revenue,
    coalesce(daily_revenue.cancelled_revenue, 0) as cancelled_revenue,
    round(coalesce(daily_revenue.gross_revenue, 0) / nullif(daily_orders.paid_orders, 0), 2) as average_order_value
from daily_orders
full join daily_revenue using (order_date)
