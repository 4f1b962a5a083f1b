//! What every deploying command shares: the controller lock (exit 3), the run
//! id, the reporter task, signal handling (Ctrl-C escalates; the first also
//! cancels the plan's work), the plan, the prompt, the summary, the run
//! report (written as a stub when the run starts, so a run killed mid-way
//! is seen as interrupted, and in full when it ends), then `[notify]`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::activation::RunId;

/// How long the summary waits for a rolled-back host's history.
const HISTORY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
use crate::deploy::{self, HostSummary, RunContext};
use crate::fleet::{Fleet, Sessions};
use crate::inventory::{Inventory, Selection};
use crate::plan::{self, Plan, Planning, Request};
use crate::report::{self, CommandName, Ending, Event, EventSink};
use crate::runner::cancel::{self, CancelLevel, CancelWatch};
use crate::state::run_report::{self, RunReport};
use crate::state::{self, ControllerLock, LockHeld};

use super::prompt::{self, Answer};
use super::{Fatal, Global, Outcome};

/// What a deploying command's flags ask of the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunFlags {
    pub reboot: bool,
    pub allow_pending_reboot: bool,
    pub no_magic_rollback: bool,
}

/// A deploying command in progress.
pub struct RunSession {
    pub run_id: RunId,
    pub sink: EventSink,
    pub fleet: Arc<Sessions>,
    pub cancel: CancelWatch,
    /// Cancelled at the first Ctrl-C (or SIGTERM).
    pub stop: CancellationToken,
    state_dir: std::path::PathBuf,
    reporter: tokio::task::JoinHandle<Option<report::spool::Spool>>,
    /// Turns signals into cancel levels and events; ended with the run.
    signals: tokio::task::JoinHandle<()>,
    _lock: ControllerLock,
    command: CommandName,
    report: RunReport,
    /// Written when the run ends, after the report.
    outputs: super::RunOutputs,
    /// `[notify]`: told the summary once the run report is written.
    notify: Option<crate::inventory::Notify>,
}

impl RunSession {
    /// Told to exit at once (the second Ctrl-C, or SIGTERM twice).
    pub fn stopped(&self) -> bool {
        *self.cancel.borrow() >= CancelLevel::Abort
    }

    /// Take the controller lock, start reporting, write the stub report.
    /// Must run inside tokio.
    pub fn start(
        g: &Global,
        inv: &Inventory,
        command: CommandName,
        sel: &Selection,
        req: &Request,
    ) -> anyhow::Result<RunSession> {
        let state_dir = state::resolve_dir(g.state_dir.as_deref())
            .map_err(|e| Fatal::usage(format!("{e:#}")))?;
        let hosts: Vec<String> = sel.hosts().map(str::to_owned).collect();
        // Before the lock and before any host is touched: a prompt the
        // user abandons leaves nothing behind.
        let passwords = super::sudo_password::obtain(g, inv, &hosts)?;
        let run_id = RunId::parse(&state::clock::new_run_id())?;
        let lock = take_lock(&state_dir, command, &run_id)?;
        let spool = state_dir.join("runs").join(format!(".{run_id}.events.tmp"));
        let (sink, reporter) = report::spawn(report::choose(g, command), Some(spool));
        let stop = CancellationToken::new();
        let (cancel, signals) = on_signals(stop.clone(), sink.clone());
        let source = req.source();
        let report = RunReport {
            run_id: run_id.to_string(),
            command: command.as_str().to_owned(),
            goal: req.goal(),
            commit: source.map(|s| s.commit.clone()),
            dirty: source.is_some_and(|s| s.dirty),
            user: Some(state::runs::operator()),
            started: deploy::now(),
            finished: None,
            exit_code: None,
            ending: None,
            selected: hosts.clone(),
            hosts: Vec::new(),
        };
        // While the run holds the lock, `status` and `runs` show this as
        // running; a run killed mid-way leaves it behind: interrupted.
        if let Err(e) = run_report::write(&state_dir, &report, None) {
            tracing::warn!("could not write the run's first report: {e:#}");
        }
        sink.emit(Event::RunStarted {
            run_id: run_id.to_string(),
            command,
            goal: report.goal,
            commit: report.commit.clone(),
            dirty: report.dirty,
            hosts,
            at: report.started.clone(),
        });
        Ok(RunSession {
            run_id,
            sink,
            fleet: Sessions::with_passwords(inv, g.host_key_policy(), passwords),
            cancel,
            stop,
            state_dir,
            reporter,
            signals,
            _lock: lock,
            command,
            report,
            outputs: Default::default(),
            notify: inv.notify.clone(),
        })
    }

    /// The HTML report, metrics file and pruning to do when the run ends.
    pub fn with_outputs(mut self, outputs: super::RunOutputs) -> RunSession {
        self.outputs = outputs;
        self
    }

    /// Make the plan, under this run's cancellation, and report it.
    pub async fn plan(&self, inv: &Inventory, sel: &Selection, req: &Request) -> Plan {
        let plan = self.make_plan(inv, sel, req).await;
        self.show_plan(&plan).await;
        plan
    }

    /// Report the plan. Handled before any prompt: the plan is on screen
    /// when asked.
    pub async fn show_plan(&self, plan: &Plan) {
        self.sink.emit_handled(plan.event()).await;
    }

    /// Make the plan, under this run's cancellation. The first Ctrl-C lets
    /// planning wind down (a build is given up to 30 s to end on the
    /// builder); the second ends it at once, every host interrupted (the
    /// builder's Nix ends with its channel).
    pub async fn make_plan(&self, inv: &Inventory, sel: &Selection, req: &Request) -> Plan {
        let p = Planning {
            fleet: &self.fleet,
            inventory: inv,
            selection: sel,
            run_id: &self.run_id,
            sink: &self.sink,
            stop: &self.stop,
        };
        plan::make_until_aborted(&p, req, &self.cancel).await
    }

    /// Ask before changing anything (unless `--yes`, or nothing is ready).
    pub async fn confirm(&self, g: &Global, plan: &Plan) -> anyhow::Result<Answer> {
        if plan.cancelled.is_some() || plan.ready().next().is_none() {
            return Ok(Answer::Yes);
        }
        prompt::ask(g, self.command, plan, self.cancel.clone()).await
    }

    /// Everything the runner needs.
    pub fn context(&self, inv: &Arc<Inventory>, flags: RunFlags) -> RunContext<Sessions> {
        RunContext {
            inventory: inv.clone(),
            fleet: self.fleet.clone(),
            run_id: self.run_id.clone(),
            allow_reboot: flags.reboot,
            allow_pending_reboot: flags.allow_pending_reboot,
            magic_rollback: !flags.no_magic_rollback,
            sink: self.sink.clone(),
            stop: self.stop.clone(),
            cancel: self.cancel.clone(),
        }
    }

    /// The known-good histories of the hosts this run took back to an
    /// earlier system (read only for them, after the run), so the summary
    /// can say which generation and commit each went back to.
    pub async fn report_rollback_targets(&self, inv: &Inventory, hosts: &[HostSummary]) {
        // Their connections stay open for this (`DeployJob::let_go`).
        let took_back = hosts.iter().filter(|h| h.was_taken_back());
        let reads = took_back.map(|h| async move {
            let read = crate::inspect::history::read(&*self.fleet, inv, &h.host);
            match tokio::time::timeout(HISTORY_WAIT, read).await {
                Ok(Ok(generations)) => self.sink.emit(Event::History {
                    host: h.host.clone(),
                    generations,
                }),
                Ok(Err(e)) => tracing::info!("{}: its known-good history: {e:#}", h.host),
                Err(_) => tracing::info!("{}: its known-good history: no answer", h.host),
            }
        });
        futures_util::future::join_all(reads).await;
    }

    /// The user declined (or pressed Ctrl-C) at the prompt: nothing changed.
    pub async fn declined(self, plan: Plan) -> anyhow::Result<Outcome> {
        drop(plan);
        self.end(Ending::Declined, Vec::new()).await
    }

    /// Emit the summary, flush the reporter, write the run report; the exit
    /// outcome.
    pub async fn finish(self, hosts: Vec<HostSummary>) -> anyhow::Result<Outcome> {
        let ending = ending(*self.cancel.borrow() >= CancelLevel::StopStarting, &hosts);
        self.end(ending, hosts).await
    }

    /// The command line asked for something no selected host can do (a
    /// `rollback --to` generation none of them has): nothing changed, exit 2.
    pub async fn invalid(self, plan: Plan) -> anyhow::Result<Outcome> {
        self.show_plan(&plan).await;
        drop(plan);
        self.end(Ending::Invalid, Vec::new()).await
    }

    async fn end(self, ending: Ending, hosts: Vec<HostSummary>) -> anyhow::Result<Outcome> {
        let outcome = match ending {
            Ending::Declined => Outcome::Declined,
            Ending::Invalid => Outcome::Usage,
            _ if deploy::exit_code(&hosts) == 0 => Outcome::Success,
            _ => Outcome::HostsFailed,
        };
        let path = run_report::path(&self.state_dir, &self.run_id.to_string());
        self.sink.emit(Event::ReportWritten { path });
        let failed = hosts.iter().filter(|h| h.fails_run()).count();
        let summary = Event::Summary {
            command: self.command,
            run_id: Some(self.run_id.to_string()),
            ending,
            exit_code: outcome as u8,
            ok: hosts.len() - failed,
            failed,
            hosts: hosts.clone(),
        };
        let summary_json = serde_json::to_vec(&summary);
        self.sink.emit(summary);
        self.fleet.close_all().await;
        let RunSession {
            sink,
            reporter,
            signals,
            state_dir,
            mut report,
            outputs,
            notify,
            _lock: lock,
            ..
        } = self;
        signals.abort();
        drop(sink);
        let spool = reporter.await.ok().flatten();
        report.finished = Some(deploy::now());
        report.exit_code = Some(outcome as u8);
        report.ending = Some(ending);
        report.hosts = hosts;
        for warning in save_report(&state_dir, &report, spool) {
            crate::report::stderr(format_args!("nixgate: warning: {warning}\n"));
        }
        super::runs::after_run(&state_dir, &report, &outputs);
        // The run is over: the next one may start while the team is told
        // (a rollback waited up to the notify timeout, then exited 3).
        drop(lock);
        if let Some(n) = notify {
            let sent = match summary_json {
                Ok(json) => notify_until_signalled(&n, &json).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = sent {
                crate::report::stderr(format_args!(
                    "nixgate: warning: the [notify] command failed: {e:#} (the run's exit code is unchanged)\n"
                ));
            }
        }
        Ok(outcome)
    }
}

/// [`crate::notify::send`], given up (its command killed) at SIGINT or
/// SIGTERM: the run's own handlers, which only escalate its cancel level,
/// stay installed after it ends, and a `systemctl stop` or Ctrl-C waited
/// out the notify command's timeout (up to an hour).
async fn notify_until_signalled(n: &crate::inventory::Notify, json: &[u8]) -> anyhow::Result<()> {
    let signalled = async {
        match crate::runner::cancel::Signals::new() {
            Some(mut signals) => signals.next().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        sent = crate::notify::send(n, json) => sent,
        _ = signalled => Err(anyhow::anyhow!("stopped by a signal (killed, with everything it started)")),
    }
}

/// Write the run's final report; the warnings to print. When the report
/// itself could not be written (a disk full while the events are copied
/// in), the event spool is kept: the stub written at the start stays, and
/// `show` reads the events from the spool beside it (dropped, it took the
/// run's only events with it). A failed `latest.json` alone loses nothing.
fn save_report(
    state_dir: &std::path::Path,
    report: &RunReport,
    spool: Option<report::spool::Spool>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    if spool.as_ref().is_some_and(|s| s.is_broken()) {
        warnings.push(
            "the run report lacks some events (the event spool could not be written)".to_owned(),
        );
    }
    match run_report::write(state_dir, report, spool.as_ref()) {
        Ok(_) => {}
        Err(e @ run_report::WriteError::Latest { .. }) => warnings.push(e.to_string()),
        Err(e @ run_report::WriteError::Report { .. }) => {
            // Only beside the stub, which lists the run: a spool with no
            // report is no run's (`prune` removes it).
            let stub = run_report::path(state_dir, &report.run_id).exists();
            let kept = spool.filter(|_| stub).map_or_else(String::new, |s| {
                format!(
                    "; its events are kept in {}: `nixgate show {}` reads them (`nixgate runs` lists the run as interrupted, its report unfinished)",
                    s.keep().display(),
                    report.run_id
                )
            });
            warnings.push(format!("{e}{kept}"));
        }
    }
    warnings
}

/// The run's cancel watch, escalated by SIGINT and SIGTERM (see
/// [`watch_signals`]), and the task to abort when the run ends (`exec`
/// too).
pub(crate) fn on_signals(
    stop: CancellationToken,
    sink: EventSink,
) -> (CancelWatch, tokio::task::JoinHandle<()>) {
    let (canceller, _) = cancel::channel();
    let (announce, cancel) = tokio::sync::watch::channel(CancelLevel::Running);
    let task = tokio::spawn(watch_signals(canceller, announce, stop, sink));
    (cancel, task)
}

/// Escalate on every SIGINT or SIGTERM; the first also cancels `stop`.
/// Each level is announced to the run (`announce`, the run's
/// [`CancelWatch`]) only after its [`Event::CancelRequested`]: whatever
/// reacts to it reports after the notice. (The prompt saw the raw level, so
/// a Ctrl-C at the prompt could end the run, summary and all, before the
/// notice was emitted: `[y/N] ^Crun report: ...`, the notice lost; seen
/// once in `tty_e2e`.)
async fn watch_signals(
    canceller: cancel::Canceller,
    announce: tokio::sync::watch::Sender<CancelLevel>,
    stop: CancellationToken,
    sink: EventSink,
) {
    let watch = canceller.watch();
    tokio::spawn(canceller.on_signals());
    announce_levels(watch, announce, stop, sink).await;
}

/// Each new level of `watch`: its event, then `announce`, then `stop`.
async fn announce_levels(
    mut watch: CancelWatch,
    announce: tokio::sync::watch::Sender<CancelLevel>,
    stop: CancellationToken,
    sink: EventSink,
) {
    let mut last = CancelLevel::Running;
    while watch.changed().await.is_ok() {
        let level = *watch.borrow();
        if level == last {
            continue;
        }
        last = level;
        sink.emit(Event::CancelRequested { level });
        announce.send_replace(level);
        if level >= CancelLevel::StopStarting {
            stop.cancel();
        }
    }
    // The signal handler ends at Abort; the announced level stays, and with
    // it its sender, until the run ends (a closed watch would wake its
    // readers at once, again and again).
    std::future::pending::<()>().await;
}

/// How a run that got to its hosts ended: cancelled before it changed
/// anything only when every host was refused or never started (an aborted
/// one's detached switch may finish; one taken back after its soak, or any
/// with an activation, changed; both were said to be "cancelled before
/// anything changed").
fn ending(cancelled: bool, hosts: &[HostSummary]) -> Ending {
    let untouched = |h: &HostSummary| {
        matches!(
            h.end,
            crate::deploy::HostEnd::Refused { .. } | crate::deploy::HostEnd::NotStarted { .. }
        )
    };
    if cancelled && hosts.iter().all(untouched) {
        Ending::CancelledBeforeRun
    } else {
        Ending::Completed
    }
}

/// The controller lock, its failures mapped to the exit-code contract:
/// held by another run is exit 3; a state directory the user running
/// nixgate cannot write (a cron job's user and `/var/lib/nixgate`) is the
/// controller's own environment, exit 2 like a usage error, not exit 1,
/// which says a host failed when none was touched.
fn take_lock(
    state_dir: &std::path::Path,
    command: CommandName,
    run_id: &RunId,
) -> anyhow::Result<ControllerLock> {
    ControllerLock::acquire(state_dir, command.as_str(), run_id.as_str()).map_err(|e| {
        if e.downcast_ref::<LockHeld>().is_some() {
            return Fatal {
                outcome: Outcome::Locked,
                message: e.to_string(),
            }
            .into();
        }
        Fatal::usage(format!(
            "{e:#}: the state directory must be writable by the user running nixgate \
             (pass --state-dir DIR for another); nothing was touched"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state directory nixgate cannot write ends the run with exit 2,
    /// naming it; never exit 1 (a host failed) when no host was touched.
    #[test]
    fn a_state_directory_it_cannot_write_is_exit_2() {
        let dir = tempfile::tempdir().unwrap();
        // Where the lock file would be, a directory: opening it fails, as
        // an unwritable directory does for a non-root user.
        std::fs::create_dir(dir.path().join("lock")).unwrap();
        let run_id = RunId::parse("20261205T220000Z-abcd").unwrap();
        let e = take_lock(dir.path(), CommandName::Push, &run_id).unwrap_err();
        let fatal = e.downcast_ref::<Fatal>().expect("a Fatal error");
        assert_eq!(fatal.outcome, Outcome::Usage);
        assert!(fatal.message.contains("--state-dir"), "{}", fatal.message);
        assert!(fatal.message.contains("lock"), "{}", fatal.message);
    }

    #[tokio::test]
    async fn what_reacts_to_a_cancel_reports_after_its_notice() {
        let (sink, events) = EventSink::capture();
        let (canceller, raw) = cancel::channel();
        let (announce, mut run) = tokio::sync::watch::channel(CancelLevel::Running);
        let stop = CancellationToken::new();
        tokio::spawn(announce_levels(raw, announce, stop.clone(), sink.clone()));
        // The prompt, or the runner: reacts to the run's level by reporting.
        let reacting = tokio::spawn(async move {
            cancel::reached(&mut run, CancelLevel::StopStarting).await;
            sink.emit(Event::BuilderFailed {
                error: "reacted".into(),
            });
        });
        canceller.escalate();
        reacting.await.unwrap();
        assert!(stop.is_cancelled());
        let kinds: Vec<&str> = events.take().iter().map(Event::name).collect();
        assert_eq!(kinds, ["cancel_requested", "builder_failed"]);
    }

    /// The final report cannot be written (a disk full as the spool is
    /// copied in): the spool stays, so `show` reads the events back; a
    /// failed `latest.json` is said as such, and then the spool goes.
    #[test]
    fn a_report_not_written_keeps_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let run = crate::report::stored::fixture::run(0);
        let mut stub = run.report.clone();
        (stub.finished, stub.exit_code) = (None, None);
        stub.hosts.clear();
        run_report::write(dir.path(), &stub, None).unwrap();
        let id = &run.report.run_id;
        let spooled = || {
            let spool = dir.path().join(format!("runs/.{id}.events.tmp"));
            let mut spool = report::spool::Spool::create(spool).unwrap();
            for s in &run.events {
                spool.push(&s.event, s.at_ms.unwrap_or(0));
            }
            spool.finish()
        };
        // The report's temporary file cannot be made: as ENOSPC would.
        let blocker = dir
            .path()
            .join(format!("runs/.{id}.json.tmp{}", std::process::id()));
        std::fs::create_dir(&blocker).unwrap();
        let said = save_report(dir.path(), &run.report, spooled()).join("\n");
        let mut events = 0;
        let read = crate::state::runs::read(dir.path(), id, &mut |_| events += 1).unwrap();
        assert_eq!(events, run.events.len(), "the events, from the spool");
        assert!(read.from_spool && read.report.finished.is_none());
        assert!(said.contains("could not write the run report"), "{said}");
        assert!(said.contains(&format!("nixgate show {id}")), "{said}");

        std::fs::remove_dir(&blocker).unwrap();
        let latest = dir.path().join("latest.json");
        std::fs::remove_file(&latest).unwrap();
        std::fs::create_dir(&latest).unwrap();
        let said = save_report(dir.path(), &run.report, spooled()).join("\n");
        assert!(said.contains("is written, but not its copy"), "{said}");
        assert!(said.contains("latest.json"), "{said}");
        assert!(!said.contains("could not write the run report"), "{said}");
        assert!(!dir.path().join(format!("runs/.{id}.events.tmp")).exists());
        let read = crate::state::runs::read(dir.path(), id, &mut |_| {}).unwrap();
        assert!(read.report.finished.is_some() && !read.from_spool);
    }

    #[test]
    fn cancelled_before_the_run_only_when_no_host_was_touched() {
        use crate::deploy::{HostEnd, HostSummary};
        use crate::runner::{Interrupted, NotStarted};
        let host = |end| HostSummary {
            host: "web1".into(),
            wave: "canary".into(),
            closure: None,
            end,
            seconds: 0.0,
            pending_reboot_allowed: false,
            soak_left: None,
        };
        let not_started = host(HostEnd::NotStarted {
            why: NotStarted::Cancelled,
        });
        let aborted = host(HostEnd::Interrupted {
            why: Interrupted::Aborted,
        });
        let soak = host(HostEnd::SoakFailed {
            checks: Vec::new(),
            revoked: Some(2),
            rollback: None,
            kept: None,
            locked_out: None,
        });
        let before = [not_started.clone(), not_started.clone()];
        assert_eq!(ending(true, &before), Ending::CancelledBeforeRun);
        assert_eq!(ending(false, &before), Ending::Completed);
        for touched in [aborted, soak] {
            let hosts = [touched, not_started.clone()];
            assert_eq!(
                ending(true, &hosts),
                Ending::Completed,
                "{:?}",
                hosts[0].end
            );
        }
    }
}
