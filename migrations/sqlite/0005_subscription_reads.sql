-- Subscriptions a merchant can read, list and follow (GetSubscription, ListSubscriptions): the buyer
-- (a list filter), when billing started, the last renewal payment, and how many renewals arrived
-- after the subscription had ended (money a person must look at). Subscriptions stored before are
-- filled in from their payments.
ALTER TABLE subscriptions ADD COLUMN customer_uid TEXT NOT NULL DEFAULT '';
ALTER TABLE subscriptions ADD COLUMN started_at BIGINT;
ALTER TABLE subscriptions ADD COLUMN last_renewal_payment_id TEXT;
ALTER TABLE subscriptions ADD COLUMN last_renewal_at BIGINT;
ALTER TABLE subscriptions ADD COLUMN renewals_after_end BIGINT NOT NULL DEFAULT 0;
-- ListSubscriptions pages a merchant's subscriptions newest first; ListPayments and the event
-- filters find a subscription's payments, as do the fills below, once per subscription: the index
-- comes first.
CREATE INDEX subscriptions_by_merchant ON subscriptions (merchant_id, subscription_id);
CREATE INDEX payments_by_subscription ON payments (subscription_id, payment_id);
UPDATE subscriptions SET customer_uid = COALESCE(
    (SELECT p.customer_uid FROM payments p WHERE p.payment_id = subscriptions.initial_payment_id), '');
UPDATE subscriptions SET started_at =
    (SELECT p.paid_at FROM payments p WHERE p.payment_id = subscriptions.initial_payment_id)
WHERE status <> 'PENDING';
UPDATE subscriptions SET last_renewal_payment_id = (
    SELECT MAX(p.payment_id) FROM payments p
    WHERE p.subscription_id = subscriptions.subscription_id AND p.payment_id <> subscriptions.initial_payment_id);
UPDATE subscriptions SET last_renewal_at =
    (SELECT p.created_at FROM payments p WHERE p.payment_id = subscriptions.last_renewal_payment_id);
UPDATE subscriptions SET renewals_after_end = (
    SELECT COUNT(*) FROM payments p
    WHERE p.subscription_id = subscriptions.subscription_id AND p.payment_id <> subscriptions.initial_payment_id
      AND p.created_at > subscriptions.ended_at)
WHERE ended_at IS NOT NULL;
