-- ListPayments of one channel reads that channel's payments newest first.
CREATE INDEX IF NOT EXISTS payments_by_channel ON payments (channel_key, payment_id);
