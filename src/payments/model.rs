//! A payment as paygate keeps it.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use super::PaymentStatus;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Payment {
    pub payment_id: String,
    pub merchant_id: String,
    pub channel_key: String,
    pub merchant_uid: String,
    pub amount_minor: i64,
    pub currency: String,
    pub order_name: String,
    pub customer_uid: String,
    pub customer_email: String,
    pub payment_method: String,
    pub widget: String,
    pub success_url: String,
    pub failure_url: String,
    pub country_code: String,
    pub language: String,
    pub custom_params: BTreeMap<String, String>,
    #[serde(serialize_with = "status_name")]
    pub status: PaymentStatus,
    pub provider_ref: Option<String>,
    pub test: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub paid_at: Option<i64>,
    pub failed_at: Option<i64>,
}

fn status_name<S: Serializer>(status: &PaymentStatus, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(status.as_str())
}

/// `pay_` + a ULID: unique without coordination between replicas, and sorts by creation time.
pub fn new_payment_id() -> String {
    format!("pay_{}", ulid::Ulid::new())
}
