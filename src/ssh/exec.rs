//! Running one command on one session channel: collected to the end
//! ([`collect`]) or streamed ([`stream`]). Every channel is drained to its
//! close — an unread russh channel stalls its whole connection — unless its
//! reader stops it ([`crate::remote::Stop`]): then it is closed (with its
//! own connection, if it has one) and what the command still sends is
//! dropped unread (`ssh_exec`'s stop test: a 4 GB `head` stopped after
//! 64 KiB dies of the closed pipe, the whole test in 1 s; drained instead,
//! it had not ended 10 s later).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use russh::client::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig};
use tokio::io::{AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;

use super::connect::Conn;
use crate::remote::{Exit, Output, Stop, Stopping, Streaming};

/// Bytes of stdout buffered between the channel and the reader of a stream.
const STREAM_BUFFER: usize = 256 * 1024;
/// Stderr kept for a streamed command (the tail, if it says more).
const STREAM_STDERR_MAX: usize = 1024 * 1024;

/// Run `command` on `channel` and collect everything it prints. Stdin is
/// `input` (a sudo password line), then closed. `Err` only when the server
/// refused to start it.
pub(crate) async fn collect(
    channel: Channel<Msg>,
    command: &str,
    input: &[u8],
) -> anyhow::Result<Output> {
    channel
        .exec(true, command.as_bytes())
        .await
        .context("sending the exec request")?;
    let (mut read, write) = channel.split();
    if !input.is_empty() {
        let _ = write.data(input).await;
    }
    // Like `ssh host cmd </dev/null`: a command reading stdin sees EOF.
    let _ = write.eof().await;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut state = State::default();
    while let Some(msg) = read.wait().await {
        match msg {
            ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, ext: 1 } => stderr.extend_from_slice(&data),
            other => {
                if state.observe(other)? {
                    break;
                }
            }
        }
    }
    Ok(Output::new(state.exit(), stdout, stderr))
}

/// How long a hung-up command has to end before the channel is closed.
const HANG_UP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Run `command` on `channel`, sending its output to `out` as it arrives,
/// until it ends or `hang_up` resolves. Stdin is held open until the
/// hang-up and closed (EOF) then: the command is expected to end on that
/// (`crate::exec` wraps it so). A signal request is no use here: OpenSSH
/// refuses them for root sessions ("session signalling requires privilege
/// separation", seen on the test fleet). The channel is closed
/// [`HANG_UP_GRACE`] after a hang-up if the command is still running.
pub(crate) async fn watch(
    channel: Channel<Msg>,
    command: &str,
    out: tokio::sync::mpsc::Sender<crate::remote::Chunk>,
    hang_up: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Exit> {
    use crate::remote::Chunk;
    channel
        .exec(true, command.as_bytes())
        .await
        .context("sending the exec request")?;
    let (mut read, write) = channel.split();
    let mut state = State::default();
    let mut hang_up = std::pin::pin!(hang_up);
    // Armed at the hang-up.
    let grace = tokio::time::sleep(std::time::Duration::from_secs(365 * 86400));
    tokio::pin!(grace);
    let mut hung_up = false;
    loop {
        tokio::select! {
            msg = read.wait() => match msg {
                None => break,
                Some(ChannelMsg::Data { data }) => {
                    let _ = out.send(Chunk::Stdout(data.to_vec())).await;
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    let _ = out.send(Chunk::Stderr(data.to_vec())).await;
                }
                Some(other) => {
                    if state.observe(other)? {
                        break;
                    }
                }
            },
            () = &mut hang_up, if !hung_up => {
                hung_up = true;
                let _ = write.eof().await;
                grace.as_mut().reset(tokio::time::Instant::now() + HANG_UP_GRACE);
            }
            () = &mut grace, if hung_up => {
                let _ = write.close().await;
                break;
            }
        }
    }
    Ok(state.exit())
}

/// Exit bookkeeping shared by both modes.
#[derive(Default)]
struct State {
    started: bool,
    exit: Option<Exit>,
    /// The server said the output is all sent (EOF) or closed the channel.
    /// OpenSSH sends the exit status as soon as the command ends and its
    /// remaining output after it: a channel that ends with neither (the
    /// connection dropped) may have lost output.
    output_ended: bool,
}

impl State {
    /// Returns `Ok(true)` when the channel is closed.
    fn observe(&mut self, msg: ChannelMsg) -> anyhow::Result<bool> {
        match msg {
            ChannelMsg::Success => self.started = true,
            ChannelMsg::Failure if !self.started => {
                anyhow::bail!("the server refused to run the command (exec request denied)")
            }
            ChannelMsg::ExitStatus { exit_status } => {
                self.exit = Some(Exit::Code { code: exit_status })
            }
            ChannelMsg::ExitSignal { signal_name, .. } => {
                self.exit = Some(Exit::Signal {
                    signal: signal_name_of(&signal_name),
                })
            }
            ChannelMsg::Eof => self.output_ended = true,
            ChannelMsg::Close => {
                self.output_ended = true;
                return Ok(true);
            }
            _ => {}
        }
        Ok(false)
    }

    /// No exit status before the channel went away, or no end of its
    /// output (an exit status followed by a dropped connection: the output
    /// cut short read as a clean success): the connection was lost.
    fn exit(&mut self) -> Exit {
        match self.exit.take() {
            Some(exit) if self.output_ended => exit,
            _ => Exit::ConnectionLost,
        }
    }
}

fn signal_name_of(sig: &Sig) -> String {
    match sig {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

/// Start `command` with streaming stdin/stdout on a connection of its own;
/// the connection is closed when the command ends.
pub(crate) async fn stream(conn: Conn, command: &str) -> anyhow::Result<Streaming> {
    let channel = conn
        .handle
        .channel_open_session()
        .await
        .context("opening a channel for the stream")?;
    stream_channel(channel, Holds::Conn(Box::new(conn)), command).await
}

/// What a stream keeps alive until it ends: its own connection (closed
/// then), or a channel slot of the shared one.
pub(crate) enum Holds {
    Conn(Box<Conn>),
    Slot(tokio::sync::OwnedSemaphorePermit),
}

/// Run `command` on an open channel with streamed stdin and stdout.
pub(crate) async fn stream_channel(
    channel: Channel<Msg>,
    holds: Holds,
    command: &str,
) -> anyhow::Result<Streaming> {
    channel
        .exec(true, command.as_bytes())
        .await
        .context("sending the exec request")?;
    let (read, write) = channel.split();
    let write = Arc::new(write);
    let stdin = Stdin {
        inner: Box::pin(write.make_writer()),
        half: Some(write.clone()),
        shut_down: false,
    };
    let (mut tx, rx) = tokio::io::duplex(STREAM_BUFFER);
    let (done_tx, done_rx) = oneshot::channel();
    let (stop, stopping) = Stop::new();
    tokio::spawn(async move {
        let ends = match holds {
            Holds::Conn(_) => Ending::WithConnection,
            Holds::Slot(_) => Ending::ChannelClosed(write),
        };
        let result = pump(read, &mut tx, stopping, ends).await;
        drop(tx); // EOF for the stdout reader
        match holds {
            Holds::Conn(conn) => conn.disconnect().await,
            Holds::Slot(permit) => drop(permit),
        }
        let _ = done_tx.send(result);
    });
    Ok(Streaming {
        stdin: Box::pin(stdin),
        stdout: Box::pin(rx),
        finish: Box::pin(async move {
            done_rx
                .await
                .context("the stream's reader task ended without a result")?
        }),
        stop,
    })
}

/// How a stream asked to stop ([`Stop::now`]) ends.
enum Ending {
    /// Its own connection is closed right after: nothing more to read.
    WithConnection,
    /// A channel of the shared connection: closed. russh forgets a channel
    /// as it sends its close, so nothing more arrives for it (the server's
    /// close neither) and nothing of it can stall the connection.
    ChannelClosed(Arc<ChannelWriteHalf<Msg>>),
}

/// Move stdout into the bounded pipe, keep the stderr tail, wait for the
/// exit ([`drain`]), or stop when asked to, even mid-write (see [`Ending`]).
async fn pump(
    mut read: ChannelReadHalf,
    tx: &mut DuplexStream,
    stopping: Stopping,
    ends: Ending,
) -> anyhow::Result<Output> {
    let mut stderr: Vec<u8> = Vec::new();
    let mut state = State::default();
    let stopped = tokio::select! {
        drained = drain(&mut read, tx, &mut stderr, &mut state) => {
            drained?;
            false
        }
        () = stopping.requested() => true,
    };
    if stopped {
        // What it still sends is for nobody. The read half goes first: the
        // connection's loop may be blocked handing this unread channel its
        // data, and the close, queued behind it, would never be sent.
        drop(read);
        if let Ending::ChannelClosed(half) = &ends {
            let _ = half.close().await;
        }
    }
    let _ = tx.shutdown().await;
    Ok(Output::new(state.exit(), Vec::new(), stderr))
}

/// Read the channel to its close: stdout into the bounded pipe (blocking
/// while the reader is behind: backpressure), the stderr tail kept.
async fn drain(
    read: &mut ChannelReadHalf,
    tx: &mut DuplexStream,
    stderr: &mut Vec<u8>,
    state: &mut State,
) -> anyhow::Result<()> {
    let mut reader_gone = false;
    while let Some(msg) = read.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                if !reader_gone && tx.write_all(&data).await.is_err() {
                    // Nobody reads stdout any more: keep draining, discard.
                    reader_gone = true;
                }
            }
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                stderr.extend_from_slice(&data);
                if stderr.len() > STREAM_STDERR_MAX {
                    let cut = stderr.len() - STREAM_STDERR_MAX;
                    stderr.drain(..cut);
                }
            }
            other => {
                if state.observe(other)? {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// The most one write hands to russh: a write becomes one SSH message.
/// russh's connection loop takes every queued message at once (its queue
/// holds 10) into one output buffer, which grows to the largest such batch
/// and never shrinks: 256 KiB writes left 260 KiB per host (130 MB at
/// 500); 32 KiB writes still 306 KB per host, 153 MB of a 300-path relay to
/// 500 hosts (heaptrack, the controller's largest holder at its peak); 8 KiB
/// bounds it near 100 KB.
const MAX_WRITE: usize = 8 * 1024;

/// The remote command's stdin; `shutdown()` sends EOF, and so does dropping
/// it without shutting it down.
struct Stdin {
    inner: Pin<Box<dyn AsyncWrite + Send>>,
    half: Option<Arc<ChannelWriteHalf<Msg>>>,
    shut_down: bool,
}

impl AsyncWrite for Stdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = buf.len().min(MAX_WRITE);
        self.inner.as_mut().poll_write(cx, &buf[..n])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = self.inner.as_mut().poll_shutdown(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.shut_down = true;
        }
        r
    }
}

impl Drop for Stdin {
    fn drop(&mut self) {
        if self.shut_down {
            return;
        }
        if let (Some(half), Ok(rt)) = (self.half.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = half.eof().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exit status is the command's end only once its output ended
    /// (EOF or close): one followed by a dropped connection is lost.
    #[test]
    fn an_exit_status_counts_once_the_output_ended() {
        let mut cut = State::default();
        cut.observe(ChannelMsg::Success).unwrap();
        cut.observe(ChannelMsg::ExitStatus { exit_status: 0 })
            .unwrap();
        assert_eq!(cut.exit(), Exit::ConnectionLost);
        for end in [ChannelMsg::Eof, ChannelMsg::Close] {
            let mut whole = State::default();
            whole.observe(ChannelMsg::Success).unwrap();
            whole
                .observe(ChannelMsg::ExitStatus { exit_status: 3 })
                .unwrap();
            whole.observe(end).unwrap();
            assert_eq!(whole.exit(), Exit::Code { code: 3 });
        }
    }
}
