//! Does a NEW connection reach the host? sshd keeps the sessions it
//! already has when it is stopped or reconfigured (`KillMode=process`), and
//! a firewall may drop only new connections: the run's own session working
//! proves nothing about the next login. Tried every [`RETRY`] within a
//! window: a handshake refused while sshd restarts is not a lockout.
//!
//! Used after a live switch (magic rollback's confirmation, see
//! [`super::pipeline`]) and after a wave's soak (a candidate that locks SSH
//! out later, a timer restarting sshd into a bad config, is caught there
//! and taken back, its known-good mark revoked).

use std::time::Duration;

use super::links;
use super::pipeline::Reconnect;
use crate::nix::StorePath;
use crate::remote::Remote;

/// Between two attempts at a new connection.
pub(crate) const RETRY: Duration = Duration::from_secs(2);

/// A new connection's read, once its handshake is done.
pub(crate) const READS_BOUND: Duration = Duration::from_secs(10);

/// Why no new connection reached the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreached {
    /// The last try's error.
    pub error: String,
    /// It was the controller's own failure, not the host's
    /// ([`crate::ssh::ConnectError::is_controllers_own`]: no key to offer,
    /// an agent gone): it says nothing of the host, and is not tried again.
    pub controllers_own: bool,
}

/// New connections tried every [`RETRY`] for `within`, until one reads
/// the host's running system (`current_system`, the link): that is
/// returned. `Err`: why the last try failed (no connection, or no answer
/// over it).
pub async fn new_connection<R: Remote>(
    fresh: &dyn Reconnect<R>,
    current_system: &str,
    within: Duration,
) -> Result<Option<StorePath>, Unreached> {
    let end = tokio::time::Instant::now() + within;
    loop {
        let unreached = match once(fresh, current_system, end).await {
            Ok(running) => return Ok(running),
            Err(u) => u,
        };
        if unreached.controllers_own || tokio::time::Instant::now() + RETRY >= end {
            return Err(unreached);
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One new connection, its handshake by `end` (a connection's own
/// `connect_timeout`, twice that through a jump host, would outlast the
/// window), and the link read over it (bounded by [`READS_BOUND`]).
async fn once<R: Remote>(
    fresh: &dyn Reconnect<R>,
    current_system: &str,
    end: tokio::time::Instant,
) -> Result<Option<StorePath>, Unreached> {
    let host = |error: String| Unreached {
        error,
        controllers_own: false,
    };
    let remote = match tokio::time::timeout_at(end, fresh.fresh()).await {
        Ok(Ok(remote)) => remote,
        Ok(Err(e)) => {
            let own = crate::remote::patient::connect_error(&e)
                .is_some_and(crate::ssh::ConnectError::is_controllers_own);
            return Err(Unreached {
                error: format!("{e:#}"),
                controllers_own: own,
            });
        }
        Err(_) => return Err(host("no new connection within the window".to_owned())),
    };
    let read = links::read_store_link(&remote, current_system);
    match tokio::time::timeout(READS_BOUND, read).await {
        Ok(read) => read.map_err(|e| host(format!("{e:#}"))),
        Err(_) => Err(host(format!(
            "a new connection's read took over {READS_BOUND:?}"
        ))),
    }
}
