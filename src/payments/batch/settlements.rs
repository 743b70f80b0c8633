//! Settling pingbacks in one statement each batch: a plain settlement decided from a copy of its
//! payment (this replica's own, kept since it wrote the payment, or read just now) and written by a
//! compare-and-set on the copy's version; and a batch's raw records and settlements in two
//! statements. Speed only: everything here falls back to the reading path.

use std::{collections::HashMap, sync::Arc};

use sqlx::AnyConnection;

use super::recent::RecentPayments;
use crate::{
    payments::{
        Payment, PaymentError,
        core::{
            EventKind,
            notification::{Decision, decide},
        },
        flows::notification::{self, Applied, Committable, NotificationError, Prepared},
        provider::{Notice, ProviderEvent, RawNotification},
        store::{
            changes::{self, Change, ChangeStatement},
            payments as rows,
            pingbacks::{self, RAW_RECORD_COLUMNS, RawRecordRow},
        },
    },
    store::{Db, now_ms},
};

/// Pingbacks settled by the one statement (the rest took the reading path): what the copies buy.
pub const SETTLED_IN_ONE_STATEMENT: &str = "paygate_pingbacks_settled_in_one_statement_total";

/// `flows::notification::ingest`, first trying this replica's copy of the payment; the payment it
/// moved is kept as a copy.
pub async fn ingest(db: &Db, recent: &RecentPayments, raw: &RawNotification, notice: &Notice) -> Committable {
    if let Some(Some(applied)) = settle_from_copies(db, recent, &[(raw, notice)]).await.pop() {
        return Ok(applied);
    }
    let result = notification::ingest(db, raw, notice).await;
    remember(recent, std::slice::from_ref(&result));
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
    let copies = copies_of(db, recent, batch).await;
    let now = now_ms();
    // (index in the batch, the payment as it is to be, its event)
    let mut settlements: Vec<(usize, Payment, EventKind)> = Vec::new();
    for (i, (raw, notice)) in batch.iter().enumerate() {
        if settlements.iter().any(|(_, next, _)| next.payment_id == notice.payment_id) {
            continue;
        }
        let copy = copies.get(notice.payment_id.as_str());
        if let Some((next, kind)) = copy.and_then(|copy| settlement_from_copy(copy, raw, notice, now)) {
            settlements.push((i, next, kind));
        }
    }
    if settlements.is_empty() {
        return results;
    }
    let changes: Vec<_> = settlements
        .iter()
        .map(|(_, next, kind)| Change { moves: true, payment: next, kind: *kind, detail: None })
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
    let mut moved = 0;
    for ((i, next, _), event_id) in settlements.into_iter().zip(found) {
        match event_id {
            Some(event_id) => {
                recent.wrote(&next);
                results[i] = Some(Applied::Changed { payment: Box::new(next), event_id, renewed_after_end: None });
                moved += 1;
            }
            None => recent.forget(&next.payment_id),
        }
    }
    if moved > 0 {
        metrics::counter!(SETTLED_IN_ONE_STATEMENT).increment(moved);
        db.signal_commit();
    }
    results
}

/// A copy of each payment the batch's payment notices name: this replica's own (it wrote it last),
/// or, for the rest, the row as one plain read finds it now (a pingback that reaches another
/// replica than the one that made its payment). Either may be stale: the statement's
/// compare-and-set on its version then writes nothing of it, and it takes the reading path.
async fn copies_of(
    db: &Db,
    recent: &RecentPayments,
    batch: &[(&RawNotification, &Notice)],
) -> HashMap<String, Arc<Payment>> {
    let mut copies = HashMap::new();
    let mut missing = Vec::new();
    for (_, notice) in batch.iter().filter(|(_, notice)| matches!(notice.event, ProviderEvent::Payment(_))) {
        match recent.get(&notice.payment_id) {
            Some(copy) => {
                copies.insert(notice.payment_id.clone(), copy);
            }
            None => missing.push(notice.payment_id.as_str()),
        }
    }
    match rows::get_many_by_id(db, &missing).await {
        Ok(read) => copies.extend(read.into_iter().map(|p| (p.payment_id.clone(), Arc::new(p)))),
        // Those take the reading path, which will say what is wrong.
        Err(error) => tracing::debug!(%error, "payments for one-statement settlements could not be read"),
    }
    copies
}

/// What `copy` (of the payment `notice` names) says the notice does, when that is a plain settlement.
fn settlement_from_copy(
    copy: &Payment,
    raw: &RawNotification,
    notice: &Notice,
    now: i64,
) -> Option<(Payment, EventKind)> {
    if !matches!(notice.event, ProviderEvent::Payment(_)) {
        return None;
    }
    // As `read` checks: a notification signed with one channel's secret touches only its payments.
    if copy.channel_key != raw.channel_key || copy.subscription_id.is_some() {
        return None;
    }
    match decide(copy, None, &[], notice, now) {
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
    changes: &[Change<'_>],
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
    let statement = ChangeStatement::new(changes, &also)?;
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

/// PostgreSQL: `ingest_in` for a batch of notifications that are distinct and name distinct
/// payments, in two statements for the most common kind: one stores every raw record and reads
/// every payment; after the decisions, one moves every payment that simply settles, with its
/// event and webhook. Any other decision is written on its own.
pub async fn ingest_all_in(
    conn: &mut AnyConnection,
    batch: &[(&RawNotification, &Notice)],
) -> Result<Vec<Committable>, NotificationError> {
    let recorded = pingbacks::record_deliveries(conn, batch).await?;
    let mut results: Vec<Option<Committable>> = batch.iter().map(|_| None).collect();
    let mut seens = Vec::with_capacity(batch.len());
    let mut settlements = Vec::new();
    for (i, (&(raw, notice), (seen, payment))) in batch.iter().zip(recorded).enumerate() {
        seens.push(seen);
        match notification::prepare(conn, raw, notice, seen, payment).await? {
            Prepared::Answer(answer) => results[i] = Some(answer),
            Prepared::Write(decision) => match *decision {
                Decision::Settle { next, kind, subscription: None } => settlements.push((i, next, kind)),
                decision => results[i] = Some(Ok(notification::write(conn, decision).await?)),
            },
        }
    }
    let changes: Vec<_> = settlements
        .iter()
        .map(|(_, next, kind)| Change { moves: true, payment: next, kind: *kind, detail: None })
        .collect();
    let event_ids = changes::record_all(conn, &changes).await?;
    for ((i, next, _), event_id) in settlements.into_iter().zip(event_ids) {
        let event_id = event_id.ok_or(NotificationError::Concurrent)?;
        results[i] = Some(Ok(Applied::Changed { payment: Box::new(next), event_id, renewed_after_end: None }));
    }
    for (i, &(raw, _)) in batch.iter().enumerate() {
        if matches!(results[i], Some(Ok(_))) {
            notification::applied_after_all(conn, raw, seens[i]).await?;
        }
    }
    results
        .into_iter()
        .map(|r| r.ok_or_else(|| PaymentError::Corrupt("a notification of a batch got no result".into()).into()))
        .collect()
}
