{#- The days of gold table `table_name` rebuilt since the models were last built, as a subquery
    of one `day` column: `gold.rebuilt_days`, which the Dagster step writes before each build
    (lakehouse/marts/rebuilt_days.py). Every day of the table when there is no build to start
    from. Tests name the relation in their `where` itself, since a property file's config takes
    no project macro. -#}
{% macro rebuilt_days(table_name) -%}
(select day from gold.rebuilt_days where table_name = '{{ table_name }}')
{%- endmacro %}

{#- The post-hook of a model that delete+inserts the days gold rebuilt in `table_name`: delete
    its rows of those days (by its `day` column) whose `key` the days' rows of `relation` that
    meet `condition` no longer hold, which the insert cannot replace. -#}
{% macro delete_what_rebuilt_days_lost(table_name, day, key, relation, condition='true') -%}
delete from {{ this }}
where {{ day }} in {{ rebuilt_days(table_name) }}
  and {{ key }} not in (
      select {{ key }} from {{ relation }}
      where {{ day }} in {{ rebuilt_days(table_name) }} and {{ condition }}
  )
{%- endmacro %}
