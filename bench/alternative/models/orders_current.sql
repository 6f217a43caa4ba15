-- The newest version of each order: what silver/orders holds, without its validation,
-- quarantine and PII hashing (the alternative does less work, not more).
{{ config(materialized='incremental', unique_key='order_id', incremental_strategy='merge') }}

with changes as (
    select
        order_id,
        customer_id,
        status,
        cast(total_amount as decimal(12, 2)) as total_amount,
        currency,
        cast(created_at as timestamptz) as created_at,
        cast(updated_at as timestamptz) as updated_at,
        _extracted_at
    from {{ source('bronze', 'orders') }}
    {% if is_incremental() %}
    where _extracted_at > (select max(_extracted_at) from {{ this }})
    {% endif %}
)

select * exclude (row_number)
from (
    select *, row_number() over (partition by order_id order by updated_at desc, _extracted_at desc) as row_number
    from changes
)
where row_number = 1
