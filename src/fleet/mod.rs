//! The fleet as one run sees it: inventory machines mapped to SSH targets
//! (inventory values first, then `~/.ssh/config`), and one session per
//! machine, opened on first use and shared by every step of the run. At most
//! [`MAX_CONNECTING`] sessions are being opened at once, so a run over
//! hundreds of hosts does not time its own handshakes out.
//!
//! The deploy is written against the [`Fleet`] trait (a thing that hands out
//! a [`Remote`] per machine), not against SSH: [`Sessions`] is the real one,
//! and tests drive the plan, the waves and the per-host pipeline with fake
//! hosts through the same trait. Machines are named by [`Machine`], so a host
//! that happens to be called `builder` is still a host.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::activation::privilege::{self, SudoCheck};
use crate::inventory::{ConfirmEndpoint, Connection, Inventory};
use crate::keys::Secret;
use crate::remote::Remote;
use crate::ssh::{ConnectError, HostKeyPolicy, SshConfig, SshSession, SshTarget};

#[cfg(test)]
pub(crate) mod fake;

/// The name the builder goes by in messages and events.
pub const BUILDER: &str = "builder";

/// Handshakes in flight at once. The connect timeout runs from the start of
/// a host's own handshake, not while it waits for its turn: 500 hosts at
/// once on a busy controller timed half of them out (seen here).
pub const MAX_CONNECTING: usize = 32;

/// A machine of the run: the builder, or an inventory host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Machine<'a> {
    Builder,
    Host(&'a str),
}

impl std::fmt::Display for Machine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Machine::Builder => f.write_str(BUILDER),
            Machine::Host(h) => f.write_str(h),
        }
    }
}

/// Where a host is reached over SSH, for a copy the builder makes itself
/// (`nix-copy-closure --to user@host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub user: String,
    pub host: String,
    pub port: u16,
}

/// What the deploy needs of the machines it works on: a [`Remote`] for each.
pub trait Fleet: Send + Sync + 'static {
    type Remote: Remote + Clone + Send + Sync + 'static;

    /// The session to `machine`, connecting on first use. A failed connect is
    /// not cached: the next call tries again.
    fn connect(
        &self,
        machine: Machine<'_>,
    ) -> impl Future<Output = Result<Self::Remote, SessionError>> + Send;

    /// How the builder reaches `host` over SSH (copy mode `builder`).
    fn destination(&self, host: &str) -> Option<Destination>;

    /// A NEW connection to `host` (fresh TCP, handshake, authentication),
    /// apart from the run's session, at `at`'s address and port when given:
    /// the proof magic rollback asks for after a live switch.
    fn fresh(
        &self,
        host: &str,
        at: Option<&ConfirmEndpoint>,
    ) -> impl Future<Output = Result<Self::Remote, SessionError>> + Send;

    /// Close every open session (explicit shutdown at the end of a run).
    fn close_all(&self) -> impl Future<Output = ()> + Send;

    /// Close `host`'s session: the run is done with the host. A later
    /// command on it fails (it is not reconnected).
    fn close(&self, host: &str) -> impl Future<Output = ()> + Send;

    fn host(&self, name: &str) -> impl Future<Output = Result<Self::Remote, SessionError>> + Send {
        self.connect(Machine::Host(name))
    }

    fn builder(&self) -> impl Future<Output = Result<Self::Remote, SessionError>> + Send {
        self.connect(Machine::Builder)
    }
}

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

/// One machine's target and its session, once open.
struct Slot {
    target: SshTarget,
    open: OnceCell<SshSession>,
}

impl Slot {
    fn new(target: SshTarget) -> Slot {
        Slot {
            target,
            open: OnceCell::new(),
        }
    }
}

/// The run's sudo password of each host that has one (`--ask-sudo-password`
/// or `sudo_password_command`).
pub type SudoPasswords = HashMap<String, Arc<Secret>>;

/// SSH sessions to the builder and hosts of one run: the real [`Fleet`].
pub struct Sessions {
    builder: Slot,
    hosts: HashMap<String, Slot>,
    connecting: tokio::sync::Semaphore,
    passwords: SudoPasswords,
}

impl Sessions {
    /// Prepare (not open) sessions to the builder and every host.
    pub fn new(inv: &Inventory, policy: HostKeyPolicy) -> Arc<Sessions> {
        Sessions::with_passwords(inv, policy, SudoPasswords::new())
    }

    /// Like [`Sessions::new`]; a host in `passwords` has its sudo probed
    /// when its session opens: if sudo asks for a password, the session
    /// feeds it to every privileged command (`sudo -S`), once it proved
    /// right; a wrong one fails the session ([`SessionError::Sudo`]) before
    /// anything on the host changed.
    pub fn with_passwords(
        inv: &Inventory,
        policy: HostKeyPolicy,
        passwords: SudoPasswords,
    ) -> Arc<Sessions> {
        let cfg = SshConfig::load_default().unwrap_or_else(|e| {
            tracing::warn!("ignoring ~/.ssh/config: {e:#}");
            SshConfig::empty()
        });
        let hosts = inv
            .hosts
            .iter()
            .map(|h| {
                let t = target_for(&h.name, &h.connection, policy, &cfg);
                (h.name.clone(), Slot::new(t))
            })
            .collect();
        Arc::new(Sessions {
            builder: Slot::new(target_for(BUILDER, &inv.builder.connection, policy, &cfg)),
            hosts,
            connecting: tokio::sync::Semaphore::new(MAX_CONNECTING),
            passwords,
        })
    }

    fn slot(&self, m: Machine<'_>) -> Option<&Slot> {
        match m {
            Machine::Builder => Some(&self.builder),
            Machine::Host(h) => self.hosts.get(h),
        }
    }

    pub fn target(&self, m: Machine<'_>) -> Option<&SshTarget> {
        self.slot(m).map(|s| &s.target)
    }

    /// The session to `m`, connecting on first use. A failed connect is not
    /// cached: the next call tries again.
    pub async fn get(&self, m: Machine<'_>) -> Result<SshSession, SessionError> {
        let Some(slot) = self.slot(m) else {
            return Err(SessionError::Unknown(m.to_string()));
        };
        let password = match m {
            Machine::Host(h) => self.passwords.get(h),
            Machine::Builder => None,
        };
        slot.open
            .get_or_try_init(|| async {
                // The semaphore is never closed; without a permit, connect anyway.
                let _turn = self.connecting.acquire().await.ok();
                let s = SshSession::connect(slot.target.clone())
                    .await
                    .map_err(|e| SessionError::Connect(Arc::new(e)))?;
                if let Some(pw) = password {
                    sudo_probe(&s, pw).await?;
                }
                Ok(s)
            })
            .await
            .cloned()
    }
}

impl Fleet for Sessions {
    type Remote = SshSession;

    async fn connect(&self, machine: Machine<'_>) -> Result<SshSession, SessionError> {
        self.get(machine).await
    }

    fn destination(&self, host: &str) -> Option<Destination> {
        let t = self.target(Machine::Host(host))?;
        Some(Destination {
            user: t.user().to_owned(),
            host: t.host.clone(),
            port: t.port(),
        })
    }

    async fn fresh(
        &self,
        host: &str,
        at: Option<&ConfirmEndpoint>,
    ) -> Result<SshSession, SessionError> {
        let Some(slot) = self.slot(Machine::Host(host)) else {
            return Err(SessionError::Unknown(host.to_owned()));
        };
        let mut target = slot.target.clone();
        if let Some(at) = at {
            if let Some(a) = &at.address {
                target.host = a.clone();
            }
            if let Some(p) = at.port {
                target.port = Some(p);
            }
        }
        // Judged by what the run's session proved (the key that logs in).
        let s = match slot.open.get() {
            Some(run) => SshSession::connect_beside(target, run).await,
            None => SshSession::connect(target).await,
        }
        .map_err(|e| SessionError::Connect(Arc::new(e)))?;
        // The same sudo as the run's session (probed when it opened).
        if let Some(pw) = slot.open.get().and_then(SshSession::sudo_password) {
            s.use_sudo_password(pw);
        }
        Ok(s)
    }

    async fn close(&self, host: &str) {
        if let Some(s) = self.slot(Machine::Host(host)).and_then(|s| s.open.get()) {
            s.close().await;
        }
    }

    async fn close_all(&self) {
        for slot in std::iter::once(&self.builder).chain(self.hosts.values()) {
            if let Some(s) = slot.open.get() {
                s.close().await;
            }
        }
    }
}

/// A [`Fleet`] shared by the tasks of a run.
impl<F: Fleet> Fleet for Arc<F> {
    type Remote = F::Remote;

    fn connect(
        &self,
        machine: Machine<'_>,
    ) -> impl Future<Output = Result<Self::Remote, SessionError>> + Send {
        (**self).connect(machine)
    }

    fn destination(&self, host: &str) -> Option<Destination> {
        (**self).destination(host)
    }

    fn fresh(
        &self,
        host: &str,
        at: Option<&ConfirmEndpoint>,
    ) -> impl Future<Output = Result<Self::Remote, SessionError>> + Send {
        (**self).fresh(host, at)
    }

    fn close_all(&self) -> impl Future<Output = ()> + Send {
        (**self).close_all()
    }

    fn close(&self, host: &str) -> impl Future<Output = ()> + Send {
        (**self).close(host)
    }
}

/// Why a session could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    #[error("{0} is not in the inventory")]
    Unknown(String),
    #[error(transparent)]
    Connect(Arc<ConnectError>),
    /// sudo on the host did not take the run's password.
    #[error("sudo: {0:?}")]
    Sudo(SudoCheck),
    /// The connection broke while sudo was being checked.
    #[error("checking sudo: {0}")]
    Probe(String),
}

impl SessionError {
    /// The sudo problem, when that is why.
    pub fn sudo_check(&self) -> Option<SudoCheck> {
        match self {
            SessionError::Sudo(c) => Some(c.clone()),
            _ => None,
        }
    }
}

/// A new session to a host with a sudo password: does its sudo ask for
/// one (`sudo -n true`)? Then the password must make `sudo -S true` work,
/// and the session uses it from then on; a host whose sudo needs none
/// never gets it.
async fn sudo_probe(s: &SshSession, password: &Arc<Secret>) -> Result<(), SessionError> {
    let lost = |e: anyhow::Error| SessionError::Probe(format!("{e:#}"));
    match privilege::sudo_preflight(s).await.map_err(lost)? {
        SudoCheck::PasswordRequired => {}
        // Ready (NOPASSWD) or a problem the pipeline reports as it is.
        _ => return Ok(()),
    }
    s.use_sudo_password(password.clone());
    let out = s
        .exec(&privilege::preflight_command())
        .await
        .map_err(lost)?;
    if out.success() {
        return Ok(());
    }
    let stderr = out.stderr_str().to_ascii_lowercase();
    Err(SessionError::Sudo(
        if stderr.contains("incorrect password") || stderr.contains("try again") {
            SudoCheck::WrongPassword
        } else {
            privilege::classify(&out.exit, &out.stderr_str(), out.tail(5))
        },
    ))
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
            async move {
                s.get(Machine::Host(&format!("h{i}")))
                    .await
                    .err()
                    .map(|e| e.to_string())
            }
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
