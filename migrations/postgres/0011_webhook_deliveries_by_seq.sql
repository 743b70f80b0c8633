-- no-transaction
-- Retention: see 0010.
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_deliveries_by_seq ON webhook_deliveries (seq);
