//! One deploy run, controller side: the plan goes to the runner (waves,
//! staging, activation; refused hosts counted in their waves; soaks), then
//! known-good hosts from a clean commit get their release tags. Used by
//! `push`, `push --release` and `rollback`. Nothing here prints: it reports
//! typed events and returns each host's typed end.

pub mod copy_stage;
pub mod end;
pub mod job;
pub mod relay_hub;
pub mod releases;
pub mod staged_roots;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::activation::RunId;
use crate::fleet::Fleet;
use crate::gates::Goal;
use crate::inventory::Inventory;
use crate::plan::{Plan, Verdict};
use crate::report::{Event, EventSink};
use crate::runner::cancel::CancelWatch;
use crate::runner::{self, NotStarted, RunnerEnd, RunnerEvent};
use crate::state::clock::Utc;

pub use end::{HostEnd, HostSummary, Kept, OutcomeKind, SoakLeft};
pub use job::{AlreadyThere, DeployJob, Stager};

/// Everything a run needs besides the plan.
pub struct RunContext<F: Fleet> {
    pub inventory: Arc<Inventory>,
    pub fleet: Arc<F>,
    pub run_id: RunId,
    /// May hosts whose change needs a reboot be rebooted (`--reboot`)?
    pub allow_reboot: bool,
    /// Does a change deferred to the next boot pass its wave
    /// (`--allow-pending-reboot`)? Otherwise it counts as a failure: it was
    /// never proven live.
    pub allow_pending_reboot: bool,
    /// Arm the hosts' dead-man revert before live switches, where the
    /// inventory asks for it (`--no-magic-rollback` turns it off).
    pub magic_rollback: bool,
    pub sink: EventSink,
    /// Cancelled at the first Ctrl-C: hosts that have not changed yet stop.
    pub stop: CancellationToken,
    pub cancel: CancelWatch,
}

/// Run the plan through the runner. A plan cancelled while it was made
/// starts nothing.
pub async fn run<F: Fleet, S: Stager>(
    ctx: &RunContext<F>,
    plan: Plan,
    stager: S,
) -> Vec<HostSummary> {
    let mut plan = plan;
    let locks = std::mem::take(&mut plan.locks);
    let job = Arc::new(DeployJob::new(ctx, &plan, stager, locks));
    let selection = crate::inventory::Selection {
        groups: plan.waves.iter().map(|w| w.group.clone()).collect(),
    };
    if plan.cancelled.is_some() {
        return not_run(&job, &plan, &ctx.sink);
    }
    let (sink, told) = (ctx.sink.clone(), job.clone());
    let results = runner::run(job.clone(), &selection, ctx.cancel.clone(), move |e| {
        // A host never started ends there: its end is told like any
        // other's (`host_finished`, after the runner's `host_not_started`).
        let end = match &e {
            RunnerEvent::HostNotStarted { host, why, .. } => {
                Some(told.summary(host, HostEnd::NotStarted { why: why.clone() }))
            }
            _ => None,
        };
        sink.emit(Event::Runner(e));
        if let Some(s) = end {
            sink.emit(Event::HostFinished(s));
        }
    })
    .await;
    results
        .into_iter()
        .map(|r| match r.end {
            RunnerEnd::Done(s) => job.as_ended(s),
            RunnerEnd::NotStarted(why) => job.summary(&r.host, HostEnd::NotStarted { why }),
        })
        .collect()
}

/// The ends of a plan that was cancelled: refused hosts stay refused, the
/// rest were not started (told as the runner tells a host it never
/// starts: `host_not_started`, then its `host_finished`).
fn not_run<F: Fleet, S: Stager>(
    job: &DeployJob<F, S>,
    plan: &Plan,
    sink: &EventSink,
) -> Vec<HostSummary> {
    plan.hosts()
        .map(|h| {
            let end = match &h.verdict {
                Verdict::Refused { refusal } => HostEnd::Refused {
                    refusal: refusal.clone(),
                },
                _ => HostEnd::NotStarted {
                    why: NotStarted::Cancelled,
                },
            };
            let s = job.summary(&h.host, end);
            if let HostEnd::NotStarted { why } = &s.end {
                sink.emit(Event::Runner(RunnerEvent::HostNotStarted {
                    host: s.host.clone(),
                    wave: s.wave.clone(),
                    why: why.clone(),
                }));
            }
            sink.emit(Event::HostFinished(s.clone()));
            s
        })
        .collect()
}

/// The exit code for a set of host summaries: 1 if any did not end well.
pub fn exit_code(hosts: &[HostSummary]) -> u8 {
    u8::from(hosts.iter().any(HostSummary::fails_run))
}

/// The goal a plan runs with (for the run report).
pub fn goal_of(plan: &Plan) -> Goal {
    plan.goal
}

/// Now, for reports.
pub fn now() -> String {
    Utc::now().rfc3339()
}
#[cfg(test)]
mod tests;
