-- The live subscriptions the sweep should ask about, soonest due first.
CREATE INDEX IF NOT EXISTS subscriptions_due ON subscriptions ((COALESCE(check_after, 0))) WHERE status = 'ACTIVE';
