-- Sessions started before :as_of; the duration comes from date_part('epoch', ...), which
-- features/db.py makes mean the same on SQLite as on Postgres.
SELECT s.host_id,
       SUM(CASE WHEN s.started_at >= :since_3d THEN 1 ELSE 0 END)  AS sessions_3d,
       SUM(CASE WHEN s.started_at >= :since_14d THEN 1 ELSE 0 END) AS sessions_14d,
       SUM(CASE WHEN s.started_at >= :since_14d
                THEN (date_part('epoch', s.ended_at) - date_part('epoch', s.started_at)) / 3600.0
                ELSE 0 END)                                        AS hours_online_14d,
       MAX(s.started_at)                                           AS last_session_at
FROM sessions s
WHERE s.started_at < :as_of
  AND s.host_id BETWEEN :first_key AND :last_key
GROUP BY s.host_id
