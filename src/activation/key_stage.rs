//! Writing one stage of a run's keys on a host, its step and its receipts
//! as events: the pipeline's key gates (a push rebooted into its candidate
//! writes both stages again, the reboot having emptied `/run/keys`, a
//! tmpfs), and a rollback by reboot, whose known-good system came up
//! without its keys for the same reason (it was reported rolled back).

use super::events::{ActivationEvent, Step};
use crate::keys::{self, KeyUploadError, ResolvedKey, UploadAt};
use crate::remote::Remote;

/// Write the keys of `keys` written at `stage` (none: nothing is done).
pub async fn write_stage<R: Remote>(
    remote: &R,
    keys: &[ResolvedKey],
    stage: UploadAt,
    sudo: bool,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> Result<(), KeyUploadError> {
    let these: Vec<&ResolvedKey> = keys.iter().filter(|k| k.spec.upload_at == stage).collect();
    if these.is_empty() {
        return Ok(());
    }
    emit(ActivationEvent::Step {
        step: Step::UploadKeys {
            stage,
            keys: these.iter().map(|k| k.spec.name.clone()).collect(),
        },
    });
    // The keys written before one that failed are reported too: they
    // replaced what the host had.
    let (receipts, failed) = match keys::upload_all(remote, &these, sudo).await {
        Ok(receipts) => (receipts, None),
        Err(e) => (e.written.clone(), Some(e)),
    };
    if !receipts.is_empty() {
        emit(ActivationEvent::KeysUploaded {
            stage,
            keys: receipts,
        });
    }
    failed.map_or(Ok(()), Err)
}
