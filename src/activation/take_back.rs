//! After a wave's soak: a host this run marked known-good whose health
//! checks now fail is taken back. Its mark is revoked (the known-good
//! profile returns to the generation before it, the record is kept as
//! `<N>.revoked.json`), and the known-good before it, or the system it ran
//! before the run, is re-activated by the same detached, verified path as
//! any rollback. The boot default goes back too: the gated goal had
//! persisted the candidate.

use super::events::{ActivationEvent, Warning};
use super::known_good;
use super::reactivate::{RollbackError, RollbackMode, RollbackOutcome, reactivate, rewrite_keys};
use super::settings::{HostSettings, RunId};
use crate::nix::StorePath;
use crate::remote::Remote;

/// Take the host back. `mark` is the generation this run marked (if it
/// marked one), `mode` as far as the run's goal went (the boot default is
/// switched back only when the run moved it), `before` what the host ran
/// before the run, `earlier_failed` the units failed before its live
/// switch (a rollback's exit 4 for those alone is back where it was, see
/// `detached::earlier_failures_only`: without them a host with a broken
/// unit of its own was reported ROLLBACK-FAILED on the known-good).
/// `keys` the run's keys of the host, written again after a take-back by
/// reboot (it emptied `/run/keys`). Returns the generation revoked and
/// how the rollback went.
pub async fn take_back<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    run_id: &RunId,
    (mark, mode): (Option<u64>, RollbackMode),
    (before, earlier_failed): (&StorePath, Option<&std::collections::BTreeSet<String>>),
    keys: &[crate::keys::ResolvedKey],
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> (Option<u64>, RollbackOutcome) {
    let mut revoked = None;
    let mut to = before.clone();
    if let Some(generation) = mark
        && let Some(previous) = revoke_warned(remote, settings, generation, emit).await
    {
        revoked = Some(generation);
        let known_good = closure_of(remote, settings, previous).await;
        // Not switched live: any known-good will do.
        if !matches!(mode, RollbackMode::Live | RollbackMode::Persistent) {
            to = known_good.unwrap_or(to);
        } else {
            to =
                super::inhibitors::live_rollback_target(remote, settings, before, known_good, emit)
                    .await;
        }
    }
    emit(ActivationEvent::RollbackStarted {
        to: to.clone(),
        mode,
    });
    let outcome = reactivate(remote, settings, run_id, &to, mode, earlier_failed, emit).await;
    let outcome = rewrite_keys(remote, settings, keys, outcome, emit).await;
    emit(ActivationEvent::RollbackFinished {
        outcome: outcome.clone(),
    });
    (revoked, outcome)
}

/// Revoke only: a host kept as it runs (the run did not change what it
/// runs, see `deploy::Kept::NotChanged`) whose known-good generation this
/// run's mark added. That generation's proof is this run's, and the soak
/// just disproved it; nothing is switched. Returns the generation revoked.
pub async fn revoke_only<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    generation: u64,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> Option<u64> {
    revoke_warned(remote, settings, generation, emit)
        .await
        .map(|_| generation)
}

/// Revoke `generation`, with a warning when it could not be: the
/// generation now current (`None`: not revoked).
async fn revoke_warned<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    generation: u64,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> Option<Option<u64>> {
    match known_good::revoke(remote, &settings.paths, settings.sudo, generation).await {
        Ok(previous) => Some(previous),
        Err(e) => {
            emit(ActivationEvent::Warning {
                warning: Warning::RevokeFailed {
                    generation,
                    error: format!("{e:#}"),
                },
            });
            None
        }
    }
}

/// The closure of known-good generation `g`, if it is still there, its
/// mark finished and its soak passed (`nixgate rollback`'s rule: a
/// generation whose mark was cut off before its record may be the very
/// candidate that failed; one whose soak never passed was never proven).
async fn closure_of<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    g: Option<u64>,
) -> Option<StorePath> {
    let g = g?;
    let history = known_good::history(remote, &settings.paths).await.ok()?;
    let unfinished = crate::plan::rollback_target::Unfinished::of(&history);
    history
        .iter()
        .find(|h| h.generation == g && h.present && !unfinished.is(h) && !h.soak_pending())
        .and_then(|h| h.closure.clone())
}

/// A take-back with nowhere to go: the host ran nothing else before.
pub fn nowhere(to: &StorePath) -> RollbackOutcome {
    RollbackOutcome::Failed {
        to: to.clone(),
        mode: RollbackMode::Persistent,
        error: RollbackError::NoTarget,
    }
}
