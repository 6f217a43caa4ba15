-- delete+insert replaces the orders of the days gold rebuilt since the last build, and the
-- post-hook takes out the orders those days no longer hold (the source deleted them), so the
-- mart never keeps what silver dropped. Gold rebuilds a day whenever one of its orders changes,
-- late ones too: the rest of the mart is as the last build left it.
-- The enforced contract needs a schema change policy: a column added to the model later is
-- appended to the table a warehouse already holds, so the next build goes on.
{{
    config(
        materialized='incremental',
        unique_key='order_id',
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        post_hook="{{ delete_what_rebuilt_days_lost('fct_orders', 'order_date', 'order_id', ref('stg_orders')) }}"
    )
}}

with

orders as (
    select * from {{ ref('stg_orders') }}
)

select
    order_id,
    customer_id,
    status,
    is_cancelled,
    total_amount,
    order_date,
    updated_at
from orders
{% if is_incremental() %}
where order_date in {{ rebuilt_days('fct_orders') }}
{% endif %}
