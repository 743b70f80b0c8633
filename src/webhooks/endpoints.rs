//! A merchant's webhook endpoint: URL, the event types it wants, and its signing secrets
//! (encrypted at rest under the master key, like channel secrets). Setting the endpoint again
//! makes a new secret; the previous one keeps signing for a rotation window, so receivers can
//! switch over without losing a delivery.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use super::{WebhookError, signature};
use crate::{
    audit::{self, Action, Actor},
    secrets::MasterKeys,
    store::{Db, UnixMs, now_ms},
    validation::{self, InvalidArgument, Violations},
};

/// Every event type paygate sends; `payment.*` and `subscription.*` select a family.
pub const EVENT_TYPES: [&str; 14] = [
    "payment.paid",
    "payment.pending_review",
    "payment.failed",
    "payment.cancel_pending",
    "payment.partially_cancelled",
    "payment.cancelled",
    "subscription.cancel_requested",
    "subscription.cancelled",
    "subscription.expired",
    "subscription.payment_failed",
    "customer.erased",
    "payment.synced",
    "payment.delivery_updated",
    "webhook.test",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredSecret {
    ciphertext: String,
    created_at: i64,
    expires_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub merchant_id: String,
    pub url: String,
    pub event_types: Vec<String>,
    secrets: Vec<StoredSecret>,
    pub disabled_at: Option<i64>,
    pub disabled_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

fn aad(merchant_id: &str) -> String {
    format!("webhook:{merchant_id}")
}

impl Endpoint {
    pub fn wants(&self, event_type: &str) -> bool {
        self.event_types.is_empty()
            || self
                .event_types
                .iter()
                .any(|t| t == event_type || t.strip_suffix('*').is_some_and(|family| event_type.starts_with(family)))
    }

    /// Secrets that sign now: the newest, and the previous one until its rotation window ends.
    pub fn active_secrets(&self, keys: &MasterKeys, now: i64) -> Result<Vec<SecretString>, WebhookError> {
        self.secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|at| at > now))
            .map(|s| keys.decrypt(&aad(&self.merchant_id), &s.ciphertext).map_err(WebhookError::from))
            .collect()
    }

    pub fn active_secret_count(&self, now: i64) -> usize {
        self.secrets.iter().filter(|s| s.expires_at.is_none_or(|at| at > now)).count()
    }

    /// When the previous secret stops signing, during a rotation.
    pub fn previous_secret_expires_at(&self, now: i64) -> Option<i64> {
        self.secrets.iter().filter_map(|s| s.expires_at).filter(|at| *at > now).max()
    }
}

/// Checks an endpoint as given; returns its URL as stored (normalised).
pub fn validate(url: &str, event_types: &[String], allow_internal: bool) -> Result<String, InvalidArgument> {
    let mut v = Violations::default();
    let normalised =
        match crate::net::egress::check_url_naming(url, allow_internal, "PAYGATE_WEBHOOK_ALLOW_PRIVATE_TARGETS") {
            Ok(u) => u.into(),
            Err(problem) => {
                v.add("url", problem);
                String::new()
            }
        };
    if validation::count(&mut v, "event_types", event_types.len(), validation::MAX_EVENT_TYPES) {
        for (i, t) in event_types.iter().enumerate() {
            let field = format!("event_types[{i}]");
            let known = EVENT_TYPES.contains(&t.as_str()) || t == "payment.*" || t == "subscription.*";
            // An unknown type is quoted in the answer: only once it is known to be short and printable.
            if !known && validation::text(&mut v, &field, t, validation::MAX_ENTRY) {
                v.add(
                    field,
                    format!("unknown event type {t:?} (known: {}, payment.*, subscription.*)", EVENT_TYPES.join(", ")),
                );
            }
        }
    }
    v.check()?;
    Ok(normalised)
}

/// Creates or replaces the endpoint with a new secret; returns it and the secret (shown once).
pub async fn set(
    db: &Db,
    keys: &MasterKeys,
    actor: &Actor,
    merchant_id: &str,
    url: &str,
    event_types: Vec<String>,
    rotation_overlap_ms: i64,
) -> Result<(Endpoint, String), WebhookError> {
    let now = now_ms();
    let secret = signature::new_secret();
    let mut secrets = vec![StoredSecret {
        ciphertext: keys.encrypt(&aad(merchant_id), &SecretString::from(secret.clone())),
        created_at: now,
        expires_at: None,
    }];
    let mut conn = db.pool().begin().await?;
    let existing = get(&mut conn, merchant_id).await?;
    if let Some(previous) = existing.as_ref().and_then(|e| e.secrets.first()) {
        secrets.push(StoredSecret { expires_at: Some(now + rotation_overlap_ms), ..previous.clone() });
    }
    let secrets_json = serde_json::to_string(&secrets).map_err(|e| WebhookError::Corrupt(e.to_string()))?;
    let types_json = serde_json::to_string(&event_types).map_err(|e| WebhookError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO webhook_endpoints (merchant_id, url, event_types, secrets, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (merchant_id) DO UPDATE SET url = $2, event_types = $3, \
         secrets = $4, disabled_at = NULL, disabled_reason = NULL, updated_at = $5",
    )
    .bind(merchant_id)
    .bind(url)
    .bind(types_json)
    .bind(secrets_json)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let endpoint = get(&mut conn, merchant_id).await?.ok_or(WebhookError::NotFound)?;
    let entry = audit::Entry {
        actor,
        action: Action::WebhookEndpointSet,
        merchant_id: Some(merchant_id),
        target: merchant_id,
        changed_fields: &["url", "event_types", "signing_secret"],
    };
    audit::record(&mut conn, &entry, now).await?;
    conn.commit().await?;
    Ok((endpoint, secret))
}

/// A new secret for the merchant's endpoint; the current one keeps signing until `now + grace_ms`
/// (any older one stops). Returns the endpoint and the new secret (shown once).
pub async fn rotate(
    db: &Db,
    keys: &MasterKeys,
    actor: &Actor,
    merchant_id: &str,
    grace_ms: i64,
) -> Result<(Endpoint, String), WebhookError> {
    let now = now_ms();
    let mut conn = db.pool().begin().await?;
    let current = get(&mut conn, merchant_id).await?.ok_or(WebhookError::NotFound)?;
    let secret = signature::new_secret();
    let mut secrets = vec![StoredSecret {
        ciphertext: keys.encrypt(&aad(merchant_id), &SecretString::from(secret.clone())),
        created_at: now,
        expires_at: None,
    }];
    if let Some(signing) = current.secrets.iter().find(|s| s.expires_at.is_none_or(|at| at > now)) {
        secrets.push(StoredSecret { expires_at: Some(now + grace_ms), ..signing.clone() });
    }
    let secrets_json = serde_json::to_string(&secrets).map_err(|e| WebhookError::Corrupt(e.to_string()))?;
    sqlx::query("UPDATE webhook_endpoints SET secrets = $1, updated_at = $2 WHERE merchant_id = $3")
        .bind(secrets_json)
        .bind(now)
        .bind(merchant_id)
        .execute(&mut *conn)
        .await?;
    let endpoint = get(&mut conn, merchant_id).await?.ok_or(WebhookError::NotFound)?;
    let entry = audit::Entry {
        actor,
        action: Action::WebhookSecretRotated,
        merchant_id: Some(merchant_id),
        target: merchant_id,
        changed_fields: &["signing_secret"],
    };
    audit::record(&mut conn, &entry, now).await?;
    conn.commit().await?;
    Ok((endpoint, secret))
}

pub async fn get(conn: &mut AnyConnection, merchant_id: &str) -> Result<Option<Endpoint>, WebhookError> {
    let row = sqlx::query_as::<_, EndpointRow>(
        "SELECT merchant_id, url, event_types, secrets, disabled_at, disabled_reason, created_at, updated_at \
         FROM webhook_endpoints WHERE merchant_id = $1",
    )
    .bind(merchant_id)
    .fetch_optional(conn)
    .await?;
    row.map(Endpoint::try_from).transpose()
}

/// The endpoint that receives a merchant's events: its own, else its parent's (one query: this
/// runs in every event's transaction).
pub async fn for_merchant(conn: &mut AnyConnection, merchant_id: &str) -> Result<Option<Endpoint>, WebhookError> {
    let row = sqlx::query_as::<_, EndpointRow>(
        "SELECT merchant_id, url, event_types, secrets, disabled_at, disabled_reason, created_at, updated_at \
         FROM webhook_endpoints WHERE merchant_id = $1 \
         OR merchant_id = (SELECT parent_id FROM merchants WHERE merchant_id = $1) \
         ORDER BY CASE WHEN merchant_id = $1 THEN 0 ELSE 1 END LIMIT 1",
    )
    .bind(merchant_id)
    .fetch_optional(conn)
    .await?;
    row.map(Endpoint::try_from).transpose()
}

pub async fn disable(db: &Db, merchant_id: &str, reason: &str) -> Result<(), WebhookError> {
    sqlx::query(
        "UPDATE webhook_endpoints SET disabled_at = $1, disabled_reason = $2, updated_at = $1 WHERE merchant_id = $3",
    )
    .bind(now_ms())
    .bind(reason)
    .bind(merchant_id)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// A `webhook_endpoints` row as stored.
#[derive(sqlx::FromRow)]
struct EndpointRow {
    merchant_id: String,
    url: String,
    /// A JSON array of event types (empty: every type).
    event_types: String,
    /// A JSON array of `StoredSecret`, newest first.
    secrets: String,
    disabled_at: Option<UnixMs>,
    disabled_reason: Option<String>,
    created_at: UnixMs,
    updated_at: UnixMs,
}

impl TryFrom<EndpointRow> for Endpoint {
    type Error = WebhookError;

    fn try_from(row: EndpointRow) -> Result<Self, WebhookError> {
        let corrupt = |col: &str, e: serde_json::Error| WebhookError::Corrupt(format!("webhook_endpoints.{col}: {e}"));
        Ok(Endpoint {
            merchant_id: row.merchant_id,
            url: row.url,
            event_types: serde_json::from_str(&row.event_types).map_err(|e| corrupt("event_types", e))?,
            secrets: serde_json::from_str(&row.secrets).map_err(|e| corrupt("secrets", e))?,
            disabled_at: row.disabled_at.map(i64::from),
            disabled_reason: row.disabled_reason,
            created_at: row.created_at.into(),
            updated_at: row.updated_at.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(types: &[&str]) -> Endpoint {
        Endpoint {
            merchant_id: "m".into(),
            url: "https://x".into(),
            event_types: types.iter().map(|t| t.to_string()).collect(),
            secrets: vec![],
            disabled_at: None,
            disabled_reason: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn subscriptions_select_types_and_families() {
        assert!(endpoint(&[]).wants("payment.paid"));
        assert!(endpoint(&["payment.*"]).wants("payment.cancelled"));
        assert!(!endpoint(&["payment.*"]).wants("subscription.cancelled"));
        assert!(endpoint(&["payment.paid"]).wants("payment.paid"));
        assert!(!endpoint(&["payment.paid"]).wants("payment.failed"));
    }

    #[test]
    fn unknown_event_types_are_named() {
        let err = validate("https://example.com/h", &["payment.paid".into(), "payment.teleported".into()], false)
            .unwrap_err();
        assert_eq!(err.0.iter().map(|v| v.field.as_str()).collect::<Vec<_>>(), ["event_types[1]"]);
    }

    proptest::proptest! {
        #[test]
        fn any_endpoint_text_is_refused_by_name(url in "\\PC{0,3}[\\x00-\\x1f\\x7f ]?\\PC{0,3}|https://[a-z]{1,8}\\.example/.{0,20}", event in ".{0,80}") {
            match validate(&url, std::slice::from_ref(&event), false) {
                Err(e) => {
                    proptest::prop_assert!(e.0.iter().all(|x| !x.field.is_empty()));
                    proptest::prop_assert!(e.to_string().len() < 1000, "{e}");
                }
                Ok(stored) => {
                    proptest::prop_assert!(!stored.chars().any(|c| c.is_control() || c.is_whitespace()), "{stored:?}");
                }
            }
            if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
                let e = validate(&url, &[], false).unwrap_err();
                proptest::prop_assert!(e.0.iter().any(|x| x.field == "url"));
            }
        }
    }
}
