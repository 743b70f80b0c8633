//! `paygate dev seed`: fills a PostgreSQL database with a year of a busy deployment (merchants and
//! sub-merchants, their channels, payments in a realistic mix of lives, their events, refunds,
//! subscriptions and raw pingbacks), by COPY, for measuring paygate at size (BENCHMARKS.md, the
//! large-database table). Rows are made here as paygate would have written them (snapshots are
//! the payments as they were after each change), dated over the past year, in chunks of their own
//! transactions, so the event log has a realistic spread of positions.

use std::{collections::BTreeMap, time::Instant};

use clap::Args;
use paygate::{
    payments::{
        Payment, PaymentStatus,
        core::{EventKind, money::MinorUnits},
    },
    personal::Email,
};
use sqlx::{Connection, PgConnection};

#[derive(Args)]
pub struct SeedArgs {
    /// How many payments (renewals of subscriptions among them).
    #[arg(long, default_value_t = 10_000_000)]
    payments: u64,
    /// Top-level merchants; each has four sub-merchants, and every merchant a channel.
    #[arg(long, default_value_t = 20)]
    merchants: u64,
    /// Payments per COPY transaction.
    #[arg(long, default_value_t = 20_000)]
    chunk: u64,
}

const DAY: i64 = 86_400_000;

/// A payment's life: the status it ends in, the events it wrote, and what it left beside them.
struct Life {
    status: PaymentStatus,
    /// Each event's kind, with the status after it and the amount refunded by then.
    events: Vec<(EventKind, PaymentStatus, i64)>,
    /// A refund or chargeback: (amount, trigger).
    cancellation: Option<(i64, &'static str)>,
    subscription: Option<&'static str>,
}

/// The mix, by a hash of the payment's number: 8% abandoned checkouts, 7% declined, 55% paid (8%
/// of all after a risk review), 8% refunded in part, 7% in full, 2% charged back, 13% subscriptions
/// (a third of them stopped since).
fn life(n: u64, amount: i64) -> Life {
    use EventKind as K;
    use PaymentStatus as S;
    let r = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 57; // 0..127
    let r = r * 100 / 128;
    let paid = (K::PaymentPaid, S::Paid, 0);
    let (status, events, cancellation, subscription) = match r {
        0..8 => (S::Ready, vec![], None, None),
        8..15 => (S::Failed, vec![(K::PaymentFailed, S::Failed, 0)], None, None),
        15..62 => (S::Paid, vec![paid], None, None),
        62..70 => (S::Paid, vec![(K::PaymentPendingReview, S::PendingReview, 0), paid], None, None),
        70..78 => {
            let part = amount * 3 / 10;
            let events = vec![
                paid,
                (K::PaymentCancelPending, S::CancelPending, 0),
                (K::PaymentPartiallyCancelled, S::PartialCancelled, part),
            ];
            (S::PartialCancelled, events, Some((part, "MERCHANT_REQUEST")), None)
        }
        78..85 => {
            let events =
                vec![paid, (K::PaymentCancelPending, S::CancelPending, 0), (K::PaymentCancelled, S::Cancelled, amount)];
            (S::Cancelled, events, Some((amount, "MERCHANT_REQUEST")), None)
        }
        85..87 => {
            (S::Cancelled, vec![paid, (K::PaymentCancelled, S::Cancelled, amount)], Some((amount, "CHARGEBACK")), None)
        }
        _ if r.is_multiple_of(3) => {
            let events =
                vec![paid, (K::SubscriptionCancelRequested, S::Paid, 0), (K::SubscriptionCancelled, S::Paid, 0)];
            (S::Paid, events, None, Some("CANCELLED"))
        }
        _ => (S::Paid, vec![paid], None, Some("ACTIVE")),
    };
    Life { status, events, cancellation, subscription }
}

/// COPY's text format: tab-separated, `\N` for NULL, backslash escapes.
#[derive(Default)]
struct Copy(String);

impl Copy {
    fn text(&mut self, value: &str) -> &mut Self {
        for c in value.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '\t' => self.0.push_str("\\t"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                c => self.0.push(c),
            }
        }
        self.0.push('\t');
        self
    }

    fn opt(&mut self, value: Option<impl ToString>) -> &mut Self {
        match value {
            Some(v) => self.text(&v.to_string()),
            None => {
                self.0.push_str("\\N\t");
                self
            }
        }
    }

    fn int(&mut self, value: i64) -> &mut Self {
        self.text(&value.to_string())
    }

    fn end(&mut self) {
        self.0.pop();
        self.0.push('\n');
    }
}

/// The rows of one chunk of payments, in COPY text, table by table.
#[derive(Default)]
struct Chunk {
    payments: Copy,
    events: Copy,
    cancellations: Copy,
    subscriptions: Copy,
    pingbacks: Copy,
    event_count: u64,
}

struct World {
    total: u64,
    start: i64,
    merchants: Vec<(String, String)>,
}

impl World {
    fn payment(&self, n: u64) -> Payment {
        let created_at = self.start + (n as i64) * (365 * DAY) / (self.total as i64);
        let (merchant_id, channel_key) = self.merchants[(n as usize * 7) % self.merchants.len()].clone();
        let customer = n % (self.total / 3).max(1);
        let amount = 500 + (n.wrapping_mul(7919) % 20_000) as i64;
        let uid = format!("cust-{customer}");
        let email = format!("buyer{customer}@example.com");
        let redirect_url = format!(
            "https://api.paymentwall.com/api/subscription?key=c22f895840bf2391f67a40da64bfed26&uid={uid}&widget=p1_1\
             &amount={}.{:02}&currencyCode=USD&ag_name=Order&ag_external_id=pay_{n}&ag_type=fixed&email={}\
             &success_url=https%3A%2F%2Fshop.example%2Fthanks&sign_version=3&sign={:064x}",
            amount / 100,
            amount % 100,
            email.replace('@', "%40"),
            n
        );
        Payment {
            payment_id: format!("pay_{}", ulid::Ulid::from_parts(created_at as u64, u128::from(n))),
            merchant_id,
            channel_key,
            merchant_uid: format!("order-{n}"),
            amount_minor: MinorUnits(amount),
            currency: "USD".into(),
            order_name: "Order".into(),
            customer_uid: uid,
            customer_email: Email::new(email),
            payment_method: "all".into(),
            widget: "p1_1".into(),
            success_url: "https://shop.example/thanks".into(),
            failure_url: String::new(),
            country_code: "US".into(),
            language: "en".into(),
            custom_params: BTreeMap::new(),
            status: PaymentStatus::Ready,
            provider_ref: None,
            test: n.is_multiple_of(10),
            redirect_url,
            subscription_id: None,
            cancelled_amount: MinorUnits(0),
            pending_cancel_amount: MinorUnits(0),
            version: 1,
            created_at,
            updated_at: created_at,
            paid_at: None,
            failed_at: None,
            cancelled_at: None,
        }
    }

    fn chunk(&self, from: u64, to: u64) -> Chunk {
        let mut c = Chunk::default();
        for n in from..to {
            let mut p = self.payment(n);
            let life = life(n, p.amount_minor.0);
            let mut at = p.created_at + 60_000;
            if life.status != PaymentStatus::Ready {
                p.provider_ref = Some(format!("b{n}"));
            }
            if life.subscription.is_some() {
                p.subscription_id = Some(format!("sub_{}", ulid::Ulid::from_parts(p.created_at as u64, u128::from(n))));
            }
            for (kind, status, refunded) in &life.events {
                p.status = *status;
                p.cancelled_amount = MinorUnits(*refunded);
                p.version += 1;
                p.updated_at = at;
                match kind {
                    EventKind::PaymentPaid => p.paid_at = Some(at),
                    EventKind::PaymentFailed => p.failed_at = Some(at),
                    EventKind::PaymentCancelled | EventKind::PaymentPartiallyCancelled => p.cancelled_at = Some(at),
                    _ => {}
                }
                let snapshot = serde_json::to_string(&p).unwrap_or_default();
                c.events.text(&p.payment_id).text(&p.merchant_id).text(kind.as_str()).text(p.status.as_str());
                c.events.text(&snapshot).opt(None::<String>).int(at).end();
                c.event_count += 1;
                at += 3_600_000;
            }
            p.status = life.status;
            let row = &mut c.payments;
            row.text(&p.payment_id).text(&p.merchant_id).text(&p.channel_key).text(&p.merchant_uid);
            row.int(p.amount_minor.0).text(&p.currency).text(&p.order_name).text(&p.customer_uid);
            row.text(p.customer_email.expose()).text(&p.payment_method).text(&p.widget).text(&p.success_url);
            row.text(&p.failure_url).text(&p.country_code).text(&p.language).text("{}").text(p.status.as_str());
            row.opt(p.provider_ref.as_deref()).int(i64::from(p.test)).text(&p.redirect_url);
            row.opt(p.subscription_id.as_deref()).int(p.cancelled_amount.0).int(0).int(p.version);
            row.int(p.created_at).int(p.updated_at).opt(p.paid_at).opt(p.failed_at).opt(p.cancelled_at).end();
            if let Some((amount, trigger)) = life.cancellation {
                let row = &mut c.cancellations;
                row.text(&format!("can_{}", ulid::Ulid::from_parts(at as u64, u128::from(n))));
                row.text(&p.payment_id).text(&p.merchant_id).int(amount).text("refund").text(trigger);
                row.text("SUCCEEDED").opt(Some(if trigger == "CHARGEBACK" { 1 } else { 9 })).opt(None::<String>);
                row.int(at).int(at).opt(Some(at)).end();
            }
            if let (Some(status), Some(id)) = (life.subscription, &p.subscription_id) {
                let ended = (status == "CANCELLED").then_some(at);
                let row = &mut c.subscriptions;
                row.text(id).text(&p.merchant_id).text(&p.channel_key).text(&p.payment_id).text(&p.customer_uid);
                row.int(1).text("month").int(1).text(status).int(0).int(0).opt(None::<String>).opt(None::<i64>);
                row.opt(p.paid_at).opt(ended).opt(ended).int(p.created_at).int(at).end();
            }
            if let Some(reference) = &p.provider_ref {
                let kind = if life.cancellation.is_some() { 2 } else { 0 };
                let query = format!(
                    "uid={}&goodsid={}&slength=&speriod=&type={kind}&ref={reference}&is_test={}&sign_version=3&sig={:064x}",
                    p.customer_uid,
                    p.payment_id,
                    i64::from(p.test),
                    n
                );
                let row = &mut c.pingbacks;
                row.text(&format!("pb_{}", ulid::Ulid::from_parts(at as u64, u128::from(n))));
                row.text(&p.channel_key).text(reference).int(kind).text("").text(&query).text("applied");
                row.text(&p.payment_id).int(at).int(at).int(1).end();
            }
        }
        c
    }
}

async fn copy(conn: &mut PgConnection, table: &str, columns: &str, rows: &Copy) -> Result<(), sqlx::Error> {
    if rows.0.is_empty() {
        return Ok(());
    }
    let mut copy = conn.copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN")).await?;
    for piece in rows.0.as_bytes().chunks(1 << 20) {
        copy.send(piece).await?;
    }
    copy.finish().await?;
    Ok(())
}

pub async fn run(url: &str, args: SeedArgs) -> Result<(), String> {
    if !url.starts_with("postgres") {
        return Err("paygate dev seed fills PostgreSQL only (it uses COPY); set PAYGATE_DATABASE_URL".into());
    }
    let started = Instant::now();
    let mut conn = PgConnection::connect(url).await.map_err(|e| e.to_string())?;
    let now = paygate::store::now_ms();
    let mut merchants = Vec::new();
    let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
    for top in 0..args.merchants {
        for sub in 0..5 {
            let id = if sub == 0 { format!("mer_seed_{top:03}") } else { format!("mer_seed_{top:03}_{sub}") };
            let parent = (sub > 0).then(|| format!("mer_seed_{top:03}"));
            sqlx::query("INSERT INTO merchants (merchant_id, name, parent_id, created_at) VALUES ($1, $1, $2, $3)")
                .bind(&id)
                .bind(parent.as_deref())
                .bind(now - 400 * DAY)
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
            let channel = format!("seed_{}", id.trim_start_matches("mer_seed_"));
            sqlx::query(
                "INSERT INTO channels (channel_key, merchant_id, owner_id, name, provider, mode, settings, secrets, \
                 version, created_at, updated_at) VALUES ($1, $2, $3, $1, 'paymentwall', $4, '{}', '{}', 1, $5, $5)",
            )
            .bind(&channel)
            .bind(&id)
            .bind(parent.as_deref().unwrap_or(&id))
            .bind(if top % 2 == 0 { "LIVE" } else { "TEST" })
            .bind(now - 400 * DAY)
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
            merchants.push((id, channel));
        }
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    let world = World { total: args.payments, start: now - 366 * DAY, merchants };
    let chunk_size = args.chunk.max(1);
    let total = args.payments;
    let (mut done, mut events) = (0_u64, 0_u64);
    while done < total {
        let to = (done + chunk_size).min(total);
        let chunk = world.chunk(done, to);
        copy(&mut conn, "payments", PAYMENT_COLUMNS, &chunk.payments).await.map_err(|e| e.to_string())?;
        copy(&mut conn, "cancellations", COLUMNS_CANCELLATIONS, &chunk.cancellations)
            .await
            .map_err(|e| e.to_string())?;
        copy(&mut conn, "subscriptions", COLUMNS_SUBSCRIPTIONS, &chunk.subscriptions)
            .await
            .map_err(|e| e.to_string())?;
        copy(&mut conn, "pingbacks", COLUMNS_PINGBACKS, &chunk.pingbacks).await.map_err(|e| e.to_string())?;
        copy(&mut conn, "payment_events", COLUMNS_EVENTS, &chunk.events).await.map_err(|e| e.to_string())?;
        done = to;
        events += chunk.event_count;
        if done % (chunk_size * 20) == 0 || done == total {
            eprintln!("paygate dev seed: {done} payments, {events} events ({:.0} s)", started.elapsed().as_secs_f64());
        }
    }
    sqlx::query("ANALYZE").execute(&mut conn).await.map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::json!({
            "payments": total,
            "events": events,
            "merchants": args.merchants * 5,
            "seconds": started.elapsed().as_secs_f64().round(),
        })
    );
    Ok(())
}

/// The payments' columns as paygate's store names them; the rows are written in that order.
const PAYMENT_COLUMNS: &str = paygate::payments::store::payments::COLUMNS;
const COLUMNS_CANCELLATIONS: &str = "cancellation_id, payment_id, merchant_id, amount_minor, reason, trigger, status, \
     provider_reason, failure, created_at, updated_at, completed_at";
const COLUMNS_SUBSCRIPTIONS: &str = "subscription_id, merchant_id, channel_key, initial_payment_id, customer_uid, \
     period_length, period_type, recurring, status, renewals, renewals_after_end, last_renewal_payment_id, \
     last_renewal_at, started_at, cancel_requested_at, ended_at, created_at, updated_at";
const COLUMNS_PINGBACKS: &str = "pingback_id, channel_key, ref, type, unique_ref, query, outcome, payment_id, \
     received_at, last_seen_at, deliveries";
const COLUMNS_EVENTS: &str = "payment_id, merchant_id, kind, status, snapshot, detail, created_at";
