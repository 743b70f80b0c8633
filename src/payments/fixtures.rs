//! Payments and subscriptions as the decision tests start from.

use std::collections::BTreeMap;

use super::core::{
    Cancellation, CancellationStatus, Payment, PaymentStatus, Subscription, SubscriptionStatus, TicketState, Trigger,
    money::MinorUnits, subscription::PeriodType,
};

/// A merchant's open refund request `can_<amount>` on `pay_1`, its ticket at `ticket`.
pub fn refund_request(amount: i64, ticket: TicketState, updated_at: i64) -> Cancellation {
    Cancellation {
        cancellation_id: format!("can_{amount}"),
        payment_id: "pay_1".into(),
        merchant_id: "mer_1".into(),
        amount_minor: Some(MinorUnits(amount)),
        reason: "asked".into(),
        trigger: Trigger::MerchantRequest,
        status: CancellationStatus::Requested,
        provider_reason: None,
        failure: None,
        ticket: Some(ticket),
        ticket_accepted_at: None,
        created_at: 0,
        updated_at,
        completed_at: None,
    }
}

/// A one-time payment `pay_1` of `amount` paid under ref `b1`, with these refunded amounts.
pub fn payment(status: PaymentStatus, amount: i64, cancelled: i64, pending: i64) -> Payment {
    Payment {
        payment_id: "pay_1".into(),
        merchant_id: "mer_1".into(),
        channel_key: "ch_1".into(),
        merchant_uid: "order-1".into(),
        amount_minor: MinorUnits(amount),
        currency: "USD".into(),
        order_name: "Gold".into(),
        customer_uid: "u".into(),
        customer_email: Default::default(),
        payment_method: "all".into(),
        widget: "p1_1".into(),
        success_url: String::new(),
        failure_url: String::new(),
        country_code: String::new(),
        language: String::new(),
        custom_params: BTreeMap::new(),
        status,
        provider_ref: Some("b1".into()),
        test: true,
        redirect_url: String::new(),
        subscription_id: None,
        cancelled_amount: MinorUnits(cancelled),
        pending_cancel_amount: MinorUnits(pending),
        version: 1,
        created_at: 0,
        updated_at: 0,
        paid_at: Some(0),
        failed_at: None,
        cancelled_at: None,
    }
}

/// A checkout not paid yet (no ref, no paid time).
pub fn unpaid(amount: i64) -> Payment {
    Payment { provider_ref: None, paid_at: None, ..payment(PaymentStatus::Ready, amount, 0, 0) }
}

/// Subscription `sub_1` started by `pay_1`, renewed `renewals` times.
pub fn subscription(status: SubscriptionStatus, renewals: i64) -> Subscription {
    Subscription {
        subscription_id: "sub_1".into(),
        merchant_id: "mer_1".into(),
        channel_key: "ch_1".into(),
        initial_payment_id: "pay_1".into(),
        customer_uid: "u".into(),
        period_length: 1,
        period_type: PeriodType::Month,
        recurring: true,
        status,
        renewals,
        renewals_after_end: 0,
        last_renewal_payment_id: None,
        last_renewal_at: None,
        started_at: Some(0),
        cancel_requested_at: None,
        ended_at: None,
        created_at: 0,
        updated_at: 0,
    }
}
