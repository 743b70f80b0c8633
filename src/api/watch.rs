//! WatchPayments and ListPaymentEvents: the event log as a live stream and as pages.

use std::{collections::VecDeque, pin::Pin, sync::Arc, time::Duration};

use futures_util::Stream;
use tonic::Status;

use super::convert;
use crate::{
    events::{
        Event, Filter, Hub, Position,
        hub::{Ended, SubscribeError, Subscription},
        log,
    },
    merchants::{Caller, KeyCache, KeyWatch, client_tokens},
    payments::{
        Payment,
        core::{delivery::Delivery, subscription::SubscriptionView},
        store::{
            payments::{self as repo, Lookup},
            subscriptions,
        },
    },
    proto::v1 as pb,
    secrets::MasterKeys,
    store::Db,
    validation::{self, MAX_FILTER_IDS, Violations},
};

pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::PaymentEvent, Status>> + Send>>;

/// A replay's first page is small, so the first event comes at once; the rest are large, so a
/// stream resumed far back catches up in few reads.
const REPLAY_FIRST_PAGE: u32 = 50;
const REPLAY_PAGE: u32 = 2_000;

/// Whom a stream's events are shown to.
pub enum View {
    /// A merchant's key: the payment as ListPayments shows it, cursors as log positions.
    Merchant,
    /// A payment client token (a buyer's browser): the browser's view of its payment, and cursors
    /// sealed to it that say nothing of the log (other merchants' activity). The stream ends at
    /// the token's expiry (Unix ms), with or without an event.
    Browser { payment_id: String, keys: Arc<MasterKeys>, expires_at: i64 },
}

impl View {
    /// When the credential the stream was opened with stops being good.
    fn expires_at(&self) -> Option<i64> {
        match self {
            Self::Merchant => None,
            Self::Browser { expires_at, .. } => Some(*expires_at),
        }
    }

    fn cursor(&self, position: Position) -> String {
        match self {
            Self::Merchant => position.to_string(),
            Self::Browser { payment_id, keys, .. } => {
                client_tokens::seal_cursor(keys, payment_id, &position.to_string())
            }
        }
    }

    /// A cursor the stream's caller gave back. A browser's is one sealed to its payment, or a log
    /// position from before cursors were sealed: its replay reads only its payment's events, so
    /// any position before the payment's first event starts at that event.
    fn parse_cursor(&self, field: &str, value: &str, v: &mut Violations) -> Option<Position> {
        let opened = match self {
            Self::Browser { payment_id, keys, .. } if value.starts_with(client_tokens::CURSOR_PREFIX) => {
                client_tokens::open_cursor(keys, payment_id, value)
            }
            _ => None,
        };
        parse_cursor(field, opened.as_deref().unwrap_or(value), v)
    }

    fn payment(&self, payment: Payment) -> pb::Payment {
        match self {
            Self::Merchant => convert::payment(payment),
            Self::Browser { .. } => convert::browser_payment(payment),
        }
    }

    fn event(&self, event: &Event) -> pb::PaymentEvent {
        let (subscription, delivery) = match (self, event.detail.as_ref()) {
            (Self::Merchant, Some(detail)) => (SubscriptionView::from_detail(detail), Delivery::from_detail(detail)),
            _ => (None, None),
        };
        pb::PaymentEvent {
            event_id: self.cursor(event.position),
            kind: event.kind.as_str().to_owned(),
            payment: Some(self.payment(event.payment.clone())),
            created_at: Some(convert::timestamp(event.created_at)),
            snapshot: false,
            subscription: subscription.map(convert::subscription_view),
            delivery: delivery.map(convert::delivery),
        }
    }
}

/// `subscription_ids` as a filter: each a valid id, at most `MAX_FILTER_IDS`.
fn check_subscription_ids(v: &mut Violations, ids: &[String]) {
    if validation::count(v, "subscription_ids", ids.len(), MAX_FILTER_IDS) {
        for (i, id) in ids.iter().enumerate() {
            validation::identifier(v, format!("subscription_ids[{i}]"), id, validation::ID);
        }
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

/// A WatchPaymentsRequest checked: its cursor and its filter.
fn read_request(
    caller: &Caller,
    view: &View,
    r: &pb::WatchPaymentsRequest,
) -> Result<(Option<Position>, Filter), Status> {
    let mut v = Violations::default();
    let resume_after = view.parse_cursor("resume_after", &r.resume_after, &mut v);
    let statuses: std::collections::HashSet<_> =
        convert::statuses(&mut v, &r.statuses, convert::status_from_proto, "payment").into_iter().collect();
    if validation::count(&mut v, "payment_ids", r.payment_ids.len(), MAX_FILTER_IDS) {
        for (i, id) in r.payment_ids.iter().enumerate() {
            validation::identifier(&mut v, format!("payment_ids[{i}]"), id, validation::ID);
        }
    }
    if validation::count(&mut v, "merchant_uids", r.merchant_uids.len(), MAX_FILTER_IDS) {
        for (i, uid) in r.merchant_uids.iter().enumerate() {
            validation::identifier(&mut v, format!("merchant_uids[{i}]"), uid, validation::MERCHANT_UID_LOOKUP);
        }
    }
    check_subscription_ids(&mut v, &r.subscription_ids);
    v.check()?;
    let filter = Filter {
        scope: caller.scope.clone(),
        payment_ids: r.payment_ids.iter().cloned().collect(),
        merchant_uids: r.merchant_uids.iter().cloned().collect(),
        statuses,
        subscription_ids: r.subscription_ids.iter().cloned().collect(),
    };
    Ok((resume_after, filter))
}

/// Open streams of one payment through payment client tokens (a checkout page, a few tabs).
const MAX_STREAMS_PER_CLIENT_TOKEN_PAYMENT: usize = 4;

pub async fn watch(
    db: Db,
    hub: &Arc<Hub>,
    keys: KeyCache,
    caller: Caller,
    view: View,
    r: pb::WatchPaymentsRequest,
) -> Result<EventStream, Status> {
    let (resume_after, filter) = read_request(&caller, &view, &r)?;
    if let Some(cursor) = resume_after {
        check_cursor(&db, &view, "resume_after", cursor).await?;
    }
    let expires_at = view.expires_at();
    let filter = Arc::new(filter);
    // A client token (it has an expiry) may hold a few streams of its payment, apart from the
    // merchant's quota, so a leaked token cannot crowd out the merchant's own watchers.
    let subscribed = match (expires_at, r.payment_ids.first()) {
        (Some(_), Some(payment_id)) => {
            hub.subscribe_counted(&format!("pct:{payment_id}"), MAX_STREAMS_PER_CLIENT_TOKEN_PAYMENT, filter.clone())
        }
        _ => hub.subscribe(&caller.merchant_id, filter.clone()),
    };
    let subscription = subscribed.map_err(|e| match e {
        SubscribeError::Closed => Status::unavailable(e.to_string()),
        SubscribeError::TooMany(_) => Status::resource_exhausted(e.to_string()),
    })?;
    let start = subscription.start;
    let phase = match resume_after {
        Some(cursor) => Phase::Replay(cursor),
        None => Phase::Snapshots(0),
    };
    // Without a cursor the stream starts after everything committed now, even what the hub has
    // not delivered yet (its tailer may lag a moment behind the log).
    let last = match resume_after {
        Some(cursor) => cursor,
        None => {
            start.max(log::head(&db).await.map_err(|e| Status::unavailable(format!("cannot read the event log: {e}")))?)
        }
    };
    let state = Watch {
        db,
        key: keys.watch(caller.key_id, caller.key_state),
        expires_at,
        merchant_id: caller.merchant_id,
        statuses: filter.statuses.iter().map(|s| s.as_str()).collect(),
        filter,
        view,
        payment_ids: r.payment_ids,
        subscription_ids: r.subscription_ids,
        merchant_uids: r.merchant_uids,
        subscription,
        start,
        replay_from: last,
        last,
        pending: VecDeque::new(),
        phase,
    };
    // A stream straight over the hub's receiver: no task and no second buffer per stream.
    Ok(Box::pin(futures_util::stream::unfold(state, Watch::next)))
}

enum Phase {
    /// Replaying the log after this position, up to the subscription's start.
    Replay(Position),
    /// Sending the current state of the n-th requested payment, then (counting on) of the
    /// requested subscriptions.
    Snapshots(usize),
    Live,
    Ended,
}

struct Watch {
    db: Db,
    /// A stream outlives the call that opened it: its key is checked again before every event.
    key: KeyWatch,
    /// Unix ms after which the stream's credential no longer admits it.
    expires_at: Option<i64>,
    merchant_id: String,
    filter: Arc<Filter>,
    view: View,
    payment_ids: Vec<String>,
    subscription_ids: Vec<String>,
    merchant_uids: Vec<String>,
    /// The filter's statuses as stored.
    statuses: Vec<&'static str>,
    subscription: Subscription,
    start: Position,
    /// The cursor the stream was opened with (its replay's first page starts there).
    replay_from: Position,
    /// The cursor to resume after: the last event sent.
    last: Position,
    pending: VecDeque<(Position, pb::PaymentEvent)>,
    phase: Phase,
}

impl Watch {
    /// The current state of the n-th requested payment, then of the requested subscriptions (the
    /// subscription with its first payment); `None` for one the caller may not see, or that the
    /// status filter leaves out.
    async fn snapshot(&self, n: usize) -> Option<pb::PaymentEvent> {
        let (payment, subscription) = match self.payment_ids.get(n) {
            Some(payment_id) => {
                (repo::get(&self.db, &self.merchant_id, Lookup::PaymentId(payment_id)).await.ok()?, None)
            }
            None => {
                let id = &self.subscription_ids[n - self.payment_ids.len()];
                let lookup = subscriptions::Lookup::SubscriptionId(id);
                let sub = subscriptions::get_in_scope(&self.db, &self.merchant_id, lookup).await.ok()?;
                let initial = Lookup::PaymentId(&sub.initial_payment_id);
                (repo::get(&self.db, &self.merchant_id, initial).await.ok()?, Some(sub))
            }
        };
        if !self.filter.statuses.is_empty() && !self.filter.statuses.contains(&payment.status) {
            return None;
        }
        let (kind, updated_at) = match &subscription {
            Some(sub) => ("subscription.snapshot", sub.updated_at.max(payment.updated_at)),
            None => ("payment.snapshot", payment.updated_at),
        };
        Some(pb::PaymentEvent {
            event_id: self.view.cursor(self.start),
            kind: kind.into(),
            created_at: Some(convert::timestamp(updated_at)),
            payment: Some(self.view.payment(payment)),
            snapshot: true,
            subscription: subscription.map(convert::subscription),
            delivery: None,
        })
    }

    /// The next page of the replay: the events after `position` that the stream's scope and
    /// filter select, chosen in SQL (on an index), so a replay reads its own events only.
    async fn replay_page(&self, position: Position) -> Result<(Vec<Event>, bool), crate::payments::PaymentError> {
        let scope = log::ListScope {
            payment_ids: &self.payment_ids,
            subscription_ids: &self.subscription_ids,
            merchant_uids: &self.merchant_uids,
            statuses: &self.statuses,
        };
        let tenancy = log::Tenancy { merchant_id: &self.merchant_id, merchants: &self.filter.scope };
        let page = if position == self.replay_from { REPLAY_FIRST_PAGE } else { REPLAY_PAGE };
        log::list(&self.db, tenancy, scope, position, page).await
    }

    /// Ends the stream when its key was revoked or expired since it opened, or its client token
    /// expired.
    async fn refused(&mut self) -> Option<Status> {
        if self.expires_at.is_some_and(|at| at <= crate::store::now_ms()) {
            self.phase = Phase::Ended;
            return Some(Status::unauthenticated("payment client token has expired"));
        }
        let refusal = Box::pin(self.key.refusal()).await?;
        self.phase = Phase::Ended;
        Some(Status::from(refusal))
    }

    /// Resolves when the stream's credential expires (never without an expiry).
    async fn expiry(expires_at: Option<i64>) {
        match expires_at {
            Some(at) => tokio::time::sleep(Duration::from_millis((at - crate::store::now_ms()).max(0) as u64)).await,
            None => std::future::pending().await,
        }
    }

    async fn next(mut self) -> Option<(Result<pb::PaymentEvent, Status>, Self)> {
        loop {
            if let Some((position, event)) = self.pending.pop_front() {
                if let Some(status) = self.refused().await {
                    return Some((Err(status), self));
                }
                self.last = position;
                return Some((Ok(event), self));
            }
            match self.phase {
                Phase::Ended => return None,
                Phase::Replay(position) if position >= self.start => self.phase = Phase::Live,
                // Boxed: the stream's waiting state is sized by its largest await, and the live
                // phase (almost all of a stream's life) should not carry a database call's size.
                Phase::Replay(position) => match Box::pin(self.replay_page(position)).await {
                    Ok((events, _)) if events.is_empty() => self.phase = Phase::Live,
                    Ok((events, _)) => {
                        let mut reached = position;
                        for event in events.iter().take_while(|e| e.position <= self.start) {
                            reached = event.position;
                            if self.filter.matches(event) {
                                self.pending.push_back((event.position, self.view.event(event)));
                            }
                        }
                        self.phase = if reached == position { Phase::Live } else { Phase::Replay(reached) };
                    }
                    Err(e) => {
                        self.phase = Phase::Ended;
                        return Some((Err(Status::unavailable(format!("cannot read the event log: {e}"))), self));
                    }
                },
                Phase::Snapshots(n) if n >= self.payment_ids.len() + self.subscription_ids.len() => {
                    self.phase = Phase::Live
                }
                Phase::Snapshots(n) => {
                    self.phase = Phase::Snapshots(n + 1);
                    if let Some(snapshot) = Box::pin(self.snapshot(n)).await {
                        self.pending.push_back((self.start, snapshot));
                    }
                }
                Phase::Live => match tokio::select! {
                    event = self.subscription.rx.recv() => event,
                    // An idle stream ends at its expiry too, not only at its next event.
                    _ = Self::expiry(self.expires_at) => {
                        self.phase = Phase::Ended;
                        return Some((Err(Status::unauthenticated("payment client token has expired")), self));
                    }
                } {
                    // A cursor from a replica that was ahead of this one: skip what the client has.
                    Some(event) if event.position <= self.last => continue,
                    Some(event) => {
                        if let Some(status) = self.refused().await {
                            return Some((Err(status), self));
                        }
                        self.last = event.position;
                        return Some((Ok(self.view.event(&event)), self));
                    }
                    None => {
                        self.phase = Phase::Ended;
                        let last = self.view.cursor(self.last);
                        let status = match self.subscription.ended() {
                            Some(Ended::Lagged) => Status::resource_exhausted(format!(
                                "the stream fell behind and was ended; reconnect with resume_after={last}"
                            )),
                            _ => Status::unavailable(format!(
                                "the server is shutting down; reconnect with resume_after={last}"
                            )),
                        };
                        return Some((Err(status), self));
                    }
                },
            }
        }
    }
}

/// OUT_OF_RANGE for a cursor before events retention expired (resuming would skip them), naming
/// the field and the oldest cursor still available, written as this view writes cursors.
async fn check_cursor(db: &Db, view: &View, field: &str, after: Position) -> Result<(), Status> {
    match log::check_cursor(db, after).await {
        Err(crate::payments::PaymentError::CursorExpired(oldest)) => Err(Status::out_of_range(format!(
            "{field}: the events after this cursor were expired by retention; the oldest cursor still available \
             is {}",
            view.cursor(oldest)
        ))),
        other => other.map_err(Status::from),
    }
}

pub async fn list(
    db: &Db,
    caller: &Caller,
    r: &pb::ListPaymentEventsRequest,
) -> Result<pb::ListPaymentEventsResponse, Status> {
    let mut v = Violations::default();
    let after = parse_cursor("after", &r.after, &mut v).unwrap_or_default();
    validation::optional_identifier(&mut v, "payment_id", &r.payment_id, validation::ID);
    check_subscription_ids(&mut v, &r.subscription_ids);
    v.check()?;
    let limit = match r.page_size {
        0 => 100,
        n => n.min(500),
    };
    let payment_ids = match r.payment_id.is_empty() {
        true => &[][..],
        false => std::slice::from_ref(&r.payment_id),
    };
    check_cursor(db, &View::Merchant, "after", after).await?;
    let scope = log::ListScope { payment_ids, subscription_ids: &r.subscription_ids, ..Default::default() };
    let tenancy = log::Tenancy { merchant_id: &caller.merchant_id, merchants: &caller.scope };
    let (events, _) = log::list(db, tenancy, scope, after, limit).await?;
    let next_cursor = events.last().map(|e| e.position.to_string()).unwrap_or_else(|| r.after.clone());
    Ok(pb::ListPaymentEventsResponse { events: events.iter().map(|e| View::Merchant.event(e)).collect(), next_cursor })
}
