//! Stopping the background work, after mini-redis's `Shutdown`: `app.rs` owns the one
//! [`ShutdownTrigger`]; every task holds a [`Shutdown`] handle and returns once it is signalled.
//!
//! A handle is signalled when the trigger fires, or when the trigger is dropped without firing
//! (the server is gone, so is the reason to keep working). A handle cloned or made after the
//! trigger fired is signalled already.

use tokio::sync::watch;

/// Fires every [`Shutdown`] handle made from it. Owned by whoever decides when to stop (`app.rs`).
#[derive(Debug)]
pub struct ShutdownTrigger {
    fired: watch::Sender<bool>,
}

impl ShutdownTrigger {
    pub fn new() -> Self {
        Self { fired: watch::Sender::new(false) }
    }

    /// A handle for a task to hold.
    pub fn handle(&self) -> Shutdown {
        Shutdown { fired: self.fired.subscribe() }
    }

    /// Signals every handle, those made later included. Firing again does nothing more.
    pub fn fire(&self) {
        self.fired.send_replace(true);
    }
}

impl Default for ShutdownTrigger {
    fn default() -> Self {
        Self::new()
    }
}

/// A task's view of the shutdown signal: cheap to clone, one per task (or per loop).
#[derive(Debug, Clone)]
pub struct Shutdown {
    fired: watch::Receiver<bool>,
}

impl Shutdown {
    /// Whether the signal has come (without waiting).
    pub fn is_signalled(&self) -> bool {
        *self.fired.borrow() || self.fired.has_changed().is_err()
    }

    /// Resolves once the signal has come: at once when it already has. Cancel-safe, so it can
    /// stand in a `select!` in a loop.
    pub async fn signalled(&mut self) {
        // An error means the trigger was dropped without firing: that stops the task too.
        let _ = self.fired.wait_for(|fired| *fired).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn within_a_second(shutdown: &mut Shutdown) -> bool {
        tokio::time::timeout(Duration::from_secs(1), shutdown.signalled()).await.is_ok()
    }

    #[tokio::test]
    async fn a_handle_waits_until_the_trigger_fires() {
        let trigger = ShutdownTrigger::new();
        let mut early = trigger.handle();
        assert!(!early.is_signalled());
        assert!(tokio::time::timeout(Duration::from_millis(20), early.signalled()).await.is_err());
        let waiting = tokio::spawn({
            let mut clone = early.clone();
            async move { within_a_second(&mut clone).await }
        });
        trigger.fire();
        assert!(waiting.await.unwrap(), "a handle waiting when the trigger fires wakes");
        assert!(early.is_signalled());
        assert!(within_a_second(&mut early).await, "and stays signalled");
        let mut late = trigger.handle();
        assert!(late.is_signalled(), "a handle made after the trigger fired is signalled at once");
        assert!(within_a_second(&mut late).await);
    }

    #[tokio::test]
    async fn a_dropped_trigger_signals_its_handles() {
        let trigger = ShutdownTrigger::new();
        let mut handle = trigger.handle();
        drop(trigger);
        assert!(handle.is_signalled());
        assert!(within_a_second(&mut handle).await);
    }
}
