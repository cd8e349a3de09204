-- The label: orders in [:as_of, :label_end), the 7 days after the features' cut-off.
SELECT o.user_id, COUNT(*) AS orders_next_7d
FROM orders o
WHERE o.ts >= :as_of
  AND o.ts < :label_end
  AND o.user_id BETWEEN :first_key AND :last_key
GROUP BY o.user_id
