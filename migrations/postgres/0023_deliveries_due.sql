-- no-transaction
-- The outbox: confirmations still to send, soonest first.
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at) WHERE state = 'PENDING';
