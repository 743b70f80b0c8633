-- A merchant's events in log order: a stream's replay and ListPaymentEvents read one merchant's
-- (and its sub-merchants') events after a cursor without walking everyone else's. Reads of a
-- payment's or a subscription's events use payment_events_by_payment. Only adds an index: a
-- replica of the previous release runs beside it unchanged.
CREATE INDEX payment_events_by_merchant ON payment_events (merchant_id, txid, event_id);
