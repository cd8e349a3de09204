-- Sessions in [:as_of, :label_end); spec.yml turns "no row" into the positive label.
SELECT s.host_id, COUNT(*) AS sessions_next_14d
FROM sessions s
WHERE s.started_at >= :as_of
  AND s.started_at < :label_end
  AND s.host_id BETWEEN :first_key AND :last_key
GROUP BY s.host_id
