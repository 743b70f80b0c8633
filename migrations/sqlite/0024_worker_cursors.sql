-- Where a background worker that follows the event log has read to (the automatic delivery
-- confirmations: a channel of digital goods confirms every payment paid). One row per worker;
-- replicas share it and move it forward by compare-and-set.
CREATE TABLE IF NOT EXISTS worker_cursors (
    worker     TEXT PRIMARY KEY,
    position   TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
