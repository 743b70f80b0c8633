//! `paygate.v1.WebhookService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{caller, convert, page_size};
use crate::{
    proto::v1::{self as pb, webhook_service_server::WebhookService},
    secrets::MasterKeys,
    store::{Db, StoreError, now_ms},
    validation::{self, InvalidArgument, Violations},
    webhooks::{
        WebhookError,
        endpoints::{self, Endpoint},
        outbox::{self, Delivery, DeliveryStatus},
    },
};

pub struct WebhooksApi {
    db: Db,
    keys: Arc<MasterKeys>,
    allow_internal_targets: bool,
    rotation_overlap_ms: i64,
}

impl WebhooksApi {
    pub fn new(db: Db, keys: Arc<MasterKeys>, allow_internal_targets: bool, rotation_overlap_ms: i64) -> Self {
        Self { db, keys, allow_internal_targets, rotation_overlap_ms }
    }

    /// A delivery as stored now, with its attempts from the same snapshot.
    async fn delivery(&self, d: Delivery) -> Result<pb::WebhookDelivery, Status> {
        let (d, attempts) = outbox::get(&self.db, &d.merchant_id, &d.delivery_id).await?;
        Ok(delivery(d, attempts))
    }
}

fn delivery(d: Delivery, attempts: Vec<outbox::Attempt>) -> pb::WebhookDelivery {
    let status = match d.status {
        DeliveryStatus::Pending => pb::WebhookDeliveryStatus::Pending,
        DeliveryStatus::Succeeded => pb::WebhookDeliveryStatus::Succeeded,
        DeliveryStatus::Failed => pb::WebhookDeliveryStatus::Failed,
    };
    pb::WebhookDelivery {
        delivery_id: d.delivery_id,
        event_type: d.event_type,
        payment_id: d.payment_id.unwrap_or_default(),
        status: status as i32,
        attempts: attempts
            .into_iter()
            .map(|a| pb::WebhookAttempt {
                attempt: a.attempt as u32,
                status_code: a.status_code.unwrap_or_default() as u32,
                error: a.error.unwrap_or_default(),
                latency_ms: a.latency_ms as u32,
                at: Some(convert::timestamp(a.at)),
            })
            .collect(),
        next_attempt_at: (d.status == DeliveryStatus::Pending).then(|| convert::timestamp(d.next_attempt_at)),
        created_at: Some(convert::timestamp(d.created_at)),
        payload: d.payload,
    }
}

fn endpoint(e: &Endpoint, secret: String) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        url: e.url.clone(),
        event_types: e.event_types.clone(),
        secret,
        active_secrets: e.active_secret_count(now_ms()) as u32,
        disabled_at: e.disabled_at.map(convert::timestamp),
        disabled_reason: e.disabled_reason.clone().unwrap_or_default(),
        created_at: Some(convert::timestamp(e.created_at)),
        updated_at: Some(convert::timestamp(e.updated_at)),
        previous_secret_expires_at: e.previous_secret_expires_at(now_ms()).map(convert::timestamp),
    }
}

/// RotateWebhookSecret's grace: the default, and the longest.
const DEFAULT_GRACE_SECONDS: u32 = 86_400;
const MAX_GRACE_SECONDS: u32 = 604_800;

#[tonic::async_trait]
impl WebhookService for WebhooksApi {
    async fn set_webhook_endpoint(
        &self,
        request: Request<pb::SetWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let url = endpoints::validate(&r.url, &r.event_types, self.allow_internal_targets)?;
        let (saved, secret) = endpoints::set(
            &self.db,
            &self.keys,
            &caller.actor(),
            &caller.merchant_id,
            &url,
            r.event_types,
            self.rotation_overlap_ms,
        )
        .await?;
        tracing::info!(merchant_id = %caller.merchant_id, "webhook endpoint set");
        Ok(Response::new(endpoint(&saved, secret)))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let caller = caller(&request)?;
        let grace_seconds = match request.get_ref().grace_seconds {
            0 => DEFAULT_GRACE_SECONDS,
            s if s > MAX_GRACE_SECONDS => {
                let problem = format!("at most {MAX_GRACE_SECONDS} (7 days); 0 means {DEFAULT_GRACE_SECONDS} (24 h)");
                return Err(InvalidArgument::single("grace_seconds", problem).into());
            }
            s => s,
        };
        let grace_ms = i64::from(grace_seconds) * 1000;
        let rotated = endpoints::rotate(&self.db, &self.keys, &caller.actor(), &caller.merchant_id, grace_ms).await;
        let (saved, secret) = match rotated {
            Err(WebhookError::NotFound) => return Err(Status::not_found("no webhook endpoint is set")),
            other => other?,
        };
        tracing::info!(merchant_id = %caller.merchant_id, grace_seconds, "webhook secret rotated");
        Ok(Response::new(endpoint(&saved, secret)))
    }

    async fn recover_webhook_deliveries(
        &self,
        request: Request<pb::RecoverWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::RecoverWebhookDeliveriesResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let since = convert::request_millis(&mut v, "since", r.since.as_ref());
        match since {
            None if v.is_empty() => v.add("since", "is required: requeue what failed since when"),
            Some(at) if at > now_ms() => v.add("since", "must not be in the future"),
            _ => {}
        }
        v.check()?;
        let since = since.unwrap_or_default();
        let deliveries = outbox::recover(&self.db, &caller.merchant_id, since, r.dry_run).await?;
        tracing::info!(merchant_id = %caller.merchant_id, deliveries, dry_run = r.dry_run, "webhook deliveries recovered");
        Ok(Response::new(pb::RecoverWebhookDeliveriesResponse {
            deliveries: u32::try_from(deliveries).unwrap_or(u32::MAX),
            dry_run: r.dry_run,
        }))
    }

    async fn get_webhook_endpoint(
        &self,
        request: Request<pb::GetWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let caller = caller(&request)?;
        let mut conn = self.db.pool().acquire().await.map_err(StoreError::from)?;
        let saved = endpoints::get(&mut conn, &caller.merchant_id)
            .await?
            .ok_or_else(|| Status::not_found("no webhook endpoint is set"))?;
        Ok(Response::new(endpoint(&saved, String::new())))
    }

    async fn send_test_webhook(
        &self,
        request: Request<pb::SendTestWebhookRequest>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        let caller = caller(&request)?;
        let delivery = outbox::enqueue_test(&self.db, &caller.merchant_id).await?;
        Ok(Response::new(self.delivery(delivery).await?))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let before = match r.page_token.as_str() {
            "" => None,
            token => Some(
                convert::page_token::decode_as(token, validation::ID)?
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| InvalidArgument::single("page_token", "is not a token this server issued"))?,
            ),
        };
        let limit = page_size(r.page_size);
        let rows = outbox::list(&self.db, &caller.merchant_id, before, limit + 1).await?;
        let (rows, next_page_token) = super::page(rows, limit, |(seq, _, _)| seq.to_string());
        let deliveries = rows.into_iter().map(|(_, d, attempts)| delivery(d, attempts)).collect();
        Ok(Response::new(pb::ListWebhookDeliveriesResponse { deliveries, next_page_token }))
    }

    async fn redeliver_webhook(
        &self,
        request: Request<pb::RedeliverWebhookRequest>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        let caller = caller(&request)?;
        let id = &request.get_ref().delivery_id;
        let mut v = Violations::default();
        validation::identifier(&mut v, "delivery_id", id, validation::ID);
        v.check()?;
        let delivery = outbox::redeliver(&self.db, &caller.merchant_id, id).await?;
        Ok(Response::new(self.delivery(delivery).await?))
    }
}
