"""Customer metrics: what each customer is worth and how often they buy, in one SQL pass.

Definitions (also in the README):

* **as-of date**: the newest purchase in the data, so historical datasets give stable answers.
* **orders**: distinct ``order_id`` per customer.
* **purchase_frequency**: orders per 30 days of the active window, the span from first to last
  purchase, counted as at least 30 days: ``orders / (max(active_days, 30) / 30)``.
* **total_spend**: sum of ``amount``; **avg_order_value** = total_spend / orders.
* **recency_days**: days from the last purchase to the as-of date.
* **tenure_days**: days from signup (or the first purchase, if earlier) to the as-of date.
* **clv** (customer lifetime value), a simple predictive formula:
  ``avg_order_value x orders_per_year x horizon_years x retention``, where
  ``orders_per_year = orders x 365 / max(tenure_days, 30)`` and ``retention = exp(-recency_days / 365)``
  (a customer silent for a year keeps 37% of their expected value). ``horizon_years`` defaults to 3.

Customers without purchases are kept, with zero orders, spend and value.
"""

from __future__ import annotations


def customer_metrics_sql(horizon_years: float = 3.0) -> str:
    """SELECT producing the ``customer_metrics`` table from ``customers`` and ``purchases``."""
    return f"""
    with as_of as (
        select max(purchase_date) as as_of from purchases
    ),
    orders as (
        select customer_id, order_id, min(purchase_date) as ordered_at, sum(amount) as order_amount
        from purchases group by customer_id, order_id
    ),
    per_customer as (
        select customer_id, count(*) as orders, sum(order_amount) as total_spend,
               min(ordered_at) as first_order, max(ordered_at) as last_order
        from orders group by customer_id
    ),
    base as (
        select c.customer_id,
               coalesce(p.orders, 0) as orders,
               coalesce(p.total_spend, 0) as total_spend,
               greatest(date_diff('day', p.first_order, p.last_order), 30) as active_days,
               date_diff('day', p.last_order, a.as_of) as recency_days,
               date_diff('day', least(coalesce(c.signup_date, p.first_order), coalesce(p.first_order, c.signup_date)), a.as_of)
                   as tenure_days
        from customers c
        left join per_customer p using (customer_id)
        cross join as_of a
    )
    select customer_id,
           orders::bigint as orders,
           case when orders > 0 then orders / (active_days / 30.0) else 0 end::double as purchase_frequency,
           total_spend::double as total_spend,
           case when orders > 0 then total_spend / orders else 0 end::double as avg_order_value,
           recency_days::double as recency_days,
           greatest(tenure_days, 0)::double as tenure_days,
           case when orders > 0 then
               (total_spend / orders)
               * (orders * 365.0 / greatest(coalesce(tenure_days, 0), 30))
               * {float(horizon_years)}
               * exp(-recency_days / 365.0)
           else 0 end::double as clv
    from base
    order by customer_id
    """


def customer_category_sql() -> str:
    """SELECT producing ``customer_category_matrix``: one row per customer and category bought."""
    return """
    select p.customer_id, pr.product_category,
           count(distinct p.order_id)::bigint as orders,
           sum(p.quantity)::bigint as quantity,
           sum(p.amount)::double as spend,
           min(p.purchase_date) as first_purchase,
           max(p.purchase_date) as last_purchase
    from purchases p join products pr using (product_id)
    group by p.customer_id, pr.product_category
    order by p.customer_id, pr.product_category
    """
