//! Ending a streamed command before it ends on its own.
//!
//! An SSH stream is read to its channel's close even once nobody reads its
//! output (an unread russh channel stalls its whole connection), so a
//! stream given up on still moved everything its command went on sending:
//! the builder, asked by a relay for every path of a closure, sent the rest
//! of it (gigabytes on a first install) after every host of the copy had
//! failed, over its connection, until it was done. A [`Stop`] lets the
//! reader end the channel (or the stream's own connection) instead.

use tokio::sync::oneshot;

/// Held by a stream's reader: [`Stop::now`] ends the stream's channel, its
/// own connection with it (what the command still sends is dropped,
/// unread). Dropped unused, it does nothing: the stream runs to its end.
#[derive(Debug)]
pub struct Stop(Option<oneshot::Sender<()>>);

/// Held by the stream's transport: resolves once the stop was asked for.
#[derive(Debug)]
pub struct Stopping(oneshot::Receiver<()>);

impl Stop {
    /// A stop and the transport's end of it.
    pub fn new() -> (Stop, Stopping) {
        let (tx, rx) = oneshot::channel();
        (Stop(Some(tx)), Stopping(rx))
    }

    /// For a stream with nothing to end early: in memory, or a local child
    /// (killed when its `finish` is dropped).
    pub fn none() -> Stop {
        Stop(None)
    }

    /// End the stream now.
    pub fn now(mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Stopping {
    /// Resolves once [`Stop::now`] was called; never when the stop was
    /// dropped unused.
    pub async fn requested(self) {
        if self.0.await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_stop_dropped_unused_never_stops() {
        let (stop, stopping) = Stop::new();
        drop(stop);
        let waited = tokio::time::timeout(Duration::from_secs(3600), stopping.requested()).await;
        assert!(waited.is_err(), "a dropped stop stopped the stream");
        let (stop, stopping) = Stop::new();
        stop.now();
        stopping.requested().await;
    }
}
