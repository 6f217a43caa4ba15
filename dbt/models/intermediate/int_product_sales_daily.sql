-- What mart_product_performance adds up, kept per day: a build after a batch aggregates the order
-- lines of the days gold rebuilt in fct_order_items, not every line. delete+insert replaces
-- those days, and the post-hook takes out the ones that no longer sell anything (every order
-- of the day cancelled or deleted). Gold rebuilds a day whenever one of its orders changes.
{{
    config(
        materialized='incremental',
        unique_key='order_date',
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        post_hook="{{ delete_what_rebuilt_days_lost(
            'fct_order_items', 'order_date', 'order_date', ref('stg_order_items'),
            condition=\"has_order and status <> 'cancelled'\") }}"
    )
}}

with

sold as (
    select * from {{ ref('stg_order_items') }}
    where has_order and status <> 'cancelled'
    {% if is_incremental() %}
        and order_date in {{ rebuilt_days('fct_order_items') }}
    {% endif %}
)

select
    product_id,
    order_date,
    -- DuckDB sums bigints to a 128-bit hugeint; a bigint is what the mart takes.
    cast(sum(quantity) as bigint) as units_sold,
    -- An order's lines all fall on its day, so the days' counts add up to the product's orders.
    count(distinct order_id) as orders,
    sum(line_amount) as revenue
from sold
group by product_id, order_date
