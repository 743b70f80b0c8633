//! The simulator's HTTP routes: Paymentwall's widget endpoint, the buyer's page actions, and the
//! JSON control API for tests.

use axum::{
    Json, Router,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

use super::{Project, Session, SessionStatus, Sim, page, pingbacks, signature};

pub fn router(sim: Sim) -> Router {
    Router::new()
        .route("/api/subscription", get(widget_subscription))
        .route("/api/cart", get(widget_cart))
        .route("/sim/sessions/{id}/pay", post(page_pay))
        .route("/sim/sessions/{id}/decline", post(page_decline))
        .route("/control/projects", post(add_project))
        .route("/control/sessions/{id}", get(get_session))
        .route("/control/sessions/{id}/pay", post(control_pay))
        .route("/control/sessions/{id}/decline", post(control_decline))
        .route("/control/sessions/{id}/pingback", post(control_pingback))
        .route("/control/sessions/{id}/pay-silently", post(control_pay_silently))
        .route("/control/sessions/{id}/renew", post(control_renew))
        .route("/control/behaviour", post(set_behaviour))
        .route("/control/stats", get(stats))
        .route("/developers/api/ticket", post(super::api::ticket))
        .route("/api/payment-systems/", get(super::api::payment_systems))
        .route("/api/rest/payment", get(super::api::payment_status))
        .route("/api/delivery", post(super::delivery::report))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(sim)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, format!("Error: {}\n", message.into())).into_response()
}

/// Why a page or control action was refused.
type Refusal = (StatusCode, &'static str);

fn refused((status, message): Refusal) -> Response {
    error(status, message)
}

/// Which endpoint serves a Digital Goods widget, as Paymentwall routes them (written apart from
/// the gateway's rule on purpose): `w...`, `s...` and `mw...` codes are cart widgets.
fn serves_cart(widget: &str) -> bool {
    matches!(widget.as_bytes(), [b'w', ..] | [b's', ..] | [b'm', b'w', ..])
}

async fn widget_subscription(state: State<Sim>, query: RawQuery) -> Response {
    widget(state, query, false).await
}

async fn widget_cart(state: State<Sim>, query: RawQuery) -> Response {
    widget(state, query, true).await
}

/// `GET /api/subscription` and `/api/cart`: check the widget is asked for on its own endpoint,
/// verify the merchant's signature, open a session, show the page.
async fn widget(State(sim): State<Sim>, RawQuery(query): RawQuery, cart: bool) -> Response {
    let params: Vec<(String, String)> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    for required in ["key", "uid", "ag_external_id", "amount", "currencyCode", "ag_name", "sign"] {
        if get(required).is_none_or(|v| v.is_empty()) {
            return error(StatusCode::BAD_REQUEST, format!("missing parameter {required}"));
        }
    }
    let widget_code = get("widget").unwrap_or_default();
    if serves_cart(&widget_code) != cart {
        let (wanted, asked) =
            if cart { ("/api/subscription", "/api/cart") } else { ("/api/cart", "/api/subscription") };
        return error(StatusCode::BAD_REQUEST, format!("widget {widget_code} is served by {wanted}, not {asked}"));
    }
    let key = get("key").unwrap_or_default();
    let Some(project) = sim.lock().projects.get(&key).cloned() else {
        return error(StatusCode::BAD_REQUEST, "unknown project key");
    };
    let version: u8 = match get("sign_version").as_deref() {
        None | Some("1") => 1,
        Some("2") => 2,
        Some("3") => 3,
        Some(_) => return error(StatusCode::BAD_REQUEST, "unsupported sign_version"),
    };
    let expected = signature::request_sign(version, &params, &project.secret);
    if get("sign").as_deref() != Some(expected.as_str()) {
        return error(StatusCode::BAD_REQUEST, "wrong signature");
    }
    let session = Session {
        session_id: format!("ses_{}", ulid::Ulid::new()),
        project_key: key,
        uid: get("uid").unwrap_or_default(),
        goodsid: get("ag_external_id").unwrap_or_default(),
        amount: get("amount").unwrap_or_default(),
        currency: get("currencyCode").unwrap_or_default(),
        product_name: get("ag_name").unwrap_or_default(),
        success_url: get("success_url"),
        product_type: get("ag_type").unwrap_or_else(|| "fixed".into()),
        period_length: get("ag_period_length").unwrap_or_default(),
        period_type: get("ag_period_type").unwrap_or_default(),
        status: SessionStatus::Open,
        reference: None,
        renewal_refs: vec![],
        refunded: false,
        subscription_stopped: false,
        tickets: vec![],
        deliveries: vec![],
        pingbacks: vec![],
    };
    let html = page::checkout(&session);
    let id = session.session_id.clone();
    sim.lock().sessions.insert(id.clone(), session);
    ([("x-sim-session", id)], Html(html)).into_response()
}

/// Marks the session paid and sends the type 0 pingback (unless `deliver` is false: a pingback
/// lost on the way, for the sweep to find).
fn pay(sim: &Sim, id: &str) -> Result<Session, Refusal> {
    pay_and(sim, id, true)
}

fn pay_and(sim: &Sim, id: &str, deliver: bool) -> Result<Session, Refusal> {
    let (project, session) = {
        let mut state = sim.lock();
        let Some(session) = state.sessions.get_mut(id) else {
            return Err((StatusCode::NOT_FOUND, "no such session"));
        };
        if session.status != SessionStatus::Open {
            return Err((StatusCode::CONFLICT, "session is not open"));
        }
        session.status = SessionStatus::Paid;
        session.reference = Some(pingbacks::new_reference());
        let session = session.clone();
        let project = state.projects.get(&session.project_key).cloned();
        (project, session)
    };
    let project = project.ok_or((StatusCode::CONFLICT, "project was removed"))?;
    if deliver {
        let reference = session.reference.clone().unwrap_or_default();
        sim.send_pingback(id, 0, pingbacks::signed_url(&project, &session, &reference, 0, None));
    }
    Ok(session)
}

fn decline(sim: &Sim, id: &str) -> Result<Session, Refusal> {
    let mut state = sim.lock();
    let Some(session) = state.sessions.get_mut(id) else {
        return Err((StatusCode::NOT_FOUND, "no such session"));
    };
    if session.status != SessionStatus::Open {
        return Err((StatusCode::CONFLICT, "session is not open"));
    }
    // A declined card produces no pingback at Paymentwall: nothing happened to any money.
    session.status = SessionStatus::Declined;
    Ok(session.clone())
}

async fn page_pay(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    match pay(&sim, &id) {
        Ok(session) => Html(page::result(&session)).into_response(),
        Err(refusal) => refused(refusal),
    }
}

async fn page_decline(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    match decline(&sim, &id) {
        Ok(session) => Html(page::result(&session)).into_response(),
        Err(refusal) => refused(refusal),
    }
}

async fn control_pay(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    match pay(&sim, &id) {
        Ok(session) => Json(session).into_response(),
        Err(refusal) => refused(refusal),
    }
}

async fn control_decline(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    match decline(&sim, &id) {
        Ok(session) => Json(session).into_response(),
        Err(refusal) => refused(refusal),
    }
}

#[derive(Deserialize)]
struct PingbackRequest {
    #[serde(rename = "type")]
    pingback_type: u32,
    reason: Option<u32>,
    /// The transaction: a renewal's reference (default: the first payment's).
    reference: Option<String>,
}

/// Sends a pingback of any type for a session's transaction (reviews, refunds, chargebacks).
async fn control_pingback(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    Json(req): Json<PingbackRequest>,
) -> Response {
    let (project, session) = {
        let mut state = sim.lock();
        let Some(session) = state.sessions.get_mut(&id) else {
            return error(StatusCode::NOT_FOUND, "no such session");
        };
        if session.reference.is_none() {
            session.reference = Some(pingbacks::new_reference());
        }
        let session = session.clone();
        (state.projects.get(&session.project_key).cloned(), session)
    };
    let Some(project) = project else { return error(StatusCode::CONFLICT, "project was removed") };
    let reference = match req.reference {
        Some(reference) if session.renewal_refs.contains(&reference) => reference,
        Some(_) => return error(StatusCode::NOT_FOUND, "no such renewal on this session"),
        None => session.reference.clone().unwrap_or_default(),
    };
    let url = pingbacks::signed_url(&project, &session, &reference, req.pingback_type, req.reason);
    sim.send_pingback(&id, req.pingback_type, url);
    Json(session).into_response()
}

async fn control_pay_silently(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    match pay_and(&sim, &id, false) {
        Ok(session) => Json(session).into_response(),
        Err(refusal) => refused(refusal),
    }
}

#[derive(Deserialize)]
struct RenewRequest {
    /// Held for review: reported by a type 200 (then send its 201 with `pingback`).
    #[serde(default)]
    review: bool,
}

/// A subscription renewal: a new transaction with a new ref, reported by a type 0 pingback (or 200
/// when it is held for review).
async fn control_renew(State(sim): State<Sim>, Path(id): Path<String>, body: Option<Json<RenewRequest>>) -> Response {
    let pingback_type = if body.is_some_and(|Json(r)| r.review) { 200 } else { 0 };
    let reference = pingbacks::new_reference();
    let (project, session) = {
        let mut state = sim.lock();
        let Some(session) = state.sessions.get_mut(&id) else {
            return error(StatusCode::NOT_FOUND, "no such session");
        };
        if session.status != SessionStatus::Paid || session.product_type != "subscription" {
            return error(StatusCode::CONFLICT, "only a paid subscription renews");
        }
        session.renewal_refs.push(reference.clone());
        let session = session.clone();
        (state.projects.get(&session.project_key).cloned(), session)
    };
    let Some(project) = project else { return error(StatusCode::CONFLICT, "project was removed") };
    sim.send_pingback(&id, pingback_type, pingbacks::signed_url(&project, &session, &reference, pingback_type, None));
    Json(serde_json::json!({ "reference": reference })).into_response()
}

async fn set_behaviour(State(sim): State<Sim>, Json(behaviour): Json<super::Behaviour>) -> StatusCode {
    sim.lock().behaviour = behaviour;
    StatusCode::NO_CONTENT
}

async fn stats(State(sim): State<Sim>) -> Json<super::Stats> {
    Json(sim.lock().stats.clone())
}

async fn get_session(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    match sim.lock().sessions.get(&id) {
        Some(session) => Json(session.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such session"),
    }
}

async fn add_project(State(sim): State<Sim>, Json(project): Json<Project>) -> StatusCode {
    if !(1..=3).contains(&project.sign_version) {
        return StatusCode::BAD_REQUEST;
    }
    sim.lock().projects.insert(project.key.clone(), project);
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::serves_cart;

    #[test]
    fn cart_widgets_are_the_w_s_and_mw_codes() {
        assert!(serves_cart("w1") && serves_cart("s1_1") && serves_cart("mw2"));
        assert!(!serves_cart("p1_1") && !serves_cart("pw") && !serves_cart("m1") && !serves_cart(""));
    }
}
