//! `nixgate exec`: one command on every selected host, in parallel, over
//! each host's one SSH connection (host key verified like every other
//! connection nixgate makes). The command runs under [`HANG_UP`], so that
//! closing its stdin (a hang-up, or a lost controller) ends it and its
//! children on the host. It is a runner job ([`ExecJob`]) like a
//! deploy, so parallelism and Ctrl-C behave the same way: the first Ctrl-C
//! starts no new host and hangs up the commands in flight (SIGHUP to their
//! process group on the host), the second abandons them. Output travels as
//! typed events ([`Event::ExecOutput`], one per chunk as SSH delivers it,
//! stdout and stderr apart; [`Event::ExecFinished`] per host); reporters
//! decide how it looks. The argv is quoted once, by [`Command::render`].

pub mod text;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::fleet::Fleet;
use crate::inventory::select::Group;
use crate::inventory::{MaxFailures, Selection};
use crate::remote::{Chunk, Command, Exit, Remote};
use crate::report::{Event, EventSink};
use crate::runner::cancel::{self, CancelLevel, CancelWatch};
use crate::runner::{self, HostJob, Interrupted, RunnerEnd};
use text::Utf8Carry;

/// Output chunks buffered between a host's channel and the reporter: a slow
/// reader of nixgate's output slows the hosts' output down (SSH flow
/// control), it never piles up in memory.
const CHUNKS_IN_FLIGHT: usize = 16;

/// Runs `"$@"` (stdin from /dev/null) and ends it when nixgate closes the
/// script's stdin: a watcher reads stdin (through fd 3: an asynchronous
/// list's own stdin is /dev/null) and at EOF sends SIGHUP to the process
/// group, which sshd made for the session: the command and its children.
/// The script and the watcher ignore HUP (set after the command started,
/// so the command keeps the default). Why not a signal request: OpenSSH
/// refuses those for root sessions; why not a pty: it would merge stdout
/// and stderr.
pub const HANG_UP: &str = r#"exec 3<&0
"$@" </dev/null 3<&- &
cmd=$!
trap '' HUP
{ while read -r _ <&3; do :; done; kill -HUP 0; } >/dev/null 2>&1 &
watch=$!
exec 3<&-
wait "$cmd"
status=$?
kill "$watch" 2>/dev/null
exit "$status""#;

/// Which of the command's streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How one host's command ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExecEnd {
    /// The command exited with this status.
    Exited { code: u32 },
    /// It was killed by this signal on the host.
    Signalled { signal: String },
    /// `--timeout` passed: it was hung up. `ended`: an exit status came
    /// after the hang-up, so the command is over; `false` when it did not
    /// end within the grace and its channel was closed (a command that
    /// ignores SIGHUP, `trap "" HUP; sleep 40`): it may still be running.
    TimedOut { after_seconds: f64, ended: bool },
    /// Ctrl-C: it was hung up; `ended` as for [`ExecEnd::TimedOut`].
    HungUp { ended: bool },
    /// Ctrl-C while its connection was still being made: the command was
    /// never sent.
    Cancelled,
    /// The connection went away before an exit status came.
    ConnectionLost,
    /// No connection to the host (address, host key, authentication).
    Unreachable { error: String },
    /// Connected, but the command could not be started.
    NotStarted { error: String },
    /// nixgate cut the host short (a panic, or the second Ctrl-C).
    Interrupted { why: Interrupted },
}

impl ExecEnd {
    pub fn ok(&self) -> bool {
        matches!(self, ExecEnd::Exited { code: 0 })
    }
}

/// A host's end and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecDone {
    pub end: ExecEnd,
    pub seconds: f64,
}

/// What `nixgate exec` was asked to do.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub parallel: usize,
    pub timeout: Option<Duration>,
}

/// The runner job: connect, run, stream, end.
pub struct ExecJob<F: Fleet> {
    fleet: Arc<F>,
    command: Command,
    timeout: Option<Duration>,
    sink: EventSink,
    cancel: CancelWatch,
}

/// Why a command was hung up.
#[derive(Debug, Clone, Copy)]
enum HangUp {
    Timeout,
    Cancel,
}

impl<F: Fleet> ExecJob<F> {
    /// The host's session, unless a first Ctrl-C comes first: a host still
    /// connecting (a slow handshake, a jump host) is not started then.
    /// Before, its command was sent once connected and hung up at once:
    /// a quick one (`systemctl restart`, `reboot`) took effect.
    async fn connect(&self, host: &str) -> Result<F::Remote, ExecEnd> {
        let mut cancel = self.cancel.clone();
        let stop = CancelLevel::StopStarting;
        let remote = tokio::select! {
            biased;
            () = cancel::reached(&mut cancel, stop) => return Err(ExecEnd::Cancelled),
            r = self.fleet.host(host) => r,
        };
        if *cancel.borrow() >= stop {
            return Err(ExecEnd::Cancelled);
        }
        remote.map_err(|e| ExecEnd::Unreachable {
            error: format!("{e:#}"),
        })
    }

    async fn exec(&self, host: &str) -> ExecEnd {
        let remote = match self.connect(host).await {
            Ok(r) => r,
            Err(end) => return end,
        };
        let reason = std::sync::OnceLock::new();
        let hang_up = async {
            let mut cancel = self.cancel.clone();
            let limit = self.timeout.unwrap_or(Duration::from_secs(365 * 86400));
            tokio::select! {
                () = tokio::time::sleep(limit) => { let _ = reason.set(HangUp::Timeout); }
                () = cancel::reached(&mut cancel, CancelLevel::StopStarting) => {
                    let _ = reason.set(HangUp::Cancel);
                }
            }
        };
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let watched = remote.exec_watched(&self.command, tx, hang_up);
        let (exit, ()) = tokio::join!(watched, self.forward(host, rx));
        // After a hang-up only an exit status says the command is over: a
        // lost connection is the channel closed at the end of the grace
        // (the command ignored SIGHUP), or a dropped link.
        let ended = |exit: &Exit| !matches!(exit, Exit::ConnectionLost);
        match (exit, reason.get()) {
            (Err(e), _) => ExecEnd::NotStarted {
                error: format!("{e:#}"),
            },
            (Ok(Exit::Code { code }), None) => ExecEnd::Exited { code },
            (Ok(exit), Some(HangUp::Timeout)) => ExecEnd::TimedOut {
                after_seconds: self.timeout.map_or(0.0, |t| t.as_secs_f64()),
                ended: ended(&exit),
            },
            (Ok(exit), Some(HangUp::Cancel)) => ExecEnd::HungUp {
                ended: ended(&exit),
            },
            (Ok(Exit::Signal { signal }), None) => ExecEnd::Signalled { signal },
            (Ok(Exit::ConnectionLost), None) => ExecEnd::ConnectionLost,
        }
    }

    /// Turn a host's chunks into events, as the reporter takes them.
    async fn forward(&self, host: &str, mut rx: mpsc::Receiver<Chunk>) {
        let mut out = Utf8Carry::default();
        let mut err = Utf8Carry::default();
        while let Some(chunk) = rx.recv().await {
            let (stream, text) = match chunk {
                Chunk::Stdout(b) => (Stream::Stdout, out.push(&b)),
                Chunk::Stderr(b) => (Stream::Stderr, err.push(&b)),
            };
            self.emit_text(host, stream, text).await;
        }
        let rest = out.finish();
        self.emit_text(host, Stream::Stdout, rest).await;
        let rest = err.finish();
        self.emit_text(host, Stream::Stderr, rest).await;
    }

    async fn emit_text(&self, host: &str, stream: Stream, text: String) {
        if text.is_empty() {
            return;
        }
        let ev = Event::ExecOutput {
            host: host.to_owned(),
            stream,
            text,
        };
        self.sink.emit_handled(ev).await;
    }
}

impl<F: Fleet> HostJob for ExecJob<F> {
    type Staged = ();
    type Done = ExecDone;

    async fn stage(self: Arc<Self>, _host: Arc<str>) {}

    async fn run(self: Arc<Self>, host: Arc<str>, _staged: ()) -> ExecDone {
        let started = Instant::now();
        let end = self.exec(&host).await;
        ExecDone {
            end,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    fn interrupted(&self, _host: &str, why: Interrupted) -> ExecDone {
        ExecDone {
            end: ExecEnd::Interrupted { why },
            seconds: 0.0,
        }
    }

    fn is_failure(&self, done: &ExecDone) -> bool {
        !done.end.ok()
    }

    /// `exec` has no soak (its one group soaks for zero).
    fn to_recheck(&self, _: &ExecDone) -> bool {
        false
    }

    fn planned_end(&self, _host: &str) -> Option<ExecDone> {
        None
    }

    /// Nothing is staged: every host runs.
    fn staged_end(&self, _host: &str, _staged: &()) -> Option<ExecDone> {
        None
    }

    async fn recheck(
        self: Arc<Self>,
        _host: Arc<str>,
        done: ExecDone,
        _cut: Option<crate::runner::SoakCut>,
    ) -> ExecDone {
        done
    }

    fn recheck_cut(&self, _host: &str, done: ExecDone) -> ExecDone {
        done
    }

    fn ended(&self, host: &str, done: &ExecDone) {
        self.sink.emit(Event::ExecFinished {
            host: host.to_owned(),
            end: done.end.clone(),
            seconds: done.seconds,
        });
    }

    async fn let_go(self: Arc<Self>, host: Arc<str>) {
        self.fleet.close(&host).await;
    }
}

/// One group of every selected host: exec ignores waves (a failure on one
/// host never stops the others), `parallel` at a time.
pub fn flatten(sel: &Selection, parallel: usize) -> Selection {
    let hosts: Vec<String> = sel.hosts().map(str::to_owned).collect();
    Selection {
        groups: vec![Group {
            name: crate::inventory::select::ADHOC_GROUP.into(),
            max_failures: MaxFailures::Count(hosts.len()),
            hosts,
            max_parallel: parallel.max(1),
            soak: Duration::ZERO,
            adhoc: true,
        }],
    }
}

/// Run `req` on every host of `sel`; how many hosts exited 0, and not.
pub async fn run<F: Fleet>(
    fleet: Arc<F>,
    sel: &Selection,
    req: &ExecRequest,
    sink: EventSink,
    cancel: CancelWatch,
) -> (usize, usize) {
    let group = flatten(sel, req.parallel);
    let hosts = group.groups[0].hosts.clone();
    if req.argv.is_empty() {
        return (0, hosts.len());
    }
    sink.emit(Event::ExecStarted {
        hosts,
        parallel: req.parallel.max(1),
    });
    let job = Arc::new(ExecJob {
        fleet,
        command: Command::script(HANG_UP).args(req.argv.iter().cloned()),
        timeout: req.timeout,
        sink: sink.clone(),
        cancel: cancel.clone(),
    });
    let emit_sink = sink.clone();
    let results = runner::run(job, &group, cancel, move |ev| {
        emit_sink.emit(Event::Runner(ev))
    })
    .await;
    let ok = results
        .iter()
        .filter(|r| matches!(&r.end, RunnerEnd::Done(d) if d.end.ok()))
        .count();
    (ok, results.len() - ok)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::activation::fake_host::FakeHost;
    use crate::fleet::fake::{Build, FakeBuilder, FakeFleet};
    use crate::inventory::Inventory;
    use crate::nix::StorePath;

    const OLD: &str = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.05";

    /// A first Ctrl-C while a host's connection is still being made (here
    /// a 10 s handshake): its command is never sent (the fake host panics
    /// on a command it does not know, `exec`'s wrapper included), and it
    /// ends `cancelled`. Before: sent once connected, then hung up.
    #[tokio::test(start_paused = true)]
    async fn a_first_ctrl_c_while_connecting_sends_no_command() {
        let host = FakeHost::new(&StorePath::parse(OLD).unwrap());
        let fleet = FakeFleet::new(&[("web1", &host)], FakeBuilder::new(Build::Hangs));
        *fleet.connect_takes.lock().unwrap() = Duration::from_secs(10);
        let sel = web1_alone();
        let (sink, events) = EventSink::capture();
        let (canceller, watch) = cancel::channel();
        let req = ExecRequest {
            argv: vec!["reboot".into()],
            parallel: 4,
            timeout: None,
        };
        let ran = tokio::spawn(async move { run(fleet, &sel, &req, sink, watch).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        canceller.escalate();
        assert_eq!(ran.await.unwrap(), (0, 1));
        let ends: Vec<ExecEnd> = (events.take().into_iter())
            .filter_map(|e| match e {
                Event::ExecFinished { end, .. } => Some(end),
                _ => None,
            })
            .collect();
        assert_eq!(ends, [ExecEnd::Cancelled]);
    }

    /// A host whose command, hung up, answers as `after_hang_up` says:
    /// with an exit (it took the SIGHUP), or with the connection lost (the
    /// channel closed after the grace: it ignored the SIGHUP).
    #[derive(Clone)]
    struct Hangs {
        after_hang_up: Exit,
    }

    impl Remote for Hangs {
        fn name(&self) -> &str {
            "web1"
        }

        async fn exec(&self, cmd: &Command) -> anyhow::Result<crate::remote::Output> {
            panic!("unexpected command {}", cmd.render())
        }

        async fn exec_stream(&self, cmd: &Command) -> anyhow::Result<crate::remote::Streaming> {
            panic!("unexpected stream {}", cmd.render())
        }

        async fn exec_watched(
            &self,
            _: &Command,
            _: mpsc::Sender<Chunk>,
            hang_up: impl Future<Output = ()> + Send,
        ) -> anyhow::Result<Exit> {
            hang_up.await;
            Ok(self.after_hang_up.clone())
        }
    }

    impl Fleet for Hangs {
        type Remote = Hangs;

        async fn connect(
            &self,
            _: crate::fleet::Machine<'_>,
        ) -> Result<Hangs, crate::fleet::SessionError> {
            Ok(self.clone())
        }

        fn destination(&self, _: &str) -> Option<crate::fleet::Destination> {
            None
        }

        async fn fresh(
            &self,
            host: &str,
            _: Option<&crate::inventory::ConfirmEndpoint>,
        ) -> Result<Hangs, crate::fleet::SessionError> {
            Err(crate::fleet::SessionError::Unknown(host.to_owned()))
        }

        async fn close_all(&self) {}

        async fn close(&self, _: &str) {}
    }

    /// An inventory of web1 alone, selected whole.
    fn web1_alone() -> crate::inventory::Selection {
        let src =
            "[builder]\naddress = \"b\"\nflake = false\n[hosts.web1]\naddress = \"10.0.0.1\"\n";
        let inv = Inventory::parse(Path::new("/inv/inventory.toml"), src).unwrap();
        inv.select(&Default::default()).unwrap()
    }

    /// `exec` on web1 with `after_hang_up`, hung up by `--timeout 2s` or,
    /// without a timeout, by a first Ctrl-C after 1 s: web1's end.
    async fn hung_up_end(after_hang_up: Exit, timeout: Option<Duration>) -> ExecEnd {
        let sel = web1_alone();
        let (sink, events) = EventSink::capture();
        let (canceller, watch) = cancel::channel();
        let req = ExecRequest {
            argv: vec!["sleep".into(), "40".into()],
            parallel: 4,
            timeout,
        };
        let fleet = Arc::new(Hangs { after_hang_up });
        let ran = tokio::spawn(async move { run(fleet, &sel, &req, sink, watch).await });
        if timeout.is_none() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            canceller.escalate();
        }
        assert_eq!(ran.await.unwrap(), (0, 1));
        let mut ends = (events.take().into_iter()).filter_map(|e| match e {
            Event::ExecFinished { end, .. } => Some(end),
            _ => None,
        });
        ends.next().expect("web1 ended")
    }

    /// `trap "" HUP; sleep 40` with `--timeout 2s`: the hang-up does not end
    /// it, its channel is closed after the grace (the connection lost, no
    /// exit status) and `sleep` runs on. The end says it is not known to
    /// have ended; one that took the SIGHUP ended. Before, both read
    /// "timed out after 2 s: hung up". Likewise for a Ctrl-C.
    #[tokio::test(start_paused = true)]
    async fn a_hung_up_command_that_never_ended_is_not_said_to_have_ended() {
        let two = Some(Duration::from_secs(2));
        let lost = hung_up_end(Exit::ConnectionLost, two).await;
        assert_eq!(
            lost,
            ExecEnd::TimedOut {
                after_seconds: 2.0,
                ended: false
            }
        );
        let words = crate::report::human::exec::end_words(&lost);
        assert!(
            words.contains("may still be running on the host"),
            "{words}"
        );
        let json = serde_json::to_value(&lost).unwrap();
        assert_eq!(json["kind"], "timed_out");
        assert_eq!(json["ended"], false);
        let hup = Exit::Signal {
            signal: "HUP".into(),
        };
        let took = hung_up_end(hup.clone(), two).await;
        assert_eq!(
            took,
            ExecEnd::TimedOut {
                after_seconds: 2.0,
                ended: true
            }
        );
        let words = crate::report::human::exec::end_words(&took);
        assert!(!words.contains("may still be running"), "{words}");
        let lost = hung_up_end(Exit::ConnectionLost, None).await;
        assert_eq!(lost, ExecEnd::HungUp { ended: false });
        assert_eq!(
            hung_up_end(hup, None).await,
            ExecEnd::HungUp { ended: true }
        );
    }
}
