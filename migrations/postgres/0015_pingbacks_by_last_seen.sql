-- no-transaction
-- Retention: see 0010.
CREATE INDEX CONCURRENTLY IF NOT EXISTS pingbacks_by_last_seen ON pingbacks (last_seen_at);
