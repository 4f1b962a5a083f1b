//! The fleet as one run sees it: inventory machines mapped to SSH targets
//! (inventory values first, then `~/.ssh/config`), and one session per
//! machine, opened on first use and shared by every step of the run. At most
//! [`MAX_CONNECTING`] sessions are being opened at once, so a run over
//! hundreds of hosts does not time its own handshakes out.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::inventory::{Connection, Inventory};
use crate::ssh::{ConnectError, HostKeyPolicy, SshConfig, SshSession, SshTarget};

/// The name the builder goes by in messages and events.
pub const BUILDER: &str = "builder";

/// Handshakes in flight at once. The connect timeout runs from the start of
/// a host's own handshake, not while it waits for its turn: 500 hosts at
/// once on a busy controller timed half of them out (seen here).
pub const MAX_CONNECTING: usize = 32;

/// Turn an inventory connection into an SSH target.
pub fn target_for(name: &str, c: &Connection, policy: HostKeyPolicy, cfg: &SshConfig) -> SshTarget {
    let mut t = SshTarget::new(name, c.address.clone());
    t.port = c.port;
    t.user = c.user.clone();
    t.identity_files = c.identity_file.iter().cloned().collect();
    t.known_hosts = vec![c.known_hosts.clone()];
    t.connect_timeout = c.connect_timeout;
    t.host_key_policy = policy;
    let mut t = t.apply_ssh_config(cfg);
    // nixgate's default user is root, not the controller's $USER.
    if t.user.is_none() {
        t.user = Some("root".into());
    }
    t
}

/// Sessions to the builder and hosts of one run.
pub struct Sessions {
    targets: HashMap<String, SshTarget>,
    open: HashMap<String, OnceCell<SshSession>>,
    connecting: tokio::sync::Semaphore,
}

impl Sessions {
    /// Prepare (not open) sessions to the builder and every host.
    pub fn new(inv: &Inventory, policy: HostKeyPolicy) -> Arc<Sessions> {
        let cfg = SshConfig::load_default().unwrap_or_else(|e| {
            tracing::warn!("ignoring ~/.ssh/config: {e:#}");
            SshConfig::empty()
        });
        let mut targets = HashMap::new();
        targets.insert(
            BUILDER.to_owned(),
            target_for(BUILDER, &inv.builder.connection, policy, &cfg),
        );
        for h in &inv.hosts {
            targets.insert(
                h.name.clone(),
                target_for(&h.name, &h.connection, policy, &cfg),
            );
        }
        let open = targets
            .keys()
            .map(|k| (k.clone(), OnceCell::new()))
            .collect();
        Arc::new(Sessions {
            targets,
            open,
            connecting: tokio::sync::Semaphore::new(MAX_CONNECTING),
        })
    }

    pub fn target(&self, name: &str) -> Option<&SshTarget> {
        self.targets.get(name)
    }

    /// The session to `name` (a host, or [`BUILDER`]), connecting on first use.
    /// A failed connect is not cached: the next call tries again.
    pub async fn get(&self, name: &str) -> Result<SshSession, SessionError> {
        let (Some(cell), Some(target)) = (self.open.get(name), self.targets.get(name)) else {
            return Err(SessionError::Unknown(name.to_owned()));
        };
        cell.get_or_try_init(|| async {
            // The semaphore is never closed; without a permit, connect anyway.
            let _turn = self.connecting.acquire().await.ok();
            SshSession::connect(target.clone()).await
        })
        .await
        .cloned()
        .map_err(|e| SessionError::Connect(Arc::new(e)))
    }

    /// Close every open session (explicit shutdown at the end of a run).
    pub async fn close_all(&self) {
        for cell in self.open.values() {
            if let Some(s) = cell.get() {
                s.close().await;
            }
        }
    }
}

/// Why a session could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    #[error("{0} is not in the inventory")]
    Unknown(String),
    #[error(transparent)]
    Connect(Arc<ConnectError>),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hosts that accept TCP but never speak SSH: the first MAX_CONNECTING
    /// handshakes start at once, the rest only as those time out, and each
    /// still gets its whole timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handshakes_take_turns() {
        let hosts = MAX_CONNECTING + 8;
        let t0 = std::time::Instant::now();
        let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut src = "[defaults]\nconnect_timeout = \"1s\"\n[builder]\naddress = \"127.0.0.1\"\n"
            .to_string();
        for i in 0..hosts {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            src.push_str(&format!(
                "[hosts.h{i}]\naddress = \"127.0.0.1\"\nport = {port}\n"
            ));
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                accepted.lock().unwrap().push(t0.elapsed());
                // Say nothing until the client gives up.
                let mut buf = [0u8; 64];
                while let Ok(k) = tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await {
                    if k == 0 {
                        break;
                    }
                }
            });
        }
        let inv = Inventory::parse(std::path::Path::new("inv.toml"), &src).unwrap();
        let sessions = Sessions::new(&inv, HostKeyPolicy::Strict);
        let all = futures_util::future::join_all((0..hosts).map(|i| {
            let s = sessions.clone();
            async move { s.get(&format!("h{i}")).await.err().map(|e| e.to_string()) }
        }))
        .await;
        let accepted = accepted.lock().unwrap().clone();
        assert_eq!(accepted.len(), hosts);
        let first_turn = accepted
            .iter()
            .filter(|t| **t < std::time::Duration::from_millis(900))
            .count();
        assert_eq!(first_turn, MAX_CONNECTING, "{accepted:?}");
        for e in &all {
            let e = e.as_deref().expect("no SSH here: every connect fails");
            assert!(e.contains("within 1s"), "{e}");
        }
        // Two turns of 1 s timeouts.
        assert!(t0.elapsed() >= std::time::Duration::from_millis(1900));
    }
}
