{#- `value` is SQL: another column of the row, or a constant. -#}
{% test at_most(model, column_name, value) %}

select {{ column_name }}
from {{ model }}
where {{ column_name }} > {{ value }}

{% endtest %}
