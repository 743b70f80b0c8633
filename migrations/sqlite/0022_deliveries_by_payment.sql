-- A payment's delivery history, oldest first.
CREATE INDEX IF NOT EXISTS deliveries_by_payment ON deliveries (payment_id, created_at);
