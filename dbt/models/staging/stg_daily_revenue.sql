with

source as (
    select * from {{ source('gold', 'daily_revenue') }}
),

renamed as (
    select
        order_date,
        category,
        orders,
        paid_orders,
        items as units,
        gross_revenue,
        cancelled_revenue,
        average_order_value
    from source
)

select * from renamed
