//! Cancellations: refunds the merchant asked for, and reversals the provider reported on its own
//! (chargebacks, fraud). Rows move REQUESTED -> SUCCEEDED | FAILED and never back.
//!
//! A merchant's request also records its ticket to the provider, as its own steps, so that a crash
//! at any point leaves a state that says what is known: UNSENT -> SENDING (written before the
//! request leaves) -> ACCEPTED, or UNKNOWN when no clear answer came back. UNKNOWN moves on only
//! to ACCEPTED (a late answer) or to the request's end (the provider's confirmation, the sweep, an
//! operator).

use serde::Serialize;

use super::money::MinorUnits;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Trigger {
    MerchantRequest,
    Chargeback,
    Provider,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancellationStatus {
    Requested,
    Succeeded,
    Failed,
}

/// Where a merchant request's ticket to the provider stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TicketState {
    /// Reserved; the ticket has not left.
    Unsent,
    /// The ticket is leaving (or left); no answer recorded yet.
    Sending,
    /// The provider accepted it.
    Accepted,
    /// It went out and no clear answer came back: the provider may or may not have it.
    Unknown,
}

impl TicketState {
    /// The ticket may have reached the provider, so the provider's confirmation can be about it.
    pub fn may_have_reached_provider(self) -> bool {
        !matches!(self, Self::Unsent)
    }
}

string_enum!(TicketState { Unsent => "UNSENT", Sending => "SENDING", Accepted => "ACCEPTED", Unknown => "UNKNOWN" });
string_enum!(Trigger { MerchantRequest => "MERCHANT_REQUEST", Chargeback => "CHARGEBACK", Provider => "PROVIDER" });
string_enum!(CancellationStatus { Requested => "REQUESTED", Succeeded => "SUCCEEDED", Failed => "FAILED" });

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cancellation {
    pub cancellation_id: String,
    pub payment_id: String,
    pub merchant_id: String,
    /// `None` when the provider reversed part of the payment without saying how much.
    pub amount_minor: Option<MinorUnits>,
    pub reason: String,
    pub trigger: Trigger,
    pub status: CancellationStatus,
    /// The provider's reason code (Paymentwall: the `reason` of the type 2 pingback).
    pub provider_reason: Option<i64>,
    pub failure: Option<String>,
    /// Merchant requests only.
    pub ticket: Option<TicketState>,
    pub ticket_accepted_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
}

pub fn new_cancellation_id() -> String {
    format!("can_{}", ulid::Ulid::new())
}
