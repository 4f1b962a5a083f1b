//! What every deploying command shares: the controller lock (exit 3), the run
//! id, the reporter task, signal handling, the summary, the run report.

use std::sync::Arc;

use crate::activation::RunId;
use crate::deploy::{self, RunReport};
use crate::fleet::Sessions;
use crate::gates::Goal;
use crate::inventory::Inventory;
use crate::report::{self, Event, EventSink, HostSummary};
use crate::runner::cancel::{self, CancelWatch};
use crate::state::{self, ControllerLock, LockHeld};

use super::{Fatal, Global, Outcome};

/// A deploying command in progress.
pub struct RunSession {
    pub run_id: RunId,
    pub sink: EventSink,
    pub sessions: Arc<Sessions>,
    pub cancel: CancelWatch,
    pub state_dir: std::path::PathBuf,
    reporter: tokio::task::JoinHandle<Option<report::spool::Spool>>,
    _lock: ControllerLock,
    started: String,
    command: String,
}

impl RunSession {
    /// Take the controller lock and start reporting. Must run inside tokio.
    pub fn start(g: &Global, inv: &Inventory, command: &str) -> anyhow::Result<RunSession> {
        let state_dir = state::resolve_dir(g.state_dir.as_deref())
            .map_err(|e| Fatal::usage(format!("{e:#}")))?;
        let lock = match ControllerLock::acquire(&state_dir, command) {
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
        let (sink, reporter) = report::spawn(report::choose(g.json, g.quiet > 0), Some(spool));
        let (canceller, cancel) = cancel::channel();
        tokio::spawn(canceller.on_signals());
        let policy = g.host_key_policy();
        Ok(RunSession {
            run_id,
            sink,
            sessions: Sessions::new(inv, policy),
            cancel,
            state_dir,
            reporter,
            _lock: lock,
            started: deploy::now(),
            command: command.to_owned(),
        })
    }

    /// Emit the summary, flush the reporter, write the run report; the exit outcome.
    pub async fn finish(
        self,
        goal: Goal,
        commit: Option<String>,
        dirty: bool,
        hosts: Vec<HostSummary>,
    ) -> anyhow::Result<Outcome> {
        let code = deploy::exit_code(&hosts);
        self.sink.emit(Event::Summary {
            run_id: self.run_id.to_string(),
            exit_code: code,
            hosts: hosts.clone(),
        });
        self.sessions.close_all().await;
        let RunSession {
            sink,
            reporter,
            run_id,
            state_dir,
            started,
            command,
            ..
        } = self;
        drop(sink);
        let spool = reporter.await.ok().flatten();
        let report = RunReport {
            run_id: run_id.to_string(),
            command,
            goal,
            commit,
            dirty,
            started,
            finished: deploy::now(),
            exit_code: code,
            hosts,
        };
        if spool.as_ref().is_some_and(|s| s.is_broken()) {
            eprintln!(
                "nixgate: warning: the run report lacks some events (the event spool could not be written)"
            );
        }
        if let Err(e) = deploy::write_report(&state_dir, &report, spool.as_ref()) {
            eprintln!("nixgate: warning: could not write the run report: {e:#}");
        }
        Ok(if code == 0 {
            Outcome::Success
        } else {
            Outcome::HostsFailed
        })
    }
}
