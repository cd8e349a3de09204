-- Who the user is: static attributes of everyone who had signed up before :as_of.
-- :first_key/:last_key bound the keys (all users for training, one user online);
-- a range keeps the (user_id, ts) indexes usable for the one-user case.
SELECT u.user_id, u.signup_at, u.country, u.device, u.channel
FROM users u
WHERE u.signup_at < :as_of
  AND u.user_id BETWEEN :first_key AND :last_key
