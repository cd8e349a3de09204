-- What the user did before :as_of: event counts in the last 7 and 30 days, and the last event.
-- Only rows with ts < :as_of: nothing from the prediction window leaks into a feature.
SELECT e.user_id,
       SUM(CASE WHEN e.ts >= :since_7d THEN 1 ELSE 0 END)                          AS events_7d,
       SUM(CASE WHEN e.ts >= :since_30d THEN 1 ELSE 0 END)                         AS events_30d,
       SUM(CASE WHEN e.ts >= :since_7d AND e.kind = 'view' THEN 1 ELSE 0 END)      AS views_7d,
       SUM(CASE WHEN e.ts >= :since_7d AND e.kind = 'search' THEN 1 ELSE 0 END)    AS searches_7d,
       SUM(CASE WHEN e.ts >= :since_7d AND e.kind = 'cart' THEN 1 ELSE 0 END)      AS carts_7d,
       SUM(CASE WHEN e.ts >= :since_30d AND e.kind = 'cart' THEN 1 ELSE 0 END)     AS carts_30d,
       MAX(e.ts)                                                                  AS last_event_at
FROM events e
WHERE e.ts < :as_of
  AND e.user_id BETWEEN :first_key AND :last_key
GROUP BY e.user_id
