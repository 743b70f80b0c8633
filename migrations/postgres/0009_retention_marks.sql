-- Retention (docs/operations.md#retention), step 1 of 3 of partitioning by time the tables that
-- grow: what expiry has removed, and a CHECK that bounds the time of the rows the tables take
-- before they become partitioned (step 3 attaches each, as it is, as the first partition, and the
-- CHECK proves the partition's bound without a scan). The bound is at least a month away, so
-- writes, old replicas' included, go on as before until the swap (run right after) is done.
CREATE TABLE retention_marks (
    table_name       TEXT PRIMARY KEY,
    -- Rows with a time before this were expired (unix ms); 0: nothing yet.
    expired_before   BIGINT NOT NULL DEFAULT 0,
    -- payment_events: the position of the newest event expired; a cursor before it is refused.
    expired_txid     BIGINT NOT NULL DEFAULT 0,
    expired_event_id BIGINT NOT NULL DEFAULT 0,
    -- PostgreSQL: the table as it was before partitioning holds rows before this time.
    legacy_until     BIGINT,
    updated_at       BIGINT NOT NULL DEFAULT 0
);
INSERT INTO retention_marks (table_name) VALUES ('pingbacks');
DO $$
DECLARE
    bound BIGINT := (extract(epoch FROM date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months') * 1000)::bigint;
    t RECORD;
BEGIN
    FOR t IN SELECT * FROM (VALUES ('payment_events', 'created_at'), ('webhook_deliveries', 'created_at'),
                                   ('webhook_attempts', 'at'), ('audit_events', 'created_at')) AS v (name, col) LOOP
        INSERT INTO retention_marks (table_name, legacy_until) VALUES (t.name, bound);
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (%I < %s) NOT VALID',
                       t.name, t.name || '_before_partitions', t.col, bound);
    END LOOP;
END $$;
