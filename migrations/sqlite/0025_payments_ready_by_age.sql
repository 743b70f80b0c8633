-- The sweep takes unpaid checkouts newest first within its age window, on an index of their own.
CREATE INDEX IF NOT EXISTS payments_ready_by_age ON payments (created_at) WHERE status = 'READY';
