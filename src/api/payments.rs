//! `paygate.v1.PaymentService`.

use std::sync::Arc;

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::{caller, convert, page_size, watch::View};
use crate::{
    events::Hub,
    merchants::{Caller, KeyCache, client_tokens::PaymentGrant},
    payments::{
        core::{
            refund::{self as refunds, Resolution},
            subscription::Subscription,
        },
        flows::{
            Payments,
            client_token::TokenRequest,
            methods::PaymentMethods,
            queries::{ListFilter, Lookup, SubscriptionFilter, SubscriptionLookup},
            refund::Refunded,
        },
    },
    proto::v1::{
        self as pb, get_payment_request, get_subscription_request, payment_service_server::PaymentService,
        sync_payment_request,
    },
    secrets::MasterKeys,
    store::Db,
    validation::{self, InvalidArgument, Violations},
};

/// The API's own settings.
#[derive(Clone)]
pub struct PaymentsApiSettings {
    /// The longest a payment client token lives.
    pub client_token_ttl_ms: i64,
    /// Signs payment client tokens.
    pub master_keys: Arc<MasterKeys>,
}

/// Holds a payment client token to the payment it was made for (`GetPayment`, `WatchPayments`).
fn only_its_payment(grant: Option<&PaymentGrant>, payment_ids: &[&str]) -> Result<(), Status> {
    match grant {
        Some(grant) if payment_ids != [grant.payment_id.as_str()] => Err(Status::permission_denied(format!(
            "a payment client token reads payment {} only, by its payment_id",
            grant.payment_id
        ))),
        _ => Ok(()),
    }
}

/// The service and all it reads and writes through.
pub struct PaymentsApi {
    /// The payments: every flow, and every read of a payment or subscription.
    pub payments: Payments,
    /// The event log and the audit trail.
    pub db: Db,
    pub hub: Arc<Hub>,
    pub keys: KeyCache,
    pub methods: PaymentMethods,
    pub settings: PaymentsApiSettings,
}

impl PaymentsApi {
    /// Subscriptions as answered: each with its initial and last renewal payments (one query).
    async fn subscription_replies(
        &self,
        caller: &Caller,
        subs: Vec<Subscription>,
    ) -> Result<Vec<pb::Subscription>, Status> {
        let ids: Vec<&str> = subs
            .iter()
            .flat_map(|s| std::iter::once(s.initial_payment_id.as_str()).chain(s.last_renewal_payment_id.as_deref()))
            .collect();
        let payments: std::collections::HashMap<String, crate::payments::Payment> =
            self.payments.payments_by_id(caller, &ids).await?.into_iter().map(|p| (p.payment_id.clone(), p)).collect();
        Ok(subs
            .into_iter()
            .map(|s| {
                let initial = payments.get(&s.initial_payment_id).cloned().map(convert::payment);
                let last =
                    s.last_renewal_payment_id.as_ref().and_then(|id| payments.get(id)).cloned().map(convert::payment);
                pb::Subscription { initial_payment: initial, last_renewal_payment: last, ..convert::subscription(s) }
            })
            .collect())
    }

    async fn subscription_reply(
        &self,
        caller: &Caller,
        sub: Subscription,
    ) -> Result<Response<pb::Subscription>, Status> {
        let mut replies = self.subscription_replies(caller, vec![sub]).await?.into_iter();
        let reply = replies.next().ok_or_else(|| Status::internal("a subscription went missing from its reply"))?;
        Ok(Response::new(reply))
    }
}

/// The lists' names inside their page tokens: a token works only in the list that issued it.
const PAYMENTS_LIST: &str = "payments";
const SUBSCRIPTIONS_LIST: &str = "subscriptions";

/// ListPayments' cursor: a token it issued, or one of the untagged tokens (a bare payment id) it
/// issued before tokens named their list.
fn payments_page_token(v: &mut Violations, token: &str) -> Option<String> {
    match convert::page_token::decode_for(token, PAYMENTS_LIST, validation::ID) {
        Ok(key) => key,
        Err(e) => match convert::page_token::decode_as(token, validation::ID) {
            Ok(Some(legacy)) if legacy.starts_with("pay_") => Some(legacy),
            _ => {
                v.extend(e);
                None
            }
        },
    }
}

/// A creation-time range `[created_from, created_to)` in milliseconds: each a valid timestamp
/// (see `convert::request_millis`), and a range that is not empty.
fn time_range(
    v: &mut Violations,
    from: Option<&prost_types::Timestamp>,
    to: Option<&prost_types::Timestamp>,
) -> (Option<i64>, Option<i64>) {
    let (from, to) = (convert::request_millis(v, "created_from", from), convert::request_millis(v, "created_to", to));
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        v.add("created_to", "must be later than created_from");
    }
    (from, to)
}

/// The fingerprint of a request for idempotency: its encoding without the key itself (maps are
/// ordered, so equal requests encode equally).
fn fingerprint<M: Message + Clone>(request: &M, clear_key: impl FnOnce(&mut M)) -> String {
    let mut copy = request.clone();
    clear_key(&mut copy);
    hex::encode(Sha256::digest(copy.encode_to_vec()))
}

#[tonic::async_trait]
impl PaymentService for PaymentsApi {
    type WatchPaymentsStream = super::watch::EventStream;

    async fn watch_payments(
        &self,
        request: Request<pb::WatchPaymentsRequest>,
    ) -> Result<Response<Self::WatchPaymentsStream>, Status> {
        let caller = caller(&request)?;
        let view = match request.extensions().get::<PaymentGrant>() {
            Some(grant) => View::Browser {
                payment_id: grant.payment_id.clone(),
                keys: self.settings.master_keys.clone(),
                expires_at: grant.expires_at,
            },
            None => View::Merchant,
        };
        if let Some(grant) = request.extensions().get::<PaymentGrant>() {
            let r = request.get_ref();
            // By its payment_id alone: a merchant_uid filter could name another payment.
            // Nor a subscription filter: its snapshot would show the subscription's first payment.
            let ids: Vec<&str> = r.payment_ids.iter().map(String::as_str).collect();
            let by_id_alone = r.merchant_uids.is_empty() && r.subscription_ids.is_empty();
            only_its_payment(Some(grant), if by_id_alone { &ids } else { &[] })?;
        }
        let stream =
            super::watch::watch(self.db.clone(), &self.hub, self.keys.clone(), caller, view, request.into_inner())
                .await?;
        Ok(Response::new(stream))
    }

    async fn create_payment_client_token(
        &self,
        request: Request<pb::CreatePaymentClientTokenRequest>,
    ) -> Result<Response<pb::PaymentClientToken>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        validation::identifier(&mut v, "payment_id", &r.payment_id, validation::ID);
        v.check()?;
        let req = TokenRequest {
            payment_id: &r.payment_id,
            ttl_ms: (r.ttl_seconds != 0).then(|| i64::from(r.ttl_seconds) * 1000),
            max_ttl_ms: self.settings.client_token_ttl_ms,
        };
        let keys = &self.settings.master_keys;
        let (token, grant) = self.payments.issue_client_token(&caller, keys, req).await?;
        Ok(Response::new(pb::PaymentClientToken {
            token,
            payment_id: grant.payment_id,
            expires_at: Some(convert::timestamp(grant.expires_at)),
        }))
    }

    async fn erase_customer(
        &self,
        request: Request<pb::EraseCustomerRequest>,
    ) -> Result<Response<pb::EraseCustomerResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        validation::identifier(&mut v, "customer_uid", &r.customer_uid, validation::CUSTOMER_UID);
        v.check()?;
        let erasure = self.payments.erase_customer(&caller, &r.customer_uid).await?;
        Ok(Response::new(pb::EraseCustomerResponse {
            erasure_id: erasure.erasure_id,
            payments_erased: u32::try_from(erasure.payment_ids.len()).unwrap_or(u32::MAX),
            payment_ids: erasure.payment_ids,
        }))
    }

    async fn sync_payment(
        &self,
        request: Request<pb::SyncPaymentRequest>,
    ) -> Result<Response<pb::SyncPaymentResponse>, Status> {
        let caller = caller(&request)?;
        let mut v = Violations::default();
        let lookup = match &request.get_ref().lookup {
            Some(sync_payment_request::Lookup::PaymentId(id)) if !id.is_empty() => {
                validation::identifier(&mut v, "payment_id", id, validation::ID);
                Lookup::PaymentId(id)
            }
            Some(sync_payment_request::Lookup::MerchantUid(uid)) if !uid.is_empty() => {
                validation::identifier(&mut v, "merchant_uid", uid, validation::MERCHANT_UID_LOOKUP);
                Lookup::MerchantUid(uid)
            }
            _ => return Err(InvalidArgument::single("lookup", "payment_id or merchant_uid is required").into()),
        };
        v.check()?;
        let synced = self.payments.sync(&caller, lookup).await?;
        Ok(Response::new(pb::SyncPaymentResponse {
            payment: Some(convert::payment(synced.payment)),
            changed: synced.changed,
            provider_says: synced.provider_says,
        }))
    }

    async fn confirm_delivery(
        &self,
        request: Request<pb::ConfirmDeliveryRequest>,
    ) -> Result<Response<pb::Delivery>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let request_hash = fingerprint(&r, |m| m.idempotency_key.clear());
        let idempotency_key = r.idempotency_key.clone();
        let mut v = Violations::default();
        validation::optional_identifier(&mut v, "idempotency_key", &idempotency_key, validation::IDEMPOTENCY_KEY);
        let req = convert::delivery_request(r, &mut v);
        v.check()?;
        let delivery = self.payments.confirm_delivery(&caller, req, &idempotency_key, &request_hash).await?;
        Ok(Response::new(convert::delivery(delivery)))
    }

    async fn list_payment_events(
        &self,
        request: Request<pb::ListPaymentEventsRequest>,
    ) -> Result<Response<pb::ListPaymentEventsResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(super::watch::list(&self.db, &caller, request.get_ref()).await?))
    }

    async fn create_checkout_session(
        &self,
        request: Request<pb::CreateCheckoutSessionRequest>,
    ) -> Result<Response<pb::CheckoutSession>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        // Only a retried request is compared with the first (by its idempotency key).
        let request_hash = match r.idempotency_key.is_empty() {
            true => String::new(),
            false => fingerprint(&r, |m| m.idempotency_key.clear()),
        };
        let req = convert::checkout_request(r, request_hash);
        let session = self.payments.checkout(&caller, req).await?;
        let span = tracing::Span::current();
        span.record("payment_id", session.payment.payment_id.as_str());
        span.record("channel_key", session.payment.channel_key.as_str());
        tracing::info!(payment_id = %session.payment.payment_id, channel_key = %session.payment.channel_key, "checkout created");
        Ok(Response::new(pb::CheckoutSession {
            payment_id: session.payment.payment_id,
            redirect_url: session.redirect_url,
            status: convert::status_to_proto(session.payment.status) as i32,
            created_at: Some(convert::timestamp(session.payment.created_at)),
            subscription_id: session.payment.subscription_id.unwrap_or_default(),
        }))
    }

    async fn get_payment(&self, request: Request<pb::GetPaymentRequest>) -> Result<Response<pb::Payment>, Status> {
        let caller = caller(&request)?;
        let mut v = Violations::default();
        let lookup = match &request.get_ref().lookup {
            Some(get_payment_request::Lookup::PaymentId(id)) if !id.is_empty() => {
                validation::identifier(&mut v, "payment_id", id, validation::ID);
                Lookup::PaymentId(id)
            }
            Some(get_payment_request::Lookup::MerchantUid(uid)) if !uid.is_empty() => {
                validation::identifier(&mut v, "merchant_uid", uid, validation::MERCHANT_UID_LOOKUP);
                Lookup::MerchantUid(uid)
            }
            _ => return Err(InvalidArgument::single("lookup", "payment_id or merchant_uid is required").into()),
        };
        v.check()?;
        let by_id = match lookup {
            Lookup::PaymentId(id) => id,
            Lookup::MerchantUid(_) => "",
        };
        only_its_payment(request.extensions().get::<PaymentGrant>(), &[by_id])?;
        if request.extensions().get::<PaymentGrant>().is_some() {
            // A buyer's browser: what its checkout page shows, nothing of the merchant's.
            let payment = self.payments.payment(&caller, lookup).await?;
            return Ok(Response::new(convert::browser_payment(payment)));
        }
        let detail = self.payments.payment_with_cancellations(&caller, lookup).await?;
        let currency = detail.payment.currency.clone();
        let mut out = convert::payment(detail.payment);
        out.cancellations = detail.cancellations.into_iter().map(|c| convert::cancellation(c, &currency)).collect();
        out.deliveries = detail.deliveries.into_iter().map(convert::delivery).collect();
        Ok(Response::new(out))
    }

    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut violations = Violations::default();
        let statuses = convert::statuses(&mut violations, &r.statuses, convert::status_from_proto, "payment");
        validation::optional_identifier(&mut violations, "channel_key", &r.channel_key, validation::CHANNEL_KEY);
        validation::optional_identifier(&mut violations, "subscription_id", &r.subscription_id, validation::ID);
        let before_payment_id = payments_page_token(&mut violations, &r.page_token);
        let (created_from, created_to) = time_range(&mut violations, r.created_from.as_ref(), r.created_to.as_ref());
        violations.check()?;
        let limit = page_size(r.page_size);
        let filter = ListFilter {
            statuses,
            channel_key: Some(r.channel_key).filter(|k| !k.is_empty()),
            created_from,
            created_to,
            subscription_id: Some(r.subscription_id).filter(|id| !id.is_empty()),
            before_payment_id,
            // One extra row tells whether another page exists.
            limit: limit + 1,
        };
        let payments = self.payments.payments(&caller, &filter).await?;
        let (payments, next_page_token) =
            super::page(payments, limit, |p| convert::page_token::tagged(PAYMENTS_LIST, &p.payment_id));
        Ok(Response::new(pb::ListPaymentsResponse {
            payments: payments.into_iter().map(convert::payment).collect(),
            next_page_token,
        }))
    }

    async fn refund_payment(
        &self,
        request: Request<pb::RefundPaymentRequest>,
    ) -> Result<Response<pb::Cancellation>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let request_hash = fingerprint(&r, |m| m.idempotency_key.clear());
        let req = convert::refund_request(r, request_hash);
        let Refunded { cancellation, currency } = self.payments.refund(&caller, req).await?;
        Ok(Response::new(convert::cancellation(cancellation, &currency)))
    }

    async fn resolve_cancellation(
        &self,
        request: Request<pb::ResolveCancellationRequest>,
    ) -> Result<Response<pb::Cancellation>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        validation::identifier(&mut v, "cancellation_id", &r.cancellation_id, validation::ID);
        let resolution = match pb::Resolution::try_from(r.resolution) {
            Ok(pb::Resolution::Succeeded) => Some(Resolution::Succeeded),
            Ok(pb::Resolution::Failed) => Some(Resolution::Failed),
            _ => None,
        };
        if resolution.is_none() {
            v.add("resolution", "must be RESOLUTION_SUCCEEDED or RESOLUTION_FAILED");
        }
        validation::text(&mut v, "note", &r.note, refunds::MAX_REASON);
        v.check()?;
        let resolution = resolution.expect("checked above");
        let Refunded { cancellation, currency } =
            self.payments.resolve(&caller, &r.cancellation_id, resolution, &r.note).await?;
        Ok(Response::new(convert::cancellation(cancellation, &currency)))
    }

    async fn cancel_subscription(
        &self,
        request: Request<pb::CancelSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        validation::identifier(&mut v, "subscription_id", &r.subscription_id, validation::ID);
        validation::text(&mut v, "reason", &r.reason, refunds::MAX_REASON);
        v.check()?;
        let reason = if r.reason.trim().is_empty() { "requested by the merchant" } else { r.reason.trim() };
        let sub = self.payments.cancel_subscription(&caller, &r.subscription_id, reason).await?;
        self.subscription_reply(&caller, sub).await
    }

    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let caller = caller(&request)?;
        let mut v = Violations::default();
        let lookup = match &request.get_ref().lookup {
            Some(get_subscription_request::Lookup::SubscriptionId(id)) if !id.is_empty() => {
                validation::identifier(&mut v, "subscription_id", id, validation::ID);
                SubscriptionLookup::SubscriptionId(id)
            }
            Some(get_subscription_request::Lookup::PaymentId(id)) if !id.is_empty() => {
                validation::identifier(&mut v, "payment_id", id, validation::ID);
                SubscriptionLookup::PaymentId(id)
            }
            Some(get_subscription_request::Lookup::MerchantUid(uid)) if !uid.is_empty() => {
                validation::identifier(&mut v, "merchant_uid", uid, validation::MERCHANT_UID_LOOKUP);
                SubscriptionLookup::MerchantUid(uid)
            }
            _ => {
                let problem = "subscription_id, payment_id or merchant_uid is required";
                return Err(InvalidArgument::single("lookup", problem).into());
            }
        };
        v.check()?;
        let sub = self.payments.subscription(&caller, lookup).await?;
        self.subscription_reply(&caller, sub).await
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let statuses = convert::statuses(&mut v, &r.statuses, convert::subscription_status_from_proto, "subscription");
        validation::optional_identifier(&mut v, "channel_key", &r.channel_key, validation::CHANNEL_KEY);
        validation::optional_identifier(&mut v, "customer_uid", &r.customer_uid, validation::CUSTOMER_UID);
        let before_subscription_id = convert::page_token::decode_for(&r.page_token, SUBSCRIPTIONS_LIST, validation::ID)
            .unwrap_or_else(|e| {
                v.extend(e);
                None
            });
        let (created_from, created_to) = time_range(&mut v, r.created_from.as_ref(), r.created_to.as_ref());
        v.check()?;
        let limit = page_size(r.page_size);
        let filter = SubscriptionFilter {
            statuses,
            channel_key: Some(r.channel_key).filter(|k| !k.is_empty()),
            customer_uid: Some(r.customer_uid).filter(|u| !u.is_empty()),
            created_from,
            created_to,
            before_subscription_id,
            // One extra row tells whether another page exists.
            limit: limit + 1,
        };
        let subs = self.payments.subscriptions(&caller, &filter).await?;
        let (subs, next_page_token) =
            super::page(subs, limit, |s| convert::page_token::tagged(SUBSCRIPTIONS_LIST, &s.subscription_id));
        let subscriptions = self.subscription_replies(&caller, subs).await?;
        Ok(Response::new(pb::ListSubscriptionsResponse { subscriptions, next_page_token }))
    }

    async fn list_payment_methods(
        &self,
        request: Request<pb::ListPaymentMethodsRequest>,
    ) -> Result<Response<pb::ListPaymentMethodsResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let methods = self
            .methods
            .list(&self.payments.channels, &self.payments.providers, &caller, &r.channel_key, &r.country_code)
            .await?;
        Ok(Response::new(pb::ListPaymentMethodsResponse {
            methods: methods
                .iter()
                .map(|m| pb::PaymentMethod { id: m.id.clone(), name: m.name.clone(), image_url: m.image_url.clone() })
                .collect(),
        }))
    }
}
