//! Paymentwall's Delivery Confirmation API as the simulator serves it (docs/paymentwall.md section
//! 7): `POST /api/delivery`, form-encoded, authenticated by the project's secret key in `X-ApiKey`,
//! with its own checks of what each type and status needs. Written apart from paygate's validation.

use std::collections::BTreeMap;

use axum::{
    Form, Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{SessionStatus, Sim};

const TYPES: [&str; 2] = ["digital", "physical"];
const STATUSES: [&str; 4] = ["order_placed", "order_shipped", "delivering", "delivered"];
/// Statuses after which a physical parcel has a carrier and a tracking id.
const SHIPPED: [&str; 3] = ["order_shipped", "delivering", "delivered"];

fn refuse(status: StatusCode, code: u32, error: &str, notices: Vec<String>) -> Response {
    (status, Json(json!({ "error": error, "error_code": code, "notices": notices }))).into_response()
}

/// `2015/01/20 15:04:55 +0300`.
fn is_datetime(value: &str) -> bool {
    let b = value.as_bytes();
    let digits = |range: std::ops::Range<usize>| b.get(range).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() == 25
        && digits(0..4)
        && b[4] == b'/'
        && digits(5..7)
        && b[7] == b'/'
        && digits(8..10)
        && b[10] == b' '
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b' '
        && (b[20] == b'+' || b[20] == b'-')
        && digits(21..25)
}

pub async fn report(State(sim): State<Sim>, headers: HeaderMap, Form(form): Form<Vec<(String, String)>>) -> Response {
    sim.lock().stats.deliveries += 1;
    let key = headers.get("x-apikey").and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(project) = sim.lock().projects.values().find(|p| !key.is_empty() && p.secret == key).cloned() else {
        return refuse(StatusCode::UNAUTHORIZED, 1001, "Wrong API key", vec![]);
    };
    let fields: BTreeMap<String, String> = form.into_iter().collect();
    let get = |name: &str| fields.get(name).map(String::as_str).unwrap_or("");
    let mut notices = Vec::new();
    for required in ["payment_id", "type", "status", "estimated_delivery_datetime", "details"] {
        if get(required).trim().is_empty() {
            notices.push(format!("{required} is required"));
        }
    }
    if !get("type").is_empty() && !TYPES.contains(&get("type")) {
        notices.push("type must be digital or physical".into());
    }
    if !get("status").is_empty() && !STATUSES.contains(&get("status")) {
        notices.push(format!("status must be one of {}", STATUSES.join(", ")));
    }
    for date in ["estimated_delivery_datetime", "estimated_update_datetime"] {
        if !get(date).is_empty() && !is_datetime(get(date)) {
            notices.push(format!("{date} must be formatted 2015/01/20 15:04:55 +0300"));
        }
    }
    if !get("refundable").is_empty() && !["true", "false"].contains(&get("refundable")) {
        notices.push("refundable must be true or false".into());
    }
    if get("type") == "physical" && SHIPPED.contains(&get("status")) {
        for required in ["carrier_tracking_id", "carrier_type"] {
            if get(required).trim().is_empty() {
                notices.push(format!("{required} is required for a shipped physical delivery"));
            }
        }
    }
    if !notices.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, 1002, "Invalid parameters", notices);
    }
    if let Some(refusal) = sim.lock().behaviour.refuse_deliveries.clone() {
        return refuse(StatusCode::BAD_REQUEST, 1003, &refusal, vec![]);
    }
    let mut state = sim.lock();
    let reference = get("payment_id");
    let session = state.sessions.values_mut().find(|s| {
        s.project_key == project.key
            && s.status == SessionStatus::Paid
            && (s.reference.as_deref() == Some(reference) || s.renewal_refs.iter().any(|r| r == reference))
    });
    let Some(session) = session else { return refuse(StatusCode::NOT_FOUND, 1004, "Payment not found", vec![]) };
    session.deliveries.push(fields.clone());
    Json(json!({ "success": 1 })).into_response()
}
