-- no-transaction
-- Retention: see 0010.
CREATE INDEX CONCURRENTLY IF NOT EXISTS audit_events_by_id ON audit_events (audit_id);
