with

orders as (
    select * from {{ ref('stg_orders') }}
),

order_lines as (
    select * from {{ ref('stg_order_items') }}
    where has_order
),

daily_orders as (
    select
        order_date,
        count(*) as orders,
        count(*) filter (where not is_cancelled) as paid_orders
    from orders
    group by order_date
),

daily_lines as (
    select
        order_date,
        sum(quantity) as units,
        sum(line_amount) filter (where status <> 'cancelled') as gross_revenue,
        sum(line_amount) filter (where status = 'cancelled') as cancelled_revenue
    from order_lines
    group by order_date
)

select
    daily_orders.order_date,
    daily_orders.orders,
    daily_orders.paid_orders,
    coalesce(daily_lines.units, 0) as units,
    coalesce(daily_lines.gross_revenue, 0) as gross_revenue,
    coalesce(daily_lines.cancelled_revenue, 0) as cancelled_revenue,
    round(coalesce(daily_lines.gross_revenue, 0) / nullif(daily_orders.paid_orders, 0), 2) as average_order_value
from daily_orders
left join daily_lines using (order_date)
