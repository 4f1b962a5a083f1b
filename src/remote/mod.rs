//! The narrow seam between nixgate's logic and a machine it drives.
//!
//! Everything nixgate does on a host or on the builder is a free function over
//! a [`Remote`]: it builds a typed [`Command`], hands it to `exec` (or
//! `exec_stream` for bulk byte streams) and interprets the typed [`Output`].
//! The SSH transport implements [`Remote`]; tests implement it with
//! [`scripted::ScriptedRemote`] to assert the exact argv that would be sent.
//! Shell quoting happens in exactly one place, [`Command::render`].

pub mod batch;
pub mod command;
pub mod local;
pub mod patient;
pub mod quote;
pub mod scripted;
pub mod stop;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

pub use command::{Command, SudoAuth};
pub use stop::{Stop, Stopping};

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Exit {
    /// The command exited with this status.
    Code { code: u32 },
    /// The command was killed by this signal (name as the SSH server reports it, e.g. `KILL`).
    Signal { signal: String },
    /// The connection (or channel) went away before an exit status arrived:
    /// the command may still be running, or may have finished, on the far side.
    ConnectionLost,
}

impl Exit {
    pub fn success(&self) -> bool {
        matches!(self, Exit::Code { code: 0 })
    }

    pub fn code(&self) -> Option<u32> {
        match self {
            Exit::Code { code } => Some(*code),
            _ => None,
        }
    }

    /// Ended by a signal: one the SSH server reports, or one a shell or
    /// `timeout` relays as 128 + its number. A lost connection says
    /// nothing of how the command ended.
    pub fn killed(&self) -> bool {
        match self {
            Exit::Signal { .. } => true,
            Exit::Code { code } => *code > 128,
            Exit::ConnectionLost => false,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code { code } => write!(f, "exit code {code}"),
            Exit::Signal { signal } => write!(f, "killed by signal {signal}"),
            Exit::ConnectionLost => f.write_str("connection lost before the command finished"),
        }
    }
}

/// The last `n` non-empty lines of `text`.
pub fn last_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].iter().map(|l| (*l).to_owned()).collect()
}

/// Everything a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Exit,
}

impl Output {
    pub fn new(exit: Exit, stdout: impl Into<Vec<u8>>, stderr: impl Into<Vec<u8>>) -> Self {
        Output {
            stdout: stdout.into(),
            stderr: stderr.into(),
            exit,
        }
    }

    pub fn success(&self) -> bool {
        self.exit.success()
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The last `n` non-empty lines of stderr (or stdout when stderr is empty),
    /// for error messages that must stay short.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let text = if self.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
            self.stderr_str()
        } else {
            self.stdout_str()
        };
        last_lines(&text, n)
    }

    /// Turn a non-zero exit into an error that names what was being done, the
    /// exit, and the last lines of output.
    pub fn check(self, what: &str) -> anyhow::Result<Output> {
        if self.success() {
            return Ok(self);
        }
        let tail = self.tail(15);
        if tail.is_empty() {
            anyhow::bail!("{what} failed ({})", self.exit)
        }
        anyhow::bail!("{what} failed ({}):\n  {}", self.exit, tail.join("\n  "))
    }
}

/// A piece of a watched command's output, as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// A byte sink feeding a remote command's stdin. Shutting it down sends EOF.
pub type RemoteStdin = Pin<Box<dyn AsyncWrite + Send>>;
/// A remote command's stdout as a byte stream.
pub type RemoteStdout = Pin<Box<dyn AsyncRead + Send>>;
/// Resolves when the remote command ends; its `stdout` is empty (it was
/// streamed), `stderr` holds what the command wrote there.
pub type RemoteFinish = Pin<Box<dyn Future<Output = anyhow::Result<Output>> + Send>>;

/// A running command whose stdin and stdout are streams.
pub struct Streaming {
    pub stdin: RemoteStdin,
    pub stdout: RemoteStdout,
    pub finish: RemoteFinish,
    /// Ends the command's stream early ([`Stop::now`]); dropped, the
    /// stream runs to its end.
    pub stop: Stop,
}

/// Does the connection a command rode still stand? Answered without a
/// round trip ([`Remote::connection_watch`]): over SSH, no from the moment
/// that connection closed or the session replaced it, whatever rode it
/// (the host lock) gone with it.
#[derive(Clone)]
pub struct ConnectionWatch(std::sync::Arc<dyn Fn() -> bool + Send + Sync>);

impl ConnectionWatch {
    pub fn new(stands: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        ConnectionWatch(std::sync::Arc::new(stands))
    }

    pub fn stands(&self) -> bool {
        (self.0)()
    }
}

/// Run `cmd` with `input` on its stdin (on the host's shared connection),
/// collecting stdout: for input too large for an argument (a path list, a
/// record). Stdin is written while stdout is read, so neither side stalls.
/// `Err` when the command could not be started, or it succeeded but its
/// input or output broke; the command's own failure is the `Output`'s
/// [`Exit`] (checked first: it says more than the broken pipe it left).
pub async fn exec_input<R: Remote>(
    remote: &R,
    cmd: &Command,
    input: &[u8],
) -> anyhow::Result<Output> {
    use anyhow::Context;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Streaming {
        mut stdin,
        mut stdout,
        finish,
        ..
    } = remote.exec_piped(cmd).await?;
    let writer = async {
        stdin.write_all(input).await?;
        stdin.shutdown().await
    };
    let mut out = Vec::new();
    let reader = stdout.read_to_end(&mut out);
    let (w, r) = tokio::join!(writer, reader);
    drop(stdin);
    let mut done = finish.await?;
    done.stdout = out;
    // A command that failed says why better than the broken pipe it left.
    if !done.success() {
        return Ok(done);
    }
    w.with_context(|| format!("sending {}'s input on {}", cmd.program(), remote.name()))?;
    r.with_context(|| format!("reading {}'s output on {}", cmd.program(), remote.name()))?;
    Ok(done)
}

/// The value behind `m`, whether or not a thread panicked holding it: for
/// slots that are whole between any two statements (a spare, a queue).
pub(crate) fn unpoisoned<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A machine nixgate can run commands on.
///
/// `exec` returns `Err` only when the command could not be started at all
/// (no connection, channel refused); a command that ran and failed, or whose
/// connection dropped mid-way, is an `Ok(Output)` with the matching [`Exit`].
pub trait Remote: Send + Sync {
    /// A short name for messages: the inventory name of the host, or `builder`.
    fn name(&self) -> &str;

    /// Run a command to completion, collecting stdout and stderr.
    fn exec(&self, cmd: &Command) -> impl Future<Output = anyhow::Result<Output>> + Send;

    /// Start a command with streaming stdin and stdout, for bulk data (a
    /// closure, a source tarball): over SSH it gets a connection of its own,
    /// so a slow reader cannot stall other commands.
    fn exec_stream(&self, cmd: &Command) -> impl Future<Output = anyhow::Result<Streaming>> + Send;

    /// [`exec_input`] for small input that is not secret: over SSH it rides
    /// in the command line ([`Command::render_with_input`]), one round trip
    /// instead of two (sshd opens a session's window only once the exec
    /// request has arrived, so stdin sent with it waits a round trip:
    /// measured at 50 ms, 53 ms for `exec`, 102 ms for `exec_input`). Other
    /// remotes, and input that cannot ride in the line, take stdin. Never
    /// a secret: the host's process list shows the line.
    fn exec_small_input(
        &self,
        cmd: &Command,
        input: &[u8],
    ) -> impl Future<Output = anyhow::Result<Output>> + Send
    where
        Self: Sized,
    {
        exec_input(self, cmd, input)
    }

    /// Run `cmds` one after another in one exec, stdin empty, and return
    /// their outputs in order ([`batch`]); fewer than `cmds` when the batch
    /// was cut short or cannot run here, and then the rest run on their
    /// own. This default runs nothing ahead: a test remote sees every
    /// command when the code asks for it.
    fn exec_batch(&self, cmds: &[Command]) -> impl Future<Output = Vec<Output>> + Send {
        let _ = cmds;
        std::future::ready(Vec::new())
    }

    /// A hint that an [`Remote::exec_stream`] will follow: over SSH its
    /// connection starts now, so the handshake overlaps other work. Where
    /// there is nothing to open ahead, nothing happens.
    fn prepare_stream(&self) {}

    /// Like [`Remote::exec_stream`], for small or slow-trickling streams
    /// that are read promptly (a path list, a build log, a held lock): over
    /// SSH it shares the host's one connection.
    fn exec_piped(&self, cmd: &Command) -> impl Future<Output = anyhow::Result<Streaming>> + Send {
        self.exec_stream(cmd)
    }

    /// A watch on the connection that [`Remote::exec_piped`] commands ride
    /// now, for what is kept alive on one (the host lock): it is gone the
    /// moment the watch says so, before the session reconnects for the
    /// next command. `None` where commands ride no connection that can be
    /// lost and replaced (a local or scripted remote).
    fn connection_watch(&self) -> impl Future<Output = Option<ConnectionWatch>> + Send {
        std::future::ready(None)
    }

    /// Run a command, handing its stdout and stderr to `out` as they
    /// arrive, until it ends or `hang_up` resolves. Its stdin is held open
    /// while it runs and closed (EOF) at the hang-up, which the command must
    /// take as its cue to end (see `crate::exec`'s wrapper). `Err` only
    /// when it could not be started. This default (for test remotes)
    /// delivers the output when the command ends.
    fn exec_watched(
        &self,
        cmd: &Command,
        out: tokio::sync::mpsc::Sender<Chunk>,
        hang_up: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = anyhow::Result<Exit>> + Send {
        async move {
            tokio::select! {
                done = self.exec(cmd) => {
                    let done = done?;
                    let _ = out.send(Chunk::Stdout(done.stdout)).await;
                    let _ = out.send(Chunk::Stderr(done.stderr)).await;
                    Ok(done.exit)
                }
                () = hang_up => Ok(Exit::Signal { signal: "HUP".into() }),
            }
        }
    }
}
