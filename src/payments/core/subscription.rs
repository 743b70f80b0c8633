//! Subscriptions, the rules: a subscription checkout starts one; renewals (new refs on type 0
//! pingbacks) create new payments linked to it; provider notifications end it. Pure: the rows are
//! in `store::subscriptions`, cancelling one in `flows::subscription`.

use serde::{Deserialize, Serialize};

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

impl ShownStatus {
    /// The rows a ListSubscriptions status filter selects (constant SQL over stored columns).
    pub fn sql_predicate(self) -> &'static str {
        match self {
            Self::Pending => "(status = 'PENDING' AND cancel_requested_at IS NULL)",
            Self::Active => "(status = 'ACTIVE' AND cancel_requested_at IS NULL)",
            Self::CancelRequested => "(status IN ('PENDING', 'ACTIVE') AND cancel_requested_at IS NOT NULL)",
            Self::Cancelled => "(status = 'CANCELLED')",
            Self::Expired => "(status = 'EXPIRED')",
            Self::PaymentFailed => "(status = 'PAYMENT_FAILED')",
        }
    }
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
    match sub.period_type.as_str() {
        "day" => started_at.checked_add(periods.checked_mul(DAY)?),
        "week" => started_at.checked_add(periods.checked_mul(7 * DAY)?),
        "month" => add_months(started_at, periods),
        "year" => add_months(started_at, periods.checked_mul(12)?),
        _ => None,
    }
}

/// `ms` (Unix ms, UTC) plus `months` calendar months, the day clamped to the target month's length.
fn add_months(ms: i64, months: i64) -> Option<i64> {
    const DAY: i64 = 86_400_000;
    let (days, time_of_day) = (ms.div_euclid(DAY), ms.rem_euclid(DAY));
    let (year, month, day) = civil_from_days(days);
    let index = year.checked_mul(12)?.checked_add(month - 1)?.checked_add(months)?;
    let (year, month) = (index.div_euclid(12), index.rem_euclid(12) + 1);
    let day = day.min(days_in_month(year, month));
    days_from_civil(year, month, day).checked_mul(DAY)?.checked_add(time_of_day)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (the inverse of `days_from_civil`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
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

pub const PERIOD_TYPES: [&str; 4] = ["day", "week", "month", "year"];

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
    pub period_type: String,
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
            period_type: s.period_type,
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
    fn at(year: i64, month: i64, day: i64) -> i64 {
        days_from_civil(year, month, day) * 86_400_000 + 10 * 3_600_000
    }

    #[test]
    fn the_next_renewal_is_estimated_from_the_terms() {
        let terms = |period_type: &str, length, renewals| Subscription {
            period_type: period_type.into(),
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
        for sub in [once, asked, ended, waiting, terms("fortnight", 1, 0)] {
            assert_eq!(next_renewal_estimate(&sub), None, "{sub:?}");
        }
        assert_eq!(next_renewal_estimate(&terms("day", i64::MAX, 1)), None, "overflow is no estimate, not a panic");
    }

    #[test]
    fn calendar_days_round_trip() {
        for days in [-719_468, -1, 0, 1, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn each_shown_status_selects_what_it_shows() {
        use ShownStatus as V;
        // The SQL predicates, read as the stored (status, cancel asked) pairs they admit.
        let admits = |shown: V, status: S, asked: bool| {
            let p = shown.sql_predicate();
            let status_ok = p.contains(&format!("'{}'", status.as_str()));
            let asked_ok = if p.contains("IS NULL") {
                !asked
            } else if p.contains("IS NOT NULL") {
                asked
            } else {
                true
            };
            status_ok && asked_ok
        };
        for status in [S::Pending, S::Active, S::Cancelled, S::Expired, S::PaymentFailed] {
            for asked in [false, true] {
                let sub = Subscription { cancel_requested_at: asked.then_some(1), ..subscription(status, 0) };
                let shown = shown_status(&sub);
                for candidate in [V::Pending, V::Active, V::CancelRequested, V::Cancelled, V::Expired, V::PaymentFailed]
                {
                    assert_eq!(
                        admits(candidate, status, asked),
                        candidate == shown,
                        "{candidate:?} {status:?} {asked}"
                    );
                }
            }
        }
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
