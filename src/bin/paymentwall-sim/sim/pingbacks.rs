//! Sending pingbacks the way Paymentwall does: `GET` with signed query parameters, delivered only
//! by `200` with body `OK`, retried otherwise.

use std::time::Duration;

use rand::Rng;

use super::{Attempt, Delivery, Project, Session, Sim, signature};

/// Paymentwall-style transaction reference.
pub fn new_reference() -> String {
    format!("b{}", rand::rng().random_range(1_000_000_000u64..10_000_000_000))
}

/// The signed pingback URL for `session`'s transaction `reference`, of `pingback_type` (with
/// `reason` for type 2). Every pingback carries a fresh `UNIQUE_REF` custom parameter.
pub fn signed_url(
    project: &Project,
    session: &Session,
    reference: &str,
    pingback_type: u32,
    reason: Option<u32>,
) -> String {
    let (slength, speriod) = if session.product_type == "subscription" {
        let length =
            if pingback_type == 2 { format!("-{}", session.period_length) } else { session.period_length.clone() };
        (length, session.period_type.clone())
    } else {
        (String::new(), String::new())
    };
    let mut params: Vec<(String, String)> = vec![
        ("uid".into(), session.uid.clone()),
        ("goodsid".into(), session.goodsid.clone()),
        ("slength".into(), slength),
        ("speriod".into(), speriod),
        ("type".into(), pingback_type.to_string()),
        ("ref".into(), reference.to_owned()),
        ("PRODUCT_PRICE".into(), session.amount.clone()),
        ("CURRENCY_CODE".into(), session.currency.clone()),
        ("UNIQUE_REF".into(), format!("u{}", ulid::Ulid::new())),
    ];
    if project.test_mode {
        params.push(("is_test".into(), "1".into()));
    }
    if let Some(reason) = reason {
        params.push(("reason".into(), reason.to_string()));
    }
    if project.sign_version >= 2 {
        params.push(("sign_version".into(), project.sign_version.to_string()));
    }
    let sig = signature::pingback_sig(project.sign_version, &params, &project.secret);
    params.push(("sig".into(), sig));
    let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    let separator = if project.pingback_url.contains('?') { '&' } else { '?' };
    format!("{}{separator}{query}", project.pingback_url)
}

impl Sim {
    /// Records a pingback on the session and delivers it in the background until `OK` or the
    /// attempt limit.
    pub(super) fn send_pingback(&self, session_id: &str, pingback_type: u32, url: String) {
        let (index, behaviour) = {
            let mut state = self.lock();
            let behaviour = state.behaviour.clone();
            let dropped = behaviour.drop_pingbacks > 0.0 && rand::rng().random_bool(behaviour.drop_pingbacks.min(1.0));
            if dropped {
                state.stats.pingbacks_dropped += 1;
            } else if behaviour.duplicate_pingbacks {
                state.stats.pingbacks_duplicated += 1;
            }
            let Some(session) = state.sessions.get_mut(session_id) else { return };
            let delivery = Delivery { pingback_type, url: url.clone(), attempts: vec![], delivered: false, dropped };
            session.pingbacks.push(delivery);
            if dropped {
                return;
            }
            (session.pingbacks.len() - 1, behaviour)
        };
        let copies = if behaviour.duplicate_pingbacks { 2 } else { 1 };
        for _ in 0..copies {
            let delay = match behaviour.reorder_ms {
                0 => 0,
                most => rand::rng().random_range(0..=most),
            };
            self.deliver(session_id, index, pingback_type, url.clone(), Duration::from_millis(delay));
        }
    }

    /// Delivers one copy after `delay`, retrying until `OK` or the attempt limit.
    fn deliver(&self, session_id: &str, index: usize, pingback_type: u32, url: String, delay: Duration) {
        let sim = self.clone();
        let session_id = session_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            for attempt in 1..=sim.settings.max_attempts {
                let result = sim.http.get(&url).send().await;
                let (status, body) = match result {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        (Some(status), response.text().await.unwrap_or_default())
                    }
                    Err(e) => (None, e.to_string()),
                };
                let delivered = status == Some(200) && body == "OK";
                // No answer at all is status 0: a log field is a number, never `Some(200)`.
                let http_status = status.unwrap_or(0);
                tracing::info!(%session_id, pingback_type, attempt, http_status, body = %body.trim(), delivered, "pingback attempt");
                {
                    let mut state = sim.lock();
                    if let Some(delivery) = state.sessions.get_mut(&session_id).and_then(|s| s.pingbacks.get_mut(index))
                    {
                        delivery.attempts.push(Attempt { status, body });
                        delivery.delivered = delivered;
                    }
                }
                if delivered {
                    return;
                }
                tokio::time::sleep(sim.settings.retry_interval).await;
            }
        });
    }
}
