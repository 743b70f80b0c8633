-- Delivery confirmations (ConfirmDelivery): each payment's history, and the outbox that sends them
-- to the provider (PENDING rows, tried again from next_attempt_at).
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id           TEXT PRIMARY KEY,
    payment_id            TEXT NOT NULL REFERENCES payments (payment_id),
    merchant_id           TEXT NOT NULL,
    kind                  TEXT NOT NULL, -- digital, physical
    status                TEXT NOT NULL, -- order_placed, order_shipped, delivering, delivered
    tracking_id           TEXT NOT NULL DEFAULT '',
    carrier               TEXT NOT NULL DEFAULT '',
    estimated_delivery_at BIGINT,
    estimated_update_at   BIGINT,
    refundable            BIGINT,        -- 1, 0, or NULL: not said
    details               TEXT NOT NULL,
    reason                TEXT NOT NULL DEFAULT '',
    attachments           TEXT NOT NULL DEFAULT '[]', -- JSON array of URLs
    state                 TEXT NOT NULL, -- PENDING, SENT, REFUSED
    attempts              BIGINT NOT NULL DEFAULT 0,
    next_attempt_at       BIGINT,
    last_error            TEXT NOT NULL DEFAULT '',
    created_at            BIGINT NOT NULL,
    sent_at               BIGINT,
    updated_at            BIGINT NOT NULL
);
