//! Cross-replica news through Redis pub/sub: after a local commit a replica announces "new events"
//! (not the events: the database log is the truth), and every replica's tailer reads the log. A
//! lost message only delays delivery until the tailer's next poll.

use std::sync::Arc;

use super::Hub;
use crate::{
    shutdown::Shutdown,
    store::redis::{Followed, RedisHandle},
};

const CHANNEL: &str = "events";

#[derive(Clone)]
pub struct Bridge {
    redis: RedisHandle,
}

impl Bridge {
    pub fn new(redis: RedisHandle) -> Self {
        Self { redis }
    }

    pub async fn announce(&self) {
        // A failure is logged by the handle; other replicas catch up by polling.
        let _ = self.redis.publish(&self.redis.key(CHANNEL), "new").await;
    }

    /// Wakes `hub` whenever another replica announces, and once on every (re)subscription.
    pub fn spawn_listener(&self, hub: Arc<Hub>, mut shutdown: Shutdown) {
        let redis = self.redis.clone();
        tokio::spawn(async move {
            let listen = redis.follow(CHANNEL, |followed| {
                match followed {
                    // On (re)subscribing too: whatever was announced while unsubscribed.
                    Followed::Subscribed | Followed::Message(_) => hub.notify_remote(),
                    Followed::Lost => {
                        tracing::warn!("event bridge: redis subscription lost; polling the database meanwhile")
                    }
                }
                std::future::ready(())
            });
            tokio::select! {
                _ = listen => {}
                _ = shutdown.signalled() => {}
            }
        });
    }
}
