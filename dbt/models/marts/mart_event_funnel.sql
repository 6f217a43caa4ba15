with

funnel as (
    select * from {{ ref('stg_funnel_daily') }}
)

select
    event_date,
    viewers,
    clickers,
    purchasers,
    round(clickers / nullif(viewers, 0), 4) as view_to_click,
    round(purchasers / nullif(clickers, 0), 4) as click_to_purchase,
    round(purchasers / nullif(viewers, 0), 4) as view_to_purchase,
    -- DuckDB sums bigints to a 128-bit hugeint; the contract, and BI tools, take a bigint.
    cast(sum(purchasers) over last_7_days as bigint) as purchasers_7d,
    cast(sum(viewers) over last_7_days as bigint) as viewers_7d
from funnel
window last_7_days as (order by event_date range between interval 6 days preceding and current row)
