//! How a host's part in a run ended: one typed value, from the plan's
//! refusal to the activation's outcome to a failed soak, carried from the
//! runner to the reporters and the run report. Words for people are the
//! reporters' business (`report::human`); this only says what happened.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::activation::health::HealthReport;
use crate::activation::{HostOutcome, RollbackOutcome};
use crate::nix::StorePath;
use crate::plan::Refusal;
use crate::runner::{Interrupted, NotStarted};

/// How one host ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum HostEnd {
    /// The host went through (some of) the activation pipeline.
    Activation { activation: Arc<HostOutcome> },
    /// The plan refused it before the run: nothing on it changed.
    Refused { refusal: Refusal },
    /// It was never started.
    NotStarted { why: NotStarted },
    /// The controller's work on it was cut short.
    Interrupted { why: Interrupted },
    /// Proven live and marked known-good, then unhealthy after its wave's
    /// soak: its known-good mark was revoked and it was taken back to the
    /// known-good before.
    SoakFailed {
        /// The checks run after the soak (none when no new connection got
        /// in: `locked_out`).
        checks: Vec<HealthReport>,
        /// No new SSH connection got in after the soak (sshd keeps the
        /// run's own session: a lockout that came after the live switch's
        /// confirmation shows here): why the last try failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locked_out: Option<String>,
        /// The known-good generation revoked (the one this run marked).
        revoked: Option<u64>,
        /// `None`: not taken back, `kept` says why. With `kept`
        /// `NotChanged`: the boot default put back (boot only), when this
        /// run had moved it.
        rollback: Option<RollbackOutcome>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept: Option<Kept>,
    },
}

/// Why a host unhealthy after its soak was not taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kept {
    /// It already ran the candidate: this run did not change what it runs.
    /// Its known-good generation is kept when an earlier run proved it; one
    /// this run's mark added is revoked (`revoked` says so), and a boot
    /// default this run moved to the candidate goes back (`rollback`).
    NotChanged,
    /// Its host lock was lost during the soak, and another run has it now
    /// (or it could not be taken again): nothing is taken back or revoked
    /// under that run.
    LockLost,
    /// This run was a rollback to a known-good generation: going back
    /// means the system it rolled away from, and the generation, proven by
    /// an earlier run, is not revoked.
    RollbackTarget,
}

impl HostEnd {
    pub fn activation(outcome: HostOutcome) -> HostEnd {
        HostEnd::Activation {
            activation: Arc::new(outcome),
        }
    }

    /// The activation outcome, if the host got there.
    pub fn outcome(&self) -> Option<&HostOutcome> {
        match self {
            HostEnd::Activation { activation } => Some(activation),
            _ => None,
        }
    }

    /// The flat kind, for summaries, exit codes and `status`.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            HostEnd::Activation { activation } => kind_of(activation),
            HostEnd::Refused { .. } => OutcomeKind::Refused,
            HostEnd::NotStarted { .. } => OutcomeKind::NotStarted,
            HostEnd::Interrupted {
                why: Interrupted::Aborted,
            } => OutcomeKind::Aborted,
            HostEnd::Interrupted { .. } => OutcomeKind::Failed,
            // Kept: what it runs was not taken back (its boot default was).
            HostEnd::SoakFailed {
                rollback: Some(RollbackOutcome::RolledBack { .. }),
                kept: Some(_),
                ..
            } => OutcomeKind::Failed,
            HostEnd::SoakFailed {
                rollback: Some(RollbackOutcome::RolledBack { .. }),
                ..
            } => OutcomeKind::RolledBack,
            HostEnd::SoakFailed { rollback: None, .. } => OutcomeKind::Failed,
            HostEnd::SoakFailed { .. } => OutcomeKind::RollbackFailed,
        }
    }

    /// Does this end count against the wave's failure budget? A change
    /// deferred to the next boot is not proven live: it counts unless the
    /// run allows pending reboots (`--allow-pending-reboot`).
    pub fn counts_against_wave(&self, allow_pending_reboot: bool) -> bool {
        let k = self.kind();
        k.is_failure() || (k == OutcomeKind::DeferredPendingReboot && !allow_pending_reboot)
    }
}

fn kind_of(o: &HostOutcome) -> OutcomeKind {
    match o {
        HostOutcome::KnownGood { .. } => OutcomeKind::KnownGood,
        HostOutcome::Activated { .. } => OutcomeKind::Reached,
        HostOutcome::AlreadyCurrent { .. } => OutcomeKind::AlreadyCurrent,
        HostOutcome::DeferredPendingReboot { .. } => OutcomeKind::DeferredPendingReboot,
        HostOutcome::NotPersisted { .. } => OutcomeKind::NotPersisted,
        HostOutcome::RolledBack { .. } => OutcomeKind::RolledBack,
        HostOutcome::RollbackFailed { .. } => OutcomeKind::RollbackFailed,
        HostOutcome::Failed { .. }
        | HostOutcome::NotMarked { .. }
        | HostOutcome::SignatureMismatch { .. } => OutcomeKind::Failed,
        HostOutcome::Cancelled { .. } => OutcomeKind::NotStarted,
        HostOutcome::RevertedByHost { .. } => OutcomeKind::RevertedByHost,
        HostOutcome::Unreachable { .. } => OutcomeKind::Unreachable,
        HostOutcome::MovedByOther { .. } => OutcomeKind::MovedByOther,
    }
}

/// How a host's part in a run ended, flattened for summaries, exit codes
/// and `status`. Spelled the same in JSON, tables and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeKind {
    /// Every gate passed; the closure is the host's new known-good.
    KnownGood,
    /// The goal was reached (copy, dry-activate, test, boot, switch).
    Reached,
    /// The host already ran the candidate: verified and marked, not switched.
    AlreadyCurrent,
    /// The candidate needs a reboot (systemd, dbus or kernel changed): it is
    /// the boot default, the old system still runs.
    #[serde(rename = "pending-reboot")]
    DeferredPendingReboot,
    /// Proven live, but the boot entry could not be written: it runs the
    /// new system and boots the old one. Not known-good.
    NotPersisted,
    /// A gate failed after the switch; the host is back on its known-good.
    RolledBack,
    /// A gate failed and so did the rollback: the host needs a person.
    RollbackFailed,
    /// Cut off after the live switch: the host's dead-man timer took it
    /// back to what it ran, and the controller saw it there.
    RevertedByHost,
    /// Cut off after the live switch and never reached again: what it runs
    /// is unknown. It needs a person.
    Unreachable,
    /// Cut off after the live switch, then found on a system someone else
    /// put there: left as it is.
    MovedByOther,
    /// A gate failed before anything changed on the host.
    Failed,
    /// The plan refused the host (build, drift, unreachable, locked, ...):
    /// nothing changed on it.
    Refused,
    /// Never started (cancelled, or its wave or an earlier one failed).
    NotStarted,
    /// The controller aborted mid-host; a detached switch may still finish.
    Aborted,
}

impl OutcomeKind {
    /// Every kind, in the order they are declared (tables' and metrics'
    /// order). Read from the enum itself, through the variant numbers
    /// serde gives it, so no list can miss a kind: the metrics' own list
    /// held 11 of 13, and never counted `reverted-by-host` or
    /// `unreachable`.
    pub fn all() -> impl Iterator<Item = OutcomeKind> {
        use serde::de::value::{Error, U32Deserializer};
        (0u32..).map_while(|i| OutcomeKind::deserialize(U32Deserializer::<Error>::new(i)).ok())
    }

    /// Does this outcome count against a wave's failure budget?
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            OutcomeKind::RolledBack
                | OutcomeKind::NotPersisted
                | OutcomeKind::RollbackFailed
                | OutcomeKind::RevertedByHost
                | OutcomeKind::Unreachable
                | OutcomeKind::MovedByOther
                | OutcomeKind::Failed
                | OutcomeKind::Refused
                | OutcomeKind::Aborted
        )
    }

    /// Does this outcome make the run exit 1? Failures, and hosts that never
    /// started (a failed wave or a cancel): the run did not end well for them.
    /// A pending reboot does too unless the run allowed it: see
    /// [`HostSummary::fails_run`].
    pub fn fails_run(self) -> bool {
        self.is_failure() || self == OutcomeKind::NotStarted
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::KnownGood => "known-good",
            OutcomeKind::Reached => "reached",
            OutcomeKind::AlreadyCurrent => "already-current",
            OutcomeKind::DeferredPendingReboot => "pending-reboot",
            OutcomeKind::NotPersisted => "not-persisted",
            OutcomeKind::RolledBack => "rolled-back",
            OutcomeKind::RollbackFailed => "rollback-failed",
            OutcomeKind::RevertedByHost => "reverted-by-host",
            OutcomeKind::Unreachable => "unreachable",
            OutcomeKind::MovedByOther => "moved-by-other",
            OutcomeKind::Failed => "failed",
            OutcomeKind::Refused => "refused",
            OutcomeKind::NotStarted => "not-started",
            OutcomeKind::Aborted => "aborted",
        }
    }
}

impl std::fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host's line in the summary and the run report.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSummary {
    pub host: String,
    pub wave: String,
    /// What it was (to be) deployed to.
    pub closure: Option<StorePath>,
    pub end: HostEnd,
    pub seconds: f64,
    /// The run allowed pending reboots (`--allow-pending-reboot`): a change
    /// deferred to the next boot then neither stops the waves after it nor
    /// fails the run.
    pub pending_reboot_allowed: bool,
    /// Why the run left this host's provisional known-good mark pending,
    /// when it did (its wave's soak not run in full, or not proven).
    pub soak_left: Option<SoakLeft>,
}

/// Why a run left a host's provisional known-good mark pending after its
/// wave's soak: what the wave asks was not proven, so the host fails the
/// run (exit 1), though it runs the candidate and its early re-check
/// passed. Before, a single-wave `push --wave canary` stopped mid-soak
/// exited 0, its canary reported known-good: `push --wave canary && push
/// --wave main` rolled the fleet on a canary never soaked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum SoakLeft {
    /// The soak did not run its full time (`cut` says why).
    CutShort { cut: crate::runner::SoakCut },
    /// No new connection was made after the soak, for a reason of this
    /// machine's own: the lockout check never ran (the run stops).
    Unproven,
    /// The soak passed, but the host could not make its mark final (the
    /// command failing as the run let the host go): it stays pending on
    /// the host, no rollback target, unvalidated for the next diff. The
    /// run exited 0 with a warning, and a cron wrapper took the mark for
    /// proven.
    NotRecorded,
}

impl HostSummary {
    pub fn outcome(&self) -> OutcomeKind {
        self.end.kind()
    }

    /// Does this host make the run exit 1? What [`OutcomeKind::fails_run`]
    /// says, and a change deferred to the next boot unless the run allowed
    /// that: it counts against its wave like a failure, and so against the
    /// run (a single wave exited 0 with every host pending a reboot while
    /// a canary's pending reboot failed the run through the waves it
    /// stopped).
    pub fn fails_run(&self) -> bool {
        pending_fails(
            self.outcome(),
            self.pending_reboot_allowed,
            self.soak_left.is_some(),
        )
    }

    /// Did the run take the host back to an earlier system (or did the
    /// host revert itself)? The run's summary then reads the host's
    /// known-good history, to say which generation it went back to.
    pub fn was_taken_back(&self) -> bool {
        match &self.end {
            HostEnd::Activation { activation } => matches!(
                activation.as_ref(),
                HostOutcome::RolledBack { .. }
                    | HostOutcome::RollbackFailed { .. }
                    | HostOutcome::RevertedByHost { .. }
            ),
            HostEnd::SoakFailed { rollback, .. } => rollback.is_some(),
            _ => false,
        }
    }
}

impl Serialize for HostSummary {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shape<'a> {
            host: &'a str,
            wave: &'a str,
            outcome: OutcomeKind,
            closure: &'a Option<StorePath>,
            #[serde(flatten)]
            end: &'a HostEnd,
            seconds: f64,
            pending_reboot_allowed: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            soak_left: Option<SoakLeft>,
        }
        Shape {
            host: &self.host,
            wave: &self.wave,
            outcome: self.outcome(),
            closure: &self.closure,
            end: &self.end,
            seconds: self.seconds,
            pending_reboot_allowed: self.pending_reboot_allowed,
            soak_left: self.soak_left,
        }
        .serialize(s)
    }
}

/// The shape [`HostSummary`] is written in, read back (`outcome` is derived
/// from `end`, so it is not read).
impl<'de> Deserialize<'de> for HostSummary {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Shape {
            host: String,
            wave: String,
            closure: Option<StorePath>,
            #[serde(flatten)]
            end: HostEnd,
            seconds: f64,
            #[serde(default = "allowed_before")]
            pending_reboot_allowed: bool,
            #[serde(default)]
            soak_left: Option<SoakLeft>,
        }
        let s = Shape::deserialize(d)?;
        Ok(HostSummary {
            host: s.host,
            wave: s.wave,
            closure: s.closure,
            end: s.end,
            seconds: s.seconds,
            pending_reboot_allowed: s.pending_reboot_allowed,
            soak_left: s.soak_left,
        })
    }
}

/// A report written before the flag was judged with no pending reboot
/// failing its run.
pub(crate) fn allowed_before() -> bool {
    true
}

/// Whether a host that ended `outcome` fails its run, given whether the
/// run allowed pending reboots and whether it left the host's mark soak
/// pending ([`SoakLeft`]).
pub fn pending_fails(outcome: OutcomeKind, pending_reboot_allowed: bool, soak_left: bool) -> bool {
    outcome.fails_run()
        || (outcome == OutcomeKind::DeferredPendingReboot && !pending_reboot_allowed)
        || soak_left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_spelled_as_in_tables() {
        for k in [
            OutcomeKind::KnownGood,
            OutcomeKind::DeferredPendingReboot,
            OutcomeKind::RollbackFailed,
            OutcomeKind::Refused,
            OutcomeKind::NotStarted,
        ] {
            let json = serde_json::to_value(k).unwrap();
            assert_eq!(json, k.as_str());
            let back: OutcomeKind = serde_json::from_value(json).unwrap();
            assert_eq!(back, k);
        }
    }

    #[test]
    fn all_is_every_kind_once_in_declared_order() {
        let all: Vec<OutcomeKind> = OutcomeKind::all().collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
        assert_eq!(all.len(), 14, "{all:?}");
        assert_eq!(all.first(), Some(&OutcomeKind::KnownGood));
        assert_eq!(all.last(), Some(&OutcomeKind::Aborted));
        for k in [
            OutcomeKind::RevertedByHost,
            OutcomeKind::Unreachable,
            OutcomeKind::MovedByOther,
        ] {
            assert!(all.contains(&k), "{k}");
        }
    }

    /// The run's judgement of a pending reboot is kept with the host; a
    /// report written before it was kept reads as the run judged then (a
    /// pending reboot never failed it).
    #[test]
    fn a_pending_reboot_fails_the_run_as_the_report_says() {
        let h = HostSummary {
            host: "db1".into(),
            wave: "main".into(),
            closure: None,
            end: HostEnd::activation(HostOutcome::DeferredPendingReboot {
                reason: crate::activation::detached::RebootReason::SwitchInhibitors {
                    log_tail: vec![],
                },
            }),
            seconds: 1.0,
            pending_reboot_allowed: false,
            soak_left: None,
        };
        let mut v = serde_json::to_value(&h).unwrap();
        assert_eq!(v["pending_reboot_allowed"], false);
        let back: HostSummary = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back, h);
        assert!(back.fails_run());
        v.as_object_mut().unwrap().remove("pending_reboot_allowed");
        let old: HostSummary = serde_json::from_value(v).unwrap();
        assert!(!old.fails_run());
    }

    #[test]
    fn a_deferred_change_counts_unless_allowed() {
        let deferred = HostEnd::activation(HostOutcome::DeferredPendingReboot {
            reason: crate::activation::detached::RebootReason::SwitchInhibitors {
                log_tail: vec![],
            },
        });
        assert!(deferred.counts_against_wave(false));
        assert!(!deferred.counts_against_wave(true));
        let refused = HostEnd::Refused {
            refusal: Refusal::Locked {
                holder: "run x".into(),
            },
        };
        assert!(refused.counts_against_wave(true));
        assert_eq!(refused.kind(), OutcomeKind::Refused);
    }
}
