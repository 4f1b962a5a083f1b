//! From a host's typed activation outcome to the flat kind summaries and exit
//! codes use, with a few words for people.

use crate::activation::HostOutcome;
use crate::report::OutcomeKind;
use crate::report::human::describe_failure;

/// The summary kind of an activation outcome.
pub fn kind(o: &HostOutcome) -> OutcomeKind {
    match o {
        HostOutcome::KnownGood { .. } => OutcomeKind::KnownGood,
        HostOutcome::Activated { .. } => OutcomeKind::Reached,
        HostOutcome::AlreadyCurrent { .. } => OutcomeKind::AlreadyCurrent,
        HostOutcome::DeferredPendingReboot { .. } => OutcomeKind::DeferredPendingReboot,
        HostOutcome::RolledBack { .. } => OutcomeKind::RolledBack,
        HostOutcome::RollbackFailed { .. } => OutcomeKind::RollbackFailed,
        HostOutcome::Failed { .. } | HostOutcome::SignatureMismatch { .. } => OutcomeKind::Failed,
        HostOutcome::Cancelled { .. } => OutcomeKind::NotStarted,
    }
}

/// Why, in a few words, for the summary table.
pub fn reason(o: &HostOutcome) -> Option<String> {
    match o {
        HostOutcome::KnownGood { mark } => {
            Some(format!("known-good generation {}", mark.generation))
        }
        HostOutcome::AlreadyCurrent { .. } | HostOutcome::Activated { .. } => None,
        HostOutcome::DeferredPendingReboot { .. } => {
            Some("systemd, dbus or the kernel change: boot default set, reboot to run it".into())
        }
        HostOutcome::RolledBack { gate, reason, to } => Some(format!(
            "{gate}: {}; back on {}",
            describe_failure(reason),
            to.name()
        )),
        HostOutcome::RollbackFailed { gate, reason, .. } => Some(format!(
            "{gate}: {}; ROLLBACK FAILED too: run `nixgate status` and fix the host by hand",
            describe_failure(reason)
        )),
        HostOutcome::Failed { gate, reason } => Some(format!(
            "{gate}: {} (nothing changed)",
            describe_failure(reason)
        )),
        HostOutcome::SignatureMismatch { untrusted, .. } => Some(format!(
            "{} path(s) not signed by a key the host trusts (nothing changed)",
            untrusted.len()
        )),
        HostOutcome::Cancelled { before } => Some(format!("cancelled before {before}")),
    }
}
