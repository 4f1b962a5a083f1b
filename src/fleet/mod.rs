//! The fleet as one run sees it: inventory machines mapped to SSH targets
//! (inventory values first, then `~/.ssh/config`), and one session per
//! machine, opened on first use and shared by every step of the run.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::inventory::{Connection, Inventory};
use crate::ssh::{ConnectError, HostKeyPolicy, SshConfig, SshSession, SshTarget};

/// The name the builder goes by in messages and events.
pub const BUILDER: &str = "builder";

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
        Arc::new(Sessions { targets, open })
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
        cell.get_or_try_init(|| SshSession::connect(target.clone()))
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
