//! Paymentwall's server APIs as the simulator serves them: the Cancellation API (tickets), Payment
//! Systems and Payment Status. Every request's signature is checked like Paymentwall checks it.

use std::time::Duration;

use axum::{
    Form, Json,
    extract::{RawQuery, State},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{Project, SessionStatus, Sim, Ticket, pingbacks, signature};

/// The project named by `key`, if the request's `sign` is right for it.
fn verified(sim: &Sim, params: &[(String, String)]) -> Result<Project, &'static str> {
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let project = get("key").and_then(|key| sim.lock().projects.get(key).cloned()).ok_or("Wrong project key")?;
    let version = match get("sign_version") {
        Some("2") => 2,
        Some("3") => 3,
        _ => return Err("Unsupported sign_version"),
    };
    let expected = signature::request_sign(version, params, &project.secret);
    if get("sign") == Some(expected.as_str()) { Ok(project) } else { Err("Wrong signature") }
}

fn api_error(message: &str) -> Response {
    Json(json!({ "type": "Error", "object": "Error", "error": message, "code": 1000 })).into_response()
}

/// `POST /developers/api/ticket`: answers like Paymentwall, then (after a delay) sends the type 2
/// (refund) or type 12 (recurring billing stopped) pingback the ticket leads to. A received ticket
/// is processed even if the caller hangs up before the answer (as at Paymentwall).
pub async fn ticket(State(sim): State<Sim>, Form(params): Form<Vec<(String, String)>>) -> Response {
    match tokio::spawn(process_ticket(sim, params)).await {
        Ok(response) => response,
        Err(_) => api_error("internal error"),
    }
}

async fn process_ticket(sim: Sim, params: Vec<(String, String)>) -> Response {
    let behaviour = {
        let mut state = sim.lock();
        state.stats.tickets += 1;
        state.behaviour.clone()
    };
    if behaviour.ticket_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behaviour.ticket_delay_ms)).await;
    }
    let refuse = |message: &str| Json(json!({ "result": 0, "errors": [message] })).into_response();
    let project = match verified(&sim, &params) {
        Ok(project) => project,
        Err(message) => return refuse(message),
    };
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
    let (reference, message) = (get("ref"), get("message"));
    let ticket_type: u32 = get("type").parse().unwrap_or(0);
    if message.trim().is_empty() {
        return refuse("message is required");
    }
    let session_id = {
        let state = sim.lock();
        state
            .sessions
            .values()
            .find(|s| {
                s.status == SessionStatus::Paid
                    && (s.reference.as_deref() == Some(reference.as_str()) || s.renewal_refs.contains(&reference))
            })
            .map(|s| s.session_id.clone())
    };
    let Some(session_id) = session_id else { return refuse("Transaction not found") };
    let accepted = behaviour.refuse_tickets.is_none() && matches!(ticket_type, 1 | 2);
    {
        let mut state = sim.lock();
        if let Some(session) = state.sessions.get_mut(&session_id) {
            session.tickets.push(Ticket { ticket_type, message: message.clone(), accepted });
        }
    }
    if let Some(refusal) = &behaviour.refuse_tickets {
        return refuse(refusal);
    }
    if !accepted {
        return refuse("Unsupported ticket type");
    }
    let (pingback_type, reason) = match ticket_type {
        1 if message.starts_with("Partial") => (2, Some(10)),
        1 => (2, Some(9)),
        _ => (12, None),
    };
    {
        let mut state = sim.lock();
        if let Some(session) = state.sessions.get_mut(&session_id) {
            match ticket_type {
                1 => session.refunded = true,
                _ => session.subscription_stopped = true,
            }
        }
    }
    if behaviour.ticket_pingbacks {
        let sim = sim.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(behaviour.ticket_pingback_delay_ms)).await;
            let session = sim.lock().sessions.get(&session_id).cloned();
            if let Some(session) = session {
                let url = pingbacks::signed_url(&project, &session, &reference, pingback_type, reason);
                sim.send_pingback(&session_id, pingback_type, url);
            }
        });
    }
    Json(json!({ "result": 1 })).into_response()
}

/// `GET /api/payment-systems/`: the methods of a country.
pub async fn payment_systems(State(sim): State<Sim>, RawQuery(query): RawQuery) -> Response {
    sim.lock().stats.payment_systems += 1;
    let params: Vec<(String, String)> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    if let Err(message) = verified(&sim, &params) {
        return api_error(message);
    }
    let country = params.iter().find(|(k, _)| k == "country_code").map(|(_, v)| v.as_str()).unwrap_or("");
    let method = |id: &str, name: &str| json!({ "id": id, "name": name, "new_window": false, "img_url": format!("https://img.example/{id}.png"), "img_class": id, "ps_type_id": 2 });
    let mut methods = vec![method("cc", "Credit Card")];
    if country == "KR" {
        methods.push(method("kakaopay", "KakaoPay"));
        methods.push(method("naverpay", "Naver Pay"));
    }
    Json(methods).into_response()
}

/// `GET /api/rest/payment`: a payment by `ref`, or by `uid` and `ag_external_id`.
pub async fn payment_status(State(sim): State<Sim>, RawQuery(query): RawQuery) -> Response {
    sim.lock().stats.payment_status += 1;
    let params: Vec<(String, String)> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    if let Err(message) = verified(&sim, &params) {
        return api_error(message);
    }
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let state = sim.lock();
    let found = state.sessions.values().find(|s| {
        s.status == SessionStatus::Paid
            && match get("ref") {
                Some(reference) => {
                    s.reference.as_deref() == Some(reference.as_str()) || s.renewal_refs.contains(&reference)
                }
                None => {
                    get("uid").as_deref() == Some(s.uid.as_str())
                        && get("ag_external_id").as_deref() == Some(s.goodsid.as_str())
                }
            }
    });
    let Some(s) = found else { return api_error("Payment not found") };
    // By ref: that payment. By buyer and product: the newest payment of it (a subscription's
    // renewals share the first payment's product id).
    let id = match get("ref") {
        Some(reference) => reference,
        None => s.renewal_refs.last().cloned().or_else(|| s.reference.clone()).unwrap_or_default(),
    };
    let mut answer = json!({
        "object": "payment",
        "id": id,
        "amount": s.amount,
        "currency": s.currency,
        "refunded": s.refunded && s.reference.as_deref() == Some(id.as_str()),
        "risk": "approved",
        "uid": s.uid,
    });
    if s.product_type == "subscription" {
        answer["subscription"] = json!({
            "object": "subscription",
            "id": s.reference,
            "period": s.period_type,
            "period_duration": s.period_length.parse::<u32>().unwrap_or(1),
            "started": 1,
            "active": if s.subscription_stopped { 0 } else { 1 },
            "expired": 0,
        });
    }
    Json(answer).into_response()
}
