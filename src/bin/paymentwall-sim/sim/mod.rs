//! A Paymentwall simulator for tests and local runs (binary `paymentwall-sim`). It speaks the
//! protocol of docs/paymentwall.md: verifies signed widget calls, shows a hosted payment page, and sends
//! signed pingbacks to the project's pingback URL, retrying until it gets `OK`. A JSON control API
//! under `/control` lets tests pay without a browser and see every pingback attempt.

mod api;
mod delivery;
mod page;
mod pingbacks;
mod server;
pub mod signature;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use server::router;

/// A Paymentwall project as configured in Paymentwall's merchant area.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Project {
    pub key: String,
    pub secret: String,
    /// Where pingbacks go, e.g. `http://127.0.0.1:8080/pingback/paymentwall/ch_...`.
    pub pingback_url: String,
    /// Pingback signature version (1, 2 or 3).
    #[serde(default = "default_sign_version")]
    pub sign_version: u8,
    /// Test projects mark pingbacks with `is_test=1`.
    #[serde(default = "default_true")]
    pub test_mode: bool,
}

fn default_sign_version() -> u8 {
    3
}

fn default_true() -> bool {
    true
}

impl std::str::FromStr for Project {
    type Err = String;

    /// `key=K,secret=S,pingback_url=U[,sign_version=3][,test_mode=true]`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for part in s.split(',') {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("expected name=value, got {part:?}"))?;
            fields.insert(k.trim(), v.trim());
        }
        let need = |name: &str| fields.get(name).map(|v| v.to_string()).ok_or_else(|| format!("missing {name}"));
        Ok(Self {
            key: need("key")?,
            secret: need("secret")?,
            pingback_url: need("pingback_url")?,
            sign_version: fields.get("sign_version").map_or(Ok(3), |v| v.parse()).map_err(|_| "bad sign_version")?,
            test_mode: fields.get("test_mode").map_or(Ok(true), |v| v.parse()).map_err(|_| "bad test_mode")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct SimSettings {
    pub retry_interval: Duration,
    pub max_attempts: u32,
}

/// A buyer's visit to the hosted payment page.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub session_id: String,
    pub project_key: String,
    pub uid: String,
    pub goodsid: String,
    pub amount: String,
    pub currency: String,
    pub product_name: String,
    pub success_url: Option<String>,
    /// `fixed` or `subscription`; a subscription's pingbacks carry its period.
    pub product_type: String,
    pub period_length: String,
    pub period_type: String,
    pub status: SessionStatus,
    /// Paymentwall's transaction reference, once paid.
    pub reference: Option<String>,
    /// References of renewal payments (subscriptions).
    pub renewal_refs: Vec<String>,
    pub refunded: bool,
    /// A subscription whose billing was stopped (a type 2 ticket): no longer active.
    pub subscription_stopped: bool,
    pub tickets: Vec<Ticket>,
    /// Delivery Confirmation API reports accepted for this session's payments, as received.
    pub deliveries: Vec<std::collections::BTreeMap<String, String>>,
    pub pingbacks: Vec<Delivery>,
}

/// A Cancellation API ticket as received.
#[derive(Debug, Clone, Serialize)]
pub struct Ticket {
    pub ticket_type: u32,
    pub message: String,
    pub accepted: bool,
}

/// How the simulated Paymentwall behaves; tests change it through `POST /control/behaviour`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Behaviour {
    /// Refuse every ticket with this message.
    pub refuse_tickets: Option<String>,
    /// Wait this long before answering a ticket.
    pub ticket_delay_ms: u64,
    /// Send the type 2 (or 12) pingback after an accepted ticket.
    pub ticket_pingbacks: bool,
    pub ticket_pingback_delay_ms: u64,
    /// A lossy network between Paymentwall and the merchant: this share of pingbacks (0 to 1) is
    /// never sent at all (recorded as dropped on the session)...
    pub drop_pingbacks: f64,
    /// ...each one sent goes twice (the copy after up to `reorder_ms`)...
    pub duplicate_pingbacks: bool,
    /// ...and each goes after a random delay up to this, so later ones may overtake earlier ones.
    pub reorder_ms: u64,
    /// Refuse every delivery report with this error.
    pub refuse_deliveries: Option<String>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            refuse_tickets: None,
            ticket_delay_ms: 0,
            ticket_pingbacks: true,
            ticket_pingback_delay_ms: 100,
            drop_pingbacks: 0.0,
            duplicate_pingbacks: false,
            reorder_ms: 0,
            refuse_deliveries: None,
        }
    }
}

/// Calls to the server APIs, for tests that count them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub tickets: u64,
    pub payment_systems: u64,
    pub payment_status: u64,
    pub deliveries: u64,
    /// Pingbacks the lossy mode dropped, and the extra copies it sent.
    pub pingbacks_dropped: u64,
    pub pingbacks_duplicated: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Open,
    Paid,
    Declined,
}

/// One pingback and every attempt to deliver it.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub pingback_type: u32,
    pub url: String,
    pub attempts: Vec<Attempt>,
    pub delivered: bool,
    /// Never sent (the lossy mode).
    pub dropped: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub status: Option<u16>,
    pub body: String,
}

#[derive(Default)]
struct State {
    projects: HashMap<String, Project>,
    sessions: HashMap<String, Session>,
    behaviour: Behaviour,
    stats: Stats,
}

#[derive(Clone)]
pub struct Sim {
    state: Arc<Mutex<State>>,
    settings: SimSettings,
    http: reqwest::Client,
}

impl Sim {
    pub fn new(projects: Vec<Project>, settings: SimSettings) -> Self {
        let state = State { projects: projects.into_iter().map(|p| (p.key.clone(), p)).collect(), ..State::default() };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client builds");
        Self { state: Arc::new(Mutex::new(state)), settings, http }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-written; keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
