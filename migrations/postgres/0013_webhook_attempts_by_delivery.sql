-- no-transaction
-- Retention: see 0010.
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_attempts_by_delivery ON webhook_attempts (delivery_id, attempt);
