//! Provider notifications (Paymentwall pingbacks, and what the stuck-payment sweep learns by
//! asking): stored raw and applied to the payment in one transaction, deduplicated on the
//! provider's unique id `(channel, ref, type[, UNIQUE_REF])`. The caller answers the provider only
//! after this returns, so an acknowledged notification is always committed.

use sqlx::{AnyConnection, Row};

use super::{
    Payment, PaymentError, PaymentOutcome, PaymentStatus,
    cancellations::{self, Cancellation},
    event_log::{EventDetail, EventKind},
    provider::{Notice, ProviderEvent, RawNotification},
    recent::RecentPayments,
    refunds::{self, ReversalEffect},
    repo,
    status::next_status,
    subscriptions::{self, Subscription, SubscriptionStatus},
};
use crate::store::{Backend, Db, StoreError, now_ms};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A payment moved (or a renewal payment was made); the event records it. `renewed_after_end`:
    /// the payment renews a subscription that had already ended, as it had ended (counted once the
    /// transaction commits).
    Changed { payment: Box<Payment>, event_id: i64, renewed_after_end: Option<SubscriptionStatus> },
    /// A valid notification that changes nothing (late or replayed after the payment moved on).
    Unchanged,
    /// The same notification was applied before.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    #[error("no payment {0} on this channel")]
    UnknownPayment(String),
    #[error("the payment changed concurrently; retry")]
    Concurrent,
    #[error(transparent)]
    Payment(PaymentError),
}

impl From<PaymentError> for NotificationError {
    fn from(e: PaymentError) -> Self {
        match e {
            PaymentError::Concurrent => Self::Concurrent,
            other => Self::Payment(other),
        }
    }
}

impl From<StoreError> for NotificationError {
    fn from(e: StoreError) -> Self {
        Self::Payment(e.into())
    }
}

impl From<sqlx::Error> for NotificationError {
    fn from(e: sqlx::Error) -> Self {
        Self::Payment(StoreError::from(e).into())
    }
}

const OUTCOME_APPLIED: &str = "applied";
const OUTCOME_UNMATCHED: &str = "unmatched";

/// Stores `raw` and applies `notice` atomically, in a transaction of its own. A notice for an
/// unknown payment is stored (so nothing is lost) and reported as an error, so the provider
/// retries it. A plain settlement of a payment this replica wrote last is decided from its copy
/// and written by one statement (`settle_from_copies`); everything else reads first.
pub async fn ingest(
    db: &Db,
    recent: &RecentPayments,
    raw: &RawNotification,
    notice: &Notice,
) -> Result<Applied, NotificationError> {
    if let Some(Some(applied)) = settle_from_copies(db, recent, &[(raw, notice)]).await.pop() {
        return Ok(applied);
    }
    let mut tx = db.pool().begin().await?;
    let result = ingest_in(&mut tx, raw, notice).await?;
    tx.commit().await?;
    let results = std::slice::from_ref(&result);
    committed(db, results);
    remember(recent, results);
    result
}

/// PostgreSQL: `ingest` for every notification of `batch` that simply settles a payment whose
/// copy this replica keeps, decided from the copies, in one round trip. One statement, committing
/// on its own, moves each payment by a compare-and-set on its copy's version, and for each move
/// that held stores the raw record (a plain INSERT: a notification delivered before takes its key,
/// which fails the whole statement), appends the event and queues the webhook. Each notification
/// gets its result, or `None` when nothing of it was written and it must take the reading path: no
/// copy, a stale one, a repeat delivery, or a decision that needs more than the payment row (a
/// subscription, refunds, a renewal). The notifications must be distinct and name distinct
/// payments (a later one for a payment already taken is left to the reading path).
pub async fn settle_from_copies(
    db: &Db,
    recent: &RecentPayments,
    batch: &[(&RawNotification, &Notice)],
) -> Vec<Option<Applied>> {
    let mut results: Vec<Option<Applied>> = batch.iter().map(|_| None).collect();
    if !db.backend().writes_in_ctes() {
        return results;
    }
    let now = now_ms();
    // (index in the batch, the payment as it is to be, its event)
    let mut settlements: Vec<(usize, Payment, EventKind)> = Vec::new();
    for (i, (raw, notice)) in batch.iter().enumerate() {
        if settlements.iter().any(|(_, next, _)| next.payment_id == notice.payment_id) {
            continue;
        }
        if let Some((next, kind)) = settlement_from_copy(recent, raw, notice, now) {
            settlements.push((i, next, kind));
        }
    }
    if settlements.is_empty() {
        return results;
    }
    let changes: Vec<_> = settlements
        .iter()
        .map(|(_, next, kind)| super::Change { moves: true, payment: next, kind: *kind, detail: None })
        .collect();
    let found = match write_settlements(db, batch, &settlements, &changes, now).await {
        Ok(found) => found,
        // Nothing was written (the statement is its own transaction), or, if only its answer was
        // lost, all of it: the reading path then finds the raw records and answers duplicates.
        Err(error) => {
            tracing::debug!(%error, "settlements from copies were refused; reading the payments");
            return results;
        }
    };
    let mut moved = false;
    for ((i, next, _), event_id) in settlements.into_iter().zip(found) {
        match event_id {
            Some(event_id) => {
                recent.wrote(&next);
                results[i] = Some(Applied::Changed { payment: Box::new(next), event_id, renewed_after_end: None });
                moved = true;
            }
            None => recent.forget(&next.payment_id),
        }
    }
    if moved {
        db.signal_commit();
    }
    results
}

/// What the copy of the payment `notice` names says it does, when that is a plain settlement.
fn settlement_from_copy(
    recent: &RecentPayments,
    raw: &RawNotification,
    notice: &Notice,
    now: i64,
) -> Option<(Payment, EventKind)> {
    if !matches!(notice.event, ProviderEvent::Payment(_)) {
        return None;
    }
    let copy = recent.get(&notice.payment_id)?;
    // As `read` checks: a notification signed with one channel's secret touches only its payments.
    if copy.channel_key != raw.channel_key || copy.subscription_id.is_some() {
        return None;
    }
    match decide(&copy, None, &[], notice, now) {
        Ok(Decision::Settle { next, kind, subscription: None }) => Some((next, kind)),
        _ => None,
    }
}

/// The statement of `settle_from_copies`: the changes, and the raw record of each whose move held.
/// Returns each change's event id (`None`: its compare-and-set failed, nothing of it written).
async fn write_settlements(
    db: &Db,
    batch: &[(&RawNotification, &Notice)],
    settlements: &[(usize, Payment, EventKind)],
    changes: &[super::Change<'_>],
    now: i64,
) -> Result<Vec<Option<i64>>, NotificationError> {
    let ids: Vec<String> = settlements.iter().map(|_| format!("pb_{}", ulid::Ulid::new())).collect();
    let records: Vec<RawRecordRow> = settlements
        .iter()
        .zip(&ids)
        .enumerate()
        .map(|(n, ((i, next, _), id))| RawRecordRow::of(n, id, batch[*i].0, &next.payment_id))
        .collect();
    let records = serde_json::to_string(&records).map_err(|e| PaymentError::Corrupt(e.to_string()))?;
    let also = format!(
        "recorded AS (INSERT INTO pingbacks (pingback_id, channel_key, ref, type, unique_ref, query, outcome, \
         payment_id, received_at, last_seen_at) \
         SELECT pb_id, pb_channel, pb_ref, pb_type, pb_unique, pb_query, 'applied', pb_payment, $3, $3 \
         FROM json_to_recordset($2::json) AS r({RAW_RECORD_COLUMNS}) \
         WHERE r.n IN (SELECT n FROM moved) ORDER BY r.n)"
    );
    let statement = super::ChangeStatement::new(changes, &also)?;
    let found = statement.query().bind(records).bind(now).fetch_all(db.pool()).await?;
    Ok(statement.event_ids(&found)?)
}

/// After the commit of `results`: keeps the copy of every payment they moved.
pub fn remember(recent: &RecentPayments, results: &[Committable]) {
    for result in results {
        if let Ok(Applied::Changed { payment, .. }) = result {
            recent.wrote(payment);
        }
    }
}

/// What one notification did inside a transaction: what its sender is told once that commits
/// (applied, or an unknown payment whose raw record is kept).
pub type Committable = Result<Applied, NotificationError>;

/// Stores `raw` and applies `notice` in the caller's transaction. The outer error means the
/// transaction must roll back (a conflict, or the store failing); the inner result is the answer
/// for after the commit.
pub async fn ingest_in(
    conn: &mut AnyConnection,
    raw: &RawNotification,
    notice: &Notice,
) -> Result<Committable, NotificationError> {
    let (seen, payment) = record_delivery(conn, raw, &notice.payment_id).await?;
    apply_recorded(conn, raw, notice, seen, payment).await
}

/// `ingest_in` after the raw record was stored (`seen`) and the payment it names read.
async fn apply_recorded(
    conn: &mut AnyConnection,
    raw: &RawNotification,
    notice: &Notice,
    seen: Seen,
    payment: Option<Payment>,
) -> Result<Committable, NotificationError> {
    let applied = match prepare(conn, raw, notice, seen, payment).await? {
        Prepared::Answer(answer) => return Ok(answer),
        Prepared::Write(decision) => write(conn, *decision).await?,
    };
    applied_after_all(conn, raw, seen).await?;
    Ok(Ok(applied))
}

/// PostgreSQL: `ingest_in` for a batch of notifications that are distinct and name distinct
/// payments, in two statements for the most common kind: one stores every raw record and reads
/// every payment; after the decisions, one moves every payment that simply settles, with its
/// event and webhook. Any other decision is written on its own.
pub async fn ingest_all_in(
    conn: &mut AnyConnection,
    batch: &[(&RawNotification, &Notice)],
) -> Result<Vec<Committable>, NotificationError> {
    let recorded = record_deliveries(conn, batch).await?;
    let mut results: Vec<Option<Committable>> = batch.iter().map(|_| None).collect();
    let mut seens = Vec::with_capacity(batch.len());
    let mut settlements = Vec::new();
    for (i, (&(raw, notice), (seen, payment))) in batch.iter().zip(recorded).enumerate() {
        seens.push(seen);
        match prepare(conn, raw, notice, seen, payment).await? {
            Prepared::Answer(answer) => results[i] = Some(answer),
            Prepared::Write(decision) => match *decision {
                Decision::Settle { next, kind, subscription: None } => settlements.push((i, next, kind)),
                decision => results[i] = Some(Ok(write(conn, decision).await?)),
            },
        }
    }
    let changes: Vec<_> = settlements
        .iter()
        .map(|(_, next, kind)| super::Change { moves: true, payment: next, kind: *kind, detail: None })
        .collect();
    let event_ids = super::record_all(conn, &changes).await?;
    for ((i, next, _), event_id) in settlements.into_iter().zip(event_ids) {
        let event_id = event_id.ok_or(NotificationError::Concurrent)?;
        results[i] = Some(Ok(Applied::Changed { payment: Box::new(next), event_id, renewed_after_end: None }));
    }
    for (i, &(raw, _)) in batch.iter().enumerate() {
        if matches!(results[i], Some(Ok(_))) {
            applied_after_all(conn, raw, seens[i]).await?;
        }
    }
    results
        .into_iter()
        .map(|r| r.ok_or_else(|| PaymentError::Corrupt("a notification of a batch got no result".into()).into()))
        .collect()
}

/// Where a recorded notification stands before its writes.
enum Prepared {
    /// Nothing to write: the sender's answer (a duplicate, or an unknown payment now marked so).
    Answer(Committable),
    Write(Box<Decision>),
}

/// Reads what the decision needs and decides; an unknown payment's record is marked unmatched.
async fn prepare(
    conn: &mut AnyConnection,
    raw: &RawNotification,
    notice: &Notice,
    seen: Seen,
    payment: Option<Payment>,
) -> Result<Prepared, NotificationError> {
    if seen == Seen::Applied {
        return Ok(Prepared::Answer(Ok(Applied::Duplicate)));
    }
    match read(conn, &raw.channel_key, notice, payment).await {
        Ok((current, subscription, open)) => {
            Ok(Prepared::Write(Box::new(decide(&current, subscription.as_ref(), &open, notice, now_ms())?)))
        }
        Err(unknown @ NotificationError::UnknownPayment(_)) => {
            mark(conn, raw, OUTCOME_UNMATCHED).await?;
            Ok(Prepared::Answer(Err(unknown)))
        }
        Err(other) => Err(other),
    }
}

/// A notification stored earlier as unmatched that has now been applied says so.
async fn applied_after_all(
    conn: &mut AnyConnection,
    raw: &RawNotification,
    seen: Seen,
) -> Result<(), NotificationError> {
    if seen == Seen::Again {
        mark(conn, raw, OUTCOME_APPLIED).await?;
    }
    Ok(())
}

/// After the commit of `results`: wakes the local event tailer, and counts money after a
/// subscription's end.
pub fn committed(db: &Db, results: &[Committable]) {
    if results.iter().any(|r| matches!(r, Ok(Applied::Changed { .. }))) {
        db.signal_commit();
    }
    for result in results {
        if let Ok(Applied::Changed { renewed_after_end: Some(status), .. }) = result {
            count_renewal_after_end(*status);
        }
    }
}

const RENEWALS_AFTER_END: &str = "paygate_subscription_renewals_after_end_total";

/// Money after a subscription ended needs a person: counted for alerting (the subscription keeps
/// the durable count).
fn count_renewal_after_end(status: SubscriptionStatus) {
    metrics::counter!(RENEWALS_AFTER_END, "status" => status.as_str()).increment(1);
}

/// Shows the counter at 0 from the start, so an alert on its increase sees the first one too.
pub fn announce_metrics() {
    for status in [SubscriptionStatus::Cancelled, SubscriptionStatus::Expired, SubscriptionStatus::PaymentFailed] {
        metrics::counter!(RENEWALS_AFTER_END, "status" => status.as_str()).absolute(0);
    }
}

/// Sets the outcome of a stored notification (unmatched: kept for the record and the provider's
/// retries; applied: a retry matched after all).
async fn mark(conn: &mut AnyConnection, raw: &RawNotification, outcome: &str) -> Result<(), NotificationError> {
    sqlx::query(
        "UPDATE pingbacks SET outcome = $1 WHERE channel_key = $2 AND ref = $3 AND type = $4 AND unique_ref = $5",
    )
    .bind(outcome)
    .bind(&raw.channel_key)
    .bind(&raw.provider_ref)
    .bind(raw.kind)
    .bind(&raw.unique_ref)
    .execute(conn)
    .await?;
    Ok(())
}

/// Applies what paygate learned by asking the provider (no raw notification to keep).
pub async fn apply_learned(db: &Db, channel_key: &str, notice: &Notice) -> Result<Applied, NotificationError> {
    let mut tx = db.pool().begin().await?;
    let payment = repo::get_in_tx(&mut tx, &notice.payment_id).await?;
    let result = apply(&mut tx, channel_key, notice, payment).await?;
    tx.commit().await?;
    if matches!(result, Applied::Changed { .. }) {
        db.signal_commit();
    }
    Ok(result)
}

/// Whether a notification's raw record is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    New,
    /// Delivered before but not applied (it matched no payment then).
    Again,
    Applied,
}

/// Inserts the raw row (or counts a repeat delivery) and reads the payment it names: one
/// statement on PostgreSQL, two on SQLite.
async fn record_delivery(
    conn: &mut AnyConnection,
    raw: &RawNotification,
    payment_id: &str,
) -> Result<(Seen, Option<Payment>), NotificationError> {
    let pingback_id = format!("pb_{}", ulid::Ulid::new());
    // Written as applied: if applying fails, the transaction rolls back (or marks it unmatched).
    let upsert = "INSERT INTO pingbacks (pingback_id, channel_key, ref, type, unique_ref, query, outcome, payment_id, \
         received_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, 'applied', $7, $8, $8) \
         ON CONFLICT (channel_key, ref, type, unique_ref) \
         DO UPDATE SET deliveries = pingbacks.deliveries + 1, last_seen_at = excluded.last_seen_at \
         RETURNING pingback_id, outcome";
    let joined = Backend::of(conn).writes_in_ctes();
    let sql = match joined {
        true => format!(
            "WITH seen AS ({upsert}) SELECT seen.pingback_id, seen.outcome, {} \
             FROM seen LEFT JOIN payments ON payments.payment_id = $7",
            repo::COLUMNS
        ),
        false => upsert.to_owned(),
    };
    let row = sqlx::query(&sql)
        .bind(&pingback_id)
        .bind(&raw.channel_key)
        .bind(&raw.provider_ref)
        .bind(raw.kind)
        .bind(&raw.unique_ref)
        .bind(&raw.query)
        .bind(payment_id)
        .bind(now_ms())
        .fetch_one(&mut *conn)
        .await?;
    let (stored_id, outcome): (String, String) = (row.try_get("pingback_id")?, row.try_get("outcome")?);
    let seen = seen_as(stored_id == pingback_id, &outcome);
    let payment = match joined {
        true => repo::joined_payment(&row)?,
        false => repo::get_in_tx(conn, payment_id).await?,
    };
    Ok((seen, payment))
}

/// `RawRecordRow`'s columns, as `json_to_recordset` reads them.
const RAW_RECORD_COLUMNS: &str =
    "n int, pb_id text, pb_channel text, pb_ref text, pb_type bigint, pb_unique text, pb_query text, pb_payment text";

/// A raw record as a row of a statement's JSON parameter, numbered `n` within the statement.
#[derive(serde::Serialize)]
struct RawRecordRow<'a> {
    n: usize,
    pb_id: &'a str,
    pb_channel: &'a str,
    pb_ref: &'a str,
    pb_type: i64,
    pb_unique: &'a str,
    pb_query: &'a str,
    pb_payment: &'a str,
}

impl<'a> RawRecordRow<'a> {
    fn of(n: usize, id: &'a str, raw: &'a RawNotification, payment_id: &'a str) -> Self {
        Self {
            n,
            pb_id: id,
            pb_channel: &raw.channel_key,
            pb_ref: &raw.provider_ref,
            pb_type: raw.kind,
            pb_unique: &raw.unique_ref,
            pb_query: &raw.query,
            pb_payment: payment_id,
        }
    }
}

/// PostgreSQL: `record_delivery` for a whole batch in one statement, the rows passed as one JSON
/// parameter. The notifications must be distinct and name distinct payments: one statement cannot
/// upsert a row twice, and each decision reads its payment as the statement found it.
async fn record_deliveries(
    conn: &mut AnyConnection,
    batch: &[(&RawNotification, &Notice)],
) -> Result<Vec<(Seen, Option<Payment>)>, NotificationError> {
    let ids: Vec<String> = batch.iter().map(|_| format!("pb_{}", ulid::Ulid::new())).collect();
    let rows: Vec<RawRecordRow> = batch
        .iter()
        .zip(&ids)
        .enumerate()
        .map(|(n, ((raw, notice), id))| RawRecordRow::of(n, id, raw, &notice.payment_id))
        .collect();
    let rows = serde_json::to_string(&rows).map_err(|e| PaymentError::Corrupt(e.to_string()))?;
    let sql = format!(
        "WITH input AS (SELECT * FROM json_to_recordset($1::json) AS i({RAW_RECORD_COLUMNS})), \
         seen AS (INSERT INTO pingbacks (pingback_id, channel_key, ref, type, unique_ref, query, outcome, payment_id, \
           received_at, last_seen_at) \
           SELECT pb_id, pb_channel, pb_ref, pb_type, pb_unique, pb_query, 'applied', pb_payment, $2, $2 \
           FROM input ORDER BY n \
           ON CONFLICT (channel_key, ref, type, unique_ref) \
           DO UPDATE SET deliveries = pingbacks.deliveries + 1, last_seen_at = excluded.last_seen_at \
           RETURNING pingback_id AS seen_id, outcome AS seen_outcome, channel_key AS seen_channel, ref AS seen_ref, \
             type AS seen_type, unique_ref AS seen_unique) \
         SELECT input.n, seen.seen_id, seen.seen_outcome, {} FROM input \
         JOIN seen ON seen_channel = pb_channel AND seen_ref = pb_ref AND seen_type = pb_type AND seen_unique = pb_unique \
         LEFT JOIN payments ON payments.payment_id = input.pb_payment",
        repo::COLUMNS
    );
    let found = sqlx::query(&sql).bind(rows).bind(now_ms()).fetch_all(&mut *conn).await?;
    let mut recorded: Vec<Option<(Seen, Option<Payment>)>> = vec![None; batch.len()];
    for row in &found {
        let n = usize::try_from(row.try_get::<i32, _>("n")?).unwrap_or(usize::MAX);
        let (stored_id, outcome): (String, String) = (row.try_get("seen_id")?, row.try_get("seen_outcome")?);
        let seen = seen_as(ids.get(n).is_some_and(|id| *id == stored_id), &outcome);
        if let Some(slot) = recorded.get_mut(n) {
            *slot = Some((seen, repo::joined_payment(row)?));
        }
    }
    recorded
        .into_iter()
        .map(|r| {
            r.ok_or_else(|| PaymentError::Corrupt("a stored notification came back without its row".into()).into())
        })
        .collect()
}

fn seen_as(inserted_now: bool, outcome: &str) -> Seen {
    match () {
        _ if inserted_now => Seen::New,
        _ if outcome == OUTCOME_APPLIED => Seen::Applied,
        _ => Seen::Again,
    }
}

/// Applies `notice` to `payment` (as read in this transaction: the one it names, if any).
async fn apply(
    conn: &mut AnyConnection,
    channel_key: &str,
    notice: &Notice,
    payment: Option<Payment>,
) -> Result<Applied, NotificationError> {
    let (current, subscription, open) = read(conn, channel_key, notice, payment).await?;
    let decision = decide(&current, subscription.as_ref(), &open, notice, now_ms())?;
    write(conn, decision).await
}

/// What the decision needs: the payment the notice concerns, its subscription, and (for money
/// going back) its open refund requests.
async fn read(
    conn: &mut AnyConnection,
    channel_key: &str,
    notice: &Notice,
    payment: Option<Payment>,
) -> Result<(Payment, Option<Subscription>, Vec<Cancellation>), NotificationError> {
    let mut current = match payment {
        // A notification signed with one channel's secret may only touch that channel's payments.
        Some(payment) if payment.channel_key == channel_key => payment,
        _ => return Err(NotificationError::UnknownPayment(notice.payment_id.clone())),
    };
    // A subscription's notifications all name its first payment (`goodsid`); one about a renewal
    // carries the renewal's ref, so that payment is the one it concerns.
    if current.subscription_id.is_some()
        && current.provider_ref.as_deref().is_some_and(|r| r != notice.provider_ref)
        && let Some(renewal) = repo::find_by_provider_ref(conn, channel_key, &notice.provider_ref).await?
    {
        current = renewal;
    }
    let subscription = match &current.subscription_id {
        Some(id) => subscriptions::get(conn, id).await?,
        None => None,
    };
    let open = match notice.event {
        ProviderEvent::Reversal(_) | ProviderEvent::RefundConfirmed => {
            cancellations::requested(conn, &current.payment_id).await?
        }
        _ => Vec::new(),
    };
    Ok((current, subscription, open))
}

/// What a notice does, decided from what was read; `write` carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Valid, and changes nothing (late, replayed, or superseded by a later state).
    Unchanged,
    /// The payment moves; a subscription waiting for its first payment starts.
    Settle { next: Payment, kind: EventKind, subscription: Option<SubscriptionChange> },
    /// Money under a new ref for a payment already settled: a new payment linked to the first,
    /// counted by its subscription.
    Renew { payment: Payment, kind: EventKind, subscription: Option<SubscriptionChange> },
    /// The subscription ends; the payment stays as it is (the event shows it).
    EndSubscription { payment: Payment, kind: EventKind, subscription: SubscriptionChange },
    /// Money went back (or the provider confirmed refunds).
    Reverse(ReversalEffect),
}

/// A subscription as read, and as it is to be written (a compare-and-set on the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionChange {
    pub before: Subscription,
    pub after: Subscription,
}

/// What `notice` does to `current` (the payment it concerns), its `subscription` (if it has one)
/// and its `open` refund requests, at `now`.
pub fn decide(
    current: &Payment,
    subscription: Option<&Subscription>,
    open: &[Cancellation],
    notice: &Notice,
    now: i64,
) -> Result<Decision, NotificationError> {
    match notice.event {
        ProviderEvent::Payment(outcome) => {
            // Money taken under a new ref for a payment already settled: a subscription renewal (or,
            // for a one-time payment, the buyer paying twice). Recorded as a new payment, never dropped.
            let another_payment = outcome != PaymentOutcome::Declined
                && !matches!(current.status, PaymentStatus::Ready | PaymentStatus::PendingReview)
                && current.provider_ref.as_deref().is_some_and(|r| r != notice.provider_ref);
            if another_payment {
                renewal(current, subscription, outcome, notice, now)
            } else {
                Ok(settlement(current, subscription, outcome, notice, now))
            }
        }
        ProviderEvent::Reversal(reversal) => {
            // A reversal that overtook its payment's completion still names the transaction.
            let mut current = current.clone();
            if current.provider_ref.is_none() {
                current.provider_ref = Some(notice.provider_ref.clone());
                current.test = notice.test;
            }
            let plan = refunds::plan_reversal(&current, reversal.kind, open);
            Ok(refunds::reversal_effect(&current, plan, open, Some(&reversal), now)
                .map_or(Decision::Unchanged, Decision::Reverse))
        }
        ProviderEvent::RefundConfirmed => {
            let plan = refunds::plan_confirmation(current, open);
            Ok(refunds::reversal_effect(current, plan, open, None, now).map_or(Decision::Unchanged, Decision::Reverse))
        }
        ProviderEvent::SubscriptionEnded(end) => Ok(match subscription {
            Some(sub) => match subscriptions::ended(sub, end, now) {
                Some(after) => Decision::EndSubscription {
                    payment: current.clone(),
                    kind: end.event_kind(),
                    subscription: SubscriptionChange { before: sub.clone(), after },
                },
                None => Decision::Unchanged,
            },
            None => Decision::Unchanged,
        }),
    }
}

/// The payment moves as the status machine says; paid, it starts a subscription waiting for it.
fn settlement(
    current: &Payment,
    subscription: Option<&Subscription>,
    outcome: PaymentOutcome,
    notice: &Notice,
    now: i64,
) -> Decision {
    let Some(status) = next_status(current.status, outcome) else {
        tracing::info!(payment_id = %current.payment_id, status = %current.status, outcome = outcome.event_kind().as_str(), "notification changes nothing");
        return Decision::Unchanged;
    };
    let mut next = current.next_version(now);
    next.status = status;
    next.test = notice.test;
    match outcome {
        PaymentOutcome::Completed | PaymentOutcome::ReviewAccepted => {
            next.provider_ref = Some(notice.provider_ref.clone());
            next.paid_at = Some(now);
        }
        PaymentOutcome::ReviewStarted => next.provider_ref = Some(notice.provider_ref.clone()),
        PaymentOutcome::Declined => next.failed_at = Some(now),
    }
    let subscription = subscription
        .filter(|_| status == PaymentStatus::Paid)
        .and_then(|sub| Some(SubscriptionChange { before: sub.clone(), after: subscriptions::activated(sub, now)? }));
    Decision::Settle { next, kind: outcome.event_kind(), subscription }
}

/// The `merchant_uid` namespace of payments paygate records itself: a leading `~`, which a
/// merchant's own `merchant_uid` may not have (checkout refuses it), so the two never collide.
pub const GENERATED_UID_PREFIX: char = '~';

/// A payment paygate records itself, named after the payment it follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generated<'a> {
    /// The n-th renewal of a subscription.
    Renewal(i64),
    /// Money taken again under this provider ref for a one-time payment.
    Repeat(&'a str),
}

/// `~<uid>/renewal/<n>` or `~<uid>/repeat/<ref>`.
pub fn generated_merchant_uid(original: &str, generated: Generated<'_>) -> String {
    match generated {
        Generated::Renewal(n) => format!("{GENERATED_UID_PREFIX}{original}/renewal/{n}"),
        Generated::Repeat(provider_ref) => format!("{GENERATED_UID_PREFIX}{original}/repeat/{provider_ref}"),
    }
}

/// Money under a new ref for a payment already settled, recorded as a new payment linked to the
/// first: a subscription renewal (`~<uid>/renewal/<n>`), or a repeat purchase (`~<uid>/repeat/<ref>`).
/// A review (200) makes it PENDING_REVIEW; its 201 then finds it by ref.
fn renewal(
    initial: &Payment,
    subscription: Option<&Subscription>,
    outcome: PaymentOutcome,
    notice: &Notice,
    now: i64,
) -> Result<Decision, NotificationError> {
    if initial.subscription_id.is_some() && subscription.is_none() {
        let problem = format!("payment {} names a missing subscription", initial.payment_id);
        return Err(PaymentError::Corrupt(problem).into());
    }
    let merchant_uid = match subscription {
        Some(sub) => generated_merchant_uid(&initial.merchant_uid, Generated::Renewal(sub.renewals + 1)),
        None => {
            tracing::warn!(payment_id = %initial.payment_id, provider_ref = %notice.provider_ref, "a second payment for a one-time checkout; recorded");
            generated_merchant_uid(&initial.merchant_uid, Generated::Repeat(&notice.provider_ref))
        }
    };
    let reviewing = outcome == PaymentOutcome::ReviewStarted;
    let payment = Payment {
        payment_id: super::model::new_payment_id(),
        merchant_uid,
        status: if reviewing { PaymentStatus::PendingReview } else { PaymentStatus::Paid },
        provider_ref: Some(notice.provider_ref.clone()),
        test: notice.test,
        redirect_url: String::new(),
        cancelled_amount: 0,
        pending_cancel_amount: 0,
        version: 1,
        created_at: now,
        updated_at: now,
        paid_at: if reviewing { None } else { Some(now) },
        failed_at: None,
        cancelled_at: None,
        ..initial.clone()
    };
    let subscription = subscription.map(|sub| {
        if sub.status.is_final() {
            tracing::warn!(subscription_id = %sub.subscription_id, status = sub.status.as_str(), "renewal of an ended subscription recorded anyway");
        }
        SubscriptionChange { before: sub.clone(), after: subscriptions::renewed(sub, &payment.payment_id, now) }
    });
    Ok(Decision::Renew { payment, kind: outcome.event_kind(), subscription })
}

/// Carries out a decision in the caller's transaction, with its event and outbox rows.
async fn write(conn: &mut AnyConnection, decision: Decision) -> Result<Applied, NotificationError> {
    let renewed_after_end = match &decision {
        Decision::Renew { subscription: Some(change), .. } => subscriptions::renewal_after_end(&change.before),
        _ => None,
    };
    let (payment, kind, detail) = match decision {
        Decision::Unchanged => return Ok(Applied::Unchanged),
        Decision::Settle { next, kind, subscription } => {
            let detail = write_subscription(conn, subscription).await?;
            let moved = super::record_update(conn, &next, kind, detail.as_ref()).await?;
            let event_id = moved.ok_or(NotificationError::Concurrent)?;
            return Ok(Applied::Changed { payment: Box::new(next), event_id, renewed_after_end });
        }
        Decision::Renew { mut payment, kind, subscription } => {
            // Only a payment stored before the namespace existed can hold the name: never fail over it.
            if repo::merchant_uid_taken(conn, &payment.merchant_id, &payment.merchant_uid).await? {
                payment.merchant_uid = format!("{}/{}", payment.merchant_uid, payment.payment_id);
            }
            repo::insert_in_tx(conn, &payment).await?;
            (payment, kind, write_subscription(conn, subscription).await?)
        }
        Decision::EndSubscription { payment, kind, subscription } => {
            (payment, kind, write_subscription(conn, Some(subscription)).await?)
        }
        Decision::Reverse(effect) => {
            refunds::write_reversal(conn, &effect).await?;
            (effect.next, effect.kind, Some(EventDetail::cancellation(&effect.completed)))
        }
    };
    let event_id = super::record(conn, &payment, kind, detail.as_ref()).await?;
    Ok(Applied::Changed { payment: Box::new(payment), event_id, renewed_after_end })
}

/// Writes a subscription change (compare-and-set); the event then carries the subscription.
async fn write_subscription(
    conn: &mut AnyConnection,
    change: Option<SubscriptionChange>,
) -> Result<Option<EventDetail>, NotificationError> {
    let Some(SubscriptionChange { before, after }) = change else { return Ok(None) };
    if !subscriptions::update(conn, &before, &after).await? {
        return Err(NotificationError::Concurrent);
    }
    Ok(Some(EventDetail::subscription(&after)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::{
        cancellations::{TicketState, Trigger},
        fixtures::{payment, subscription, unpaid},
        provider::{ReversalKind, ReversalNotice},
        subscriptions::{SubscriptionEnd, SubscriptionStatus},
    };

    fn notice(provider_ref: &str, event: ProviderEvent) -> Notice {
        Notice { payment_id: "pay_1".into(), provider_ref: provider_ref.into(), event, test: false }
    }

    fn paid(outcome: PaymentOutcome, provider_ref: &str) -> Notice {
        notice(provider_ref, ProviderEvent::Payment(outcome))
    }

    fn subscribed(status: PaymentStatus) -> Payment {
        Payment { subscription_id: Some("sub_1".into()), merchant_uid: "gold".into(), ..payment(status, 999, 0, 0) }
    }

    fn decided(current: &Payment, sub: Option<&Subscription>, n: &Notice) -> Decision {
        decide(current, sub, &[], n, 50).expect("decides")
    }

    #[test]
    fn a_completion_settles_a_ready_payment() {
        let Decision::Settle { next, kind, subscription } =
            decided(&unpaid(999), None, &paid(PaymentOutcome::Completed, "b7"))
        else {
            panic!("settles")
        };
        assert_eq!(
            (next.status, next.provider_ref.as_deref(), next.paid_at),
            (PaymentStatus::Paid, Some("b7"), Some(50))
        );
        assert_eq!((next.version, next.updated_at, next.test, kind), (2, 50, false, EventKind::PaymentPaid));
        assert_eq!((next.amount_minor, next.cancelled_amount, next.pending_cancel_amount), (999, 0, 0));
        assert_eq!(subscription, None);
    }

    #[test]
    fn a_decline_fails_and_a_review_holds() {
        let Decision::Settle { next, kind, .. } = decided(&unpaid(999), None, &paid(PaymentOutcome::Declined, "b7"))
        else {
            panic!("settles")
        };
        assert_eq!(
            (next.status, next.failed_at, next.paid_at, kind),
            (PaymentStatus::Failed, Some(50), None, EventKind::PaymentFailed)
        );
        let Decision::Settle { next, .. } = decided(&unpaid(999), None, &paid(PaymentOutcome::ReviewStarted, "b7"))
        else {
            panic!("settles")
        };
        assert_eq!(
            (next.status, next.provider_ref.as_deref(), next.paid_at),
            (PaymentStatus::PendingReview, Some("b7"), None)
        );
    }

    #[test]
    fn a_late_or_replayed_notice_changes_nothing() {
        let done = payment(PaymentStatus::Paid, 999, 0, 0);
        assert_eq!(decided(&done, None, &paid(PaymentOutcome::Completed, "b1")), Decision::Unchanged, "same ref again");
        assert_eq!(decided(&done, None, &paid(PaymentOutcome::Declined, "b9")), Decision::Unchanged, "never backwards");
        let failed = Payment { status: PaymentStatus::Failed, ..unpaid(999) };
        assert_eq!(decided(&failed, None, &paid(PaymentOutcome::Completed, "b1")), Decision::Unchanged);
    }

    #[test]
    fn the_first_payment_starts_its_subscription() {
        let ready = Payment { provider_ref: None, paid_at: None, ..subscribed(PaymentStatus::Ready) };
        let sub = subscription(SubscriptionStatus::Pending, 0);
        let Decision::Settle { subscription: Some(change), .. } =
            decided(&ready, Some(&sub), &paid(PaymentOutcome::Completed, "b1"))
        else {
            panic!("settles and starts the subscription")
        };
        assert_eq!(
            (change.before.status, change.after.status),
            (SubscriptionStatus::Pending, SubscriptionStatus::Active)
        );
        // A review does not start it.
        let Decision::Settle { subscription, .. } =
            decided(&ready, Some(&sub), &paid(PaymentOutcome::ReviewStarted, "b1"))
        else {
            panic!("settles")
        };
        assert_eq!(subscription, None);
    }

    #[test]
    fn a_new_ref_on_a_paid_subscription_payment_is_a_renewal() {
        let sub = subscription(SubscriptionStatus::Active, 2);
        let initial = subscribed(PaymentStatus::Paid);
        let Decision::Renew { payment, kind, subscription: Some(change) } =
            decided(&initial, Some(&sub), &paid(PaymentOutcome::Completed, "b2"))
        else {
            panic!("renews")
        };
        assert_eq!(payment.merchant_uid, "~gold/renewal/3");
        assert_ne!(payment.payment_id, initial.payment_id);
        assert_eq!(
            (payment.status, payment.provider_ref.as_deref(), payment.paid_at),
            (PaymentStatus::Paid, Some("b2"), Some(50))
        );
        assert_eq!(
            (payment.amount_minor, payment.cancelled_amount, payment.pending_cancel_amount, payment.version),
            (999, 0, 0, 1)
        );
        assert_eq!((payment.subscription_id.as_deref(), kind), (Some("sub_1"), EventKind::PaymentPaid));
        assert_eq!((change.after.renewals, change.after.status), (3, SubscriptionStatus::Active));
        assert_eq!(change.after.last_renewal_payment_id.as_deref(), Some(payment.payment_id.as_str()));
        // A renewal under review waits for its 201.
        let Decision::Renew { payment, .. } = decided(&initial, Some(&sub), &paid(PaymentOutcome::ReviewStarted, "b2"))
        else {
            panic!("renews")
        };
        assert_eq!((payment.status, payment.paid_at), (PaymentStatus::PendingReview, None));
        // Its subscription row missing is a corrupt store, not a dropped payment.
        assert!(decide(&initial, None, &[], &paid(PaymentOutcome::Completed, "b2"), 50).is_err());
    }

    #[test]
    fn money_after_the_end_is_a_renewal_of_an_ended_subscription() {
        let ended = subscription(SubscriptionStatus::Cancelled, 2);
        let Decision::Renew { payment, subscription: Some(change), .. } =
            decided(&subscribed(PaymentStatus::Paid), Some(&ended), &paid(PaymentOutcome::Completed, "b9"))
        else {
            panic!("recorded, not dropped")
        };
        assert_eq!((payment.status, payment.merchant_uid.as_str()), (PaymentStatus::Paid, "~gold/renewal/3"));
        assert_eq!((change.after.status, change.after.renewals_after_end), (SubscriptionStatus::Cancelled, 1));
        assert_eq!(subscriptions::renewal_after_end(&change.before), Some(SubscriptionStatus::Cancelled));
    }

    #[test]
    fn a_new_ref_on_a_paid_one_time_payment_is_a_repeat() {
        let once = payment(PaymentStatus::PartialCancelled, 999, 100, 0);
        let Decision::Renew { payment, subscription, .. } =
            decided(&once, None, &paid(PaymentOutcome::Completed, "b77"))
        else {
            panic!("records the second payment")
        };
        assert_eq!((payment.merchant_uid.as_str(), payment.cancelled_amount), ("~order-1/repeat/b77", 0));
        assert_eq!(subscription, None);
    }

    #[test]
    fn a_subscription_ends_once() {
        let current = subscribed(PaymentStatus::Paid);
        let end = notice("b1", ProviderEvent::SubscriptionEnded(SubscriptionEnd::Cancelled));
        let live = subscription(SubscriptionStatus::Active, 1);
        let Decision::EndSubscription { payment: same, kind, subscription: change } =
            decided(&current, Some(&live), &end)
        else {
            panic!("ends")
        };
        assert_eq!((same, kind), (current.clone(), EventKind::SubscriptionCancelled), "the payment stays as it is");
        assert_eq!((change.after.status, change.after.ended_at), (SubscriptionStatus::Cancelled, Some(50)));
        let over = subscription(SubscriptionStatus::Expired, 1);
        assert_eq!(decided(&current, Some(&over), &end), Decision::Unchanged);
        let once = payment(PaymentStatus::Paid, 999, 0, 0);
        assert_eq!(decided(&once, None, &end), Decision::Unchanged, "no subscription to end");
    }

    #[test]
    fn a_reversal_that_overtook_its_completion_names_the_transaction() {
        let reversal =
            ReversalNotice { kind: ReversalKind::Chargeback, provider_reason: Some(2), description: "chargeback" };
        let n = Notice { test: true, ..notice("b5", ProviderEvent::Reversal(reversal)) };
        let Decision::Reverse(effect) = decided(&unpaid(999), None, &n) else { panic!("reverses") };
        assert_eq!((effect.next.provider_ref.as_deref(), effect.next.test), (Some("b5"), true));
        assert_eq!((effect.next.status, effect.next.cancelled_amount), (PaymentStatus::Cancelled, 999));
        assert_eq!((effect.completed.trigger, effect.completed.amount_minor), (Trigger::Chargeback, Some(999)));
        let gone = effect.next;
        assert_eq!(decided(&gone, None, &n), Decision::Unchanged, "reversed once");
    }

    #[test]
    fn a_refund_confirmation_settles_only_sent_requests() {
        let p = payment(PaymentStatus::CancelPending, 999, 0, 400);
        let open = |ticket| crate::payments::fixtures::refund_request(400, ticket, 0);
        let confirmed = notice("b1", ProviderEvent::RefundConfirmed);
        let Decision::Reverse(effect) = decide(&p, None, &[open(TicketState::Accepted)], &confirmed, 50).unwrap()
        else {
            panic!("confirms")
        };
        assert_eq!((effect.next.cancelled_amount, effect.next.pending_cancel_amount), (400, 0));
        assert_eq!((effect.next.status, effect.finish.len()), (PaymentStatus::PartialCancelled, 1));
        let unsent = decide(&p, None, &[open(TicketState::Unsent)], &confirmed, 50).unwrap();
        assert_eq!(unsent, Decision::Unchanged);
    }

    #[test]
    fn generated_ids_live_in_their_own_namespace() {
        assert_eq!(generated_merchant_uid("gold", Generated::Renewal(2)), "~gold/renewal/2");
        assert_eq!(generated_merchant_uid("order-1", Generated::Repeat("b77")), "~order-1/repeat/b77");
        // What a merchant can choose (no leading '~') is never what paygate generates.
        let merchant_chosen = "gold/renewal/2";
        assert_ne!(generated_merchant_uid("gold", Generated::Renewal(2)), merchant_chosen);
        assert!(generated_merchant_uid(merchant_chosen, Generated::Renewal(1)).starts_with(GENERATED_UID_PREFIX));
    }
}
