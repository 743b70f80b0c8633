-- Times are unix milliseconds (BIGINT) so PostgreSQL and SQLite share every query.

CREATE TABLE merchants (
    merchant_id TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    parent_id   TEXT REFERENCES merchants (merchant_id),
    created_at  BIGINT NOT NULL
);
CREATE INDEX merchants_by_parent ON merchants (parent_id);

CREATE TABLE api_keys (
    key_id      TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL REFERENCES merchants (merchant_id),
    -- SHA-256 of the whole key; keys are 190-bit random, so a fast hash is the right one.
    key_hash    TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE channels (
    channel_key        TEXT PRIMARY KEY,
    -- The owner: a merchant, or the sub-merchant the channel is assigned to.
    merchant_id        TEXT NOT NULL REFERENCES merchants (merchant_id),
    name               TEXT NOT NULL,
    provider           TEXT NOT NULL,
    mode               TEXT NOT NULL,
    project_key        TEXT NOT NULL,
    -- AES-256-GCM under the master key: "pgenc:v1:<key id>:<base64 nonce+ciphertext>".
    secret_ciphertext  TEXT NOT NULL,
    widget             TEXT NOT NULL,
    sign_version       BIGINT NOT NULL,
    pingback_allowlist TEXT NOT NULL, -- JSON array of CIDR strings
    api_base_url       TEXT NOT NULL,
    -- Bumped by every update; caches keep the newest version.
    version            BIGINT NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    -- Set when a channel with payments is deleted: no new checkouts, pingbacks still verify.
    disabled_at        BIGINT
);
CREATE INDEX channels_by_merchant ON channels (merchant_id, channel_key);

CREATE TABLE payments (
    payment_id     TEXT PRIMARY KEY,
    merchant_id    TEXT NOT NULL REFERENCES merchants (merchant_id),
    channel_key    TEXT NOT NULL REFERENCES channels (channel_key),
    merchant_uid   TEXT NOT NULL,
    amount_minor   BIGINT NOT NULL,
    currency       TEXT NOT NULL,
    order_name     TEXT NOT NULL,
    customer_uid   TEXT NOT NULL,
    customer_email TEXT NOT NULL,
    payment_method TEXT NOT NULL,
    widget         TEXT NOT NULL,
    success_url    TEXT NOT NULL,
    failure_url    TEXT NOT NULL,
    country_code   TEXT NOT NULL,
    language       TEXT NOT NULL,
    custom_params  TEXT NOT NULL, -- JSON object
    status         TEXT NOT NULL,
    provider_ref   TEXT,
    is_test        BIGINT NOT NULL DEFAULT 0,
    -- The signed hosted-page URL, kept so an idempotent retry gets the same answer.
    redirect_url   TEXT NOT NULL,
    subscription_id TEXT,
    -- Refunds: what the provider confirmed, and what is requested and not yet confirmed.
    cancelled_amount      BIGINT NOT NULL DEFAULT 0,
    pending_cancel_amount BIGINT NOT NULL DEFAULT 0,
    -- Bumped by every change: writers compare-and-set on it.
    version        BIGINT NOT NULL DEFAULT 1,
    -- The stuck-payment sweep does not look at the payment before this time (its claim, too).
    check_after    BIGINT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    paid_at        BIGINT,
    failed_at      BIGINT,
    cancelled_at   BIGINT,
    UNIQUE (merchant_id, merchant_uid)
);
CREATE INDEX payments_by_merchant ON payments (merchant_id, payment_id);
CREATE INDEX payments_by_status ON payments (status, check_after);

-- Refunds and provider-initiated reversals of a payment.
CREATE TABLE cancellations (
    cancellation_id TEXT PRIMARY KEY,
    payment_id      TEXT NOT NULL REFERENCES payments (payment_id),
    merchant_id     TEXT NOT NULL,
    -- NULL when the provider reversed part of a payment without saying how much.
    amount_minor    BIGINT,
    reason          TEXT NOT NULL,
    trigger         TEXT NOT NULL, -- MERCHANT_REQUEST, CHARGEBACK, PROVIDER
    status          TEXT NOT NULL, -- REQUESTED, SUCCEEDED, FAILED
    provider_reason BIGINT,        -- Paymentwall's reason code on the type 2 pingback
    failure         TEXT,
    -- When the provider accepted the refund ticket; a reversal confirms accepted requests first.
    ticket_accepted_at BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    completed_at    BIGINT
);
CREATE INDEX cancellations_by_payment ON cancellations (payment_id, created_at);

CREATE TABLE subscriptions (
    subscription_id     TEXT PRIMARY KEY,
    merchant_id         TEXT NOT NULL,
    channel_key         TEXT NOT NULL REFERENCES channels (channel_key),
    initial_payment_id  TEXT NOT NULL,
    period_length       BIGINT NOT NULL,
    period_type         TEXT NOT NULL,
    recurring           BIGINT NOT NULL,
    status              TEXT NOT NULL, -- PENDING, ACTIVE, CANCELLED, EXPIRED, PAYMENT_FAILED
    renewals            BIGINT NOT NULL DEFAULT 0,
    cancel_requested_at BIGINT,
    ended_at            BIGINT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

-- Idempotency keys: the first request's fingerprint and the resource it made.
CREATE TABLE idempotency_keys (
    merchant_id     TEXT NOT NULL,
    operation       TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    resource_id     TEXT,
    -- in_progress until the work finished; a lease that runs out lets a retry take over after a crash.
    state           TEXT NOT NULL,
    lease_until     BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (merchant_id, operation, idempotency_key)
);

-- Every pingback that passed signature checks, raw, deduplicated on Paymentwall's own unique id.
CREATE TABLE pingbacks (
    pingback_id  TEXT PRIMARY KEY,
    channel_key  TEXT NOT NULL REFERENCES channels (channel_key),
    ref          TEXT NOT NULL,
    type         BIGINT NOT NULL,
    -- The UNIQUE_REF custom parameter when the project sends it (tells apart two partial
    -- reversals of one ref); empty otherwise.
    unique_ref   TEXT NOT NULL DEFAULT '',
    query        TEXT NOT NULL,
    -- applied: its effects are committed; deferred: stored but not yet supported, answered non-OK.
    outcome      TEXT NOT NULL,
    payment_id   TEXT,
    received_at  BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    deliveries   BIGINT NOT NULL DEFAULT 1,
    UNIQUE (channel_key, ref, type, unique_ref)
);

-- Append-only: one row per payment state change. SQLite has one writer, so ids follow commit
-- order and txid is always 0.
CREATE TABLE payment_events (
    event_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    txid        BIGINT NOT NULL DEFAULT 0,
    payment_id  TEXT NOT NULL REFERENCES payments (payment_id),
    merchant_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    snapshot    TEXT NOT NULL, -- JSON of the payment after the change
    detail      TEXT,          -- JSON of the cancellation or subscription the event is about
    created_at  BIGINT NOT NULL
);
CREATE INDEX payment_events_by_payment ON payment_events (payment_id, event_id);
CREATE INDEX payment_events_by_position ON payment_events (txid, event_id);

-- Merchant webhooks: one endpoint per merchant; secrets encrypted like channel secrets.
CREATE TABLE webhook_endpoints (
    merchant_id     TEXT PRIMARY KEY REFERENCES merchants (merchant_id),
    url             TEXT NOT NULL,
    event_types     TEXT NOT NULL, -- JSON array; empty means every type
    -- JSON array, newest first, of {"ciphertext", "created_at", "expires_at"}: during a rotation the
    -- previous secret signs too, until it expires.
    secrets         TEXT NOT NULL,
    disabled_at     BIGINT,
    disabled_reason TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

-- The outbox: written in the same transaction as the event it announces.
CREATE TABLE webhook_deliveries (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id      TEXT NOT NULL UNIQUE, -- the webhook-id header; receivers dedupe on it
    merchant_id      TEXT NOT NULL,        -- whose endpoint receives it
    payment_id       TEXT,                 -- deliveries of one payment go out in order
    event_type       TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL,        -- PENDING, SUCCEEDED, FAILED
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    -- A replica delivering it holds it until then; if that replica dies, another takes over.
    claimed_until    BIGINT,
    last_status_code BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    finished_at      BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_by_merchant ON webhook_deliveries (merchant_id, seq);
CREATE INDEX webhook_deliveries_by_payment ON webhook_deliveries (payment_id, seq);

-- The delivery log: every attempt, with what the receiver answered.
CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    status_code BIGINT,
    error       TEXT,
    latency_ms  BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
