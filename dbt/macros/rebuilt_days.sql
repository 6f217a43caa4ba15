{#- The days of gold table `table_name` rebuilt since the models were last built, as a subquery
    of one `day` column: `gold.rebuilt_days`, which the Dagster step writes before each build
    (lakehouse/marts/rebuilt_days.py). Every day of the table when there is no build to start
    from. Tests name the relation in their `where` itself, since a property file's config takes
    no project macro. -#}
{% macro rebuilt_days(table_name) -%}
(select day from gold.rebuilt_days where table_name = '{{ table_name }}')
{%- endmacro %}
