-- What the user bought before :as_of: orders and spend in the last 30/90 days, the last order.
SELECT o.user_id,
       SUM(CASE WHEN o.ts >= :since_30d THEN 1 ELSE 0 END)          AS orders_30d,
       SUM(CASE WHEN o.ts >= :since_90d THEN 1 ELSE 0 END)          AS orders_90d,
       SUM(CASE WHEN o.ts >= :since_90d THEN o.amount ELSE 0 END)   AS amount_90d,
       MAX(o.ts)                                                   AS last_order_at
FROM orders o
WHERE o.ts < :as_of
  AND o.user_id BETWEEN :first_key AND :last_key
GROUP BY o.user_id
