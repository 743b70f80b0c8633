-- The sweep asks the provider about live subscriptions too (renewals and ends whose notifications
-- were lost): when each is next due to be asked. NULL (a subscription written before, or by the
-- previous release) is due at once.
ALTER TABLE subscriptions ADD COLUMN check_after BIGINT;
