//! Subscriptions, the rules: a subscription checkout starts one; renewals (new refs on type 0
//! pingbacks) create new payments linked to it; provider notifications end it. Pure: the rows are
//! in `store::subscriptions`, cancelling one in `flows::subscription`.

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime};

use super::{EventKind, Payment};
use crate::payments::PaymentError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SubscriptionStatus {
    Pending,
    Active,
    Cancelled,
    Expired,
    PaymentFailed,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Active => "ACTIVE",
            Self::Cancelled => "CANCELLED",
            Self::Expired => "EXPIRED",
            Self::PaymentFailed => "PAYMENT_FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Active, Self::Cancelled, Self::Expired, Self::PaymentFailed]
            .into_iter()
            .find(|v| v.as_str() == s)
    }

    /// Ended subscriptions do not come back.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Cancelled | Self::Expired | Self::PaymentFailed)
    }
}

/// How a subscription ended, as the provider reported it (Paymentwall types 12, 13, 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionEnd {
    Cancelled,
    Expired,
    PaymentFailed,
}

impl SubscriptionEnd {
    pub fn status(self) -> SubscriptionStatus {
        match self {
            Self::Cancelled => SubscriptionStatus::Cancelled,
            Self::Expired => SubscriptionStatus::Expired,
            Self::PaymentFailed => SubscriptionStatus::PaymentFailed,
        }
    }

    pub fn event_kind(self) -> EventKind {
        match self {
            Self::Cancelled => EventKind::SubscriptionCancelled,
            Self::Expired => EventKind::SubscriptionExpired,
            Self::PaymentFailed => EventKind::SubscriptionPaymentFailed,
        }
    }
}

/// What a merchant sees: the stored status, except that a live subscription whose stop was asked
/// for (a stop ticket is out, the provider has not confirmed) reads CANCEL_REQUESTED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShownStatus {
    Pending,
    Active,
    CancelRequested,
    Cancelled,
    Expired,
    PaymentFailed,
}

pub fn shown_status(sub: &Subscription) -> ShownStatus {
    match sub.status {
        SubscriptionStatus::Pending | SubscriptionStatus::Active if sub.cancel_requested_at.is_some() => {
            ShownStatus::CancelRequested
        }
        SubscriptionStatus::Pending => ShownStatus::Pending,
        SubscriptionStatus::Active => ShownStatus::Active,
        SubscriptionStatus::Cancelled => ShownStatus::Cancelled,
        SubscriptionStatus::Expired => ShownStatus::Expired,
        SubscriptionStatus::PaymentFailed => ShownStatus::PaymentFailed,
    }
}

/// The subscription once its first payment is paid: one waiting for it starts (`None`: no change).
pub fn activated(sub: &Subscription, now: i64) -> Option<Subscription> {
    (sub.status == SubscriptionStatus::Pending).then(|| Subscription {
        status: SubscriptionStatus::Active,
        started_at: sub.started_at.or(Some(now)),
        updated_at: now,
        ..sub.clone()
    })
}

/// The subscription after one more payment (`payment_id`): counted and remembered as the last
/// renewal; a live one is ACTIVE, an ended one stays ended and counts the renewal as one after
/// its end (money that needs a person).
pub fn renewed(sub: &Subscription, payment_id: &str, now: i64) -> Subscription {
    let after_end = renewal_after_end(sub).is_some();
    Subscription {
        renewals: sub.renewals + 1,
        renewals_after_end: sub.renewals_after_end + i64::from(after_end),
        last_renewal_payment_id: Some(payment_id.to_owned()),
        last_renewal_at: Some(now),
        status: if after_end { sub.status } else { SubscriptionStatus::Active },
        started_at: sub.started_at.or(Some(now)),
        updated_at: now,
        ..sub.clone()
    }
}

/// How the subscription had ended when a renewal arrived (`None`: it was live, or only asked to stop).
pub fn renewal_after_end(before: &Subscription) -> Option<SubscriptionStatus> {
    before.status.is_final().then_some(before.status)
}

/// When the next renewal is expected from the terms alone: the start plus one period per payment
/// made so far (UTC calendar; a month from Jan 31 is the last day of February). An estimate: the
/// provider decides the actual time. None unless billing is live and recurring.
pub fn next_renewal_estimate(sub: &Subscription) -> Option<i64> {
    let started_at = sub.started_at?;
    if !sub.recurring || shown_status(sub) != ShownStatus::Active || sub.period_length <= 0 {
        return None;
    }
    let periods = (sub.renewals + 1).checked_mul(sub.period_length)?;
    const DAY: i64 = 86_400_000;
    match sub.period_type {
        PeriodType::Day => started_at.checked_add(periods.checked_mul(DAY)?),
        PeriodType::Week => started_at.checked_add(periods.checked_mul(7 * DAY)?),
        PeriodType::Month => add_months(started_at, periods),
        PeriodType::Year => add_months(started_at, periods.checked_mul(12)?),
    }
}

/// `ms` (Unix ms, UTC) plus `months` calendar months, the day clamped to the target month's length
/// (Jan 31 + 1 month = Feb 28 or 29); `None` outside the calendar's range.
fn add_months(ms: i64, months: i64) -> Option<i64> {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    let index = i64::from(at.year()).checked_mul(12)?.checked_add(i64::from(u8::from(at.month())) - 1)?;
    let index = index.checked_add(months)?;
    let year = i32::try_from(index.div_euclid(12)).ok()?;
    let month = Month::try_from(u8::try_from(index.rem_euclid(12) + 1).ok()?).ok()?;
    let date = Date::from_calendar_date(year, month, at.day().min(month.length(year))).ok()?;
    let nanos = date.with_time(at.time()).assume_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).ok()
}

/// The subscription after the provider ended it; one that already ended stays as it ended (`None`).
pub fn ended(sub: &Subscription, end: SubscriptionEnd, now: i64) -> Option<Subscription> {
    (!sub.status.is_final()).then(|| Subscription {
        status: end.status(),
        ended_at: Some(now),
        updated_at: now,
        ..sub.clone()
    })
}

/// What CancelSubscription does with the subscription as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelStep {
    /// Ended, or its cancel already asked: answer with it as it is (asking again is harmless).
    Answer,
    /// Ask the provider to stop billing.
    Ask,
}

pub fn cancel_step(sub: &Subscription) -> CancelStep {
    if sub.status.is_final() || sub.cancel_requested_at.is_some() { CancelStep::Answer } else { CancelStep::Ask }
}

/// Only billing that started can be stopped: the provider must have reported the first payment.
pub fn check_stoppable(initial: &Payment) -> Result<(), PaymentError> {
    match initial.provider_ref {
        Some(_) => Ok(()),
        None => {
            Err(PaymentError::NotCancellable("the subscription was never paid; there is no billing to stop".into()))
        }
    }
}

/// The unit of a subscription's billing period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodType {
    Day,
    Week,
    Month,
    Year,
}

impl PeriodType {
    pub const ALL: [PeriodType; 4] = [Self::Day, Self::Week, Self::Month, Self::Year];

    /// The contract's word (Paymentwall's `ag_period_type`, the API's `period_type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A subscription as stored. Serialized (webhooks' `data.subscription`, the event log) as its
/// `SubscriptionView`, the form merchants see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "SubscriptionView")]
pub struct Subscription {
    pub subscription_id: String,
    pub merchant_id: String,
    pub channel_key: String,
    pub initial_payment_id: String,
    /// The buyer, as on the first payment.
    pub customer_uid: String,
    pub period_length: i64,
    pub period_type: PeriodType,
    pub recurring: bool,
    pub status: SubscriptionStatus,
    pub renewals: i64,
    /// Renewals recorded after the subscription had ended.
    pub renewals_after_end: i64,
    pub last_renewal_payment_id: Option<String>,
    pub last_renewal_at: Option<i64>,
    /// When the first payment was paid.
    pub started_at: Option<i64>,
    pub cancel_requested_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A subscription as merchants see it: the shown status and the next renewal estimate. Fields
/// added after the first release default, so events written before still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionView {
    pub subscription_id: String,
    pub merchant_id: String,
    pub channel_key: String,
    pub initial_payment_id: String,
    #[serde(default)]
    pub customer_uid: String,
    pub period_length: i64,
    pub period_type: String,
    pub recurring: bool,
    pub status: ShownStatus,
    pub renewals: i64,
    #[serde(default)]
    pub renewals_after_end: i64,
    #[serde(default)]
    pub last_renewal_payment_id: Option<String>,
    #[serde(default)]
    pub last_renewal_at: Option<i64>,
    #[serde(default)]
    pub started_at: Option<i64>,
    pub cancel_requested_at: Option<i64>,
    pub ended_at: Option<i64>,
    #[serde(default)]
    pub next_renewal_estimate_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<Subscription> for SubscriptionView {
    fn from(s: Subscription) -> Self {
        Self {
            status: shown_status(&s),
            next_renewal_estimate_at: next_renewal_estimate(&s),
            subscription_id: s.subscription_id,
            merchant_id: s.merchant_id,
            channel_key: s.channel_key,
            initial_payment_id: s.initial_payment_id,
            customer_uid: s.customer_uid,
            period_length: s.period_length,
            period_type: s.period_type.as_str().to_owned(),
            recurring: s.recurring,
            renewals: s.renewals,
            renewals_after_end: s.renewals_after_end,
            last_renewal_payment_id: s.last_renewal_payment_id,
            last_renewal_at: s.last_renewal_at,
            started_at: s.started_at,
            cancel_requested_at: s.cancel_requested_at,
            ended_at: s.ended_at,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

impl SubscriptionView {
    /// The subscription an event's detail carries, if it is one (a cancellation's is not).
    pub fn from_detail(detail: &serde_json::Value) -> Option<Self> {
        detail.get("initial_payment_id")?;
        serde_json::from_value(detail.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::{SubscriptionStatus as S, *};
    use crate::payments::{
        PaymentStatus,
        fixtures::{payment, subscription, unpaid},
    };

    #[test]
    fn the_first_payment_starts_only_a_waiting_subscription() {
        let started = activated(&subscription(S::Pending, 0), 7).expect("a pending subscription starts");
        assert_eq!((started.status, started.renewals, started.updated_at), (S::Active, 0, 7));
        for status in [S::Active, S::Cancelled, S::Expired, S::PaymentFailed] {
            assert_eq!(activated(&subscription(status, 0), 7), None, "{status:?}");
        }
    }

    #[test]
    fn a_renewal_counts_and_never_revives_an_ended_subscription() {
        let live = renewed(&subscription(S::Active, 2), "pay_r3", 9);
        assert_eq!((live.status, live.renewals, live.updated_at), (S::Active, 3, 9));
        assert_eq!((live.last_renewal_payment_id.as_deref(), live.last_renewal_at), (Some("pay_r3"), Some(9)));
        assert_eq!((live.renewals_after_end, live.started_at), (0, Some(0)), "the start stays");
        assert_eq!(renewed(&subscription(S::Pending, 0), "pay_r1", 9).status, S::Active);
        let late = renewed(&subscription(S::Cancelled, 4), "pay_r5", 9);
        assert_eq!((late.status, late.renewals), (S::Cancelled, 5), "counted, still cancelled");
        assert_eq!((late.renewals_after_end, late.last_renewal_payment_id.as_deref()), (1, Some("pay_r5")));
        assert_eq!(renewal_after_end(&subscription(S::Cancelled, 4)), Some(S::Cancelled));
        assert_eq!(renewal_after_end(&subscription(S::Expired, 4)), Some(S::Expired));
    }

    #[test]
    fn a_renewal_after_a_cancel_request_is_an_ordinary_renewal() {
        let asked = Subscription { cancel_requested_at: Some(5), ..subscription(S::Active, 1) };
        assert_eq!(renewal_after_end(&asked), None, "billing may run until the provider confirms");
        let renewed = renewed(&asked, "pay_r2", 9);
        assert_eq!((renewed.renewals, renewed.renewals_after_end), (2, 0));
        assert_eq!(shown_status(&renewed), ShownStatus::CancelRequested, "still waiting for the provider");
    }

    #[test]
    fn the_shown_status_says_when_a_stop_is_pending() {
        let asked = |status| Subscription { cancel_requested_at: Some(5), ..subscription(status, 0) };
        assert_eq!(shown_status(&subscription(S::Active, 0)), ShownStatus::Active);
        assert_eq!(shown_status(&subscription(S::Pending, 0)), ShownStatus::Pending);
        assert_eq!(shown_status(&asked(S::Active)), ShownStatus::CancelRequested);
        assert_eq!(shown_status(&asked(S::Pending)), ShownStatus::CancelRequested);
        // Once ended, the end is what shows, whatever was asked before.
        assert_eq!(shown_status(&asked(S::Cancelled)), ShownStatus::Cancelled);
        assert_eq!(shown_status(&asked(S::Expired)), ShownStatus::Expired);
        assert_eq!(shown_status(&subscription(S::PaymentFailed, 0)), ShownStatus::PaymentFailed);
        let view = SubscriptionView::from(asked(S::Active));
        assert_eq!(serde_json::to_value(&view).unwrap()["status"], "CANCEL_REQUESTED");
        let json = serde_json::to_value(asked(S::Active)).unwrap();
        assert_eq!(SubscriptionView::from_detail(&json), Some(view), "events carry the view and read back");
        assert_eq!(SubscriptionView::from_detail(&serde_json::json!({"cancellation_id": "can_1"})), None);
    }

    #[test]
    fn the_first_payment_records_the_start() {
        let started = activated(&Subscription { started_at: None, ..subscription(S::Pending, 0) }, 7).unwrap();
        assert_eq!(started.started_at, Some(7));
    }

    /// 2024-01-31T10:00:00Z and friends, as Unix ms.
    fn at(year: i32, month: u8, day: u8) -> i64 {
        let date = Date::from_calendar_date(year, Month::try_from(month).unwrap(), day).unwrap();
        date.midnight().assume_utc().unix_timestamp() * 1000 + 10 * 3_600_000
    }

    #[test]
    fn the_next_renewal_is_estimated_from_the_terms() {
        let terms = |period_type: &str, length, renewals| Subscription {
            period_type: PeriodType::parse(period_type).unwrap(),
            period_length: length,
            started_at: Some(at(2024, 1, 31)),
            ..subscription(S::Active, renewals)
        };
        assert_eq!(next_renewal_estimate(&terms("day", 3, 0)), Some(at(2024, 2, 3)));
        assert_eq!(next_renewal_estimate(&terms("week", 1, 1)), Some(at(2024, 2, 14)));
        assert_eq!(next_renewal_estimate(&terms("month", 1, 0)), Some(at(2024, 2, 29)), "clamped, leap year");
        assert_eq!(next_renewal_estimate(&terms("month", 1, 1)), Some(at(2024, 3, 31)), "from the start, no drift");
        assert_eq!(next_renewal_estimate(&terms("month", 2, 5)), Some(at(2025, 1, 31)));
        assert_eq!(next_renewal_estimate(&terms("year", 1, 0)), Some(at(2025, 1, 31)));
        let leap_day = Subscription { started_at: Some(at(2024, 2, 29)), ..terms("year", 1, 0) };
        assert_eq!(next_renewal_estimate(&leap_day), Some(at(2025, 2, 28)));
        // No estimate unless billing is live and recurring.
        let once = Subscription { recurring: false, ..terms("month", 1, 0) };
        let asked = Subscription { cancel_requested_at: Some(1), ..terms("month", 1, 0) };
        let ended = Subscription { status: S::Cancelled, ..terms("month", 1, 0) };
        let waiting = Subscription { status: S::Pending, started_at: None, ..terms("month", 1, 0) };
        for sub in [once, asked, ended, waiting] {
            assert_eq!(next_renewal_estimate(&sub), None, "{sub:?}");
        }
        assert_eq!(next_renewal_estimate(&terms("day", i64::MAX, 1)), None, "overflow is no estimate, not a panic");
    }

    #[test]
    fn months_are_added_on_the_calendar_and_out_of_range_is_no_date() {
        assert_eq!(add_months(at(2023, 12, 31), 2), Some(at(2024, 2, 29)));
        assert_eq!(add_months(at(2024, 3, 31), -1), Some(at(2024, 2, 29)), "backwards too");
        assert_eq!(add_months(at(1969, 12, 31), 1), Some(at(1970, 1, 31)), "before the epoch");
        assert_eq!(add_months(at(2024, 1, 15), 12 * 10_000), None, "past the year 9999");
        assert_eq!(add_months(i64::MAX, 1), None);
    }

    #[test]
    fn period_types_are_the_contracts_words() {
        for period in PeriodType::ALL {
            assert_eq!(PeriodType::parse(period.as_str()), Some(period));
        }
        assert_eq!(PeriodType::parse("fortnight"), None);
        assert_eq!(PeriodType::parse("Month"), None, "exactly as Paymentwall spells it");
    }

    #[test]
    fn an_end_happens_once() {
        let gone = ended(&subscription(S::Active, 1), SubscriptionEnd::Expired, 11).expect("a live one ends");
        assert_eq!((gone.status, gone.ended_at, gone.renewals), (S::Expired, Some(11), 1));
        for status in [S::Cancelled, S::Expired, S::PaymentFailed] {
            assert_eq!(ended(&subscription(status, 1), SubscriptionEnd::Cancelled, 11), None, "{status:?}");
        }
    }

    #[test]
    fn a_cancel_asks_the_provider_once_and_only_for_started_billing() {
        assert_eq!(cancel_step(&subscription(S::Active, 0)), CancelStep::Ask);
        assert_eq!(cancel_step(&subscription(S::Pending, 0)), CancelStep::Ask);
        assert_eq!(cancel_step(&subscription(S::Expired, 0)), CancelStep::Answer);
        let asked = Subscription { cancel_requested_at: Some(5), ..subscription(S::Active, 0) };
        assert_eq!(cancel_step(&asked), CancelStep::Answer, "asking again is harmless");
        assert!(check_stoppable(&payment(PaymentStatus::Paid, 100, 0, 0)).is_ok());
        assert!(matches!(check_stoppable(&unpaid(100)), Err(PaymentError::NotCancellable(_))));
    }
}
