//! CreatePaymentClientToken: a short-lived token a buyer's browser uses to read one payment. The
//! token acts for the payment's own merchant (even when a parent's key asked for it), lives at
//! most the configured limit, and is audited before it exists: no token without its entry.

use super::{queries::Lookup, service::Payments};
use crate::{
    audit,
    merchants::{
        Caller,
        client_tokens::{self, PaymentGrant},
    },
    payments::PaymentError,
    secrets::MasterKeys,
    store::now_ms,
};

/// What may be issued: the requested lifetime (`None`: the limit), capped at `max_ttl_ms`.
pub struct TokenRequest<'a> {
    pub payment_id: &'a str,
    pub ttl_ms: Option<i64>,
    pub max_ttl_ms: i64,
}

impl Payments {
    /// Issues the token and its grant (the entry recorded first, which never holds the token).
    pub async fn issue_client_token(
        &self,
        caller: &Caller,
        keys: &MasterKeys,
        req: TokenRequest<'_>,
    ) -> Result<(String, PaymentGrant), PaymentError> {
        let payment = self.payment(caller, Lookup::PaymentId(req.payment_id)).await?;
        let ttl = req.ttl_ms.map_or(req.max_ttl_ms, |ttl| ttl.min(req.max_ttl_ms));
        let now = now_ms();
        let grant = PaymentGrant {
            payment_id: payment.payment_id,
            merchant_id: payment.merchant_id,
            key_id: caller.key_id.clone(),
            issued_at: Some(now),
            expires_at: now.saturating_add(ttl),
        };
        let actor = caller.actor();
        let entry = audit::Entry {
            actor: &actor,
            action: audit::Action::PaymentClientTokenIssued,
            merchant_id: Some(&grant.merchant_id),
            target: &grant.payment_id,
            changed_fields: &[],
        };
        audit::record_alone(&self.db, &entry, now).await?;
        let token = client_tokens::issue(keys, &grant);
        tracing::info!(payment_id = %grant.payment_id, key_id = %grant.key_id, ttl_ms = ttl, "payment client token issued");
        Ok((token, grant))
    }
}
