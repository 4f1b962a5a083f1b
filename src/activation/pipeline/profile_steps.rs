//! The system profile's steps: `nix-env --set` before a switch that writes
//! the boot default (on Linux carried by the switch's own fire, see
//! [`crate::activation::switch::SwitchJob::sets_profile`]: at 50 ms RTT one
//! round trip, about 50 ms, less per `switch` push and per gated persist),
//! and putting the profile where this deploy means it to be afterwards.

use super::*;

impl<R: Remote> Run<'_, R> {
    /// Point the system profile at the candidate, a command of its own
    /// (nix-darwin, and wherever no fire follows).
    async fn set_profile(&mut self, gate: Gate) -> Result<(), HostOutcome> {
        let cand = self.announce_profile_set();
        let set = profile::set(self.remote, &self.s.system_profile, &cand, self.s.sudo);
        match bounded("nix-env --set", STEP_LIMIT + SLACK, set).await {
            Ok(()) => {
                self.profile_set = true;
                self.boot_changed = true;
                Ok(())
            }
            Err(e) => Err(self.profile_set_failed(gate, format!("{e:#}")).await),
        }
    }

    fn announce_profile_set(&self) -> StorePath {
        let cand = self.req.candidate.clone();
        self.step(Step::SetProfile {
            profile: self.s.system_profile.clone(),
            closure: cand.clone(),
        });
        cand
    }

    /// `job` sets the system profile as it fires when the host's fire can
    /// (Linux); else the profile is set here first. `Err`: that failed.
    pub(super) async fn with_profile_set(
        &mut self,
        job: SwitchJob,
        gate: Gate,
    ) -> Result<SwitchJob, HostOutcome> {
        if self.s.os != Os::Linux {
            self.set_profile(gate).await?;
            return Ok(job);
        }
        self.announce_profile_set();
        Ok(job.setting_profile(&self.s.system_profile))
    }

    /// After the fires of `job`: a job that sets the profile may have set
    /// it whatever the last fire said (an earlier attempt's `nix-env` ran
    /// before the host refused its job, a lost answer, a switch that lost
    /// the lock to another after the fire's own check, a `nix-env` cut off
    /// just after it moved the link): it counts as set, and every path
    /// that keeps the old system puts it back (a correction that finds it
    /// intact changes nothing).
    pub(super) fn note_profile_fire(&mut self, job: &SwitchJob) {
        if job.sets_profile.is_some() {
            self.profile_set = true;
            self.boot_changed = true;
        }
    }

    /// `nix-env --set` failed (the fire's: the profile is put back first,
    /// should an earlier attempt have set it). A host already live on the
    /// candidate is rolled back; else it fails clean.
    pub(super) async fn profile_set_failed(&mut self, gate: Gate, error: String) -> HostOutcome {
        if self.profile_set {
            self.self_correct_to_previous().await;
        }
        let reason = FailureReason::ProfileSet { error };
        if self.live_changed {
            self.fail_and_rollback(gate, reason, None).await
        } else {
            self.fail_clean(gate, reason)
        }
    }

    /// Step 6 after a run: the profile must be where this deploy left it.
    /// `seen`: where the run's last poll found it (`None`: read it now).
    pub(super) async fn self_correct(&mut self, seen: Option<Option<StorePath>>) {
        let expected = if self.profile_set {
            Some(self.req.candidate.clone())
        } else {
            self.pre_profile.clone()
        };
        let Some(expected) = expected else { return };
        let profile = self.s.system_profile.clone();
        self.step(Step::SelfCorrectProfile {
            profile: profile.clone(),
        });
        let check =
            profile::self_correct_profile(self.remote, &profile, &expected, self.s.sudo, seen)
                .await;
        if check != ProfileCheck::Intact {
            (self.emit)(ActivationEvent::Warning {
                warning: Warning::Profile { profile, check },
            });
        }
    }

    /// Undo this deploy's `nix-env --set` when the switch never ran.
    pub(super) async fn self_correct_to_previous(&mut self) {
        if self.pre_profile.is_some() {
            self.profile_set = false;
            self.boot_changed = false;
            self.self_correct(None).await;
        }
    }
}
