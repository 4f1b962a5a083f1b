//! [`SshSession`]: one authenticated connection per host, shared by every
//! command of a run (each command is a channel, at most [`MAX_CHANNELS`] at
//! once), reconnected on demand, and the [`Remote`] implementation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use russh::Channel;
use russh::client::Msg;
use tokio::sync::{Mutex, Semaphore};

use super::connect::{Conn, ConnectInfo, connect};
use super::error::ConnectError;
use super::exec;
use super::hostkey::Pins;
use super::target::SshTarget;
use crate::keys::Secret;
use crate::remote::{Command, Output, Remote, Streaming, SudoAuth};
use zeroize::Zeroizing;

/// Channels open at once on one connection: below OpenSSH's default
/// `MaxSessions 10`.
pub const MAX_CHANNELS: usize = 8;

/// A live SSH session to one host. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct SshSession {
    inner: Arc<Inner>,
}

struct Inner {
    target: SshTarget,
    conn: Mutex<Arc<Conn>>,
    channels: Arc<Semaphore>,
    pins: Pins,
    info: std::sync::Mutex<ConnectInfo>,
    closed: AtomicBool,
    /// The user's sudo password, once sudo on this host proved to ask for it.
    sudo_password: std::sync::OnceLock<Arc<Secret>>,
}

impl SshSession {
    /// Connect and authenticate (through jump hosts), verifying host keys.
    pub async fn connect(target: SshTarget) -> Result<SshSession, ConnectError> {
        let pins = Pins::default();
        let conn = connect(&target, &pins).await?;
        Ok(SshSession {
            inner: Arc::new(Inner {
                info: std::sync::Mutex::new(conn.info.clone()),
                conn: Mutex::new(Arc::new(conn)),
                channels: Arc::new(Semaphore::new(MAX_CHANNELS)),
                pins,
                target,
                closed: AtomicBool::new(false),
                sudo_password: std::sync::OnceLock::new(),
            }),
        })
    }

    /// How the current connection was made.
    pub fn info(&self) -> ConnectInfo {
        match self.inner.info.lock() {
            Ok(i) => i.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// From now on, privileged commands get `password` on stdin
    /// (`sudo -S`); set once, for hosts whose sudo asks for a password.
    pub fn use_sudo_password(&self, password: Arc<Secret>) {
        let _ = self.inner.sudo_password.set(password);
    }

    /// The password privileged commands get, if sudo on this host asks.
    pub fn sudo_password(&self) -> Option<Arc<Secret>> {
        self.inner.sudo_password.get().cloned()
    }

    /// How `cmd` is rendered here, and the line its stdin starts with (the
    /// password, for a privileged command on a host whose sudo asks).
    fn prepare(&self, cmd: &Command) -> (String, Zeroizing<Vec<u8>>) {
        match self.inner.sudo_password.get() {
            Some(pw) if cmd.is_sudo() => {
                let mut line = Zeroizing::new(Vec::with_capacity(pw.len() + 1));
                line.extend_from_slice(pw.expose());
                line.push(b'\n');
                (cmd.render_as(SudoAuth::PasswordOnStdin), line)
            }
            _ => (cmd.render(), Zeroizing::new(Vec::new())),
        }
    }

    /// Start a stream, its stdin beginning with `first` (if any).
    async fn feed(mut s: Streaming, first: &[u8]) -> anyhow::Result<Streaming> {
        if !first.is_empty() {
            use tokio::io::AsyncWriteExt;
            s.stdin
                .write_all(first)
                .await
                .context("giving sudo its password")?;
        }
        Ok(s)
    }

    pub fn target(&self) -> &SshTarget {
        &self.inner.target
    }

    /// Disconnect; later commands fail.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let conn = self.inner.conn.lock().await.clone();
        conn.disconnect().await;
    }

    /// The live connection, replacing it once if it has died.
    async fn live(&self) -> anyhow::Result<Arc<Conn>> {
        self.ensure_open()?;
        let current = self.inner.conn.lock().await.clone();
        if current.is_closed() {
            return self.reconnect(&current).await;
        }
        Ok(current)
    }

    fn ensure_open(&self) -> anyhow::Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            anyhow::bail!("{}: the SSH session was closed", self.inner.target.name);
        }
        Ok(())
    }

    /// Replace `dead` with a fresh connection (unless another task already did).
    async fn reconnect(&self, dead: &Arc<Conn>) -> anyhow::Result<Arc<Conn>> {
        let mut slot = self.inner.conn.lock().await;
        if !Arc::ptr_eq(&slot, dead) && !slot.is_closed() {
            return Ok(slot.clone());
        }
        tracing::info!(host = %self.inner.target.name, "SSH connection lost, reconnecting");
        let fresh = Arc::new(
            connect(&self.inner.target, &self.inner.pins)
                .await
                .with_context(|| {
                    format!(
                        "{}: reconnecting after the connection was lost",
                        self.inner.target.name
                    )
                })?,
        );
        if let Ok(mut info) = self.inner.info.lock() {
            *info = fresh.info.clone();
        }
        *slot = fresh.clone();
        Ok(fresh)
    }

    /// A new session channel, reconnecting once if the connection is dead.
    async fn open_channel(&self) -> anyhow::Result<Channel<Msg>> {
        let conn = self.live().await?;
        match conn.handle.channel_open_session().await {
            Ok(ch) => Ok(ch),
            Err(first) => {
                if !conn.is_closed()
                    && !matches!(first, russh::Error::SendError | russh::Error::Disconnect)
                {
                    return Err(first).with_context(|| {
                        format!(
                            "{}: the server refused a new channel",
                            self.inner.target.name
                        )
                    });
                }
                let conn = self.reconnect(&conn).await?;
                conn.handle.channel_open_session().await.with_context(|| {
                    format!(
                        "{}: opening a channel after reconnecting",
                        self.inner.target.name
                    )
                })
            }
        }
    }
}

impl Remote for SshSession {
    fn name(&self) -> &str {
        &self.inner.target.name
    }

    async fn exec(&self, cmd: &Command) -> anyhow::Result<Output> {
        let _permit = self
            .inner
            .channels
            .acquire()
            .await
            .context("the session's channel limiter was closed")?;
        let started = std::time::Instant::now();
        let channel = self.open_channel().await?;
        let (text, input) = self.prepare(cmd);
        let out = exec::collect(channel, &text, &input)
            .await
            .with_context(|| format!("{}: starting `{}`", self.inner.target.name, cmd.program()))?;
        tracing::debug!(
            host = %self.inner.target.name,
            ms = started.elapsed().as_millis() as u64,
            exit = %out.exit,
            "exec {}",
            brief(cmd)
        );
        Ok(out)
    }

    async fn exec_stream(&self, cmd: &Command) -> anyhow::Result<Streaming> {
        self.ensure_open()?;
        tracing::debug!(host = %self.inner.target.name, "stream {}", brief(cmd));
        // A dedicated connection: a slow stream reader must not stall the
        // channels of the shared one.
        let conn = connect(&self.inner.target, &self.inner.pins)
            .await
            .with_context(|| {
                format!(
                    "{}: opening a connection for a stream",
                    self.inner.target.name
                )
            })?;
        let (text, input) = self.prepare(cmd);
        let s = exec::stream(conn, &text)
            .await
            .with_context(|| format!("{}: starting `{}`", self.inner.target.name, cmd.program()))?;
        Self::feed(s, &input).await
    }

    async fn exec_piped(&self, cmd: &Command) -> anyhow::Result<Streaming> {
        tracing::debug!(host = %self.inner.target.name, "piped {}", brief(cmd));
        // A channel of the shared connection, its slot held until it ends.
        let permit = self
            .inner
            .channels
            .clone()
            .acquire_owned()
            .await
            .context("the session's channel limiter was closed")?;
        let channel = self.open_channel().await?;
        let (text, input) = self.prepare(cmd);
        let s = exec::stream_channel(channel, exec::Holds::Slot(permit), &text)
            .await
            .with_context(|| format!("{}: starting `{}`", self.inner.target.name, cmd.program()))?;
        Self::feed(s, &input).await
    }
}

/// A command line cut short for a debug log.
fn brief(cmd: &Command) -> String {
    let mut s = cmd.render();
    if s.len() > 160 {
        let mut cut = 160;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}
