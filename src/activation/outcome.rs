//! The final, typed outcome of a host's activation, and the reasons a gate
//! can fail.

use serde::{Deserialize, Serialize};

use super::deadman::RevertRecord;
use super::detached::{RebootReason, SwitchFailure};
use super::dry_activate::DryActivateOutcome;
use super::health::HealthReport;
use super::known_good::KnownGoodMark;
use super::privilege::SudoCheck;
use super::reactivate::RollbackError;
use super::realise::RealiseOutcome;
use super::reboot::RebootOutcome;
use crate::gates::{Gate, Goal};
use crate::nix::StorePath;

/// Why a gate failed. Adjacently tagged (`{"kind": ..., "detail": ...}`):
/// several variants wrap enums that carry a `kind` of their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum FailureReason {
    /// The closure did not reach the host (the copy gate).
    Copy {
        error: String,
    },
    /// The host lock was lost with its connection and could not be taken
    /// again (another run holds it now, or the command failed).
    LockLost {
        holder: Option<String>,
        error: Option<String>,
    },
    /// `sudo -n true` did not work.
    Sudo(SudoCheck),
    /// `nix-store --realise` failed (not a signature problem).
    Realise(RealiseOutcome),
    /// A step's command could not run or answered nonsense.
    Remote {
        #[serde(deserialize_with = "crate::report::stored::static_str")]
        step: crate::report::stored::StaticStr,
        error: String,
    },
    DryActivate(DryActivateOutcome),
    ProfileSet {
        error: String,
    },
    Switch(SwitchFailure),
    /// The change needs a reboot but the goal does not persist it (`test`).
    NeedsReboot(RebootReason),
    HealthChecks {
        reports: Vec<HealthReport>,
    },
    Reboot(RebootOutcome),
    MarkKnownGood {
        error: String,
    },
    /// A key could not be written on the host.
    Keys {
        stage: crate::keys::UploadAt,
        error: crate::keys::KeyUploadError,
    },
    /// The host ran another system when its activation started than when
    /// the plan read it: nothing was done.
    ChangedSincePlan {
        planned: StorePath,
        now: StorePath,
    },
}

/// Where a host ended up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostOutcome {
    /// Every gate passed; marked known-good.
    KnownGood { mark: KnownGoodMark },
    /// The goal was reached; the goal does not mark known-good.
    Activated { goal: Goal },
    /// The host already ran the candidate: verified (and marked, if the goal
    /// marks), not re-switched. `boot_before`: the boot default (the system
    /// profile's target) before this run, when this run made the candidate
    /// the boot default (an earlier `--goal test` left it elsewhere): a soak
    /// that then finds the host unhealthy puts it back.
    AlreadyCurrent {
        mark: Option<KnownGoodMark>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        boot_before: Option<StorePath>,
    },
    /// The change needs a reboot: it is the boot default now, not running.
    DeferredPendingReboot { reason: RebootReason },
    /// Proven live (every live gate passed), but the boot entry could not be
    /// written: it runs the candidate and boots the system it had before.
    NotPersisted { reason: SwitchFailure },
    /// A rollback to a known-good system passed every gate but the mark:
    /// the host runs its target (and boots it, as far as the goal went),
    /// where it stays (a mark that failed says nothing against a system
    /// proven before, and going back would land on the one rolled away
    /// from); its known-good profile was not moved.
    NotMarked {
        reason: FailureReason,
        /// The known-good generation rolled back to; `None`: the system the
        /// host ran before nixgate's first deploy (no generation yet).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        generation: Option<u64>,
    },
    /// A gate failed after the host changed; the rollback verified.
    RolledBack {
        gate: Gate,
        reason: FailureReason,
        to: StorePath,
    },
    /// A gate failed after the host changed and the rollback did NOT verify:
    /// the host needs a human.
    RollbackFailed {
        gate: Gate,
        reason: FailureReason,
        to: StorePath,
        rollback_error: RollbackError,
    },
    /// A gate failed before anything on the host changed, but for the
    /// keys a failed key gate wrote before the key that failed
    /// ([`FailureReason::keys_written`]).
    Failed { gate: Gate, reason: FailureReason },
    /// The closure is not signed by a key the host trusts.
    SignatureMismatch {
        untrusted: Vec<String>,
        tail: Vec<String>,
    },
    /// Cancelled before this gate; nothing was changed by it.
    Cancelled { before: Gate },
    /// The controller lost the host after the live switch; the host's
    /// dead-man timer put it back on the system it ran before, and the
    /// controller saw it there again.
    RevertedByHost {
        cause: CutOff,
        to: StorePath,
        /// What the host wrote when it reverted.
        record: Option<RevertRecord>,
    },
    /// The controller lost the host after the live switch, and found it
    /// (when its revert came due) running a system neither the candidate
    /// nor what it ran before: someone else moved it (a hand's
    /// `nixos-rebuild switch`, another run), before the revert (which
    /// then changed nothing: `host-moved`) or after it. Nothing of theirs
    /// is undone: no revert, no rollback. Also a host whose lock this run
    /// lost after changing it ([`CutOff::LockLost`]): another run holds it
    /// now, or the host was not as this run left it when taken again.
    MovedByOther {
        cause: CutOff,
        /// What it runs now.
        now: StorePath,
        /// What the host wrote when its revert ran.
        record: Option<RevertRecord>,
    },
    /// The controller lost the host after the live switch and could not
    /// reach it again, even after its dead-man timer should have fired:
    /// what it runs is unknown. Also a host changed by this run whose
    /// lost lock could not be taken again ([`CutOff::LockLost`]).
    Unreachable {
        cause: CutOff,
        /// What it ran when last seen.
        last_seen: StorePath,
        /// When the host's revert was due (it may have happened).
        revert_due: bool,
    },
}

/// How the controller lost a host after its live switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CutOff {
    /// The switch settled, but no new connection could be made to confirm it.
    /// `controllers_own`: every try failed for a reason of this machine's
    /// own ([`crate::ssh::ConnectError::is_controllers_own`]: its resolver failing,
    /// its open files or ports, its agent's key gone): it says nothing of
    /// the candidate and fails every host after it the same way, so the run
    /// starts no more hosts.
    NoNewConnection {
        error: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        controllers_own: bool,
    },
    /// The connection was lost while the switch ran.
    LostDuringSwitch { failure: SwitchFailure },
    /// The switch may still run (hung, or its start never confirmed) and
    /// could not be stopped: the armed revert, which stops it (every
    /// attempt) before it reverts, is left to take the host back.
    StartNotStopped {
        failure: SwitchFailure,
        error: String,
    },
    /// A new connection reached a host that does not run the candidate.
    NotOnCandidate { seen: Option<StorePath> },
    /// A new connection reached the host after its revert had begun (the
    /// confirmation came too late): the revert is left to finish.
    RevertBegan,
    /// The run's host lock was lost with its connection (the controller
    /// suspended, or cut off, past the lock's lease) before a step that
    /// changes the host, and another run holds it now (`holder`), or it
    /// could not be taken again (`error`), or it was taken again and the
    /// host was not as this run left it (neither).
    LockLost {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holder: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// The step of a live gate that failed for want of a new connection
/// ([`FailureReason::unconfirmed`]).
const CONFIRM_STEP: &str = "confirm over a new connection";

impl FailureReason {
    /// The live gate failed because no new connection confirmed the host
    /// (its cause kept as JSON, data the reporters and
    /// [`Self::unconfirmed_cause`] read back, not prose).
    pub fn unconfirmed(cause: &CutOff) -> FailureReason {
        FailureReason::Remote {
            step: CONFIRM_STEP,
            error: serde_json::to_string(cause).unwrap_or_default(),
        }
    }

    /// The cause of a failure made by [`Self::unconfirmed`].
    pub fn unconfirmed_cause(&self) -> Option<CutOff> {
        match self {
            FailureReason::Remote { step, error } if *step == CONFIRM_STEP => {
                serde_json::from_str(error).ok()
            }
            _ => None,
        }
    }
}

impl FailureReason {
    /// The keys written before a key that failed: a failure "before the
    /// host changed" that changed them (empty for any other reason).
    pub fn keys_written(&self) -> &[crate::keys::KeyReceipt] {
        match self {
            FailureReason::Keys { error, .. } => &error.written,
            _ => &[],
        }
    }
}

impl HostOutcome {
    /// Did the host fail because this machine could make no new
    /// connection, for a reason of its own ([`CutOff::NoNewConnection`]'s
    /// `controllers_own`)? Whatever the host's end (reverted by the host,
    /// rolled back by the controller, unreachable), the next host would
    /// fail the same way.
    pub fn controllers_own(&self) -> bool {
        let cause = match self {
            HostOutcome::RevertedByHost { cause, .. }
            | HostOutcome::MovedByOther { cause, .. }
            | HostOutcome::Unreachable { cause, .. } => Some(cause.clone()),
            HostOutcome::RolledBack { reason, .. }
            | HostOutcome::RollbackFailed { reason, .. }
            | HostOutcome::Failed { reason, .. } => reason.unconfirmed_cause(),
            _ => None,
        };
        matches!(
            cause,
            Some(CutOff::NoNewConnection {
                controllers_own: true,
                ..
            })
        )
    }

    /// Did the host reach its goal?
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            HostOutcome::KnownGood { .. }
                | HostOutcome::Activated { .. }
                | HostOutcome::AlreadyCurrent { .. }
                | HostOutcome::DeferredPendingReboot { .. }
        )
    }

    /// Does the host need a human?
    pub fn needs_attention(&self) -> bool {
        matches!(self, HostOutcome::RollbackFailed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Magic rollback off, the controller rolls back a host no new
    /// connection confirmed: its cause is read back from the gate's
    /// failure (JSON, not words), and only this machine's own counts.
    #[test]
    fn an_unconfirmed_rollback_says_whose_failure_it_was() {
        let rolled_back = |controllers_own| HostOutcome::RolledBack {
            gate: Gate::LiveActivate,
            reason: FailureReason::unconfirmed(&CutOff::NoNewConnection {
                error: "no key to offer".into(),
                controllers_own,
            }),
            to: StorePath::parse("/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web")
                .unwrap(),
        };
        assert!(rolled_back(true).controllers_own());
        assert!(!rolled_back(false).controllers_own());
        // A report written before the flag reads as the host's.
        let old = FailureReason::Remote {
            step: CONFIRM_STEP,
            error: r#"{"kind":"no_new_connection","error":"timed out"}"#.into(),
        };
        assert_eq!(
            old.unconfirmed_cause(),
            Some(CutOff::NoNewConnection {
                error: "timed out".into(),
                controllers_own: false
            })
        );
        let other = FailureReason::Remote {
            step: "arm the dead-man revert",
            error: r#"{"kind":"no_new_connection","error":"x","controllers_own":true}"#.into(),
        };
        assert_eq!(other.unconfirmed_cause(), None);
    }
}
