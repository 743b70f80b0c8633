-- no-transaction
-- Retention: see 0010.
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_deliveries_by_delivery ON webhook_deliveries (delivery_id);
