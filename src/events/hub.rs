//! The in-process hub: one per replica. A single tailer reads new events from the log (woken by
//! local commits, by other replicas through Redis, and by a periodic poll that catches up whatever
//! a lost message missed) and hands each event to every matching subscriber.
//!
//! Each subscriber has a bounded buffer. A subscriber whose buffer is full is cut off (it resumes
//! from its cursor), so a slow reader never slows the others or grows memory. Subscribing records
//! the hub's position under the same lock that delivery takes, so a subscriber that replays the
//! log up to that position and then reads its buffer sees every event once, with no gap.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use tokio::sync::{Notify, mpsc};

use super::{Event, Position, bridge::Bridge, log};
use crate::{
    payments::PaymentStatus,
    shutdown::Shutdown,
    store::{Db, now_ms},
};

/// What a subscriber wants. Events outside `scope` (the merchants a key acts for) never match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub scope: Vec<String>,
    pub payment_ids: HashSet<String>,
    pub merchant_uids: HashSet<String>,
    pub statuses: HashSet<PaymentStatus>,
    /// Events of these subscriptions' payments (the first and its renewals).
    pub subscription_ids: HashSet<String>,
}

impl Filter {
    pub fn matches(&self, event: &Event) -> bool {
        let p = &event.payment;
        self.scope.contains(&p.merchant_id)
            && (self.payment_ids.is_empty() || self.payment_ids.contains(&p.payment_id))
            && (self.merchant_uids.is_empty() || self.merchant_uids.contains(&p.merchant_uid))
            && (self.statuses.is_empty() || self.statuses.contains(&p.status))
            && (self.subscription_ids.is_empty()
                || p.subscription_id.as_ref().is_some_and(|id| self.subscription_ids.contains(id)))
    }
}

/// Why the hub ended a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The buffer filled: the subscriber did not keep up.
    Lagged,
    /// The server is shutting down.
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("the server is shutting down; reconnect to another replica")]
    Closed,
    #[error("too many open streams for this merchant, or for this payment's client tokens (limit {0})")]
    TooMany(usize),
}

struct Subscriber {
    /// Whose open-stream count it is in: the merchant, or `pct:<payment_id>` for client tokens.
    counted_as: String,
    filter: Arc<Filter>,
    tx: mpsc::Sender<Arc<Event>>,
    ended: Arc<OnceLock<Ended>>,
}

struct State {
    position: Position,
    /// In the order they subscribed: a connection's streams (opened together) are woken together.
    subscribers: BTreeMap<u64, Subscriber>,
    next_id: u64,
    per_merchant: HashMap<String, usize>,
    closed: bool,
}

pub struct Hub {
    state: Mutex<State>,
    /// Other replicas committed something (or our Redis link came back): read the log.
    remote: Notify,
    buffer: usize,
    max_per_merchant: usize,
}

/// An open subscription: live events after `start` arrive on `rx`.
pub struct Subscription {
    pub rx: mpsc::Receiver<Arc<Event>>,
    pub start: Position,
    ended: Arc<OnceLock<Ended>>,
    hub: Arc<Hub>,
    id: u64,
}

impl Subscription {
    /// Why the hub ended it, once `rx` has closed.
    pub fn ended(&self) -> Option<Ended> {
        self.ended.get().copied()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

impl Hub {
    pub fn new(buffer: usize, max_per_merchant: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                position: Position::default(),
                subscribers: BTreeMap::new(),
                next_id: 0,
                per_merchant: HashMap::new(),
                closed: false,
            }),
            remote: Notify::new(),
            buffer: buffer.max(1),
            max_per_merchant,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream counted against `merchant_id`'s open streams (at most `max_streams_per_merchant`).
    pub fn subscribe(self: &Arc<Self>, merchant_id: &str, filter: Arc<Filter>) -> Result<Subscription, SubscribeError> {
        self.subscribe_counted(merchant_id, self.max_per_merchant, filter)
    }

    /// A stream counted under `counted_as`, at most `max` open at once: a payment client token's
    /// streams count per payment, apart from the merchant's own.
    pub fn subscribe_counted(
        self: &Arc<Self>,
        counted_as: &str,
        max: usize,
        filter: Arc<Filter>,
    ) -> Result<Subscription, SubscribeError> {
        let (tx, rx) = mpsc::channel(self.buffer);
        let ended = Arc::new(OnceLock::new());
        let mut state = self.lock();
        if state.closed {
            return Err(SubscribeError::Closed);
        }
        let open = state.per_merchant.entry(counted_as.to_owned()).or_default();
        if *open >= max {
            return Err(SubscribeError::TooMany(max));
        }
        *open += 1;
        let id = state.next_id;
        state.next_id += 1;
        state
            .subscribers
            .insert(id, Subscriber { counted_as: counted_as.to_owned(), filter, tx, ended: ended.clone() });
        metrics::gauge!("paygate_open_streams").increment(1.0);
        Ok(Subscription { rx, start: state.position, ended, hub: self.clone(), id })
    }

    fn remove(&self, id: u64) {
        let mut state = self.lock();
        if let Some(sub) = state.subscribers.remove(&id) {
            forget(&mut state, &sub.counted_as);
        }
    }

    /// Wakes the tailer for events another replica committed.
    pub fn notify_remote(&self) {
        self.remote.notify_one();
    }

    /// Ends every subscription (shutdown) and refuses new ones.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        for (_, sub) in std::mem::take(&mut state.subscribers) {
            let _ = sub.ended.set(Ended::Shutdown);
        }
        state.per_merchant.clear();
        metrics::gauge!("paygate_open_streams").set(0.0);
    }

    /// Hands events (in log order) to every matching subscriber and advances the hub's position.
    fn deliver(&self, events: &[Arc<Event>]) {
        let mut state = self.lock();
        // Once a subscriber misses an event it gets nothing more: it resumes from its cursor.
        let mut lagged: HashSet<u64> = HashSet::new();
        for event in events {
            for (id, sub) in &state.subscribers {
                if !lagged.contains(id) && sub.filter.matches(event) && sub.tx.try_send(event.clone()).is_err() {
                    lagged.insert(*id);
                }
            }
            state.position = event.position;
        }
        for id in lagged {
            if let Some(sub) = state.subscribers.remove(&id) {
                let _ = sub.ended.set(Ended::Lagged);
                forget(&mut state, &sub.counted_as);
                metrics::counter!("paygate_streams_lagged_total").increment(1);
            }
        }
        metrics::counter!("paygate_events_delivered_total").increment(events.len() as u64);
    }

    /// Sets where live delivery starts (the head of the log). Must run before the first subscriber.
    pub async fn start_at_head(&self, db: &Db) -> Result<(), crate::payments::PaymentError> {
        let head = log::head(db).await?;
        self.lock().position = head;
        Ok(())
    }

    /// The tailer: follows the log from the position set by `start_at_head` until shutdown.
    pub async fn run(self: Arc<Self>, db: Db, bridge: Option<Bridge>, poll: Duration, mut shutdown: Shutdown) {
        loop {
            let local = tokio::select! {
                _ = db.committed() => true,
                _ = self.remote.notified() => false,
                _ = tokio::time::sleep(poll) => false,
                _ = shutdown.signalled() => return,
            };
            // Tell the other replicas while reading: local subscribers do not wait for Redis.
            let announce = async {
                if let (true, Some(bridge)) = (local, &bridge) {
                    bridge.announce().await;
                }
            };
            let (_, read) = tokio::join!(announce, self.catch_up(&db));
            if let Err(e) = read {
                tracing::warn!(error = %e, "event tailer could not read the log; will retry");
            }
        }
    }

    async fn catch_up(&self, db: &Db) -> Result<(), crate::payments::PaymentError> {
        loop {
            let position = self.lock().position;
            let (events, held_back) = log::read_after(db, position, 500).await?;
            metrics::counter!("paygate_event_log_reads_total").increment(1);
            if !events.is_empty() {
                let now = now_ms();
                for event in &events {
                    metrics::histogram!("paygate_event_delivery_lag_seconds")
                        .record((now - event.created_at).max(0) as f64 / 1000.0);
                }
                let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
                self.deliver(&events);
                if events.len() == 500 {
                    continue;
                }
            }
            if !held_back {
                return Ok(());
            }
            // Committed events wait behind a transaction still running: it ends in milliseconds.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

fn forget(state: &mut State, merchant_id: &str) {
    if let Some(open) = state.per_merchant.get_mut(merchant_id) {
        *open = open.saturating_sub(1);
    }
    metrics::gauge!("paygate_open_streams").decrement(1.0);
}
