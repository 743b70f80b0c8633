//! Paymentwall's server APIs (docs/paymentwall.md sections 4, 5 and 7): the Cancellation API (tickets),
//! Payment Systems, Payment Status and Delivery Confirmation. Every request but the last is signed
//! like a widget call; a delivery report carries the secret key in a header instead.

use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{config::PaymentwallConfig, signature::sign_request};
use crate::providers::{
    Delivery, PaymentMethod, ProviderError, ProviderHttp, RemotePayment, RemoteState, RemoteSubscription,
};

/// Cancellation ticket types.
#[derive(Debug, Clone, Copy)]
pub enum TicketType {
    Refund = 1,
    StopRecurring = 2,
}

/// Signs `params` (adding `sign_version` and `sign`).
fn signed(config: &PaymentwallConfig, mut params: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    params.push(("sign_version", config.sign_version.number().to_string()));
    let sign = sign_request(
        config.sign_version,
        params.iter().map(|(k, v)| (*k, v.as_str())),
        config.secret_key.expose_secret(),
    );
    params.push(("sign", sign));
    params
}

/// A failed call: `Unreachable` only when the request cannot have arrived (no connection);
/// anything later (a timeout, a broken answer) leaves the outcome unknown.
fn unreachable(e: reqwest::Error) -> ProviderError {
    if e.is_connect() {
        ProviderError::Unreachable("connection failed".to_owned())
    } else if e.is_timeout() {
        ProviderError::BadAnswer("timed out waiting for the answer".to_owned())
    } else {
        ProviderError::BadAnswer("the request failed after it was sent".to_owned())
    }
}

/// Sends a request carrying the current trace context; returns the status and body.
async fn exchange(
    http: &ProviderHttp,
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, String), ProviderError> {
    let (client, request) = request.headers(crate::telemetry::outgoing_trace_headers()).build_split();
    let request = request.map_err(unreachable)?;
    // Checked on every call, not only when the channel was stored: the rule may have changed
    // since, and a literal address never reaches the resolver that filters names.
    http.check_url(request.url().as_str())
        .map_err(|e| ProviderError::Unreachable(format!("the channel's api_base_url {e}")))?;
    let response = client.execute(request).await.map_err(unreachable)?;
    let status = response.status();
    let body = response.text().await.map_err(unreachable)?;
    Ok((status, body))
}

#[derive(Deserialize)]
struct TicketAnswer {
    result: i64,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

/// A Cancellation API ticket about one transaction.
pub struct Ticket<'a> {
    pub kind: TicketType,
    /// The transaction (Paymentwall's `ref`) and its buyer (`uid`; empty once erased: the API
    /// takes `ref` and/or `uid`).
    pub provider_ref: &'a str,
    pub uid: &'a str,
    pub message: &'a str,
    /// A test transaction (`test_mode=1`).
    pub test: bool,
}

/// The signed form of a Cancellation API ticket.
fn ticket_form(config: &PaymentwallConfig, ticket: &Ticket<'_>) -> Vec<(&'static str, String)> {
    let mut params = vec![
        ("key", config.project_key.clone()),
        ("ref", ticket.provider_ref.to_owned()),
        ("type", (ticket.kind as u8).to_string()),
        ("message", ticket.message.to_owned()),
    ];
    if !ticket.uid.is_empty() {
        params.push(("uid", ticket.uid.to_owned()));
    }
    if ticket.test {
        params.push(("test_mode", "1".to_owned()));
    }
    signed(config, params)
}

#[tracing::instrument(name = "paymentwall.ticket", skip_all, fields(otel.kind = "client", provider_ref = %ticket.provider_ref))]
pub async fn send_ticket(
    http: &ProviderHttp,
    config: &PaymentwallConfig,
    ticket: &Ticket<'_>,
) -> Result<(), ProviderError> {
    let form = ticket_form(config, ticket);
    let url = format!("{}/developers/api/ticket", config.api_base_url);
    let (status, body) = exchange(http, http.client().post(url).form(&form)).await?;
    let answer: TicketAnswer = serde_json::from_str(&body)
        .map_err(|_| ProviderError::BadAnswer(format!("HTTP {status}, not a ticket answer")))?;
    if answer.result == 1 {
        return Ok(());
    }
    let errors: Vec<String> =
        answer.errors.iter().map(|e| e.as_str().map(str::to_owned).unwrap_or_else(|| e.to_string())).collect();
    Err(ProviderError::Refused(if errors.is_empty() { "no reason given".to_owned() } else { errors.join("; ") }))
}

#[derive(Deserialize)]
struct PaymentSystem {
    id: String,
    name: String,
    #[serde(default)]
    img_url: String,
}

fn payment_systems_query(config: &PaymentwallConfig, country_code: &str) -> Vec<(&'static str, String)> {
    signed(config, vec![("key", config.project_key.clone()), ("country_code", country_code.to_owned())])
}

#[tracing::instrument(name = "paymentwall.payment_systems", skip_all, fields(otel.kind = "client", country_code = %country_code))]
pub async fn payment_systems(
    http: &ProviderHttp,
    config: &PaymentwallConfig,
    country_code: &str,
) -> Result<Vec<PaymentMethod>, ProviderError> {
    let params = payment_systems_query(config, country_code);
    let url = format!("{}/api/payment-systems/", config.api_base_url);
    let (status, body) = exchange(http, http.client().get(url).query(&params)).await?;
    let systems: Vec<PaymentSystem> = serde_json::from_str(&body).map_err(|_| {
        let detail = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {status}"));
        ProviderError::Refused(detail)
    })?;
    Ok(systems.into_iter().map(|s| PaymentMethod { id: s.id, name: s.name, image_url: s.img_url }).collect())
}

#[derive(Deserialize)]
struct StatusAnswer {
    object: String,
    /// An error answer's words (`{"type": "Error", "object": "Error", "error": ...}`).
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    id: serde_json::Value,
    #[serde(default)]
    refunded: bool,
    #[serde(default)]
    risk: String,
    /// A subscription's payment carries its subscription: `active` and `expired` as 1/0 (or
    /// booleans).
    #[serde(default)]
    subscription: Option<SubscriptionAnswer>,
}

#[derive(Deserialize)]
struct SubscriptionAnswer {
    #[serde(default)]
    active: serde_json::Value,
    #[serde(default)]
    expired: serde_json::Value,
}

/// Paymentwall writes flags as 1/0, sometimes as booleans or strings.
fn flag(value: &serde_json::Value) -> Option<bool> {
    match value {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::Number(n) => n.as_i64().map(|n| n != 0),
        serde_json::Value::String(s) => match s.as_str() {
            "1" | "true" => Some(true),
            "0" | "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

#[tracing::instrument(name = "paymentwall.payment_status", skip_all, fields(otel.kind = "client", payment_id = %payment_id))]
/// Asks about a payment by its ref when known, else by buyer uid and our payment id
/// (`ag_external_id`), which is how a payment whose pingback never came can be found, and how a
/// subscription's newest payment (a renewal has a new ref, and the first payment's
/// `ag_external_id`) is found.
pub async fn payment_status(
    http: &ProviderHttp,
    config: &PaymentwallConfig,
    provider_ref: Option<&str>,
    uid: &str,
    payment_id: &str,
) -> Result<Option<RemotePayment>, ProviderError> {
    let mut params = vec![("key", config.project_key.clone())];
    match provider_ref {
        Some(r) => params.push(("ref", r.to_owned())),
        None => {
            params.push(("uid", uid.to_owned()));
            params.push(("ag_external_id", payment_id.to_owned()));
        }
    }
    let url = format!("{}/api/rest/payment", config.api_base_url);
    let (_, body) = exchange(http, http.client().get(url).query(&signed(config, params))).await?;
    let answer: StatusAnswer =
        serde_json::from_str(&body).map_err(|_| ProviderError::BadAnswer("not a payment status".into()))?;
    if answer.object != "payment" {
        return match answer.error {
            // Not found is an answer (the buyer never paid); any other error is a refusal to say,
            // e.g. a wrong secret: never mistaken for "no payment".
            Some(words) if !words.to_ascii_lowercase().contains("not found") => Err(ProviderError::Refused(words)),
            _ => Ok(None),
        };
    }
    let provider_ref = match &answer.id {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return Err(ProviderError::BadAnswer("payment status without id".into())),
    };
    Ok(Some(RemotePayment {
        provider_ref,
        state: match answer.risk.as_str() {
            "pending" => RemoteState::UnderReview,
            "declined" => RemoteState::Declined,
            _ => RemoteState::Paid,
        },
        refunded: answer.refunded,
        // Without a readable `active` nothing is said about the subscription (never an end guessed).
        subscription: answer.subscription.and_then(|sub| {
            Some(RemoteSubscription { active: flag(&sub.active)?, expired: flag(&sub.expired).unwrap_or(false) })
        }),
    }))
}

/// One report for the Delivery Confirmation API (docs/paymentwall.md section 7).
pub struct DeliveryReport<'a> {
    pub provider_ref: &'a str,
    pub merchant_reference_id: &'a str,
    pub test: bool,
    pub delivery: &'a Delivery,
}

/// The form as sent: no signature (the `X-ApiKey` header, the project's secret key, authenticates);
/// dates as `2015/01/20 15:04:55 +0000`; attachments by reference, `attachments[0]`, ...
fn delivery_form(report: &DeliveryReport<'_>) -> Vec<(String, String)> {
    let d = report.delivery;
    let mut form: Vec<(String, String)> = vec![
        ("payment_id".into(), report.provider_ref.to_owned()),
        ("merchant_reference_id".into(), report.merchant_reference_id.to_owned()),
        ("type".into(), d.kind.as_str().to_owned()),
        ("status".into(), d.status.as_str().to_owned()),
        ("details".into(), d.details.clone()),
    ];
    let mut optional = |name: &str, value: String| {
        if !value.is_empty() {
            form.push((name.to_owned(), value));
        }
    };
    optional("estimated_delivery_datetime", d.estimated_delivery_at.map(paymentwall_datetime).unwrap_or_default());
    optional("estimated_update_datetime", d.estimated_update_at.map(paymentwall_datetime).unwrap_or_default());
    optional("refundable", d.refundable.map(|r| r.to_string()).unwrap_or_default());
    optional("reason", d.reason.clone());
    optional("carrier_tracking_id", d.tracking_id.clone());
    optional("carrier_type", d.carrier.clone());
    if report.test {
        form.push(("is_test".into(), "1".into()));
    }
    for (i, url) in d.attachments.iter().enumerate() {
        form.push((format!("attachments[{i}]"), url.clone()));
    }
    form
}

/// Unix ms as Paymentwall's delivery dates, in UTC.
fn paymentwall_datetime(ms: i64) -> String {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return String::new();
    };
    let (date, clock) = (at.date(), at.time());
    format!(
        "{:04}/{:02}/{:02} {:02}:{:02}:{:02} +0000",
        date.year(),
        u8::from(date.month()),
        date.day(),
        clock.hour(),
        clock.minute(),
        clock.second()
    )
}

#[derive(Deserialize)]
struct DeliveryAnswer {
    #[serde(default)]
    success: serde_json::Value,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    notices: Vec<serde_json::Value>,
}

#[tracing::instrument(name = "paymentwall.delivery", skip_all, fields(otel.kind = "client", provider_ref = %report.provider_ref))]
pub async fn confirm_delivery(
    http: &ProviderHttp,
    config: &PaymentwallConfig,
    report: &DeliveryReport<'_>,
) -> Result<(), ProviderError> {
    let url = format!("{}/api/delivery", config.api_base_url);
    let request =
        http.client().post(url).header("X-ApiKey", config.secret_key.expose_secret()).form(&delivery_form(report));
    let (status, body) = exchange(http, request).await?;
    let answer: DeliveryAnswer = serde_json::from_str(&body)
        .map_err(|_| ProviderError::BadAnswer(format!("HTTP {status}, not a delivery answer")))?;
    if flag(&answer.success) == Some(true) {
        return Ok(());
    }
    let notices: Vec<String> =
        answer.notices.iter().map(|n| n.as_str().map(str::to_owned).unwrap_or_else(|| n.to_string())).collect();
    let mut words = answer.error.unwrap_or_else(|| "no reason given".to_owned());
    if !notices.is_empty() {
        words = format!("{words} ({})", notices.join("; "));
    }
    Err(ProviderError::Refused(words))
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;
    use crate::providers::paymentwall::SignVersion;

    fn config(version: SignVersion) -> PaymentwallConfig {
        PaymentwallConfig {
            project_key: "c22f895840bf2391f67a40da64bfed26".into(),
            secret_key: SecretString::from("a7408723eaf4bfa2e3ac49b3cb695046"),
            widget: "p1_1".into(),
            sign_version: version,
            pingback_allowlist: vec![],
            api_base_url: "https://api.paymentwall.com".into(),
            confirm_digital_delivery: false,
        }
    }

    fn sign_of(form: &[(&str, String)]) -> String {
        form.iter().find(|(k, _)| *k == "sign").map(|(_, v)| v.clone()).expect("signed")
    }

    #[test]
    fn the_ticket_paygate_sends_carries_vector_w5() {
        let refund = Ticket {
            kind: TicketType::Refund,
            provider_ref: "t1234",
            uid: "user40012",
            message: "cancelled order",
            test: true,
        };
        let ticket = |v| ticket_form(&config(v), &refund);
        assert_eq!(sign_of(&ticket(SignVersion::V2)), "50b1e70d451299b9d8f31e3bd5b023ba");
        assert_eq!(
            sign_of(&ticket(SignVersion::V3)),
            "5c08aaa909d808089023809e950997a651d32078652bf9aa89fa5080f0e2ae1b"
        );
    }

    #[test]
    fn the_payment_systems_query_carries_vector_w4() {
        assert_eq!(sign_of(&payment_systems_query(&config(SignVersion::V2), "KR")), "82791129d0cd8b075402d292c319cff8");
    }
}
