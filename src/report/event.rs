//! The typed events a run produces. They carry data, never pre-formatted
//! text, so the JSON reporter is `serde_json` and the human reporters decide
//! only how things look.

use serde::Serialize;

use crate::gates::{Gate, Goal};
use crate::nix::StorePath;
use crate::runner::RunnerEvent;

/// How a host's part in a run ended, flattened for summaries and exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// Every gate passed; the closure is the host's new known-good.
    KnownGood,
    /// The goal was reached (copy, dry-activate, test, boot, switch).
    Reached,
    /// The host already ran the candidate: verified and marked, not switched.
    AlreadyCurrent,
    /// The candidate needs a reboot (systemd, dbus or kernel changed): it is
    /// the boot default, the old system still runs.
    DeferredPendingReboot,
    /// A gate failed after the switch; the host is back on its known-good.
    RolledBack,
    /// A gate failed and so did the rollback: the host needs a person.
    RollbackFailed,
    /// A gate failed before anything changed on the host.
    Failed,
    /// Never started (cancelled, or its wave or an earlier one failed).
    NotStarted,
    /// The controller aborted mid-host; a detached switch may still finish.
    Aborted,
}

impl OutcomeKind {
    /// Does this outcome count against a wave's failure budget?
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            OutcomeKind::RolledBack
                | OutcomeKind::RollbackFailed
                | OutcomeKind::Failed
                | OutcomeKind::Aborted
        )
    }

    /// Does this outcome make the run exit 1? Failures, and hosts that never
    /// started (a failed wave or a cancel): the run did not end well for them.
    pub fn fails_run(self) -> bool {
        self.is_failure() || self == OutcomeKind::NotStarted
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::KnownGood => "known-good",
            OutcomeKind::Reached => "reached",
            OutcomeKind::AlreadyCurrent => "already-current",
            OutcomeKind::DeferredPendingReboot => "pending-reboot",
            OutcomeKind::RolledBack => "rolled-back",
            OutcomeKind::RollbackFailed => "ROLLBACK-FAILED",
            OutcomeKind::Failed => "failed",
            OutcomeKind::NotStarted => "not-started",
            OutcomeKind::Aborted => "aborted",
        }
    }
}

/// A host's full outcome in its summary: the activation's typed outcome,
/// shared with every copy of the summary (events, the run report) and turned
/// into JSON only when written; or, for a host that never got there, why.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Detail {
    Outcome(std::sync::Arc<crate::activation::HostOutcome>),
    Other(serde_json::Value),
}

impl From<serde_json::Value> for Detail {
    fn from(v: serde_json::Value) -> Self {
        Detail::Other(v)
    }
}

impl Detail {
    /// The activation's outcome, if the host got that far.
    pub fn outcome(&self) -> Option<&crate::activation::HostOutcome> {
        match self {
            Detail::Outcome(o) => Some(o),
            Detail::Other(_) => None,
        }
    }
}

/// One host's line in the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostSummary {
    pub host: String,
    pub wave: String,
    pub outcome: OutcomeKind,
    pub closure: Option<StorePath>,
    /// Why it ended that way, in a few words, when it did not end well.
    pub reason: Option<String>,
    /// The full typed outcome (the activation's `HostOutcome`, or why the
    /// host never got there).
    pub detail: Detail,
    pub seconds: f64,
}

/// Everything a run reports, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        command: String,
        goal: Goal,
        commit: Option<String>,
        dirty: bool,
        hosts: Vec<String>,
        at: String,
    },
    SourceShipped {
        commit: String,
        reused: bool,
    },
    BuildStarted {
        hosts: Vec<String>,
    },
    /// Derivations built / to build on the builder, as Nix counts them.
    BuildProgress {
        built: u64,
        to_build: u64,
        running: u64,
        failed: u64,
    },
    /// The builder is done: how many systems built and failed, in how long.
    BuildFinished {
        built: usize,
        failed: usize,
        seconds: f64,
    },
    HostBuilt {
        host: String,
        toplevel: StorePath,
    },
    GateStarted {
        host: String,
        gate: Gate,
    },
    /// Gate 2's finding for a host: what changes, why, and any drift.
    Diff {
        host: String,
        diff: crate::diff::HostDiff,
    },
    GatePassed {
        host: String,
        gate: Gate,
        detail: Option<serde_json::Value>,
    },
    GateFailed {
        host: String,
        gate: Gate,
        reason: String,
    },
    CopyProgress {
        host: String,
        bytes: u64,
        paths: u64,
        total_paths: u64,
    },
    /// Something the activation pipeline on a host reported.
    Activation {
        host: String,
        activation: crate::activation::ActivationEvent,
    },
    HostFinished(HostSummary),
    Warning {
        host: Option<String>,
        message: String,
    },
    /// A known-good host's release tag and branch.
    Released {
        host: String,
        tag: String,
        branch: String,
    },
    /// A known-good host that did not get a release, and why.
    NotReleased {
        host: String,
        reason: String,
    },
    Summary {
        run_id: String,
        exit_code: u8,
        hosts: Vec<HostSummary>,
    },
    #[serde(untagged)]
    Runner(RunnerEvent),
}

impl Event {
    /// The host an event is about, if any.
    pub fn host(&self) -> Option<&str> {
        match self {
            Event::HostBuilt { host, .. }
            | Event::GateStarted { host, .. }
            | Event::GatePassed { host, .. }
            | Event::GateFailed { host, .. }
            | Event::CopyProgress { host, .. }
            | Event::Diff { host, .. }
            | Event::Activation { host, .. } => Some(host),
            Event::HostFinished(s) => Some(&s.host),
            Event::Warning { host, .. } => host.as_deref(),
            Event::Released { host, .. } | Event::NotReleased { host, .. } => Some(host),
            _ => None,
        }
    }
}
