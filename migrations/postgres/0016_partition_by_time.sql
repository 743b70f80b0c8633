-- contract: the tables keep their names, columns and defaults; releases before this one read and
-- write them as before (their statements name the table, which is now the partitioned one), so
-- nothing here breaks the release before. What is renamed is the table's old storage, kept as its
-- first partition.
--
-- Retention, step 3 of 3: payment_events, webhook_deliveries, webhook_attempts and audit_events
-- become partitioned by month of their time column, so that expiry drops a partition (no bulk
-- DELETE, no vacuum). Each table, as it is, becomes the first partition (rows before step 1's
-- bound, proven by its CHECK: no scan), in one short transaction per table; later months get
-- partitions of their own, created ahead by paygate (and the first two here). Primary and unique
-- keys become the plain indexes 0011-0014 built (PostgreSQL enforces keys only per partition;
-- these ids are ULIDs and sequence numbers, unique by construction). Raw pingbacks stay one
-- table: their unique key is what stops a repeated notification from being applied twice, and a
-- key per partition could not see a repeat across a month's boundary; they expire in batches.
DO $$
DECLARE
    t RECORD;
    bound BIGINT;
    ix RECORD;
    m INT;
    low TIMESTAMP;
BEGIN
    FOR t IN SELECT * FROM (VALUES
            ('payment_events', 'created_at', 'event_id'),
            ('webhook_deliveries', 'created_at', 'seq'),
            ('webhook_attempts', 'at', NULL),
            ('audit_events', 'created_at', NULL)) AS v (name, col, serial) LOOP
        SELECT legacy_until INTO bound FROM retention_marks WHERE table_name = t.name;
        EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', t.name);
        EXECUTE format('ALTER TABLE %I RENAME TO %I', t.name, t.name || '_legacy');
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS) PARTITION BY RANGE (%I)',
                       t.name, t.name || '_legacy', t.col);
        IF t.serial IS NOT NULL THEN
            EXECUTE format('ALTER SEQUENCE %I OWNED BY %I.%I', t.name || '_' || t.serial || '_seq', t.name, t.serial);
        END IF;
        -- The parent gets every index of the old table (keys as the plain indexes of 0011-0014),
        -- under the old names; the old ones are renamed and attached to them by ATTACH PARTITION.
        FOR ix IN SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS def
                  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                  WHERE i.indrelid = (t.name || '_legacy')::regclass AND NOT i.indisunique LOOP
            EXECUTE format('ALTER INDEX %I RENAME TO %I', ix.name, ix.name || '_legacy');
            EXECUTE regexp_replace(ix.def, ' ON (\S+)\.' || t.name || '_legacy ', ' ON ONLY \1.' || t.name || ' ');
        END LOOP;
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%s)',
                       t.name, t.name || '_legacy', bound);
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', t.name || '_legacy', t.name || '_before_partitions');
        FOR m IN 0..1 LOOP
            low := to_timestamp(bound / 1000) AT TIME ZONE 'UTC' + make_interval(months => m);
            EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%s) TO (%s)',
                           t.name || '_' || to_char(low, 'YYYY_MM'), t.name,
                           (extract(epoch FROM low) * 1000)::bigint,
                           (extract(epoch FROM low + interval '1 month') * 1000)::bigint);
        END LOOP;
    END LOOP;
END $$;
