{#- The column is null on exactly the rows that meet `condition` (SQL), and filled on the others. -#}
{% test null_when(model, column_name, condition) %}

select {{ column_name }}
from {{ model }}
where ({{ column_name }} is null) <> coalesce({{ condition }}, false)

{% endtest %}
