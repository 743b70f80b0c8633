-- Retention (docs/operations.md#retention): what expiry has removed. SQLite expires in batches.
CREATE TABLE retention_marks (
    table_name       TEXT PRIMARY KEY,
    -- Rows with a time before this were expired (unix ms); 0: nothing yet.
    expired_before   BIGINT NOT NULL DEFAULT 0,
    -- payment_events: the position of the newest event expired; a cursor before it is refused.
    expired_txid     BIGINT NOT NULL DEFAULT 0,
    expired_event_id BIGINT NOT NULL DEFAULT 0,
    -- PostgreSQL only (the table as it was before partitioning).
    legacy_until     BIGINT,
    updated_at       BIGINT NOT NULL DEFAULT 0
);
INSERT INTO retention_marks (table_name) VALUES
    ('pingbacks'), ('payment_events'), ('webhook_deliveries'), ('webhook_attempts'), ('audit_events');
