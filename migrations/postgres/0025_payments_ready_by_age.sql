-- no-transaction
-- The sweep takes unpaid checkouts newest first within its age window, on an index of their own
-- (the window starts past the abandoned ones, so a pass never walks them).
CREATE INDEX CONCURRENTLY IF NOT EXISTS payments_ready_by_age ON payments (created_at) WHERE status = 'READY';
