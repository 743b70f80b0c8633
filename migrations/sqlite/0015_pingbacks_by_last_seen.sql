-- Retention: SQLite expires in batches by time (PostgreSQL's 0010-0016 partition).
CREATE INDEX IF NOT EXISTS pingbacks_by_last_seen ON pingbacks (last_seen_at);
