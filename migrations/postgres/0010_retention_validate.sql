-- Retention, step 2 of 3: proves step 1's bounds on the rows already there (VALIDATE reads the
-- table but lets reads and writes go on). Migrations 0011-0015 then build, one per file (PostgreSQL
-- builds an index CONCURRENTLY only as a statement of its own), the plain indexes the partitioned
-- tables will have in place of their primary and unique keys (PostgreSQL enforces those only per
-- partition): step 3 attaches them instead of building them under a lock; and one to expire raw
-- pingbacks by time (they stay one table: see 0016).
ALTER TABLE payment_events VALIDATE CONSTRAINT payment_events_before_partitions;
ALTER TABLE webhook_deliveries VALIDATE CONSTRAINT webhook_deliveries_before_partitions;
ALTER TABLE webhook_attempts VALIDATE CONSTRAINT webhook_attempts_before_partitions;
ALTER TABLE audit_events VALIDATE CONSTRAINT audit_events_before_partitions;
