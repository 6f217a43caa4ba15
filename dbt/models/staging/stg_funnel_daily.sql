with

source as (
    select * from {{ source('gold', 'funnel_daily') }}
),

renamed as (
    select
        event_date,
        viewers,
        clickers,
        purchasers
    from source
)

select * from renamed
