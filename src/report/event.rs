//! The one event type every command reports: the `--json` stream is these,
//! one per line, and the human reporters render the same values. Events
//! carry data, never pre-formatted text: the JSON reporter is `serde_json`,
//! and the human reporters decide only how things look. Every command's
//! last event is [`Event::Summary`].

use serde::{Deserialize, Serialize};

use crate::activation::{ActivationEvent, FailureReason, GateEvidence};
use crate::deploy::releases::{NotPublished, NotReleased};
use crate::gates::{Gate, Goal};
use crate::nix::StorePath;
use crate::plan::{PlanStage, PlannedWave};
use crate::runner::RunnerEvent;
use crate::runner::cancel::CancelLevel;

pub use crate::deploy::{HostEnd, HostSummary, OutcomeKind};
pub use crate::inspect::{HostStatus, InventoryProblem, Probe, WaveCount};

/// Which command a run or a summary belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandName {
    Check,
    Hosts,
    Build,
    Plan,
    Push,
    Rollback,
    Status,
    Release,
    Exec,
    UploadKeys,
}

impl CommandName {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandName::Check => "check",
            CommandName::Hosts => "hosts",
            CommandName::Build => "build",
            CommandName::Plan => "plan",
            CommandName::Push => "push",
            CommandName::Rollback => "rollback",
            CommandName::Status => "status",
            CommandName::Release => "release",
            CommandName::Exec => "exec",
            CommandName::UploadKeys => "upload-keys",
        }
    }
}

/// How a command ended, as its summary says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ending {
    /// It ran to its end.
    Completed,
    /// Declined at the prompt: nothing changed.
    Declined,
    /// Ctrl-C while planning: nothing changed.
    CancelledBeforeRun,
    /// The inventory (or the command line) was refused.
    Invalid,
    /// Not known: `show` of a run report written before nixgate stored how
    /// runs end, when its exit code and hosts do not tell.
    Unknown,
}

/// Everything a command reports, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        command: CommandName,
        goal: Goal,
        commit: Option<String>,
        dirty: bool,
        hosts: Vec<String>,
        at: String,
    },
    /// Ctrl-C or SIGTERM reached this level.
    CancelRequested {
        level: CancelLevel,
    },
    /// One problem with the inventory file (the command ends with exit 2).
    InventoryError(InventoryProblem),
    /// `check`: the inventory is valid.
    InventoryOk {
        #[serde(serialize_with = "crate::report::json::lossy_path")]
        file: std::path::PathBuf,
        hosts: usize,
        selected: usize,
        builder: String,
        waves: Vec<WaveCount>,
        warnings: Vec<String>,
    },
    /// `check`: what one machine answered.
    Checked(Probe),
    /// `hosts`: one selected host.
    Host {
        wave: String,
        host: String,
        address: String,
        port: u16,
        user: String,
        tags: Vec<String>,
    },
    /// `status`: one host's state.
    Status(HostStatus),
    /// `release list`.
    Release {
        release: crate::release::ReleaseInfo,
    },
    /// `release show`.
    ReleaseDetail {
        release: crate::release::ReleaseDetail,
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
    /// A derivation started building: on the builder (`machine` null) or on
    /// a remote builder (its store URI, as Nix's log names it).
    BuildStep {
        drv: StorePath,
        machine: Option<String>,
    },
    /// The builder could not be used (connect, ship, run Nix): every host
    /// of the build is refused.
    BuilderFailed {
        error: String,
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
        drv: StorePath,
    },
    /// A host's known-good generations, oldest first (`status --history`;
    /// before a rollback; for a host rolled back, to name where it went).
    History {
        host: String,
        generations: Vec<crate::inspect::history::Generation>,
    },
    /// `runs --json`: one past run of the state directory, newest first
    /// (`state`: finished, interrupted, running or unreadable, with `error`).
    RunListed {
        run_id: String,
        state: String,
        command: Option<String>,
        goal: Option<String>,
        started: Option<String>,
        finished: Option<String>,
        selected: Vec<String>,
        outcomes: std::collections::BTreeMap<String, usize>,
        exit_code: Option<u8>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// `rollback`, before the prompt: what the host runs, the known-good
    /// generation it would go back to, and the package diff between them.
    RollbackPreview {
        host: String,
        from: Option<StorePath>,
        to: StorePath,
        /// The known-good generation it goes back to; `None` (`null`) for
        /// the system the host ran before nixgate's first deploy.
        generation: Option<u64>,
        packages: Option<crate::diff::PackageDiff>,
    },
    /// `[cache] push_to`: the builder copies these hosts' closures there.
    CachePushStarted {
        store: String,
        hosts: Vec<String>,
        closures: usize,
    },
    /// Paths copied to the cache so far, of those it lacked, and their NAR
    /// bytes.
    CachePushProgress {
        store: String,
        paths: u64,
        total_paths: u64,
        bytes: u64,
    },
    /// The cache has every closure: paths and NAR bytes copied (0 when it
    /// had them all already).
    CachePushFinished {
        store: String,
        paths: u64,
        bytes: u64,
        seconds: f64,
    },
    /// The push failed: every ready host is refused (`cache_push`).
    CachePushFailed {
        store: String,
        error: String,
    },
    /// Gate 2's finding for a host: what changes, why, and any drift.
    Diff {
        host: String,
        diff: crate::diff::HostDiff,
    },
    /// The plan: every selected host, in its wave, ready or refused.
    PlanReady {
        goal: Goal,
        waves: Vec<PlannedWave>,
        cancelled: Option<PlanStage>,
    },
    GateStarted {
        host: String,
        gate: Gate,
    },
    GatePassed {
        host: String,
        gate: Gate,
        evidence: GateEvidence,
    },
    GateFailed {
        host: String,
        gate: Gate,
        reason: FailureReason,
    },
    /// A copy's progress: the relay's stream bytes sent and the paths the
    /// host acknowledged; `copy = "builder"`: the bytes the builder's
    /// `nix-copy-closure` wrote and the paths it started. `total_paths`:
    /// the paths the host lacked.
    CopyProgress {
        host: String,
        bytes: u64,
        paths: u64,
        total_paths: u64,
        /// Seconds the host has taken nothing while the copy waits on it;
        /// left out while it moves.
        #[serde(default, skip_serializing_if = "is_zero")]
        idle_secs: u64,
    },
    /// Something else the activation pipeline on a host reported.
    Activation {
        host: String,
        activation: ActivationEvent,
    },
    HostFinished(HostSummary),
    /// A known-good host's release tag and branch.
    Released {
        host: String,
        tag: String,
        branch: String,
        /// How the branch moved (`unchanged`: it was on the commit already);
        /// `None` in run reports from before it was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        update: Option<crate::release::BranchUpdate>,
    },
    /// A known-good host that did not get a release, and why.
    NotReleased {
        host: String,
        why: NotReleased,
    },
    /// A release that could not be published to `[release] remote`.
    NotPublished {
        host: String,
        remote: String,
        tag: String,
        why: NotPublished,
    },
    /// The run report was written here.
    ReportWritten {
        #[serde(serialize_with = "crate::report::json::lossy_path")]
        path: std::path::PathBuf,
    },
    /// `exec`: the hosts it runs on, in order, and how many at once.
    ExecStarted {
        hosts: Vec<String>,
        parallel: usize,
    },
    /// `exec`: output of a host's command, as it arrived (whole UTF-8
    /// characters, not whole lines).
    ExecOutput {
        host: String,
        stream: crate::exec::Stream,
        text: String,
    },
    /// `exec`: a host's command ended, or never ran.
    ExecFinished {
        host: String,
        end: crate::exec::ExecEnd,
        seconds: f64,
    },
    /// `upload-keys`: a host's keys were written (names, destinations,
    /// SHA-256; never content).
    KeysUploaded {
        host: String,
        keys: Vec<crate::keys::KeyReceipt>,
    },
    /// `upload-keys`: a host's keys were not written.
    KeysFailed {
        host: String,
        reason: crate::keys::standalone::KeysFailure,
    },
    /// The last event of every command.
    Summary {
        command: CommandName,
        run_id: Option<String>,
        ending: Ending,
        exit_code: u8,
        /// Hosts (or machines, for `check`) that ended well, and not.
        ok: usize,
        failed: usize,
        /// Each host's end (deploying commands).
        hosts: Vec<HostSummary>,
    },
    #[serde(untagged)]
    Runner(RunnerEvent),
}

/// Every `event` tag nixgate writes (README's "JSON events" shows a line of
/// each; a test holds the two together).
pub const EVENT_NAMES: &[&str] = &[
    "run_started",
    "cancel_requested",
    "inventory_error",
    "inventory_ok",
    "checked",
    "host",
    "status",
    "release",
    "release_detail",
    "source_shipped",
    "build_started",
    "build_progress",
    "build_step",
    "builder_failed",
    "build_finished",
    "host_built",
    "history",
    "run_listed",
    "rollback_preview",
    "cache_push_started",
    "cache_push_progress",
    "cache_push_finished",
    "cache_push_failed",
    "diff",
    "plan_ready",
    "gate_started",
    "gate_passed",
    "gate_failed",
    "copy_progress",
    "activation",
    "host_finished",
    "released",
    "not_released",
    "not_published",
    "report_written",
    "exec_started",
    "exec_output",
    "exec_finished",
    "keys_uploaded",
    "keys_failed",
    "summary",
    "wave_started",
    "host_not_started",
    "wave_finished",
    "soak_started",
    "soak_checked",
];

/// A count that is left out of the JSON while it is zero.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Event {
    /// The `event` tag this event is written with.
    pub fn name(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "run_started",
            Event::CancelRequested { .. } => "cancel_requested",
            Event::InventoryError(_) => "inventory_error",
            Event::InventoryOk { .. } => "inventory_ok",
            Event::Checked(_) => "checked",
            Event::Host { .. } => "host",
            Event::Status(_) => "status",
            Event::Release { .. } => "release",
            Event::ReleaseDetail { .. } => "release_detail",
            Event::SourceShipped { .. } => "source_shipped",
            Event::BuildStarted { .. } => "build_started",
            Event::BuildProgress { .. } => "build_progress",
            Event::BuildStep { .. } => "build_step",
            Event::BuilderFailed { .. } => "builder_failed",
            Event::BuildFinished { .. } => "build_finished",
            Event::HostBuilt { .. } => "host_built",
            Event::History { .. } => "history",
            Event::RunListed { .. } => "run_listed",
            Event::RollbackPreview { .. } => "rollback_preview",
            Event::CachePushStarted { .. } => "cache_push_started",
            Event::CachePushProgress { .. } => "cache_push_progress",
            Event::CachePushFinished { .. } => "cache_push_finished",
            Event::CachePushFailed { .. } => "cache_push_failed",
            Event::Diff { .. } => "diff",
            Event::PlanReady { .. } => "plan_ready",
            Event::GateStarted { .. } => "gate_started",
            Event::GatePassed { .. } => "gate_passed",
            Event::GateFailed { .. } => "gate_failed",
            Event::CopyProgress { .. } => "copy_progress",
            Event::Activation { .. } => "activation",
            Event::HostFinished(_) => "host_finished",
            Event::Released { .. } => "released",
            Event::NotReleased { .. } => "not_released",
            Event::NotPublished { .. } => "not_published",
            Event::ReportWritten { .. } => "report_written",
            Event::ExecStarted { .. } => "exec_started",
            Event::ExecOutput { .. } => "exec_output",
            Event::ExecFinished { .. } => "exec_finished",
            Event::KeysUploaded { .. } => "keys_uploaded",
            Event::KeysFailed { .. } => "keys_failed",
            Event::Summary { .. } => "summary",
            Event::Runner(r) => match r {
                RunnerEvent::WaveStarted { .. } => "wave_started",
                RunnerEvent::HostNotStarted { .. } => "host_not_started",
                RunnerEvent::WaveFinished { .. } => "wave_finished",
                RunnerEvent::SoakStarted { .. } => "soak_started",
                RunnerEvent::SoakChecked { .. } => "soak_checked",
            },
        }
    }

    /// A host's activation event as the run reports it: gate events in the
    /// same shape as the controller's own gates (copy), the rest as they are.
    pub fn from_activation(host: &str, ev: ActivationEvent) -> Event {
        let host = host.to_owned();
        match ev {
            ActivationEvent::GateStarted { gate } => Event::GateStarted { host, gate },
            ActivationEvent::GatePassed { gate, evidence } => Event::GatePassed {
                host,
                gate,
                evidence,
            },
            ActivationEvent::GateFailed { gate, reason } => {
                Event::GateFailed { host, gate, reason }
            }
            activation => Event::Activation { host, activation },
        }
    }

    /// The host an event is about, if any.
    pub fn host(&self) -> Option<&str> {
        match self {
            Event::HostBuilt { host, .. }
            | Event::GateStarted { host, .. }
            | Event::GatePassed { host, .. }
            | Event::GateFailed { host, .. }
            | Event::CopyProgress { host, .. }
            | Event::Diff { host, .. }
            | Event::History { host, .. }
            | Event::RollbackPreview { host, .. }
            | Event::Activation { host, .. }
            | Event::Released { host, .. }
            | Event::NotReleased { host, .. }
            | Event::NotPublished { host, .. }
            | Event::ExecOutput { host, .. }
            | Event::ExecFinished { host, .. }
            | Event::Host { host, .. } => Some(host),
            Event::HostFinished(s) => Some(&s.host),
            Event::Status(s) => Some(&s.host),
            Event::Checked(p) => Some(&p.host),
            _ => None,
        }
    }
}
