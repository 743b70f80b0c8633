-- Access control: API key lifecycle, per-merchant API allowlists, channel ownership, audit trail.

-- Keys made before this migration have no name and no shown prefix (only their digest was kept).
ALTER TABLE api_keys ADD COLUMN name TEXT NOT NULL DEFAULT '';
-- The key's first characters, shown in listings so a person can tell keys apart.
ALTER TABLE api_keys ADD COLUMN key_prefix TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
-- Written at most once a minute per key and replica, off the request path.
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
CREATE INDEX api_keys_by_merchant ON api_keys (merchant_id, key_id);

-- JSON array of CIDR blocks the merchant's keys may be used from; NULL or empty: none of its own
-- (a sub-merchant then uses its parent's; a merchant without one allows any address).
ALTER TABLE merchants ADD COLUMN api_allowlist TEXT;
ALTER TABLE merchants ADD COLUMN api_allowlist_updated_at BIGINT;

-- The merchant that created the channel (merchant_id is who it is assigned to). Only the owner, or
-- the owner's parent, may change or delete it. Channels made before this migration cannot say who
-- made them: one assigned to a sub-merchant is taken to be its parent's (the safe reading).
ALTER TABLE channels ADD COLUMN owner_id TEXT REFERENCES merchants (merchant_id);
UPDATE channels SET owner_id = COALESCE(
    (SELECT m.parent_id FROM merchants m WHERE m.merchant_id = channels.merchant_id), merchant_id);

-- Every admin and credential action, written in the transaction of the change. Never a secret value.
CREATE TABLE audit_events (
    -- aud_<ulid>: sorts by time, pages by id.
    audit_id    TEXT PRIMARY KEY,
    -- The merchant the action concerns; NULL for deployment-wide actions (master key rotation).
    merchant_id TEXT,
    -- "admin" (the admin token), "cli" (a paygate admin command), or the API key id that acted.
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    -- The id of what was acted on (merchant, key, channel).
    target      TEXT NOT NULL,
    changed_fields TEXT NOT NULL, -- JSON array of field names
    address     TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX audit_events_by_merchant ON audit_events (merchant_id, audit_id);
