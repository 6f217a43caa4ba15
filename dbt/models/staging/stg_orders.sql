with

source as (
    select * from {{ source('gold', 'fct_orders') }}
),

renamed as (
    select
        order_id,
        customer_key,
        customer_id,
        status,
        is_cancelled,
        total_amount,
        item_count,
        quantity as units,
        order_date,
        created_at as ordered_at,
        updated_at
    from source
)

select * from renamed
