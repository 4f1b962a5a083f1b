//! Cancellation as an ordered escalation, driven by Ctrl-C / SIGTERM.
//!
//! First signal: start nothing new; hosts in flight finish and are verified.
//! Second: drop sessions and exit; detached switches finish on the hosts on
//! their own (they never depended on the controller).

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How far cancellation has gone. Ordered: each level includes the ones before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelLevel {
    Running,
    /// Start no new host; finish and verify what is in flight.
    StopStarting,
    /// Abort: drop sessions now.
    Abort,
}

impl CancelLevel {
    fn next(self) -> CancelLevel {
        match self {
            CancelLevel::Running => CancelLevel::StopStarting,
            _ => CancelLevel::Abort,
        }
    }
}

/// The sending side: escalates one level per call.
#[derive(Debug, Clone)]
pub struct Canceller {
    tx: watch::Sender<CancelLevel>,
}

/// What tasks watch.
pub type CancelWatch = watch::Receiver<CancelLevel>;

pub fn channel() -> (Canceller, CancelWatch) {
    let (tx, rx) = watch::channel(CancelLevel::Running);
    (Canceller { tx }, rx)
}

impl Canceller {
    /// Escalate one level; returns the new level.
    pub fn escalate(&self) -> CancelLevel {
        let mut level = CancelLevel::Running;
        self.tx.send_modify(|l| {
            *l = l.next();
            level = *l;
        });
        level
    }

    pub fn level(&self) -> CancelLevel {
        *self.tx.borrow()
    }

    /// A new watch of the level.
    pub fn watch(&self) -> CancelWatch {
        self.tx.subscribe()
    }

    /// Escalate on every SIGINT or SIGTERM until Abort. Spawn this once.
    pub async fn on_signals(self) {
        let Some(mut signals) = Signals::new() else {
            tracing::warn!("cannot install signal handlers; Ctrl-C will kill nixgate outright");
            return;
        };
        loop {
            signals.next().await;
            if self.escalate() == CancelLevel::Abort {
                return;
            }
        }
    }
}

/// SIGINT and SIGTERM, as they come (from its creation on).
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// `None`: the handlers could not be installed.
    pub fn new() -> Option<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Some(Signals {
            int: signal(SignalKind::interrupt()).ok()?,
            term: signal(SignalKind::terminate()).ok()?,
        })
    }

    /// The next SIGINT or SIGTERM.
    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Wait until the level reaches at least `level`.
pub async fn reached(watch: &mut CancelWatch, level: CancelLevel) {
    let _ = watch.wait_for(|l| *l >= level).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escalates_in_order() {
        let (c, rx) = channel();
        assert_eq!(*rx.borrow(), CancelLevel::Running);
        assert_eq!(c.escalate(), CancelLevel::StopStarting);
        assert_eq!(c.escalate(), CancelLevel::Abort);
        assert_eq!(c.escalate(), CancelLevel::Abort);
        assert!(CancelLevel::Abort > CancelLevel::StopStarting);
    }
}
