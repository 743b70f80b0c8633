//! Delivery confirmation: the merchant tells the provider it delivered what was bought (Paymentwall
//! uses it to decide disputes and refund requests). The rules, pure: what a confirmation must say,
//! which payments can have one, and when the outbox tries again. Rows: `store::deliveries`; the
//! flow and the outbox: `flows::delivery`.

use serde::{Deserialize, Serialize};

use super::{Payment, PaymentStatus};
use crate::{
    payments::PaymentError,
    validation::{self, Violations},
};

/// What was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryType {
    Digital,
    Physical,
}

/// Where the delivery stands, in the provider's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    OrderPlaced,
    OrderShipped,
    Delivering,
    Delivered,
}

/// Where the report to the provider stands (the outbox's state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryState {
    /// Recorded; not yet accepted by the provider (it is being sent, or will be retried).
    Pending,
    /// The provider accepted it.
    Sent,
    /// The provider refused it (its words are in `last_error`), or it could not be sent in time.
    Refused,
}

string_enum!(DeliveryType { Digital => "digital", Physical => "physical" });
string_enum!(DeliveryStatus {
    OrderPlaced => "order_placed",
    OrderShipped => "order_shipped",
    Delivering => "delivering",
    Delivered => "delivered",
});
string_enum!(DeliveryState { Pending => "PENDING", Sent => "SENT", Refused => "REFUSED" });

/// One confirmation, as recorded (the payment's delivery history is these, oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub delivery_id: String,
    pub payment_id: String,
    pub merchant_id: String,
    #[serde(rename = "type")]
    pub kind: DeliveryType,
    pub status: DeliveryStatus,
    /// Physical goods: the carrier's tracking id and the carrier.
    pub tracking_id: String,
    pub carrier: String,
    pub estimated_delivery_at: Option<i64>,
    pub estimated_update_at: Option<i64>,
    pub refundable: Option<bool>,
    pub details: String,
    pub reason: String,
    /// Proofs of delivery, by reference (URLs the provider can fetch).
    pub attachments: Vec<String>,
    pub state: DeliveryState,
    pub attempts: i64,
    /// The provider's refusal, or the last reason it could not be reached.
    pub last_error: String,
    pub created_at: i64,
    pub sent_at: Option<i64>,
}

impl Delivery {
    /// The event detail's shape is told apart by this key.
    pub fn from_detail(detail: &serde_json::Value) -> Option<Self> {
        detail.get("delivery_id")?;
        serde_json::from_value(detail.clone()).ok()
    }
}

/// A `ConfirmDelivery` as asked, before it is checked.
#[derive(Debug, Clone, Default)]
pub struct DeliveryRequest {
    pub payment_id: String,
    pub kind: Option<DeliveryType>,
    pub status: Option<DeliveryStatus>,
    pub tracking_id: String,
    pub carrier: String,
    pub estimated_delivery_at: Option<i64>,
    pub estimated_update_at: Option<i64>,
    pub refundable: Option<bool>,
    pub details: String,
    pub reason: String,
    pub attachments: Vec<String>,
}

pub const MAX_ATTACHMENTS: usize = 5;

/// Delivery dates paygate sends: from 2000-01-01 to 2100-01-01 (UTC), in ms.
pub const EARLIEST_DATE_MS: i64 = 946_684_800_000;
pub const LATEST_DATE_MS: i64 = 4_102_444_800_000;

/// Every problem of the request, each naming its field; nothing is sent unless this is empty.
pub fn validate(r: &DeliveryRequest) -> Violations {
    let mut v = Violations::default();
    validation::identifier(&mut v, "payment_id", &r.payment_id, validation::ID);
    if r.kind.is_none() {
        v.add("type", "must be DELIVERY_TYPE_DIGITAL or DELIVERY_TYPE_PHYSICAL");
    }
    if r.status.is_none() {
        v.add("status", "must be DELIVERY_STATUS_ORDER_PLACED, _ORDER_SHIPPED, _DELIVERING or _DELIVERED");
    }
    if r.estimated_delivery_at.is_none() {
        v.add("estimated_delivery_at", "is required (once delivered: when it was delivered)");
    }
    validation::required_text(&mut v, "details", &r.details, 1_000);
    validation::text(&mut v, "reason", &r.reason, 255);
    validation::text(&mut v, "tracking_id", &r.tracking_id, 128);
    validation::text(&mut v, "carrier", &r.carrier, 64);
    let shipped =
        matches!(r.status, Some(DeliveryStatus::OrderShipped | DeliveryStatus::Delivering | DeliveryStatus::Delivered));
    match r.kind {
        Some(DeliveryType::Physical) if shipped => {
            for (field, value) in [("tracking_id", &r.tracking_id), ("carrier", &r.carrier)] {
                if value.trim().is_empty() {
                    v.add(field, "is required for physical goods once shipped");
                }
            }
        }
        Some(DeliveryType::Digital) => {
            for (field, value) in [("tracking_id", &r.tracking_id), ("carrier", &r.carrier)] {
                if !value.is_empty() {
                    v.add(field, "is for physical goods only");
                }
            }
        }
        _ => {}
    }
    for (field, at) in
        [("estimated_delivery_at", r.estimated_delivery_at), ("estimated_update_at", r.estimated_update_at)]
    {
        if at.is_some_and(|at| !(EARLIEST_DATE_MS..LATEST_DATE_MS).contains(&at)) {
            v.add(field, "must be between 2000-01-01 and 2100-01-01");
        }
    }
    if let (Some(update), Some(delivery)) = (r.estimated_update_at, r.estimated_delivery_at)
        && update > delivery
    {
        v.add("estimated_update_at", "must not be after estimated_delivery_at");
    }
    if validation::count(&mut v, "attachments", r.attachments.len(), MAX_ATTACHMENTS) {
        for (i, a) in r.attachments.iter().enumerate() {
            if !validation::parse_url(a).is_ok_and(|u| u.scheme() == "https") {
                v.add(format!("attachments[{i}]"), "must be an https URL with a host, which the provider can fetch");
            }
        }
    }
    v
}

/// Only a payment the provider completed has something delivered; it names it by its ref.
pub fn check_deliverable(payment: &Payment) -> Result<(), PaymentError> {
    let paid =
        matches!(payment.status, PaymentStatus::Paid | PaymentStatus::CancelPending | PaymentStatus::PartialCancelled);
    if !paid || payment.provider_ref.is_none() {
        return Err(PaymentError::NotDeliverable(format!(
            "payment {} is {}: a delivery is confirmed for a paid payment",
            payment.payment_id, payment.status
        )));
    }
    Ok(())
}

/// The record of a checked request, PENDING, held by its sender until `lease_until`.
pub fn recorded(r: &DeliveryRequest, payment: &Payment, delivery_id: String, now: i64) -> Delivery {
    Delivery {
        delivery_id,
        payment_id: payment.payment_id.clone(),
        merchant_id: payment.merchant_id.clone(),
        kind: r.kind.unwrap_or(DeliveryType::Digital),
        status: r.status.unwrap_or(DeliveryStatus::Delivered),
        tracking_id: r.tracking_id.clone(),
        carrier: r.carrier.clone(),
        estimated_delivery_at: r.estimated_delivery_at,
        estimated_update_at: r.estimated_update_at,
        refundable: r.refundable,
        details: r.details.clone(),
        reason: r.reason.clone(),
        attachments: r.attachments.clone(),
        state: DeliveryState::Pending,
        attempts: 0,
        last_error: String::new(),
        created_at: now,
        sent_at: None,
    }
}

/// The digital delivery a channel confirms by itself when a payment is paid (its goods are
/// delivered at purchase).
pub fn automatic_digital(payment: &Payment, delivery_id: String, now: i64) -> Delivery {
    let request = DeliveryRequest {
        kind: Some(DeliveryType::Digital),
        status: Some(DeliveryStatus::Delivered),
        details: "Delivered digitally at purchase".into(),
        ..DeliveryRequest::default()
    };
    // Delivered when it was paid, however late the worker makes the record.
    let delivered_at = payment.paid_at.unwrap_or(now);
    Delivery { estimated_delivery_at: Some(delivered_at), ..recorded(&request, payment, delivery_id, now) }
}

/// How long the outbox keeps trying a provider it cannot reach before it gives up.
pub const GIVE_UP_AFTER_MS: i64 = 3 * 86_400_000;

/// When to try again after `attempts` failed tries: 5 s doubling, at most an hour apart.
pub fn retry_at(attempts: i64, now: i64) -> i64 {
    let exponent = attempts.clamp(1, 20) - 1;
    now + (5_000i64 << exponent).min(3_600_000)
}

/// How one try to reach the provider went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TryOutcome {
    Accepted,
    /// The provider answered no: final.
    Refused(String),
    /// Not reached, or no clear answer: tried again (a report sent twice says the same twice).
    Failed(String),
}

/// The delivery after a try at `now`, and when to try again (`None`: settled).
pub fn after_try(d: &Delivery, outcome: TryOutcome, now: i64) -> (Delivery, Option<i64>) {
    let mut next = Delivery { attempts: d.attempts + 1, ..d.clone() };
    match outcome {
        TryOutcome::Accepted => {
            next.state = DeliveryState::Sent;
            next.sent_at = Some(now);
            next.last_error.clear();
            (next, None)
        }
        TryOutcome::Refused(words) => {
            next.state = DeliveryState::Refused;
            next.last_error = words;
            (next, None)
        }
        TryOutcome::Failed(why) if now - d.created_at >= GIVE_UP_AFTER_MS => {
            next.state = DeliveryState::Refused;
            next.last_error = format!("gave up after {} tries over 3 days: {why}", next.attempts);
            (next, None)
        }
        TryOutcome::Failed(why) => {
            next.last_error = why;
            let at = retry_at(next.attempts, now);
            (next, Some(at))
        }
    }
}

pub fn new_delivery_id() -> String {
    format!("dlv_{}", ulid::Ulid::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::fixtures::{payment, unpaid};

    fn request(kind: DeliveryType, status: DeliveryStatus) -> DeliveryRequest {
        DeliveryRequest {
            payment_id: "pay_1".into(),
            kind: Some(kind),
            status: Some(status),
            details: "sent by e-mail".into(),
            estimated_delivery_at: Some(EARLIEST_DATE_MS),
            ..DeliveryRequest::default()
        }
    }

    fn fields(v: Violations) -> Vec<String> {
        v.iter().map(|f| f.field.clone()).collect()
    }

    #[test]
    fn physical_goods_once_shipped_need_their_tracking_and_carrier() {
        let shipped = request(DeliveryType::Physical, DeliveryStatus::OrderShipped);
        assert_eq!(fields(validate(&shipped)), ["tracking_id", "carrier"]);
        let placed = request(DeliveryType::Physical, DeliveryStatus::OrderPlaced);
        assert!(validate(&placed).is_empty());
        let tracked = DeliveryRequest { tracking_id: "1Z999".into(), carrier: "UPS".into(), ..shipped };
        assert!(validate(&tracked).is_empty());
        let digital = DeliveryRequest { kind: Some(DeliveryType::Digital), ..tracked };
        assert_eq!(fields(validate(&digital)), ["tracking_id", "carrier"]);
    }

    #[test]
    fn every_problem_names_its_field() {
        let bad = DeliveryRequest {
            payment_id: String::new(),
            details: " ".into(),
            attachments: vec!["ftp://x".into(), "http://proof.example/1".into()],
            estimated_update_at: Some(LATEST_DATE_MS),
            ..DeliveryRequest::default()
        };
        assert_eq!(
            fields(validate(&bad)),
            [
                "payment_id",
                "type",
                "status",
                "estimated_delivery_at",
                "details",
                "estimated_update_at",
                "attachments[0]",
                "attachments[1]"
            ]
        );
    }

    #[test]
    fn only_a_paid_payment_has_a_delivery() {
        assert!(check_deliverable(&payment(PaymentStatus::Paid, 100, 0, 0)).is_ok());
        assert!(check_deliverable(&payment(PaymentStatus::PartialCancelled, 100, 50, 0)).is_ok());
        assert!(check_deliverable(&unpaid(100)).is_err());
        assert!(check_deliverable(&payment(PaymentStatus::Failed, 100, 0, 0)).is_err());
    }

    #[test]
    fn a_try_settles_or_schedules_the_next() {
        let d = recorded(
            &request(DeliveryType::Digital, DeliveryStatus::Delivered),
            &payment(PaymentStatus::Paid, 100, 0, 0),
            "dlv_1".into(),
            0,
        );
        let (sent, again) = after_try(&d, TryOutcome::Accepted, 7);
        assert_eq!((sent.state, sent.sent_at, sent.attempts, again), (DeliveryState::Sent, Some(7), 1, None));
        let (refused, again) = after_try(&d, TryOutcome::Refused("Invalid status".into()), 7);
        assert_eq!(
            (refused.state, refused.last_error.as_str(), again),
            (DeliveryState::Refused, "Invalid status", None)
        );
        let (pending, again) = after_try(&d, TryOutcome::Failed("connection failed".into()), 7);
        assert_eq!((pending.state, again), (DeliveryState::Pending, Some(5_007)));
        let (given_up, again) = after_try(&d, TryOutcome::Failed("connection failed".into()), GIVE_UP_AFTER_MS);
        assert_eq!((given_up.state, again), (DeliveryState::Refused, None));
        assert!(given_up.last_error.starts_with("gave up"), "{}", given_up.last_error);
    }

    #[test]
    fn retries_back_off_to_an_hour() {
        assert_eq!(retry_at(1, 0), 5_000);
        assert_eq!(retry_at(2, 0), 10_000);
        assert_eq!(retry_at(30, 0), 3_600_000);
    }
}
