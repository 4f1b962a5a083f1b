//! One deploy run, end to end on the controller side: candidates per host ->
//! the runner (waves, staging, activation) -> a summary, a run report in the
//! state directory, and the exit code. Used by `push` and `rollback`.

pub mod build;
pub mod diffgate;
pub mod fanout;
pub mod hostlock;
pub mod job;
pub mod outcome;
pub mod stage;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::activation::RunId;
use crate::fleet::Sessions;
use crate::gates::Goal;
use crate::inventory::{Inventory, Selection};
use crate::report::{Event, EventSink, HostSummary, OutcomeKind};
use crate::runner::cancel::{CancelLevel, CancelWatch};
use crate::runner::{self, HostEnd, NotStarted};
use crate::state::clock::Utc;

pub use job::{AlreadyThere, Candidate, DeployJob, Stager};

/// Everything a run needs besides the per-host candidates.
pub struct RunContext {
    pub inventory: Arc<Inventory>,
    pub sessions: Arc<Sessions>,
    pub goal: Goal,
    pub run_id: RunId,
    pub commit: Option<String>,
    pub allow_reboot: bool,
    pub sink: EventSink,
}

/// The summary of a host that failed before the runner took it (build,
/// diff gate, no rollback target): nothing on it changed.
pub fn failed_before_run(
    inv: &Inventory,
    host: &str,
    closure: Option<crate::nix::StorePath>,
    reason: String,
    detail: serde_json::Value,
) -> HostSummary {
    HostSummary {
        host: host.to_owned(),
        wave: inv.wave_name(host),
        outcome: OutcomeKind::Failed,
        closure,
        reason: Some(reason),
        detail: detail.into(),
        seconds: 0.0,
    }
}

/// The run record written to the state directory.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub command: String,
    pub goal: Goal,
    pub commit: Option<String>,
    pub dirty: bool,
    pub started: String,
    pub finished: String,
    pub exit_code: u8,
    pub hosts: Vec<HostSummary>,
}

/// The exit code for a set of host summaries: 1 if any failed.
pub fn exit_code(hosts: &[HostSummary]) -> u8 {
    u8::from(hosts.iter().any(|h| h.outcome.fails_run()))
}

fn not_started(host: &str, wave: &str, why: &NotStarted) -> HostSummary {
    let reason = match why {
        NotStarted::Cancelled => "cancelled before it started".to_owned(),
        NotStarted::WaveFailed { wave } => format!("wave {wave} exceeded its failure budget"),
        NotStarted::EarlierWaveFailed { wave } => {
            format!("wave {wave} failed, later waves do not start")
        }
    };
    HostSummary {
        host: host.to_owned(),
        wave: wave.to_owned(),
        outcome: OutcomeKind::NotStarted,
        closure: None,
        reason: Some(reason),
        detail: serde_json::to_value(why).unwrap_or_default().into(),
        seconds: 0.0,
    }
}

/// Run the selection through the runner. Hosts with no candidate (their
/// build failed) are reported by the caller before, and skipped here.
pub async fn run<S: Stager>(
    ctx: RunContext,
    selection: &Selection,
    candidates: HashMap<String, Candidate>,
    stager: S,
    cancel: CancelWatch,
) -> Vec<HostSummary> {
    let activation_cancel = CancellationToken::new();
    // The first Ctrl-C also tells hosts that have not fired their switch yet
    // to stop before changing anything; fired switches always finish verified.
    let mut watch = cancel.clone();
    let token = activation_cancel.clone();
    let bridge = tokio::spawn(async move {
        runner::cancel::reached(&mut watch, CancelLevel::StopStarting).await;
        token.cancel();
    });
    let job = Arc::new(DeployJob {
        inventory: ctx.inventory.clone(),
        sessions: ctx.sessions.clone(),
        goal: ctx.goal,
        run_id: ctx.run_id.clone(),
        commit: ctx.commit.clone(),
        candidates,
        stager,
        sink: ctx.sink.clone(),
        cancel: activation_cancel,
        allow_reboot: ctx.allow_reboot,
    });
    let sink = ctx.sink.clone();
    let results = runner::run(job, selection, cancel, move |e| sink.emit(Event::Runner(e))).await;
    bridge.abort();
    results
        .into_iter()
        .map(|r| match r.end {
            HostEnd::Done(mut s) => {
                if r.soak_healthy == Some(false) {
                    s.reason = Some(format!(
                        "{}; unhealthy after the soak",
                        s.reason.unwrap_or_default()
                    ));
                }
                s
            }
            HostEnd::NotStarted(why) => not_started(&r.host, &r.wave, &why),
        })
        .collect()
}

/// Write the run report, with the events spooled during the run, as
/// `runs/<run-id>.json` and `latest.json`.
pub fn write_report(
    state_dir: &std::path::Path,
    report: &RunReport,
    events: Option<&crate::report::spool::Spool>,
) -> anyhow::Result<std::path::PathBuf> {
    #[derive(Serialize)]
    struct Written<'a> {
        #[serde(flatten)]
        report: &'a RunReport,
        events: crate::report::spool::SpooledEvents<'a>,
    }
    let written = Written {
        report,
        events: crate::report::spool::SpooledEvents(events),
    };
    let path = state_dir
        .join("runs")
        .join(format!("{}.json", report.run_id));
    // Streamed to the file: the report of a large change to many hosts
    // runs to hundreds of megabytes.
    crate::state::write_atomic_with(&path, |w| {
        serde_json::to_writer_pretty(&mut *w, &written)?;
        w.write_all(b"\n")?;
        Ok(())
    })?;
    crate::state::write_atomic_with(&state_dir.join("latest.json"), |w| {
        let mut f = std::fs::File::open(&path)?;
        std::io::copy(&mut f, w)?;
        Ok(())
    })?;
    Ok(path)
}

/// Now, for reports.
pub fn now() -> String {
    Utc::now().rfc3339()
}
