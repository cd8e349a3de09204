-- Bookings in the 14 days before :as_of: how many, and their average price (null without any).
SELECT b.host_id, COUNT(*) AS bookings_14d, AVG(b.price) AS avg_price_14d
FROM bookings b
WHERE b.ts < :as_of
  AND b.ts >= :since_14d
  AND b.host_id BETWEEN :first_key AND :last_key
GROUP BY b.host_id
