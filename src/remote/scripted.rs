//! A [`Remote`] for tests: records every command it is asked to run and
//! answers from a caller-supplied responder, so unit tests can assert the exact
//! argv nixgate sends and feed back the outputs real machines give. With
//! [`ScriptedRemote::with_stdin`], a stream is answered once its stdin is
//! closed, and the responder sees what was written to it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

use super::{Command, Exit, Output, Remote, Streaming};

type Responder = dyn Fn(&Command, Option<&[u8]>) -> Output + Send + Sync;
/// Picks commands by their argv.
type Picks = dyn Fn(&Command) -> bool + Send + Sync;
/// Each stream's command and what was written to its stdin.
type StdinLog = Arc<Mutex<Vec<(Command, Vec<u8>)>>>;

/// Records commands; answers through the responder.
#[derive(Clone)]
pub struct ScriptedRemote {
    name: String,
    log: Arc<Mutex<Vec<Command>>>,
    stdin_log: StdinLog,
    respond: Arc<Responder>,
    /// Streams answer when stdin closes (and the responder sees it).
    lazy: bool,
    /// Streams (of a lazy remote) answered at once, ending when their
    /// stdin closes: a command that holds on while fed (a host lock).
    at_once: Option<Arc<Picks>>,
}

impl ScriptedRemote {
    pub fn new(name: &str, respond: impl Fn(&Command) -> Output + Send + Sync + 'static) -> Self {
        ScriptedRemote {
            name: name.to_owned(),
            log: Arc::default(),
            stdin_log: Arc::default(),
            respond: Arc::new(move |c, _| respond(c)),
            lazy: false,
            at_once: None,
        }
    }

    /// Streams are answered once their stdin is closed; the responder gets
    /// what was written (`None` for `exec`, which has no stdin).
    pub fn with_stdin(
        name: &str,
        respond: impl Fn(&Command, Option<&[u8]>) -> Output + Send + Sync + 'static,
    ) -> Self {
        ScriptedRemote {
            name: name.to_owned(),
            log: Arc::default(),
            stdin_log: Arc::default(),
            respond: Arc::new(respond),
            lazy: true,
            at_once: None,
        }
    }

    /// Streams of commands `f` picks are answered at once (the responder
    /// sees no stdin), and end when their stdin closes.
    pub fn answering_at_once(
        mut self,
        f: impl Fn(&Command) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.at_once = Some(Arc::new(f));
        self
    }

    /// What each stream was sent on stdin (lazy remotes only), in order.
    pub fn stdins(&self) -> Vec<(Command, Vec<u8>)> {
        self.stdin_log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Every command run so far, in order.
    pub fn commands(&self) -> Vec<Command> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Every argv run so far, in order.
    pub fn argvs(&self) -> Vec<Vec<String>> {
        self.commands().iter().map(|c| c.argv().to_vec()).collect()
    }
}

/// A successful output with this stdout.
pub fn ok(stdout: &str) -> Output {
    Output::new(Exit::Code { code: 0 }, stdout, "")
}

/// A failed output with this exit code and stderr.
pub fn fail(code: u32, stderr: &str) -> Output {
    Output::new(Exit::Code { code }, "", stderr)
}

impl Remote for ScriptedRemote {
    fn name(&self) -> &str {
        &self.name
    }

    async fn exec(&self, cmd: &Command) -> anyhow::Result<Output> {
        if let Ok(mut log) = self.log.lock() {
            log.push(cmd.clone());
        }
        Ok((self.respond)(cmd, None))
    }

    async fn exec_stream(&self, cmd: &Command) -> anyhow::Result<Streaming> {
        if let Ok(mut log) = self.log.lock() {
            log.push(cmd.clone());
        }
        if !self.lazy {
            let out = (self.respond)(cmd, None);
            let stdout = std::io::Cursor::new(out.stdout.clone());
            let finish = Output::new(out.exit, Vec::new(), out.stderr);
            return Ok(Streaming {
                stdin: Box::pin(tokio::io::sink()),
                stdout: Box::pin(stdout),
                finish: Box::pin(async move { Ok(finish) }),
                stop: super::Stop::none(),
            });
        }
        if self.at_once.as_ref().is_some_and(|f| f(cmd)) {
            return Ok(self.held_open(cmd));
        }
        let (closed_tx, closed_rx) = oneshot::channel::<Vec<u8>>();
        let (mut out_w, out_r) = tokio::io::duplex(64 * 1024);
        let (done_tx, done_rx) = oneshot::channel::<Output>();
        let (respond, cmd, log) = (self.respond.clone(), cmd.clone(), self.stdin_log.clone());
        tokio::spawn(async move {
            let input = closed_rx.await.unwrap_or_default();
            let out = respond(&cmd, Some(&input));
            if let Ok(mut l) = log.lock() {
                l.push((cmd, input));
            }
            let _ = tokio::io::AsyncWriteExt::write_all(&mut out_w, &out.stdout).await;
            drop(out_w);
            let _ = done_tx.send(Output::new(out.exit, Vec::new(), out.stderr));
        });
        Ok(Streaming {
            stdin: Box::pin(Collect {
                buf: Vec::new(),
                closed: Some(closed_tx),
            }),
            stdout: Box::pin(out_r),
            finish: Box::pin(async move {
                done_rx
                    .await
                    .map_err(|_| anyhow::anyhow!("scripted stream dropped"))
            }),
            stop: super::Stop::none(),
        })
    }
}

impl ScriptedRemote {
    /// A stream answered at once that ends when its stdin closes.
    fn held_open(&self, cmd: &Command) -> Streaming {
        let out = (self.respond)(cmd, None);
        let (closed_tx, closed_rx) = oneshot::channel::<Vec<u8>>();
        let finish = Output::new(out.exit, Vec::new(), out.stderr);
        Streaming {
            stdin: Box::pin(Collect {
                buf: Vec::new(),
                closed: Some(closed_tx),
            }),
            stdout: Box::pin(std::io::Cursor::new(out.stdout)),
            finish: Box::pin(async move {
                let _ = closed_rx.await;
                Ok(finish)
            }),
            stop: super::Stop::none(),
        }
    }
}

/// Stdin of a lazy scripted stream: collects, and hands it over on close.
struct Collect {
    buf: Vec<u8>,
    closed: Option<oneshot::Sender<Vec<u8>>>,
}

impl Collect {
    fn close(&mut self) {
        if let Some(tx) = self.closed.take() {
            let _ = tx.send(std::mem::take(&mut self.buf));
        }
    }
}

impl AsyncWrite for Collect {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.buf.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.close();
        Poll::Ready(Ok(()))
    }
}

impl Drop for Collect {
    fn drop(&mut self) {
        self.close();
    }
}
