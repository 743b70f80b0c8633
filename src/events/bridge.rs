//! Cross-replica news through Redis pub/sub: after a local commit a replica announces "new events"
//! (not the events: the database log is the truth), and every replica's tailer reads the log. A
//! lost message only delays delivery until the tailer's next poll.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use tokio::sync::watch;

use super::Hub;
use crate::store::redis::RedisHandle;

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
    pub fn spawn_listener(&self, hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
        let redis = self.redis.clone();
        tokio::spawn(async move {
            let listen = async {
                let mut backoff = Duration::from_millis(100);
                loop {
                    if let Ok(pubsub) = redis.subscribe(CHANNEL).await {
                        backoff = Duration::from_millis(100);
                        hub.notify_remote(); // whatever was announced while unsubscribed
                        let mut messages = pubsub.into_on_message();
                        while messages.next().await.is_some() {
                            hub.notify_remote();
                        }
                        tracing::warn!("event bridge: redis subscription lost; polling the database meanwhile");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            };
            tokio::select! {
                _ = listen => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
        });
    }
}
