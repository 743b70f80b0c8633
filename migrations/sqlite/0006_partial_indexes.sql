-- Index only the payments each index is read for. The sweep reads READY and CANCEL_PENDING
-- payments; only subscription payments have a subscription, and only a renewal is looked up by its
-- provider ref. A payment that settles then leaves `payments_by_status`, and a one-time payment
-- never enters the other two: a settlement writes 3 index entries instead of 5, and a checkout
-- 4 instead of 5.
DROP INDEX payments_by_status;
CREATE INDEX payments_by_status ON payments (status, check_after) WHERE status IN ('READY', 'CANCEL_PENDING');
DROP INDEX payments_by_subscription;
CREATE INDEX payments_by_subscription ON payments (subscription_id, payment_id) WHERE subscription_id IS NOT NULL;
CREATE INDEX payments_by_provider_ref ON payments (channel_key, provider_ref) WHERE subscription_id IS NOT NULL;
