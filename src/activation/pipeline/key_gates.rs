//! Writing the run's keys in the order of the gates: `pre-activation` keys
//! before dry-activate (nothing changed yet: a failure leaves the system as
//! it was), `post-activation` keys once the live switch proved good (a
//! failure then rolls back, like any gate after the host changed).

use super::Run;
use crate::activation::key_stage;
use crate::activation::outcome::{FailureReason, HostOutcome};
use crate::gates::Gate;
use crate::keys::UploadAt;
use crate::remote::Remote;

impl<R: Remote> Run<'_, R> {
    /// Write this stage's keys; `Err` is the host's outcome (failed before
    /// any change, or rolled back after the live switch).
    pub(super) async fn upload_keys(
        &mut self,
        stage: UploadAt,
        gate: Gate,
    ) -> Result<(), HostOutcome> {
        let (remote, keys, sudo) = (self.remote, &self.req.keys, self.s.sudo);
        match key_stage::write_stage(remote, keys, stage, sudo, self.emit).await {
            Ok(()) => Ok(()),
            Err(error) => {
                let reason = FailureReason::Keys { stage, error };
                Err(if self.live_changed {
                    self.fail_and_rollback(gate, reason, None).await
                } else {
                    self.fail_clean(gate, reason)
                })
            }
        }
    }
}
