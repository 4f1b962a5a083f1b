//! Typed events of a host's activation, for reporters. Data only: reporters
//! decide how to show them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::detached::{RebootReason, SwitchEvidence};
use super::dry_activate::DryActivateReport;
use super::health::HealthReport;
use super::known_good::KnownGoodMark;
use super::outcome::FailureReason;
use super::profile::ProfileCheck;
use super::reactivate::{RollbackMode, RollbackOutcome};
use super::verify_poll::JobState;
use crate::gates::{Gate, SwitchAction};
use crate::nix::StorePath;

/// Evidence that a gate passed. Adjacently tagged: the wrapped values carry
/// a `kind` of their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum GateEvidence {
    /// The closure is on the host.
    Copy(crate::nix::copy::CopyOutcome),
    DryActivate(DryActivateReport),
    LiveActivate(SwitchEvidence),
    HealthChecks {
        reports: Vec<HealthReport>,
    },
    Persist {
        profile: String,
        closure: StorePath,
        /// The separate `boot` run, if there was one (not for `switch`).
        boot: Option<SwitchEvidence>,
    },
    /// The host rebooted into the candidate.
    Rebooted {
        booted: StorePath,
    },
    MarkKnownGood(KnownGoodMark),
}

/// What the pipeline is doing on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    SudoPreflight,
    /// Writing these keys (names only) on the host.
    UploadKeys {
        stage: crate::keys::UploadAt,
        keys: Vec<String>,
    },
    Realise {
        closure: StorePath,
    },
    ReadCurrentSystem,
    SetProfile {
        profile: String,
        closure: StorePath,
    },
    CheckInhibitors,
    CheckSwitchLock,
    FireSwitch {
        unit: String,
        action: SwitchAction,
        closure: StorePath,
    },
    VerifyPoll {
        unit: String,
    },
    SelfCorrectProfile {
        profile: String,
    },
    StopHungSwitch {
        unit: String,
    },
    /// Units failed before this deploy (kept as they are).
    RecordFailedUnits {
        units: Vec<String>,
    },
    /// Before a rollback: clear the failed state of units that failed
    /// during this deploy, so the old system's switch is judged on its own.
    ResetFailedUnits {
        units: Vec<String>,
    },
    Reboot,
    WaitForReboot,
    MarkKnownGood,
    /// The host lock was lost with its connection: taken again, and the
    /// host read, before the next step that changes it.
    TakeLockAgain,
    /// Magic rollback: the host reverts by itself after this long unless
    /// the controller confirms.
    ArmRevert {
        unit: String,
        after: std::time::Duration,
    },
    /// Confirming the switch over a new connection, within this window.
    ConfirmNewConnection {
        within: std::time::Duration,
    },
    /// Units of an earlier run (a switch, a revert) still run on the host;
    /// its controller is gone (this run holds the host lock): waited for.
    AwaitEarlierRun {
        units: Vec<String>,
    },
    /// An earlier run armed a dead-man revert here and never confirmed it:
    /// it is run now, before this deploy, so it cannot take this one back.
    RunEarlierRevert {
        unit: String,
    },
    /// The host runs the candidate already, but nixgate's last switch to
    /// it on this boot (`unit`) failed (`exit`; `None`: it never said it
    /// ended), its result never read (its controller was killed): it is
    /// switched again, not certified as it is.
    SwitchAgain {
        unit: String,
        exit: Option<u32>,
    },
}

/// Where a lost connection was noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Fire,
    Poll,
    Reboot,
}

/// Something worth telling that does not fail the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Warning {
    /// Step 6 found the profile re-pointed (and what it did about it).
    Profile {
        profile: String,
        check: ProfileCheck,
    },
    /// `flock` is missing on the host: the orphaned-switch check was skipped.
    SwitchLockUnchecked,
    /// The rollback's switch exited 4 only for units that were already
    /// failed before this deploy: the host is back where it was.
    UnitsFailedBeforeDeploy { units: Vec<String> },
    /// The host refused to start the job's unit; it is fired again under a
    /// fresh name.
    FireRefused { unit: String, attempt: u32 },
    /// Every start was refused, yet this attempt's job ran (a start that
    /// timed out on D-Bus went through): it is verified like any fire.
    RefusedFireRan { unit: String },
    /// A known-good mark could not be revoked after a failed soak.
    RevokeFailed { generation: u64, error: String },
    /// A switch that changed nothing could not have its dead-man revert
    /// disarmed: it fires within the confirm window, re-activates what the
    /// host runs and puts the profile back (a change made by hand before
    /// then is undone).
    RevertStillArmed { unit: String },
    /// After a soak, no new connection could be made for a reason of the
    /// controller's own (no key to offer, an agent gone): the host was not
    /// judged locked out, its health checks ran over the run's session.
    NewConnectionUnproven { error: String },
    /// The closure copied to the host ahead of its wave could not be
    /// rooted there (`root`, the link asked for): the host's garbage
    /// collector may delete it before the wave starts (its realise then
    /// fails the copy gate).
    StagedNotRooted { root: String, error: String },
    /// The run's root of a closure it copied ahead (`root`) could not be
    /// removed as the run let the host go: it keeps that closure until the
    /// next run that copies ahead to the host removes it.
    StagedRootLeft { root: String, error: String },
    /// A live rollback went to the system the host ran before this deploy,
    /// not to its known-good `known_good`: that one differs from it in what
    /// only a reboot changes (`changes`: systemd, dbus, the kernel), which
    /// nixgate never switches live (NixOS 25.11's switch inhibitors refuse
    /// it, and older NixOS would run the old system on the new systemd or
    /// kernel).
    KnownGoodNeedsReboot {
        known_good: StorePath,
        changes: Vec<crate::activation::inhibitors::ComponentChange>,
    },
    /// The wave's soak was cut short (`cut`: why) and the host's re-check
    /// passed early: its known-good generation, marked provisional, stays
    /// soak pending (no rollback target, unvalidated for the diff gate)
    /// until a push of the commit soaks it in full.
    SoakCutShort {
        generation: u64,
        cut: crate::runner::SoakCut,
    },
    /// The host's soak passed, but making its provisional known-good
    /// generation final failed (`error`): the host keeps it soak pending
    /// until a push of the commit marks and soaks it again.
    SoakPassNotRecorded { generation: u64, error: String },
}

/// One event of a host's activation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ActivationEvent {
    GateStarted {
        gate: Gate,
    },
    GatePassed {
        gate: Gate,
        evidence: GateEvidence,
    },
    GateFailed {
        gate: Gate,
        reason: FailureReason,
    },
    Step {
        step: Step,
    },
    Polling {
        unit: String,
        elapsed: Duration,
        job: JobState,
        current: Option<StorePath>,
    },
    ConnectionLost {
        phase: Phase,
        attempt: u32,
        retry_in: Duration,
        error: String,
    },
    Warning {
        warning: Warning,
    },
    /// The change needs a reboot; it was made the boot default instead.
    Deferred {
        reason: RebootReason,
    },
    RollbackStarted {
        to: StorePath,
        mode: RollbackMode,
    },
    RollbackFinished {
        outcome: RollbackOutcome,
    },
    /// A new connection reached the host on the candidate: the dead-man
    /// revert is disarmed.
    Confirmed {
        unit: String,
    },
    /// Keys written on the host: names, destinations, SHA-256 (never content).
    KeysUploaded {
        stage: crate::keys::UploadAt,
        keys: Vec<crate::keys::KeyReceipt>,
    },
    /// Cut off after the switch: waiting for the host's own revert.
    AwaitingRevert {
        unit: String,
        cause: super::outcome::CutOff,
    },
    /// The host's own revert ran and did not take it back (its record):
    /// the controller rolls back itself.
    RevertFailed {
        record: super::deadman::RevertRecord,
    },
}
