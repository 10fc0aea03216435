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

A metric whose facts the input format does not carry (see
:class:`cross_sell.ingest.formats.Capabilities`) is null for every customer, never estimated:
a basket log has no prices, so no spend, order value or lifetime value; a spend summary has no
orders or line dates, so no order counts, frequency, recency or lifetime value.
"""

from __future__ import annotations

from cross_sell.ingest.formats import Capabilities


def unavailable_metrics(caps: Capabilities) -> dict[str, str]:
    """Metric -> why it is null for every customer, for inputs with these capabilities."""
    reasons = {
        "prices": "the inputs have no prices",
        "orders": "the inputs have no orders",
        "dated_lines": "the input lines carry no purchase dates",
    }
    needs = {
        "orders": ("orders",),
        "purchase_frequency": ("orders", "dated_lines"),
        "total_spend": ("prices",),
        "avg_order_value": ("prices", "orders"),
        "recency_days": ("dated_lines",),
        "clv": ("prices", "orders", "dated_lines"),
    }
    missing = set(caps.missing())
    return {
        metric: "; ".join(reasons[f] for f in facts if f in missing)
        for metric, facts in needs.items()
        if missing.intersection(facts)
    }


def _available(expression: str, metric: str, unavailable: dict[str, str], sql_type: str = "double") -> str:
    return f"null::{sql_type} as {metric}" if metric in unavailable else f"{expression}::{sql_type} as {metric}"


def per_customer_sql() -> str:
    """SELECT of each buying customer's orders, spend and first and last order time: the one pass
    over the purchase lines that :func:`customer_metrics_sql` rests on (also a table of its own,
    so the buying customers are counted without another pass)."""
    return """
    select customer_id, count(*) as orders, sum(order_amount) as total_spend,
           min(ordered_at) as first_order, max(ordered_at) as last_order
    from (
        select customer_id, order_id, min(purchase_date) as ordered_at, sum(amount) as order_amount
        from purchases group by customer_id, order_id
    )
    group by customer_id
    """


def customer_metrics_sql(horizon_years: float = 3.0, caps: Capabilities | None = None, per_customer: str | None = None) -> str:
    """SELECT producing the ``customer_metrics`` table from ``customers`` and ``purchases``
    (``per_customer``: a table holding :func:`per_customer_sql` already, instead of computing it)."""
    unavailable = unavailable_metrics(caps or Capabilities())
    clv = (
        "case when orders > 0 then (total_spend / orders) * (orders * 365.0 / greatest(coalesce(tenure_days, 0), 30))"
        f" * {float(horizon_years)} * exp(-recency_days / 365.0) else 0 end"
    )
    return f"""
    with as_of as (
        select max(purchase_date) as as_of from purchases
    ),
    per_customer as (
        {f"select * from {per_customer}" if per_customer else per_customer_sql()}
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
           {_available("orders", "orders", unavailable, "bigint")},
           {_available("case when orders > 0 then orders / (active_days / 30.0) else 0 end", "purchase_frequency", unavailable)},
           {_available("total_spend", "total_spend", unavailable)},
           {_available("case when orders > 0 then total_spend / orders else 0 end", "avg_order_value", unavailable)},
           {_available("recency_days", "recency_days", unavailable)},
           greatest(tenure_days, 0)::double as tenure_days,
           {_available(clv, "clv", unavailable)}
    from base
    order by customer_id
    """


def customer_category_sql(caps: Capabilities | None = None) -> str:
    """SELECT producing ``customer_category_matrix``: one row per customer and category bought.

    Two grouping passes instead of ``count(distinct order_id)``, which DuckDB plans as two
    aggregations over the lines and a join: lines to (customer, category, order), then those to
    (customer, category), where counting the order ids counts the distinct orders. Rows come in no
    particular order (read with ORDER BY)."""
    caps = caps or Capabilities()

    def known(expression: str, fact: bool, name: str, sql_type: str) -> str:
        return f"{expression}::{sql_type} as {name}" if fact else f"null::{sql_type} as {name}"

    return f"""
    select customer_id, product_category,
           {known("count(order_id)", caps.orders, "orders", "bigint")},
           {known("sum(quantity)", caps.quantities, "quantity", "bigint")},
           {known("sum(spend)", caps.prices, "spend", "double")},
           {known("min(first_purchase)", caps.dated_lines, "first_purchase", "timestamp")},
           {known("max(last_purchase)", caps.dated_lines, "last_purchase", "timestamp")}
    from (
        select p.customer_id, pr.product_category, p.order_id, sum(p.quantity) as quantity, sum(p.amount) as spend,
               min(p.purchase_date) as first_purchase, max(p.purchase_date) as last_purchase
        from purchases p join products pr using (product_id)
        group by p.customer_id, pr.product_category, p.order_id
    )
    group by customer_id, product_category
    """
