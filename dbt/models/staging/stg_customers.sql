with

source as (
    select * from {{ source('gold', 'dim_customers') }}
),

renamed as (
    select
        customer_key,
        customer_id,
        version,
        city,
        country,
        created_at as registered_at,
        valid_from,
        valid_to,
        is_current
    from source
)

select * from renamed
