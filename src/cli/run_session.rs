//! What every deploying command shares: the controller lock (exit 3), the run
//! id, the reporter task, signal handling (Ctrl-C escalates; the first also
//! cancels the plan's work), the plan, the prompt, the summary, the run
//! report (written as a stub when the run starts, so a run killed mid-way
//! is seen as interrupted, and in full when it ends).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::activation::RunId;
use crate::deploy::{self, HostSummary, RunContext};
use crate::fleet::{Fleet, Sessions};
use crate::inventory::{Inventory, Selection};
use crate::plan::{self, Plan, Planning, Request};
use crate::report::{self, CommandName, Ending, Event, EventSink};
use crate::runner::cancel::{self, CancelLevel, CancelWatch};
use crate::state::run_report::{self, RunReport};
use crate::state::{self, ControllerLock, LockHeld};

use super::confirm::{self, Answer};
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
}

impl RunSession {
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
        let lock = match ControllerLock::acquire(&state_dir, command.as_str()) {
            Ok(l) => l,
            Err(e) if e.downcast_ref::<LockHeld>().is_some() => {
                return Err(Fatal {
                    outcome: Outcome::Locked,
                    message: e.to_string(),
                }
                .into());
            }
            Err(e) => return Err(e),
        };
        let run_id = RunId::parse(&state::clock::new_run_id())?;
        let spool = state_dir.join("runs").join(format!(".{run_id}.events.tmp"));
        let (sink, reporter) = report::spawn(report::choose(g, command), Some(spool));
        let (canceller, cancel) = cancel::channel();
        let stop = CancellationToken::new();
        let signals = tokio::spawn(watch_signals(canceller, stop.clone(), sink.clone()));
        let source = req.source();
        let report = RunReport {
            run_id: run_id.to_string(),
            command: command.as_str().to_owned(),
            goal: req.goal(),
            commit: source.map(|s| s.commit.clone()),
            dirty: source.is_some_and(|s| s.dirty),
            started: deploy::now(),
            finished: None,
            exit_code: None,
            selected: hosts.clone(),
            hosts: Vec::new(),
        };
        // A run that never finishes leaves this behind: `status` shows its
        // hosts' last run as interrupted.
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
        })
    }

    /// Make the plan, under this run's cancellation, and report it.
    pub async fn plan(&self, inv: &Inventory, sel: &Selection, req: &Request) -> Plan {
        let p = Planning {
            fleet: &self.fleet,
            inventory: inv,
            selection: sel,
            run_id: &self.run_id,
            sink: &self.sink,
            stop: &self.stop,
        };
        let plan = plan::make(&p, req).await;
        // Handled before any prompt: the plan is on screen when asked.
        self.sink.emit_handled(plan.event()).await;
        plan
    }

    /// Ask before changing anything (unless `--yes`, or nothing is ready).
    pub async fn confirm(&self, g: &Global, plan: &Plan) -> anyhow::Result<Answer> {
        if plan.cancelled.is_some() || plan.ready().next().is_none() {
            return Ok(Answer::Yes);
        }
        confirm::ask(g, plan, self.cancel.clone()).await
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

    /// The user declined (or pressed Ctrl-C) at the prompt: nothing changed.
    pub async fn declined(self, plan: Plan) -> anyhow::Result<Outcome> {
        drop(plan);
        self.end(Ending::Declined, Vec::new()).await
    }

    /// Emit the summary, flush the reporter, write the run report; the exit
    /// outcome.
    pub async fn finish(self, hosts: Vec<HostSummary>) -> anyhow::Result<Outcome> {
        let ending = if *self.cancel.borrow() >= CancelLevel::StopStarting
            && hosts.iter().all(|h| h.end.outcome().is_none())
        {
            Ending::CancelledBeforeRun
        } else {
            Ending::Completed
        };
        self.end(ending, hosts).await
    }

    async fn end(self, ending: Ending, hosts: Vec<HostSummary>) -> anyhow::Result<Outcome> {
        let outcome = match ending {
            Ending::Declined => Outcome::Declined,
            _ if deploy::exit_code(&hosts) == 0 => Outcome::Success,
            _ => Outcome::HostsFailed,
        };
        let path = run_report::path(&self.state_dir, &self.run_id.to_string());
        self.sink.emit(Event::ReportWritten { path });
        let failed = hosts.iter().filter(|h| h.outcome().fails_run()).count();
        self.sink.emit(Event::Summary {
            command: self.command,
            run_id: Some(self.run_id.to_string()),
            ending,
            exit_code: outcome as u8,
            ok: hosts.len() - failed,
            failed,
            hosts: hosts.clone(),
        });
        self.fleet.close_all().await;
        let RunSession {
            sink,
            reporter,
            signals,
            state_dir,
            mut report,
            ..
        } = self;
        signals.abort();
        drop(sink);
        let spool = reporter.await.ok().flatten();
        report.finished = Some(deploy::now());
        report.exit_code = Some(outcome as u8);
        report.hosts = hosts;
        if spool.as_ref().is_some_and(|s| s.is_broken()) {
            eprintln!(
                "nixgate: warning: the run report lacks some events (the event spool could not be written)"
            );
        }
        if let Err(e) = run_report::write(&state_dir, &report, spool.as_ref()) {
            eprintln!("nixgate: warning: could not write the run report: {e:#}");
        }
        Ok(outcome)
    }
}

/// Escalate on every SIGINT or SIGTERM; the first also cancels `stop`.
async fn watch_signals(canceller: cancel::Canceller, stop: CancellationToken, sink: EventSink) {
    let mut watch = canceller.watch();
    tokio::spawn(canceller.on_signals());
    let mut last = CancelLevel::Running;
    while watch.changed().await.is_ok() {
        let level = *watch.borrow();
        if level == last {
            continue;
        }
        last = level;
        sink.emit(Event::CancelRequested { level });
        if level >= CancelLevel::StopStarting {
            stop.cancel();
        }
        if level >= CancelLevel::Abort {
            return;
        }
    }
}
