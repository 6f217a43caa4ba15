with

orders as (
    select * from {{ ref('stg_orders') }}
),

customers as (
    select * from {{ ref('stg_customers') }}
    where is_current
),

per_customer as (
    select
        customer_id,
        count(*) as orders,
        coalesce(sum(total_amount) filter (where not is_cancelled), 0) as lifetime_value,
        min(ordered_at) as first_order_at,
        max(ordered_at) as last_order_at
    from orders
    group by customer_id
),

scored as (
    select
        *,
        -- Many customers tie (same number of orders): customer_id decides which quintile a tie
        -- falls in, so a rebuild from the same data gives every customer the same scores.
        ntile(5) over (order by last_order_at, customer_id) as recency_score,
        ntile(5) over (order by orders, customer_id) as frequency_score,
        ntile(5) over (order by lifetime_value, customer_id) as monetary_score
    from per_customer
)

select
    scored.customer_id,
    customers.city,
    customers.country,
    scored.orders,
    scored.lifetime_value,
    scored.first_order_at,
    scored.last_order_at,
    scored.recency_score,
    scored.frequency_score,
    scored.monetary_score,
    case
        when recency_score >= 4 and frequency_score >= 4 and monetary_score >= 4 then 'champion'
        when recency_score >= 4 and frequency_score <= 2 then 'new'
        when recency_score >= 3 and frequency_score >= 3 then 'loyal'
        when recency_score <= 2 and frequency_score >= 3 then 'at_risk'
        else 'hibernating'
    end as rfm_segment
from scored
left join customers using (customer_id)
