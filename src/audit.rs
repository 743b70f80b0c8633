//! The audit trail: who did what to which merchant's access or credentials, from where, and when.
//! Every entry is written in the transaction of the change it records, so a change without its
//! entry (or the reverse) cannot commit. Entries name changed fields, never their values.

use std::fmt;

use sqlx::AnyConnection;

use crate::store::{Db, StoreError, UnixMs};

/// What was done. The strings are the contract (`ListAuditEvents.action` filters on them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    MerchantCreated,
    SubMerchantCreated,
    ApiKeyCreated,
    ApiKeyRevoked,
    ApiAllowlistSet,
    ChannelCreated,
    ChannelUpdated,
    ChannelDeleted,
    WebhookEndpointSet,
    /// A new webhook signing secret; the previous one signs beside it for a grace period.
    WebhookSecretRotated,
    MasterKeyRotated,
    PaymentClientTokenIssued,
    /// A buyer's personal data was erased (EraseCustomer); the target is the erasure's id.
    CustomerErased,
}

impl Action {
    pub const ALL: [Action; 13] = [
        Self::MerchantCreated,
        Self::SubMerchantCreated,
        Self::ApiKeyCreated,
        Self::ApiKeyRevoked,
        Self::ApiAllowlistSet,
        Self::ChannelCreated,
        Self::ChannelUpdated,
        Self::ChannelDeleted,
        Self::WebhookEndpointSet,
        Self::WebhookSecretRotated,
        Self::MasterKeyRotated,
        Self::PaymentClientTokenIssued,
        Self::CustomerErased,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MerchantCreated => "merchant.created",
            Self::SubMerchantCreated => "sub_merchant.created",
            Self::ApiKeyCreated => "api_key.created",
            Self::ApiKeyRevoked => "api_key.revoked",
            Self::ApiAllowlistSet => "api_allowlist.set",
            Self::ChannelCreated => "channel.created",
            Self::ChannelUpdated => "channel.updated",
            Self::ChannelDeleted => "channel.deleted",
            Self::WebhookEndpointSet => "webhook_endpoint.set",
            Self::WebhookSecretRotated => "webhook_endpoint.secret_rotated",
            Self::MasterKeyRotated => "master_key.rotated",
            Self::PaymentClientTokenIssued => "payment_client_token.issued",
            Self::CustomerErased => "customer.erased",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who acted, and from which address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// "admin", "cli", or the id of the API key used.
    pub id: String,
    /// The caller's address as paygate resolved it; "local" for the CLI.
    pub address: String,
}

impl Actor {
    pub fn admin(address: impl fmt::Display) -> Self {
        Self { id: "admin".to_owned(), address: address.to_string() }
    }

    pub fn cli() -> Self {
        Self { id: "cli".to_owned(), address: "local".to_owned() }
    }

    pub fn api_key(key_id: &str, address: impl fmt::Display) -> Self {
        Self { id: key_id.to_owned(), address: address.to_string() }
    }
}

/// One entry to append.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub actor: &'a Actor,
    pub action: Action,
    /// The merchant concerned; `None` for deployment-wide actions.
    pub merchant_id: Option<&'a str>,
    pub target: &'a str,
    pub changed_fields: &'a [&'a str],
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub audit_id: String,
    pub merchant_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub changed_fields: Vec<String>,
    pub address: String,
    pub created_at: i64,
}

/// Ids sort in the order this process made them, even within one millisecond (a change that
/// writes two entries lists them in order).
fn next_id() -> ulid::Ulid {
    static GENERATOR: std::sync::Mutex<ulid::Generator> = std::sync::Mutex::new(ulid::Generator::new());
    let mut generator = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    generator.generate().unwrap_or_else(|_| ulid::Ulid::new())
}

/// Appends `entry` in the caller's transaction.
pub async fn record(conn: &mut AnyConnection, entry: &Entry<'_>, now: i64) -> Result<(), StoreError> {
    let fields = serde_json::to_string(entry.changed_fields).unwrap_or_else(|_| "[]".to_owned());
    sqlx::query(
        "INSERT INTO audit_events (audit_id, merchant_id, actor, action, target, changed_fields, address, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(format!("aud_{}", next_id()))
    .bind(entry.merchant_id)
    .bind(&entry.actor.id)
    .bind(entry.action.as_str())
    .bind(entry.target)
    .bind(fields)
    .bind(&entry.actor.address)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends `entry` on its own, for an action that changes nothing stored (issuing a client token).
pub async fn record_alone(db: &Db, entry: &Entry<'_>, now: i64) -> Result<(), StoreError> {
    let mut conn = db.pool().acquire().await?;
    record(&mut conn, entry, now).await
}

/// What `list` returns: newest first.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only entries about this merchant and its sub-merchants; `None`: every entry (admin).
    pub scope_of: Option<String>,
    /// Only entries about exactly this merchant.
    pub merchant_id: Option<String>,
    pub action: Option<Action>,
    pub from_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Page after this id (exclusive).
    pub before_id: Option<String>,
    pub limit: u32,
}

pub async fn list<'a>(db: &Db, filter: &'a ListFilter) -> Result<Vec<AuditEvent>, StoreError> {
    enum Arg<'a> {
        Text(&'a str),
        Int(i64),
    }
    let mut sql = String::from(
        "SELECT audit_id, merchant_id, actor, action, target, changed_fields, address, created_at \
         FROM audit_events WHERE 1 = 1",
    );
    let mut args: Vec<Arg<'a>> = Vec::new();
    // Each clause names its one argument `$n`, the next number.
    let mut clause = |sql: &mut String, template: &str, value: Arg<'a>| {
        args.push(value);
        sql.push_str(&template.replace("$n", &format!("${}", args.len())));
    };
    if let Some(scope) = &filter.scope_of {
        let template =
            " AND merchant_id IN (SELECT merchant_id FROM merchants WHERE merchant_id = $n OR parent_id = $n)";
        clause(&mut sql, template, Arg::Text(scope));
    }
    if let Some(merchant_id) = &filter.merchant_id {
        clause(&mut sql, " AND merchant_id = $n", Arg::Text(merchant_id));
    }
    if let Some(action) = filter.action {
        clause(&mut sql, " AND action = $n", Arg::Text(action.as_str()));
    }
    if let Some(before) = &filter.before_id {
        clause(&mut sql, " AND audit_id < $n", Arg::Text(before));
    }
    if let Some(from) = filter.from_ms {
        clause(&mut sql, " AND created_at >= $n", Arg::Int(from));
    }
    if let Some(until) = filter.until_ms {
        clause(&mut sql, " AND created_at < $n", Arg::Int(until));
    }
    sql.push_str(&format!(" ORDER BY audit_id DESC LIMIT {}", filter.limit.max(1)));
    let mut query = sqlx::query_as::<_, AuditRow>(&sql);
    for arg in args {
        query = match arg {
            Arg::Text(text) => query.bind(text),
            Arg::Int(int) => query.bind(int),
        };
    }
    let rows = query.fetch_all(db.pool()).await?;
    Ok(rows.into_iter().map(AuditEvent::from).collect())
}

/// An `audit_events` row as stored.
#[derive(sqlx::FromRow)]
struct AuditRow {
    audit_id: String,
    merchant_id: Option<String>,
    actor: String,
    action: String,
    target: String,
    /// A JSON array of field names.
    changed_fields: String,
    address: String,
    created_at: UnixMs,
}

impl From<AuditRow> for AuditEvent {
    fn from(row: AuditRow) -> Self {
        AuditEvent {
            audit_id: row.audit_id,
            merchant_id: row.merchant_id,
            actor: row.actor,
            action: row.action,
            target: row.target,
            // Written by `record` only; an unreadable list reads as none rather than hiding the entry.
            changed_fields: serde_json::from_str(&row.changed_fields).unwrap_or_default(),
            address: row.address,
            created_at: row.created_at.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_round_trip() {
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
        }
        assert_eq!(Action::parse("channel.stolen"), None);
    }
}
