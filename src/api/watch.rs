//! WatchPayments and ListPaymentEvents: the event log as a live stream and as pages.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::convert;
use crate::{
    error::Violations,
    events::{
        Event, Filter, Hub, Position,
        hub::{Ended, SubscribeError},
        log,
    },
    merchants::Caller,
    payments::repo::{self, Lookup},
    proto::v1 as pb,
    store::Db,
};

pub type EventStream = ReceiverStream<Result<pb::PaymentEvent, Status>>;

const REPLAY_PAGE: u32 = 500;
pub const MAX_FILTER_IDS: usize = 1000;

fn to_proto(event: &Event) -> pb::PaymentEvent {
    pb::PaymentEvent {
        event_id: event.position.to_string(),
        kind: event.kind.clone(),
        payment: Some(convert::payment(event.payment.clone())),
        created_at: Some(convert::timestamp(event.created_at)),
        snapshot: false,
    }
}

fn parse_cursor(field: &str, value: &str, v: &mut Violations) -> Option<Position> {
    if value.is_empty() {
        return None;
    }
    match value.parse() {
        Ok(position) => Some(position),
        Err(problem) => {
            v.add(field, problem);
            None
        }
    }
}

pub fn watch(db: Db, hub: &Arc<Hub>, caller: Caller, r: pb::WatchPaymentsRequest) -> Result<EventStream, Status> {
    let mut v = Violations::default();
    let resume_after = parse_cursor("resume_after", &r.resume_after, &mut v);
    let mut statuses = std::collections::HashSet::new();
    for (i, value) in r.statuses.iter().enumerate() {
        match convert::status_from_proto(*value) {
            Some(status) => {
                statuses.insert(status);
            }
            None => v.add(format!("statuses[{i}]"), "is not a payment status"),
        }
    }
    if r.payment_ids.len() > MAX_FILTER_IDS {
        v.add("payment_ids", format!("at most {MAX_FILTER_IDS}"));
    }
    if r.merchant_uids.len() > MAX_FILTER_IDS {
        v.add("merchant_uids", format!("at most {MAX_FILTER_IDS}"));
    }
    v.check()?;
    let filter = Filter {
        scope: caller.scope.clone(),
        payment_ids: r.payment_ids.iter().cloned().collect(),
        merchant_uids: r.merchant_uids.iter().cloned().collect(),
        statuses,
    };
    let mut subscription = hub.subscribe(&caller.merchant_id, filter.clone()).map_err(|e| match e {
        SubscribeError::Closed => Status::unavailable(e.to_string()),
        SubscribeError::TooMany(_) => Status::resource_exhausted(e.to_string()),
    })?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let start = subscription.start;
        let mut last = resume_after.unwrap_or(start);
        // 1. What happened before the subscription started: replay, or current state.
        if let Some(cursor) = resume_after {
            let mut position = cursor;
            'replay: while position < start {
                let events = match log::read_after(&db, position, REPLAY_PAGE).await {
                    Ok((events, _)) => events,
                    Err(e) => {
                        let _ = tx.send(Err(Status::unavailable(format!("cannot read the event log: {e}")))).await;
                        return;
                    }
                };
                if events.is_empty() {
                    break;
                }
                for event in &events {
                    if event.position > start {
                        break 'replay;
                    }
                    position = event.position;
                    if filter.matches(event) {
                        if tx.send(Ok(to_proto(event))).await.is_err() {
                            return;
                        }
                        last = event.position;
                    }
                }
            }
        } else {
            for payment_id in &r.payment_ids {
                let Ok(payment) = repo::get(&db, &caller.merchant_id, Lookup::PaymentId(payment_id)).await else {
                    continue;
                };
                if !filter.statuses.is_empty() && !filter.statuses.contains(&payment.status) {
                    continue;
                }
                let snapshot = pb::PaymentEvent {
                    event_id: start.to_string(),
                    kind: "payment.snapshot".into(),
                    created_at: Some(convert::timestamp(payment.updated_at)),
                    payment: Some(convert::payment(payment)),
                    snapshot: true,
                };
                if tx.send(Ok(snapshot)).await.is_err() {
                    return;
                }
            }
        }
        // 2. Live: everything after `start`.
        while let Some(event) = subscription.rx.recv().await {
            if tx.send(Ok(to_proto(&event))).await.is_err() {
                return; // the client went away
            }
            last = event.position;
        }
        let status = match subscription.ended() {
            Some(Ended::Lagged) => Status::resource_exhausted(format!(
                "the stream fell behind and was ended; reconnect with resume_after={last}"
            )),
            _ => Status::unavailable(format!("the server is shutting down; reconnect with resume_after={last}")),
        };
        let _ = tx.send(Err(status)).await;
    });
    Ok(ReceiverStream::new(rx))
}

pub async fn list(
    db: &Db,
    caller: &Caller,
    r: &pb::ListPaymentEventsRequest,
) -> Result<pb::ListPaymentEventsResponse, Status> {
    let mut v = Violations::default();
    let after = parse_cursor("after", &r.after, &mut v).unwrap_or_default();
    v.check()?;
    let limit = match r.page_size {
        0 => 100,
        n => n.min(500),
    };
    let payment_id = Some(r.payment_id.as_str()).filter(|p| !p.is_empty());
    let (events, _) = log::list(db, &caller.merchant_id, payment_id, after, limit).await?;
    let next_cursor = events.last().map(|e| e.position.to_string()).unwrap_or_else(|| r.after.clone());
    Ok(pb::ListPaymentEventsResponse { events: events.iter().map(to_proto).collect(), next_cursor })
}
