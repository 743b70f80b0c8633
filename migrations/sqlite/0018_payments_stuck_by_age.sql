-- The sweep takes the stuck payments oldest first, in that order on an index of its own.
CREATE INDEX IF NOT EXISTS payments_stuck_by_age ON payments (updated_at) WHERE status IN ('READY', 'CANCEL_PENDING');
