with

source as (
    select * from {{ source('gold', 'dim_products') }}
),

renamed as (
    select
        product_id,
        sku,
        name as product_name,
        category,
        price,
        updated_at
    from source
)

select * from renamed
