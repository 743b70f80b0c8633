//! `paygate.v1.PaymentService`.

use tonic::{Request, Response, Status};

use super::{caller, convert, page_size};
use crate::{
    channels::Channels,
    error::{InvalidArgument, Violations},
    payments::{
        checkout::{self, CheckoutRequest},
        repo::{self, ListFilter, Lookup},
    },
    proto::v1::{self as pb, get_payment_request, payment_service_server::PaymentService},
    store::Db,
};

pub struct PaymentsApi {
    db: Db,
    channels: Channels,
}

impl PaymentsApi {
    pub fn new(db: Db, channels: Channels) -> Self {
        Self { db, channels }
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentsApi {
    async fn create_checkout_session(
        &self,
        request: Request<pb::CreateCheckoutSessionRequest>,
    ) -> Result<Response<pb::CheckoutSession>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let req = CheckoutRequest {
            channel_key: r.channel_key,
            merchant_uid: r.merchant_uid,
            amount: r.amount.map(|m| (m.amount_minor, m.currency)),
            order_name: r.order_name,
            customer_uid: r.customer.as_ref().map(|c| c.uid.clone()),
            customer_email: r.customer.map(|c| c.email).unwrap_or_default(),
            payment_method: r.payment_method,
            widget: r.widget,
            success_url: r.success_url,
            failure_url: r.failure_url,
            country_code: r.country_code,
            language: r.language,
            custom_params: r.custom_params.into_iter().collect(),
        };
        let session = checkout::create(&self.db, &self.channels, &caller, req).await?;
        tracing::info!(payment_id = %session.payment.payment_id, channel_key = %session.payment.channel_key, "checkout created");
        Ok(Response::new(pb::CheckoutSession {
            payment_id: session.payment.payment_id,
            redirect_url: session.redirect_url,
            status: convert::status_to_proto(session.payment.status) as i32,
            created_at: Some(convert::timestamp(session.payment.created_at)),
        }))
    }

    async fn get_payment(&self, request: Request<pb::GetPaymentRequest>) -> Result<Response<pb::Payment>, Status> {
        let caller = caller(&request)?;
        let lookup = match &request.get_ref().lookup {
            Some(get_payment_request::Lookup::PaymentId(id)) if !id.is_empty() => Lookup::PaymentId(id),
            Some(get_payment_request::Lookup::MerchantUid(uid)) if !uid.is_empty() => Lookup::MerchantUid(uid),
            _ => return Err(InvalidArgument::single("lookup", "payment_id or merchant_uid is required").into()),
        };
        let payment = repo::get(&self.db, &caller.merchant_id, lookup).await?;
        Ok(Response::new(convert::payment(payment)))
    }

    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut violations = Violations::default();
        let mut statuses = Vec::new();
        for (i, value) in r.statuses.iter().enumerate() {
            match convert::status_from_proto(*value) {
                Some(status) => statuses.push(status),
                None => violations.add(format!("statuses[{i}]"), "is not a payment status"),
            }
        }
        let before_payment_id = match convert::page_token::decode(&r.page_token) {
            Ok(token) => token,
            Err(e) => {
                violations.add("page_token", e.to_string());
                None
            }
        };
        violations.check()?;
        let limit = page_size(r.page_size);
        let filter = ListFilter {
            statuses,
            channel_key: Some(r.channel_key).filter(|k| !k.is_empty()),
            created_from: r.created_from.as_ref().map(convert::millis),
            created_to: r.created_to.as_ref().map(convert::millis),
            before_payment_id,
            // One extra row tells whether another page exists.
            limit: limit + 1,
        };
        let mut payments = repo::list(&self.db, &caller.merchant_id, &filter).await?;
        let next_page_token = if payments.len() > limit as usize {
            payments.truncate(limit as usize);
            payments.last().map(|p| convert::page_token::encode(&p.payment_id)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListPaymentsResponse {
            payments: payments.into_iter().map(convert::payment).collect(),
            next_page_token,
        }))
    }
}
