-- Every host who had joined before :as_of (the spine).
SELECT h.host_id, h.joined_at, h.tier, h.region
FROM hosts h
WHERE h.joined_at < :as_of
  AND h.host_id BETWEEN :first_key AND :last_key
