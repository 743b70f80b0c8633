//! Refund and reversal decisions, pure: how much a refund may take, what reserving, accepting,
//! releasing and confirming it do to the payment, what a take-over does, and what a provider's
//! reversal does to a payment and its open requests. `flows::refund` reads, calls these, writes.

use super::{
    Cancellation, CancellationStatus, EventKind, Payment, PaymentStatus, TicketState, Trigger, new_cancellation_id,
};
use super::{
    money::MinorUnits,
    notice::{ReversalKind, ReversalNotice},
};
use crate::{
    payments::PaymentError,
    validation::{self, InvalidArgument, Violations},
};

pub const MAX_REASON: usize = 255;

#[derive(Debug, Clone, Default)]
pub struct RefundRequest {
    pub payment_id: String,
    /// `None`: everything still refundable.
    pub amount_minor: Option<MinorUnits>,
    /// The amount's currency, when the caller named one: it must be the payment's (refunds never
    /// convert).
    pub currency: Option<String>,
    pub reason: String,
    /// Refuse unless exactly this much is refundable now (guards against acting on a stale read).
    pub expected_refundable_amount: Option<MinorUnits>,
    pub idempotency_key: String,
    /// Fingerprint of the request for the idempotency check.
    pub request_hash: String,
}

pub fn validate(req: &RefundRequest) -> Violations {
    let mut v = Violations::default();
    validation::identifier(&mut v, "payment_id", &req.payment_id, validation::ID);
    validation::required_text(&mut v, "reason", &req.reason, MAX_REASON);
    if req.amount_minor.is_some_and(|a| a <= MinorUnits::ZERO) {
        v.add("amount.amount_minor", "must be greater than zero");
    }
    if req.expected_refundable_amount.is_some_and(|a| a < MinorUnits::ZERO) {
        v.add("expected_refundable_amount", "must not be negative");
    }
    validation::optional_identifier(&mut v, "idempotency_key", &req.idempotency_key, validation::IDEMPOTENCY_KEY);
    v
}

/// What a take-over does with a request whose first worker stopped (its lease ran out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeOver {
    /// Nothing is open any more (or the outcome is already recorded): answer with what is there.
    Answer,
    /// The ticket never left: send it now.
    Send,
    /// The ticket may have reached the provider and no answer was recorded: never send it again;
    /// the outcome is unknown.
    MarkUnknown,
    /// The provider accepted it; make sure the payment shows it.
    FinishAccepted,
    /// Another worker is sending it right now.
    InFlight,
}

/// Decides a take-over from the request's state (`updated_at` of a SENDING ticket is when its send started).
pub fn take_over_action(c: &Cancellation, now: i64, lease_ms: i64) -> TakeOver {
    if c.status != CancellationStatus::Requested {
        return TakeOver::Answer;
    }
    match c.ticket {
        Some(TicketState::Unsent) => TakeOver::Send,
        // A send still within its lease may be another live worker's (the sweep's): wait for it.
        Some(TicketState::Sending) if c.updated_at + lease_ms > now => TakeOver::InFlight,
        Some(TicketState::Sending) => TakeOver::MarkUnknown,
        Some(TicketState::Accepted) => TakeOver::FinishAccepted,
        Some(TicketState::Unknown) | None => TakeOver::Answer,
    }
}

/// The payment with the refund reserved (added to its pending amount, so what is refunded and
/// requested never exceeds what was paid), and the request recorded with its ticket UNSENT.
pub fn reservation(current: &Payment, req: &RefundRequest, now: i64) -> Result<(Payment, Cancellation), PaymentError> {
    if let Some(currency) = &req.currency
        && *currency != current.currency
    {
        let problem = format!("must be the payment's currency ({})", current.currency);
        return Err(InvalidArgument::single("amount.currency", problem).into());
    }
    let amount = refundable_amount(current, req.amount_minor, req.expected_refundable_amount)?;
    let mut next = current.next_version(now);
    next.pending_cancel_amount += amount;
    let cancellation = Cancellation {
        cancellation_id: new_cancellation_id(),
        payment_id: current.payment_id.clone(),
        merchant_id: current.merchant_id.clone(),
        amount_minor: Some(amount),
        reason: req.reason.trim().to_owned(),
        trigger: Trigger::MerchantRequest,
        status: CancellationStatus::Requested,
        provider_reason: None,
        failure: None,
        ticket: Some(TicketState::Unsent),
        ticket_accepted_at: None,
        created_at: now,
        updated_at: now,
        completed_at: None,
    };
    Ok((next, cancellation))
}

/// How much a refund of `requested` (`None`: all that is left) takes from `current`, or why not.
pub fn refundable_amount(
    current: &Payment,
    requested: Option<MinorUnits>,
    expected_refundable: Option<MinorUnits>,
) -> Result<MinorUnits, PaymentError> {
    if !matches!(current.status, PaymentStatus::Paid | PaymentStatus::PartialCancelled | PaymentStatus::CancelPending) {
        return Err(PaymentError::NotRefundable(format!(
            "the payment is {}; only a paid payment can be refunded",
            current.status
        )));
    }
    if current.provider_ref.is_none() {
        return Err(PaymentError::NotRefundable("the provider has not reported this payment's reference".into()));
    }
    let refundable = current.refundable();
    if let Some(expected) = expected_refundable
        && expected != refundable
    {
        return Err(PaymentError::NotRefundable(format!(
            "expected_refundable_amount is {expected} but {refundable} is refundable"
        )));
    }
    if refundable <= MinorUnits::ZERO {
        return Err(PaymentError::NotRefundable("nothing is left to refund".into()));
    }
    let amount = requested.unwrap_or(refundable);
    if amount > refundable {
        return Err(PaymentError::NotRefundable(format!("amount {amount} exceeds the refundable amount {refundable}")));
    }
    Ok(amount)
}

/// The payment once the provider accepted an open request: CANCEL_PENDING (`None`: it shows that already).
pub fn after_acceptance(current: &Payment, now: i64) -> Option<Payment> {
    (current.status != PaymentStatus::CancelPending)
        .then(|| Payment { status: PaymentStatus::CancelPending, ..current.next_version(now) })
}

/// What releasing a request writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The request, FAILED.
    pub failed: Cancellation,
    /// The payment with the request's amount no longer reserved.
    pub next: Payment,
    /// The payment waits for nothing any more and shows it was partly refunded (an event says so).
    pub settled: bool,
}

/// Releases `stored` (`None` when `only_if` names a ticket state it is not in).
pub fn release_plan(
    current: &Payment,
    stored: Cancellation,
    failure: &str,
    only_if: Option<TicketState>,
    now: i64,
) -> Option<Release> {
    if only_if.is_some_and(|state| stored.ticket != Some(state)) {
        return None;
    }
    let mut next = current.next_version(now);
    next.pending_cancel_amount -= stored.amount_minor.unwrap_or_default();
    // Waiting for nothing any more: a payment partly refunded meanwhile shows it.
    let settled = next.pending_cancel_amount == MinorUnits::ZERO
        && next.status == PaymentStatus::CancelPending
        && next.cancelled_amount > MinorUnits::ZERO;
    if settled {
        next.status = PaymentStatus::PartialCancelled;
    }
    let failed = Cancellation {
        status: CancellationStatus::Failed,
        failure: Some(failure.to_owned()),
        updated_at: now,
        completed_at: Some(now),
        ..stored
    };
    Some(Release { failed, next, settled })
}

/// How an operator settles a cancellation whose outcome is unknown, after checking with the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The provider refunded it.
    Succeeded,
    /// The provider has no such refund: the amount is refundable again.
    Failed,
}

impl Resolution {
    /// The status a cancellation resolved this way ends in.
    pub fn status(self) -> CancellationStatus {
        match self {
            Self::Succeeded => CancellationStatus::Succeeded,
            Self::Failed => CancellationStatus::Failed,
        }
    }
}

/// What ResolveCancellation does with the cancellation as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveStep {
    /// Resolved this way already: answer with it (resolving is idempotent).
    Answer,
    /// Its outcome is unknown: settle it.
    Apply,
}

/// Only a merchant's request whose outcome is unknown can be resolved; the same resolution again
/// answers; anything else is refused, saying where the cancellation stands.
pub fn resolve_step(c: &Cancellation, resolution: Resolution) -> Result<ResolveStep, PaymentError> {
    if c.status == CancellationStatus::Requested && c.ticket == Some(TicketState::Unknown) {
        return Ok(ResolveStep::Apply);
    }
    if c.status == resolution.status() && c.trigger == Trigger::MerchantRequest {
        return Ok(ResolveStep::Answer);
    }
    Err(PaymentError::NotResolvable(format!(
        "the cancellation is {} (ticket {}); only one whose outcome is unknown can be resolved",
        c.status.as_str(),
        c.ticket.map_or("none", TicketState::as_str)
    )))
}

/// An operator says the provider refunded `stored`: it succeeds and its amount counts as refunded
/// (`None` unless it is open with an unknown outcome).
pub fn unknown_confirmed(
    current: &Payment,
    stored: Cancellation,
    now: i64,
) -> Option<(Cancellation, Payment, EventKind)> {
    if stored.status != CancellationStatus::Requested || stored.ticket != Some(TicketState::Unknown) {
        return None;
    }
    let (next, kind) = after_confirming(current, &[stored.amount_minor.unwrap_or_default()], now);
    let done =
        Cancellation { status: CancellationStatus::Succeeded, updated_at: now, completed_at: Some(now), ..stored };
    Some((done, next, kind))
}

/// The payment after the provider confirmed requests of these amounts, and the event kind.
pub fn after_confirming(current: &Payment, amounts: &[MinorUnits], now: i64) -> (Payment, EventKind) {
    let mut next = current.next_version(now);
    for amount in amounts {
        next.pending_cancel_amount -= *amount;
        next.cancelled_amount += *amount;
    }
    next.status = status_by_amounts(&next);
    if next.status == PaymentStatus::Cancelled {
        next.cancelled_at = Some(now);
    }
    let kind = if next.status == PaymentStatus::Cancelled {
        EventKind::PaymentCancelled
    } else {
        EventKind::PaymentPartiallyCancelled
    };
    (next, kind)
}

/// A payment's status from its amounts once a reversal is applied.
fn status_by_amounts(p: &Payment) -> PaymentStatus {
    if p.cancelled_amount >= p.amount_minor {
        PaymentStatus::Cancelled
    } else if p.pending_cancel_amount > MinorUnits::ZERO {
        PaymentStatus::CancelPending
    } else {
        PaymentStatus::PartialCancelled
    }
}

/// What a provider's reversal (Paymentwall type 2) does, decided from the payment and its open
/// requests (accepted tickets first, then oldest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversalPlan {
    /// Nothing (the payment is already fully reversed, or failed).
    Nothing,
    /// Confirms these open requests (indexes into the list given), each with its own amount.
    Confirm(Vec<usize>),
    /// A partial reversal nobody asked for: recorded without an amount.
    UnaskedPartial,
    /// Everything not yet reversed goes; every open request is moot and fails.
    Whole,
}

/// A refund confirms requests whose ticket may have reached the provider: a partial refund the
/// first of them, a full refund all of them. A request whose ticket never left is never confirmed
/// by a notification (the provider cannot be confirming it). Anything else (a chargeback, fraud, a
/// refund nobody asked paygate for) reverses everything not yet reversed.
pub fn plan_reversal(current: &Payment, kind: ReversalKind, open: &[Cancellation]) -> ReversalPlan {
    use PaymentStatus as S;
    if matches!(current.status, S::Cancelled | S::Failed) {
        return ReversalPlan::Nothing;
    }
    let sent: Vec<usize> = open
        .iter()
        .enumerate()
        .filter(|(_, c)| c.ticket.is_none_or(TicketState::may_have_reached_provider))
        .map(|(i, _)| i)
        .collect();
    match kind {
        ReversalKind::FullRefund if !sent.is_empty() => ReversalPlan::Confirm(sent),
        ReversalKind::PartialRefund if !sent.is_empty() => ReversalPlan::Confirm(sent[..1].to_vec()),
        ReversalKind::PartialRefund if matches!(current.status, S::Paid | S::PartialCancelled | S::CancelPending) => {
            ReversalPlan::UnaskedPartial
        }
        _ => ReversalPlan::Whole,
    }
}

/// The plan for the provider saying (payment status API) the payment was refunded, not how much:
/// every open request whose ticket may have reached it is confirmed with its own amount; nothing else.
pub fn plan_confirmation(current: &Payment, open: &[Cancellation]) -> ReversalPlan {
    match plan_reversal(current, ReversalKind::FullRefund, open) {
        plan @ ReversalPlan::Confirm(_) => plan,
        _ => ReversalPlan::Nothing,
    }
}

/// What a reversal writes, in this order: the open requests it finishes, the reversal it records
/// on its own, and the payment after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReversalEffect {
    /// Open requests it finishes: confirmed (SUCCEEDED) or made moot (FAILED).
    pub finish: Vec<Cancellation>,
    /// A reversal nobody asked paygate for, recorded as it happened.
    pub record: Option<Cancellation>,
    pub next: Payment,
    pub kind: EventKind,
    /// The cancellation the event names.
    pub completed: Cancellation,
}

/// A reversal the provider reported without saying why (only confirmations come without a notice).
const UNEXPLAINED: ReversalNotice =
    ReversalNotice { kind: ReversalKind::Other, provider_reason: None, description: "reversed by the provider" };

/// What `plan` does to `current` and its `open` requests (`None`: nothing). `reversal` is the
/// provider's notice (`None` for a confirmation learned by asking).
pub fn reversal_effect(
    current: &Payment,
    plan: ReversalPlan,
    open: &[Cancellation],
    reversal: Option<&ReversalNotice>,
    now: i64,
) -> Option<ReversalEffect> {
    let provider_reason = reversal.and_then(|r| r.provider_reason);
    let reversal = reversal.unwrap_or(&UNEXPLAINED);
    match plan {
        ReversalPlan::Nothing => None,
        ReversalPlan::Confirm(indexes) => {
            let finish: Vec<Cancellation> = indexes
                .iter()
                .map(|&i| Cancellation {
                    status: CancellationStatus::Succeeded,
                    provider_reason,
                    updated_at: now,
                    completed_at: Some(now),
                    ..open[i].clone()
                })
                .collect();
            let amounts: Vec<MinorUnits> = finish.iter().map(|c| c.amount_minor.unwrap_or_default()).collect();
            let (next, kind) = after_confirming(current, &amounts, now);
            let completed = finish.last()?.clone();
            Some(ReversalEffect { finish, record: None, next, kind, completed })
        }
        ReversalPlan::UnaskedPartial => {
            let completed = new_reversal(current, None, reversal, now);
            let mut next = current.next_version(now);
            next.status = status_by_amounts(&next);
            let kind = EventKind::PaymentPartiallyCancelled;
            Some(ReversalEffect { finish: Vec::new(), record: Some(completed.clone()), next, kind, completed })
        }
        ReversalPlan::Whole => {
            // Everything not yet reversed goes, including what was never marked paid (a reversal
            // that overtook its payment's completion); every open request is moot.
            let finish = open
                .iter()
                .map(|request| Cancellation {
                    status: CancellationStatus::Failed,
                    failure: Some("superseded by a reversal from the provider".into()),
                    updated_at: now,
                    completed_at: Some(now),
                    ..request.clone()
                })
                .collect();
            let remaining = current.amount_minor - current.cancelled_amount;
            let completed = new_reversal(current, Some(remaining), reversal, now);
            let mut next = current.next_version(now);
            next.pending_cancel_amount = MinorUnits::ZERO;
            next.cancelled_amount = current.amount_minor;
            next.status = PaymentStatus::Cancelled;
            next.cancelled_at = Some(now);
            let kind = EventKind::PaymentCancelled;
            Some(ReversalEffect { finish, record: Some(completed.clone()), next, kind, completed })
        }
    }
}

fn new_reversal(current: &Payment, amount: Option<MinorUnits>, reversal: &ReversalNotice, now: i64) -> Cancellation {
    Cancellation {
        cancellation_id: new_cancellation_id(),
        payment_id: current.payment_id.clone(),
        merchant_id: current.merchant_id.clone(),
        amount_minor: amount,
        reason: reversal.description.to_owned(),
        trigger: if reversal.kind == ReversalKind::Chargeback { Trigger::Chargeback } else { Trigger::Provider },
        status: CancellationStatus::Succeeded,
        provider_reason: reversal.provider_reason,
        failure: None,
        ticket: None,
        ticket_accepted_at: None,
        created_at: now,
        updated_at: now,
        completed_at: Some(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::fixtures::{payment, refund_request as request, unpaid};

    #[test]
    fn a_take_over_sends_only_what_never_left() {
        let lease = 1000;
        let action = |ticket, updated_at| take_over_action(&request(100, ticket, updated_at), 5000, lease);
        assert_eq!(action(TicketState::Unsent, 0), TakeOver::Send);
        assert_eq!(action(TicketState::Sending, 0), TakeOver::MarkUnknown, "may have reached the provider");
        assert_eq!(action(TicketState::Sending, 4500), TakeOver::InFlight, "another worker is still on it");
        assert_eq!(action(TicketState::Accepted, 0), TakeOver::FinishAccepted);
        assert_eq!(action(TicketState::Unknown, 0), TakeOver::Answer, "never sent again");
        let mut done = request(100, TicketState::Unsent, 0);
        done.status = CancellationStatus::Failed;
        assert_eq!(take_over_action(&done, 5000, lease), TakeOver::Answer);
    }

    #[test]
    fn a_confirmation_never_matches_a_ticket_that_never_left() {
        let paid = payment(PaymentStatus::CancelPending, 1000, 0, 300);
        let open = [request(100, TicketState::Unsent, 0), request(200, TicketState::Accepted, 0)];
        assert_eq!(plan_reversal(&paid, ReversalKind::PartialRefund, &open), ReversalPlan::Confirm(vec![1]));
        assert_eq!(plan_reversal(&paid, ReversalKind::FullRefund, &open), ReversalPlan::Confirm(vec![1]));
        // Only an unsent request open: a refund nobody asked the provider for.
        let open = [request(100, TicketState::Unsent, 0)];
        assert_eq!(plan_reversal(&paid, ReversalKind::PartialRefund, &open), ReversalPlan::UnaskedPartial);
        assert_eq!(plan_reversal(&paid, ReversalKind::FullRefund, &open), ReversalPlan::Whole);
        // Sent with an unknown outcome, or still sending: the provider may be confirming it.
        let open = [request(100, TicketState::Unknown, 0), request(50, TicketState::Sending, 0)];
        assert_eq!(plan_reversal(&paid, ReversalKind::FullRefund, &open), ReversalPlan::Confirm(vec![0, 1]));
        assert_eq!(
            plan_reversal(&paid, ReversalKind::Chargeback, &open),
            ReversalPlan::Whole,
            "a chargeback takes everything"
        );
        let gone = payment(PaymentStatus::Cancelled, 1000, 1000, 0);
        assert_eq!(plan_reversal(&gone, ReversalKind::FullRefund, &open), ReversalPlan::Nothing);
    }

    #[test]
    fn confirmed_amounts_move_from_pending_to_cancelled() {
        let p = payment(PaymentStatus::CancelPending, 1000, 0, 700);
        let (next, kind) = after_confirming(&p, &[MinorUnits(300)], 9);
        assert_eq!((next.cancelled_amount.0, next.pending_cancel_amount.0), (300, 400));
        assert_eq!((next.status, kind), (PaymentStatus::CancelPending, EventKind::PaymentPartiallyCancelled));
        let (next, kind) = after_confirming(&next, &[MinorUnits(400)], 10);
        assert_eq!((next.status, next.pending_cancel_amount.0), (PaymentStatus::PartialCancelled, 0));
        assert_eq!(kind, EventKind::PaymentPartiallyCancelled);
        let (next, kind) = after_confirming(&p, &[MinorUnits(700), MinorUnits(300)], 11);
        assert_eq!(
            (next.status, next.cancelled_at, kind),
            (PaymentStatus::Cancelled, Some(11), EventKind::PaymentCancelled)
        );
    }

    #[test]
    fn a_refund_takes_at_most_what_is_left() {
        let p = payment(PaymentStatus::PartialCancelled, 1000, 300, 200);
        assert_eq!(refundable_amount(&p, None, None).unwrap(), MinorUnits(500));
        assert_eq!(refundable_amount(&p, Some(MinorUnits(500)), Some(MinorUnits(500))).unwrap(), MinorUnits(500));
        assert!(refundable_amount(&p, Some(MinorUnits(501)), None).is_err());
        assert!(refundable_amount(&p, Some(MinorUnits(1)), Some(MinorUnits(499))).is_err());
        assert!(refundable_amount(&payment(PaymentStatus::Ready, 1000, 0, 0), None, None).is_err());
    }

    fn refund_of(amount: Option<i64>) -> RefundRequest {
        RefundRequest {
            payment_id: "pay_1".into(),
            amount_minor: amount.map(MinorUnits),
            reason: " asked ".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_reservation_holds_the_amount_and_records_an_unsent_request() {
        let p = payment(PaymentStatus::PartialCancelled, 1000, 300, 200);
        let (next, c) = reservation(&p, &refund_of(Some(150)), 42).unwrap();
        assert_eq!((next.pending_cancel_amount.0, next.cancelled_amount.0, next.status), (350, 300, p.status));
        assert_eq!((next.version, next.updated_at), (p.version + 1, 42));
        assert_eq!(
            (c.amount_minor.map(i64::from), c.status, c.ticket),
            (Some(150), CancellationStatus::Requested, Some(TicketState::Unsent))
        );
        assert_eq!((c.trigger, c.reason.as_str(), c.payment_id.as_str()), (Trigger::MerchantRequest, "asked", "pay_1"));
        let (next, c) = reservation(&p, &refund_of(None), 42).unwrap();
        assert_eq!((c.amount_minor.map(i64::from), next.pending_cancel_amount.0), (Some(500), 700), "all that is left");
        assert!(reservation(&p, &refund_of(Some(501)), 42).is_err());
        assert!(reservation(&unpaid(1000), &refund_of(None), 42).is_err(), "nothing paid, nothing to refund");
    }

    #[test]
    fn a_refund_in_another_currency_is_refused_by_name_before_anything_else() {
        let p = payment(PaymentStatus::Paid, 1000, 0, 0);
        let in_currency = |currency: &str| RefundRequest { currency: Some(currency.into()), ..refund_of(Some(100)) };
        let problem = reservation(&p, &in_currency("EUR"), 42).unwrap_err().to_string();
        assert!(problem.contains("amount.currency") && problem.contains(&p.currency), "{problem}");
        let unrefundable = in_currency("EUR");
        let problem = reservation(&unpaid(1000), &unrefundable, 42).unwrap_err().to_string();
        assert!(problem.contains("amount.currency"), "the currency is checked first: {problem}");
        assert!(reservation(&p, &in_currency(&p.currency), 42).is_ok());
    }

    #[test]
    fn acceptance_shows_cancel_pending_once() {
        let next = after_acceptance(&payment(PaymentStatus::Paid, 1000, 0, 400), 5).unwrap();
        assert_eq!((next.status, next.pending_cancel_amount.0, next.version), (PaymentStatus::CancelPending, 400, 2));
        assert_eq!(after_acceptance(&payment(PaymentStatus::CancelPending, 1000, 0, 400), 5), None);
    }

    #[test]
    fn a_release_gives_the_amount_back() {
        let p = payment(PaymentStatus::CancelPending, 1000, 0, 400);
        let r = release_plan(&p, request(400, TicketState::Sending, 0), "refused", None, 8).unwrap();
        assert_eq!(
            (r.next.pending_cancel_amount.0, r.next.status, r.settled),
            (0, PaymentStatus::CancelPending, false)
        );
        assert_eq!((r.failed.status, r.failed.failure.as_deref()), (CancellationStatus::Failed, Some("refused")));
        // Partly refunded meanwhile and waiting for nothing else: it shows PARTIAL_CANCELLED.
        let p = payment(PaymentStatus::CancelPending, 1000, 300, 400);
        let r = release_plan(&p, request(400, TicketState::Unknown, 0), "no", Some(TicketState::Unknown), 8).unwrap();
        assert_eq!(
            (r.next.pending_cancel_amount.0, r.next.status, r.settled),
            (0, PaymentStatus::PartialCancelled, true)
        );
        let other = release_plan(&p, request(400, TicketState::Accepted, 0), "no", Some(TicketState::Unknown), 8);
        assert_eq!(other, None, "only a ticket in the named state");
    }

    #[test]
    fn an_operator_confirms_only_an_unknown_outcome() {
        let p = payment(PaymentStatus::CancelPending, 1000, 0, 400);
        let (done, next, kind) = unknown_confirmed(&p, request(400, TicketState::Unknown, 0), 3).unwrap();
        assert_eq!(done.status, CancellationStatus::Succeeded);
        assert_eq!((next.cancelled_amount.0, next.pending_cancel_amount.0), (400, 0));
        assert_eq!((next.status, kind), (PaymentStatus::PartialCancelled, EventKind::PaymentPartiallyCancelled));
        assert_eq!(unknown_confirmed(&p, request(400, TicketState::Accepted, 0), 3), None);
    }

    #[test]
    fn only_an_unknown_outcome_is_resolved_and_the_same_resolution_answers_again() {
        let unknown = request(500, TicketState::Unknown, 0);
        for resolution in [Resolution::Succeeded, Resolution::Failed] {
            assert_eq!(resolve_step(&unknown, resolution).unwrap(), ResolveStep::Apply);
        }
        let done = Cancellation { status: CancellationStatus::Succeeded, ..unknown.clone() };
        assert_eq!(resolve_step(&done, Resolution::Succeeded).unwrap(), ResolveStep::Answer);
        let problem = resolve_step(&done, Resolution::Failed).unwrap_err().to_string();
        assert!(problem.contains("SUCCEEDED") && problem.contains("unknown"), "{problem}");
        let reversal = Cancellation { trigger: Trigger::Chargeback, ticket: None, ..done };
        assert!(
            resolve_step(&reversal, Resolution::Succeeded).is_err(),
            "a chargeback is not an operator's to resolve"
        );
        assert!(resolve_step(&request(500, TicketState::Accepted, 0), Resolution::Failed).is_err());
    }

    #[test]
    fn a_confirmation_moves_each_confirmed_amount() {
        let p = payment(PaymentStatus::CancelPending, 1000, 0, 300);
        let open = [request(100, TicketState::Accepted, 0), request(200, TicketState::Unknown, 0)];
        let notice = ReversalNotice { kind: ReversalKind::FullRefund, provider_reason: Some(9), description: "refund" };
        let plan = plan_reversal(&p, notice.kind, &open);
        let e = reversal_effect(&p, plan, &open, Some(&notice), 4).unwrap();
        assert!(e.finish.iter().all(|c| c.status == CancellationStatus::Succeeded && c.provider_reason == Some(9)));
        assert_eq!(
            (e.next.cancelled_amount.0, e.next.pending_cancel_amount.0, e.next.status),
            (300, 0, PaymentStatus::PartialCancelled)
        );
        assert_eq!((e.record, e.completed.amount_minor.map(i64::from)), (None, Some(200)));
        assert_eq!(plan_confirmation(&p, &[request(100, TicketState::Unsent, 0)]), ReversalPlan::Nothing);
    }

    #[test]
    fn a_chargeback_takes_what_is_left_and_fails_the_open_requests() {
        let p = payment(PaymentStatus::CancelPending, 1000, 300, 200);
        let open = [request(200, TicketState::Accepted, 0)];
        let notice =
            ReversalNotice { kind: ReversalKind::Chargeback, provider_reason: Some(2), description: "chargeback" };
        let e = reversal_effect(&p, plan_reversal(&p, notice.kind, &open), &open, Some(&notice), 6).unwrap();
        assert_eq!(e.finish[0].status, CancellationStatus::Failed);
        let recorded = e.record.expect("the chargeback is recorded");
        assert_eq!((recorded.amount_minor.map(i64::from), recorded.trigger), (Some(700), Trigger::Chargeback));
        assert_eq!((e.next.cancelled_amount.0, e.next.pending_cancel_amount.0), (1000, 0));
        assert_eq!(
            (e.next.status, e.next.cancelled_at, e.kind),
            (PaymentStatus::Cancelled, Some(6), EventKind::PaymentCancelled)
        );
        // An unasked partial refund is recorded without an amount; the amounts stay.
        let p = payment(PaymentStatus::Paid, 1000, 0, 0);
        let notice =
            ReversalNotice { kind: ReversalKind::PartialRefund, provider_reason: Some(10), description: "part" };
        let e = reversal_effect(&p, plan_reversal(&p, notice.kind, &[]), &[], Some(&notice), 6).unwrap();
        assert_eq!(
            (e.completed.amount_minor.map(i64::from), e.next.cancelled_amount.0, e.next.status),
            (None, 0, PaymentStatus::PartialCancelled)
        );
    }

    proptest::proptest! {
        #[test]
        fn a_reservation_never_takes_more_than_was_paid(
            amount in 0..10_000i64, cancelled in 0..10_000i64, pending in 0..10_000i64,
            requested in proptest::option::of(1..20_000i64), expected in proptest::option::of(0..10_000i64),
        ) {
            let (cancelled, pending) = (cancelled.min(amount), pending.min(amount - cancelled.min(amount)));
            for status in PaymentStatus::ALL {
                let p = payment(status, amount, cancelled, pending);
                let req = RefundRequest {
                    amount_minor: requested.map(MinorUnits),
                    expected_refundable_amount: expected.map(MinorUnits),
                    ..refund_of(None)
                };
                if let Ok((next, c)) = reservation(&p, &req, 1) {
                    let taken = c.amount_minor.unwrap_or_default().0;
                    proptest::prop_assert!(taken > 0 && requested.is_none_or(|r| r == taken));
                    proptest::prop_assert_eq!(next.pending_cancel_amount.0, pending + taken);
                    proptest::prop_assert!(next.cancelled_amount.0 + next.pending_cancel_amount.0 <= next.amount_minor.0);
                }
            }
        }

        #[test]
        fn any_refund_text_is_refused_by_name(field in 0..3usize, value in "\\PC{0,3}[\\x00-\\x1f\\x7f]?\\PC{0,3}|.{0,300}") {
            let mut req = RefundRequest { payment_id: "pay_1".into(), reason: "asked".into(), ..Default::default() };
            let name = match field {
                0 => { req.payment_id = value.clone(); "payment_id" }
                1 => { req.reason = value.clone(); "reason" }
                _ => { req.idempotency_key = value.clone(); "idempotency_key" }
            };
            let v = validate(&req);
            proptest::prop_assert!(v.iter().all(|x| !x.field.is_empty() && !x.description.is_empty()));
            if value.chars().any(char::is_control) {
                proptest::prop_assert!(v.iter().any(|x| x.field == name), "{name}: {v:?}");
            }
        }
    }
}
