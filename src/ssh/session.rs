//! [`SshSession`]: one authenticated connection per host, shared by every
//! command of a run (each command is a channel, at most [`MAX_CHANNELS`] at
//! once), reconnected on demand, and the [`Remote`] implementation.
//!
//! A command on a new channel costs two round trips: the channel's open
//! and its confirmation, then the exec request and the command's answer.
//! The session keeps one spare channel open ahead of need, so a command
//! takes the spare and costs one; the next spare opens while it runs. At
//! 50 ms, the 23 commands of a gated push to one host went from 2 round
//! trips each to 1 (BENCHMARKS.md, "The round trips of one gated push").
//! The spare is one more session on the connection: [`MAX_CHANNELS`] + 1
//! stays under OpenSSH's `MaxSessions 10`.
//!
//! A bulk stream gets a connection of its own, and a new connection is a
//! TCP and SSH handshake: 6 round trips, 0.3 s at 50 ms. Told that a stream
//! will follow ([`Remote::prepare_stream`]), the session opens that
//! connection ahead of need, and the stream takes it. The relay's builder
//! stream opened only when the copy began, and waited out its handshake
//! while the host's side was ready (issue 21; numbers in BENCHMARKS.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context as _;
use russh::Channel;
use russh::client::Msg;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinHandle;

use super::connect::{Conn, ConnectInfo, Proven, connect};
use super::error::ConnectError;
use super::exec;
use super::hostkey::Pins;
use super::target::SshTarget;
use crate::keys::Secret;
use crate::remote::{Command, ConnectionWatch, Output, Remote, Streaming, SudoAuth, unpoisoned};
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
    /// What the current connection proved (the key it logged in with, the
    /// host key): its reconnects are judged by it ([`Proven`]).
    proven: std::sync::Mutex<Proven>,
    closed: AtomicBool,
    /// How many times the connection was replaced (begun to be: counted
    /// before the handshake), for [`Remote::connection_watch`].
    generation: AtomicU64,
    /// A channel being opened (or open) ahead of the next command.
    spare: std::sync::Mutex<Option<Spare>>,
    /// A connection being made (or made) ahead of the next stream, and when
    /// it was started.
    stream_spare: std::sync::Mutex<Option<StreamSpare>>,
    /// The user's sudo password, once sudo on this host proved to ask for it.
    sudo_password: std::sync::OnceLock<Arc<Secret>>,
}

/// A connection made ahead for a stream, and when it was started.
struct StreamSpare {
    started: std::time::Instant,
    making: JoinHandle<Result<Conn, ConnectError>>,
}

/// How long a connection made ahead for a stream is used: it serves the
/// copy that follows the plan within seconds; one left idle longer (the
/// copy of a later wave) is replaced, so a connection a firewall or NAT
/// dropped while idle is never the one a copy waits on.
const STREAM_SPARE_FRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// A channel opened ahead of need, on the connection it belongs to.
struct Spare {
    conn: Arc<Conn>,
    opening: tokio::task::JoinHandle<Result<Channel<Msg>, russh::Error>>,
}

impl SshSession {
    /// Connect and authenticate (through jump hosts), verifying host keys.
    pub async fn connect(target: SshTarget) -> Result<SshSession, ConnectError> {
        Self::open(target, Pins::default(), None).await
    }

    /// A new session to the host `run` is a session to (`target` may name
    /// another address of it: the host's `confirm_address`), judged by what
    /// `run` proved: a login that fails without offering the key `run`
    /// logged in with failed on this side, and the host key `run` verified
    /// is accepted at the other address too (the key's possession proves
    /// the same machine; a host whose deploy moved SSH to its
    /// `confirm_address`, unknown to known_hosts under that name, was
    /// refused there and reverted). Host keys `run` pinned (its jump hosts')
    /// hold here too. Magic rollback's confirmation and the soak's check
    /// open these; a host's first session is [`SshSession::connect`].
    pub async fn connect_beside(
        target: SshTarget,
        run: &SshSession,
    ) -> Result<SshSession, ConnectError> {
        let proven = unpoisoned(&run.inner.proven).clone();
        Self::open(target, run.inner.pins.clone(), Some(proven)).await
    }

    async fn open(
        target: SshTarget,
        pins: Pins,
        proven: Option<Proven>,
    ) -> Result<SshSession, ConnectError> {
        let conn = Arc::new(connect(&target, &pins, proven.as_ref()).await?);
        let session = SshSession {
            inner: Arc::new(Inner {
                info: std::sync::Mutex::new(conn.info.clone()),
                proven: std::sync::Mutex::new(conn.proven.clone()),
                conn: Mutex::new(conn.clone()),
                channels: Arc::new(Semaphore::new(MAX_CHANNELS)),
                pins,
                target,
                closed: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                spare: std::sync::Mutex::new(None),
                stream_spare: std::sync::Mutex::new(None),
                sudo_password: std::sync::OnceLock::new(),
            }),
        };
        // The first command's channel opens now: a session connected ahead
        // of need (the hosts during the build, the confirm's fresh one)
        // answers its first command in one round trip, not two.
        session.refill(&conn);
        Ok(session)
    }

    /// How the current connection was made.
    pub fn info(&self) -> ConnectInfo {
        unpoisoned(&self.inner.info).clone()
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

    /// Does `cmd` read the user's sudo password from its stdin here?
    fn asks_password(&self, cmd: &Command) -> bool {
        cmd.is_sudo() && self.inner.sudo_password.get().is_some()
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
        if let Some(spare) = self.take_spare() {
            spare.opening.abort();
        }
        if let Some(spare) = self.take_stream_spare() {
            spare.making.abort();
        }
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
        // What rode the dead one (the host lock) is gone: said from now on,
        // not once a new connection stands.
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        let fresh = Arc::new(
            self.new_conn("reconnecting after the connection was lost")
                .await?,
        );
        if let Ok(mut info) = self.inner.info.lock() {
            *info = fresh.info.clone();
        }
        *unpoisoned(&self.inner.proven) = fresh.proven.clone();
        *slot = fresh.clone();
        Ok(fresh)
    }

    /// A session channel for the next command: the spare when it is ready
    /// on the live connection, else a new one; either way the next spare
    /// starts opening.
    async fn open_channel(&self) -> anyhow::Result<Channel<Msg>> {
        let conn = self.live().await?;
        if let Some(spare) = self.take_spare()
            && Arc::ptr_eq(&spare.conn, &conn)
            && let Ok(Ok(channel)) = spare.opening.await
        {
            self.refill(&conn);
            return Ok(channel);
        }
        let channel = self.open_new_channel(conn).await?;
        let conn = self.inner.conn.lock().await.clone();
        self.refill(&conn);
        Ok(channel)
    }

    /// One of the [`MAX_CHANNELS`] command slots, held while a command runs.
    async fn slot(&self) -> anyhow::Result<tokio::sync::SemaphorePermit<'_>> {
        self.inner
            .channels
            .acquire()
            .await
            .context("the session's channel limiter was closed")
    }

    fn take_spare(&self) -> Option<Spare> {
        unpoisoned(&self.inner.spare).take()
    }

    /// Start opening the next spare channel on `conn`, unless one is
    /// already there: at most one spare exists, so [`MAX_CHANNELS`]
    /// commands and the spare stay under the server's session limit even
    /// when every command races for it.
    fn refill(&self, conn: &Arc<Conn>) {
        if conn.is_closed() || self.inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut slot = unpoisoned(&self.inner.spare);
        if slot.is_some() {
            return;
        }
        let opening = {
            let conn = conn.clone();
            tokio::spawn(async move { conn.handle.channel_open_session().await })
        };
        *slot = Some(Spare {
            conn: conn.clone(),
            opening,
        });
    }

    fn take_stream_spare(&self) -> Option<StreamSpare> {
        unpoisoned(&self.inner.stream_spare).take()
    }

    /// A connection for a stream: the one made ahead of need when it is
    /// up and not older than [`STREAM_SPARE_FRESH`], else a new one (a
    /// spare that failed is logged and replaced: the stream's own attempt
    /// says what is wrong, with its own error).
    async fn stream_conn(&self) -> anyhow::Result<Conn> {
        if let Some(spare) = self.take_stream_spare() {
            if spare.started.elapsed() > STREAM_SPARE_FRESH {
                spare.making.abort();
            } else {
                match spare.making.await {
                    Ok(Ok(conn)) if !conn.is_closed() => return Ok(conn),
                    Ok(Ok(_)) => tracing::debug!(
                        host = %self.inner.target.name,
                        "the connection made ahead for a stream had closed"
                    ),
                    Ok(Err(e)) => tracing::debug!(
                        host = %self.inner.target.name,
                        "the connection made ahead for a stream failed: {e}"
                    ),
                    Err(e) => tracing::debug!(host = %self.inner.target.name, "{e}"),
                }
            }
        }
        self.new_conn("opening a connection for a stream").await
    }

    /// A new connection to this session's target; `why` names it in errors.
    async fn new_conn(&self, why: &str) -> anyhow::Result<Conn> {
        let proven = unpoisoned(&self.inner.proven).clone();
        connect(&self.inner.target, &self.inner.pins, Some(&proven))
            .await
            .with_context(|| format!("{}: {why}", self.inner.target.name))
    }

    /// Run `text` (`cmd` rendered), stdin `input` then EOF, collected.
    async fn exec_text(&self, cmd: &Command, text: &str, input: &[u8]) -> anyhow::Result<Output> {
        let _permit = self.slot().await?;
        let started = std::time::Instant::now();
        let channel = self.open_channel().await?;
        let out = exec::collect(channel, text, input)
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

    /// A new session channel, reconnecting once if the connection is dead.
    async fn open_new_channel(&self, conn: Arc<Conn>) -> anyhow::Result<Channel<Msg>> {
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
        let (text, input) = self.prepare(cmd);
        self.exec_text(cmd, &text, &input).await
    }

    async fn exec_small_input(&self, cmd: &Command, input: &[u8]) -> anyhow::Result<Output> {
        // A sudo that reads its password from stdin keeps stdin.
        let inline = if self.asks_password(cmd) {
            None
        } else {
            cmd.render_with_input(input)
        };
        match inline {
            Some(text) => self.exec_text(cmd, &text, &[]).await,
            None => crate::remote::exec_input(self, cmd, input).await,
        }
    }

    async fn exec_stream(&self, cmd: &Command) -> anyhow::Result<Streaming> {
        self.ensure_open()?;
        tracing::debug!(host = %self.inner.target.name, "stream {}", brief(cmd));
        // A dedicated connection: a slow stream reader must not stall the
        // channels of the shared one.
        let conn = self.stream_conn().await?;
        let (text, input) = self.prepare(cmd);
        let s = exec::stream(conn, &text)
            .await
            .with_context(|| format!("{}: starting `{}`", self.inner.target.name, cmd.program()))?;
        Self::feed(s, &input).await
    }

    async fn exec_batch(&self, cmds: &[Command]) -> Vec<Output> {
        // A sudo that reads its password from stdin cannot run in a batch.
        if cmds.iter().any(|c| self.asks_password(c)) {
            return Vec::new();
        }
        crate::remote::batch::run_framed(self, cmds).await
    }

    fn prepare_stream(&self) {
        if self.inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut slot = unpoisoned(&self.inner.stream_spare);
        if slot.is_some() {
            return;
        }
        let target = self.inner.target.clone();
        let pins = self.inner.pins.clone();
        let proven = unpoisoned(&self.inner.proven).clone();
        *slot = Some(StreamSpare {
            started: std::time::Instant::now(),
            making: tokio::spawn(async move { connect(&target, &pins, Some(&proven)).await }),
        });
    }

    async fn exec_watched(
        &self,
        cmd: &Command,
        out: tokio::sync::mpsc::Sender<crate::remote::Chunk>,
        hang_up: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<crate::remote::Exit> {
        let _permit = self.slot().await?;
        let channel = self.open_channel().await?;
        exec::watch(channel, &cmd.render(), out, hang_up)
            .await
            .with_context(|| format!("{}: starting `{}`", self.inner.target.name, cmd.program()))
    }

    /// The live connection, and the session's count of replacements with
    /// it (read together, under the slot's lock): it stands while it is
    /// open and not replaced (a reconnect replaces only a dead one, but a
    /// channel refused with a disconnect replaces one not yet seen closed).
    async fn connection_watch(&self) -> Option<ConnectionWatch> {
        let slot = self.inner.conn.lock().await;
        let (conn, generation) = (
            Arc::downgrade(&slot),
            self.inner.generation.load(Ordering::SeqCst),
        );
        drop(slot);
        let session = Arc::downgrade(&self.inner);
        Some(ConnectionWatch::new(move || {
            let same = (session.upgrade())
                .is_some_and(|s| s.generation.load(Ordering::SeqCst) == generation);
            same && conn.upgrade().is_some_and(|c| !c.is_closed())
        }))
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
