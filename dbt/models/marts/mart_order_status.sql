-- delete+insert replaces only the orders a run brings: the post-hook takes out the orders
-- the source deleted (gone from staging), so the mart never keeps what silver dropped.
-- The enforced contract needs a schema change policy: a column added to the model later is
-- appended to the table a warehouse already holds, so the next build goes on.
{{
    config(
        materialized='incremental',
        unique_key='order_id',
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        post_hook="delete from {{ this }} where order_id not in (select order_id from {{ ref('stg_orders') }})"
    )
}}

-- New orders and newer versions of known ones, whatever their timestamps: comparing with
-- what this table holds (rather than with its newest timestamp) keeps late data correct.
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
where not exists (
    select 1
    from {{ this }} as held
    where held.order_id = orders.order_id
      and held.updated_at >= orders.updated_at
)
{% endif %}
