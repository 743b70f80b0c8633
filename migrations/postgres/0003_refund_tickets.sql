-- Issue 11: a refund's ticket is its own recorded step, so a crash can never leave a refund
-- reported accepted that the provider never saw.
--
-- cancellations.ticket_state (merchant requests only; NULL for reversals the provider reported):
--   UNSENT   reserved, the ticket has not left (a take-over sends it)
--   SENDING  written just before the ticket leaves; a crash here leaves the outcome unknown
--   ACCEPTED the provider answered that it accepted the ticket
--   UNKNOWN  sent, no clear answer: visible as OUTCOME_UNKNOWN until the sweep or an operator resolves it
ALTER TABLE cancellations ADD COLUMN ticket_state TEXT;
ALTER TABLE cancellations ADD COLUMN ticket_sent_at BIGINT;
-- The sweep does not look at the cancellation's ticket before this time (its claim, too).
ALTER TABLE cancellations ADD COLUMN check_after BIGINT;
-- Rows from before: an accepted ticket is known; an open request without one cannot be known.
UPDATE cancellations SET ticket_state = 'ACCEPTED'
    WHERE trigger = 'MERCHANT_REQUEST' AND ticket_accepted_at IS NOT NULL;
UPDATE cancellations SET ticket_state = 'UNKNOWN'
    WHERE trigger = 'MERCHANT_REQUEST' AND ticket_accepted_at IS NULL AND status = 'REQUESTED';
CREATE INDEX cancellations_by_ticket ON cancellations (status, ticket_state, updated_at);

-- CancelSubscription claims the stop-recurring ticket before sending it, so concurrent calls send
-- one ticket: set while a send is in flight, cleared when it failed with nothing done.
ALTER TABLE subscriptions ADD COLUMN cancel_ticket_started_at BIGINT;
