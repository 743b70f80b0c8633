//! A payment as paygate keeps it.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{PaymentStatus, money::MinorUnits};
use crate::personal::Email;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub payment_id: String,
    pub merchant_id: String,
    pub channel_key: String,
    pub merchant_uid: String,
    pub amount_minor: MinorUnits,
    pub currency: String,
    pub order_name: String,
    pub customer_uid: String,
    pub customer_email: Email,
    pub payment_method: String,
    pub widget: String,
    pub success_url: String,
    pub failure_url: String,
    pub country_code: String,
    pub language: String,
    pub custom_params: BTreeMap<String, String>,
    #[serde(serialize_with = "status_name", deserialize_with = "status_from_name")]
    pub status: PaymentStatus,
    pub provider_ref: Option<String>,
    pub test: bool,
    /// The signed hosted-page URL given to the merchant.
    pub redirect_url: String,
    /// The subscription this payment started or renewed.
    pub subscription_id: Option<String>,
    /// Refunded and confirmed by the provider.
    pub cancelled_amount: MinorUnits,
    /// Requested from the provider and not yet confirmed.
    pub pending_cancel_amount: MinorUnits,
    /// Bumped by every change; every write is a compare-and-set on it.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub paid_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub cancelled_at: Option<i64>,
}

impl Payment {
    /// What may still be refunded: paid, less confirmed and requested refunds.
    pub fn refundable(&self) -> MinorUnits {
        self.amount_minor - self.cancelled_amount - self.pending_cancel_amount
    }

    /// A copy with the next version and `updated_at`, ready to be written with `repo::update`.
    pub fn next_version(&self, now: i64) -> Payment {
        Payment { version: self.version + 1, updated_at: now, ..self.clone() }
    }
}

fn status_name<S: Serializer>(status: &PaymentStatus, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(status.as_str())
}

fn status_from_name<'de, D: Deserializer<'de>>(d: D) -> Result<PaymentStatus, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

/// `pay_` + a ULID: unique without coordination between replicas, and sorts by creation time.
pub fn new_payment_id() -> String {
    format!("pay_{}", ulid::Ulid::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::fixtures::payment;

    #[test]
    fn a_payment_printed_for_a_log_or_an_error_shows_no_email() {
        let paid =
            Payment { customer_email: Email::new("buyer@example.com"), ..payment(PaymentStatus::Paid, 999, 0, 0) };
        let printed = format!("{paid:?}");
        assert!(!printed.contains("buyer") && !printed.contains("example.com"), "{printed}");
        assert!(printed.contains("customer_email: Email(***)"), "{printed}");
        // What is stored and sent in webhooks keeps the address.
        assert!(serde_json::to_string(&paid).unwrap().contains("\"customer_email\":\"buyer@example.com\""));
    }
}
