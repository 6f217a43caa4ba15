"""Gold assets, one per table in `GOLD_TABLES` whose silver inputs the contracts define."""

import time

import dagster as dg

from lakehouse.gold.backfill import Backfill
from lakehouse.gold.build import backfill, build_gold
from lakehouse.gold.tables import GOLD_TABLES, GoldTable
from lakehouse.orchestration import metadata
from lakehouse.resources import LakehouseStorage
from lakehouse.silver.assets import silver_assets
from lakehouse.sources.contract import Contract

LISTED_PERIODS = 20


def _column_lineage(table: GoldTable) -> dg.TableColumnLineage:
    return dg.TableColumnLineage(
        deps_by_column={
            column: [dg.TableColumnDep(asset_key=dg.AssetKey(["silver", source]), column_name=source_column)]
            for column, (source, source_column) in table.lineage.items()
        }
    )


def _gold_asset(table: GoldTable) -> dg.AssetsDefinition:
    @dg.asset(
        key=["gold", table.name],
        group_name="gold",
        kinds={"deltalake", "polars"},
        deps=[["silver", upstream] for upstream in table.upstream],
        description=table.description,
        automation_condition=dg.AutomationCondition.eager(),
    )
    def gold_table(
        context: dg.AssetExecutionContext, config: Backfill, lakehouse: LakehouseStorage
    ) -> dg.MaterializeResult:
        started = time.monotonic()
        days = config.days()
        built = (
            build_gold(table, lakehouse, context.run.run_id)
            if days is None
            else backfill(table, lakehouse, days, context.run.run_id)
        )
        rebuilt = "all" if built.rebuilt is None else ", ".join(built.rebuilt[:LISTED_PERIODS]) or "none"
        context.log.info(f"gold/{table.name}: {built.rows_written} rows written for periods: {rebuilt}")
        return dg.MaterializeResult(
            metadata={
                **metadata.table_metadata(built.table),
                **metadata.elapsed(started),
                "rows_written": built.rows_written,
                "periods_rewritten": rebuilt,
                "periods_rewritten_count": -1 if built.rebuilt is None else len(built.rebuilt),
                **({"dagster/column_lineage": _column_lineage(table)} if table.lineage else {}),
            }
        )

    return gold_table


def attached_tables(contracts: list[Contract]) -> list[GoldTable]:
    """The gold tables whose silver inputs the `contracts` all define.

    The shop's gold tables are the demo's business logic: they attach to a contract set that
    feeds them and stay out of a user's own, which would otherwise get stand-ins for the shop's
    silver tables and gold steps that can only fail."""
    silver = {key for assets in silver_assets(contracts) for key in assets.keys}
    return [
        table
        for table in GOLD_TABLES
        if all(dg.AssetKey(["silver", upstream]) in silver for upstream in table.upstream)
    ]


def gold_assets(contracts: list[Contract]) -> list[dg.AssetsDefinition]:
    return [_gold_asset(table) for table in attached_tables(contracts)]
