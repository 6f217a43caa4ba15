with

source as (
    select * from {{ source('gold', 'fct_order_items') }}
),

renamed as (
    select
        order_item_id,
        order_id,
        product_id,
        customer_id,
        status,
        category,
        quantity,
        unit_price,
        line_amount,
        has_order,
        order_date
    from source
)

select * from renamed
