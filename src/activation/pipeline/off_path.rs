//! The pipeline's paths off the straight line: persisting the boot default,
//! deferring a change to a reboot, a host already on the candidate, and
//! rolling back after a failure.

pub(super) use crate::activation::switch::Stop;
use crate::remote::patient::Patient;
use std::collections::BTreeSet;

use super::*;

impl<R: Remote> Run<'_, R> {
    /// Make the candidate the boot default: profile set + detached `boot`.
    pub(super) async fn persist(&mut self, gate: Gate) -> Result<(), HostOutcome> {
        self.still_ours(gate, Next::Change).await?;
        let mut job = self.job(JobPurpose::Persist, SwitchAction::Boot);
        if !self.profile_set {
            job = self.with_profile_set(job, gate).await?;
        }
        if self.s.os == Os::Darwin {
            // nix-darwin has no boot entries: the profile is the persistence.
            self.pass(
                gate,
                GateEvidence::Persist {
                    profile: self.s.system_profile.clone(),
                    closure: self.req.candidate.clone(),
                    boot: None,
                },
            );
            return Ok(());
        }
        // `boot` leaves /run/current-system where it is.
        let now = if self.live_changed {
            self.req.candidate.clone()
        } else {
            self.pre_current.clone()
        };
        let result = run_detached(self.remote, self.s, &mut job, &now, &now, None, self.emit).await;
        self.note_profile_fire(&job);
        match result {
            SwitchResult::Settled {
                evidence: ev,
                profile,
            } => {
                self.self_correct(profile).await;
                self.pass(
                    gate,
                    GateEvidence::Persist {
                        profile: self.s.system_profile.clone(),
                        closure: self.req.candidate.clone(),
                        boot: Some(ev),
                    },
                );
                Ok(())
            }
            SwitchResult::Failed(SwitchFailure::ProfileSet { error }) => {
                Err(self.profile_set_failed(gate, error).await)
            }
            SwitchResult::Failed(f) if f.changed_nothing() => {
                Err(self.not_persisted(gate, f).await)
            }
            // Every boot job refused, one perhaps queued: stopped, then
            // as one that never ran (a live-proven host is not rolled
            // back for a boot-loader hiccup; a queued `boot` left running
            // would only write the boot entry of that proven system).
            // Only for a live-proven host whose attempts were stopped: one
            // not live (`--goal boot`), or a queued start not stopped, would
            // make the candidate the boot default unproven: rolled back.
            SwitchResult::Failed(f @ SwitchFailure::RefusedUnconfirmed { .. }) => {
                match self.stop_switch(Stop::Attempts, &job).await {
                    Ok(()) if self.proven_live() => Err(self.not_persisted(gate, f).await),
                    Ok(()) => Err(self
                        .fail_and_rollback(gate, FailureReason::Switch(f), None)
                        .await),
                    // Tried once more by the rollback (a second chance,
                    // else the rollback fails naming the unit).
                    Err(_) => Err(self
                        .fail_and_rollback(
                            gate,
                            FailureReason::Switch(f),
                            Some((Stop::Attempts, &job)),
                        )
                        .await),
                }
            }
            // `boot` never touches the running system: one that ran and
            // failed (the boot loader could not be installed: a full ESP,
            // `/boot` not mounted) leaves a live-proven host as proven.
            // Rolled back, it ran `switch`, which installs the boot loader
            // first and failed the same way: `rollback-failed` on a host
            // whose candidate had passed every live gate.
            SwitchResult::Failed(f @ SwitchFailure::Exited { .. }) if self.proven_live() => {
                Err(self.not_persisted(gate, f).await)
            }
            SwitchResult::Failed(f) => {
                let stop = Stop::after(&f).map(|s| (s, &job));
                Err(self
                    .fail_and_rollback(gate, FailureReason::Switch(f), stop)
                    .await)
            }
            SwitchResult::NeedsReboot(r) => Err(self
                .fail_and_rollback(gate, FailureReason::NeedsReboot(r), None)
                .await),
        }
    }

    /// Live on the candidate, proven by this run's live gates: switched to
    /// it, or running it already ([`Self::already_current`]). Only the
    /// switch counts as a change to roll back (`live_changed`); a `boot`
    /// that fails leaves either as proven, not persisted. Before, a host
    /// already running the candidate (re-pushed after a not-persisted run)
    /// whose `boot` failed again was rolled back boot only, and that
    /// rollback's own `boot` failed the same way: `rollback-failed`.
    fn proven_live(&self) -> bool {
        self.live_changed || self.proven_already
    }

    /// The boot entry could not be written, and nothing of it ran (the host
    /// refused to start the `boot` job every time, or another switch holds
    /// the lock). The profile goes back to what the boot entries say; a
    /// host proven live stays live (rolling back a host that passed every
    /// live gate would undo a good change for a boot-loader hiccup): it is
    /// reported as not persisted. A host not yet live failed cleanly.
    ///
    /// "Stays live" is read, not assumed: a host that rebooted since its
    /// live gates (onto its boot default, the system it ran) is not live on
    /// the candidate, and is rolled back like any failure after the host
    /// changed, boot default included (the fault matrix caught a host
    /// rebooted as its health checks passed reported not-persisted while
    /// it ran the old system and its profile, the correction lost with the
    /// reboot, pointed at the new one).
    async fn not_persisted(&mut self, gate: Gate, f: SwitchFailure) -> HostOutcome {
        self.self_correct_to_previous().await;
        if !self.proven_live() {
            return self.fail_clean(gate, FailureReason::Switch(f));
        }
        let current = &self.s.paths.current_system;
        let read = links::read_store_link(self.remote, current);
        let live = bounded("read the current system", STEP_LIMIT, read).await;
        if !matches!(&live, Ok(Some(now)) if *now == self.req.candidate) {
            // This deploy's `nix-env --set` ran: the rollback puts the boot
            // default back too, whatever the correction above managed.
            self.boot_changed = true;
            return self
                .fail_and_rollback(gate, FailureReason::Switch(f), None)
                .await;
        }
        (self.emit)(ActivationEvent::GateFailed {
            gate,
            reason: FailureReason::Switch(f.clone()),
        });
        HostOutcome::NotPersisted { reason: f }
    }

    /// The change can only land by rebooting: persist it, reboot if allowed.
    pub(super) async fn defer(&mut self, reason: RebootReason) -> HostOutcome {
        (self.emit)(ActivationEvent::Deferred {
            reason: reason.clone(),
        });
        if !self.req.goal.persists_boot() {
            return self.fail_clean(Gate::LiveActivate, FailureReason::NeedsReboot(reason));
        }
        self.start(Gate::Persist);
        if let Err(outcome) = self.persist(Gate::Persist).await {
            return outcome;
        }
        if !(self.s.allow_reboot && self.s.os == Os::Linux) {
            return HostOutcome::DeferredPendingReboot { reason };
        }
        if let Err(outcome) = self.still_ours(Gate::LiveActivate, Next::Change).await {
            return outcome;
        }
        let cand = self.req.candidate.clone();
        let outcome =
            reboot_and_verify(self.remote, self.s, &self.req.run_id, &cand, self.emit).await;
        // A reboot never sent, or refused, changed nothing live (the boot
        // default is still put back).
        self.live_changed |= !matches!(
            outcome,
            RebootOutcome::Unreachable { .. } | RebootOutcome::Refused { .. }
        );
        match outcome {
            RebootOutcome::Verified { booted } => {
                self.rebooted_in = true;
                // The reboot emptied `/run/keys` (a tmpfs): every key is
                // written again, then come the post-activation ones a live
                // switch writes once proven (before: none, and the host was
                // certified without its keys); the gate passes after them,
                // as a live switch's does.
                for stage in [UploadAt::PreActivation, UploadAt::PostActivation] {
                    if let Err(outcome) = self.upload_keys(stage, Gate::LiveActivate).await {
                        return outcome;
                    }
                }
                self.pass(Gate::LiveActivate, GateEvidence::Rebooted { booted });
                self.after_live(true).await
            }
            other => {
                self.fail_and_rollback(Gate::LiveActivate, FailureReason::Reboot(other), None)
                    .await
            }
        }
    }

    /// The host already runs the candidate: is it switched again all the
    /// same? Yes, for a goal that activates live, when nixgate's last
    /// switch to it on this boot failed (`last`: exit 4, units that failed
    /// to start, or worse; its controller killed before it read the
    /// result): what runs is what that switch left, never proven, and the
    /// switch is what the run asks for. Switched again, it goes through
    /// the live gates as any switch does (`switch-to-configuration` starts
    /// the failed units again); failing again, it is rolled back to the
    /// last known-good. Not a look at failed units (a unit failed since
    /// boot would fail every re-push): nixgate's own record of its switch.
    pub(super) fn switches_again(&self, last: Option<&leftovers::LastSwitch>) -> bool {
        let Some(last) = last.filter(|l| l.failed()) else {
            return false;
        };
        if !self.req.goal.activates_live() {
            return false;
        }
        self.step(Step::SwitchAgain {
            unit: last.unit.clone(),
            exit: last.exit,
        });
        true
    }

    /// The host already runs the candidate: verify, persist and mark as the
    /// goal asks, never re-switch.
    pub(super) async fn already_current(&mut self) -> HostOutcome {
        let goal = self.req.goal;
        // Proven by a new connection before anything is certified (see
        // `reach_current`).
        if goal.activates_live()
            && let Err(reason) = self.reach_current().await
        {
            return self.fail_clean(Gate::LiveActivate, reason);
        }
        // Running already, so proven live: its post-activation keys now.
        if goal.activates_live()
            && let Err(outcome) = self
                .upload_keys(crate::keys::UploadAt::PostActivation, Gate::LiveActivate)
                .await
        {
            return outcome;
        }
        if goal.runs_health_checks() {
            self.start(Gate::HealthChecks);
            let reports =
                health::run_health_checks(self.remote, &self.s.health_checks, self.s.os).await;
            if !reports.iter().all(health::HealthReport::passed) {
                return self
                    .fail_clean(Gate::HealthChecks, FailureReason::HealthChecks { reports });
            }
            self.pass(Gate::HealthChecks, GateEvidence::HealthChecks { reports });
        }
        let mut boot_before = None;
        if goal.persists_boot() && self.pre_profile.as_ref() != Some(&self.req.candidate) {
            self.start(Gate::Persist);
            self.live_changed = false;
            // Reached over a new connection above, its health checked
            // when the goal asks.
            self.proven_already = goal.activates_live();
            if let Err(outcome) = self.persist(Gate::Persist).await {
                return outcome;
            }
            boot_before = self.pre_profile.clone();
        }
        if !goal.marks_known_good() {
            return HostOutcome::AlreadyCurrent {
                mark: None,
                boot_before,
            };
        }
        if let Err(outcome) = self.still_ours(Gate::MarkKnownGood, Next::Change).await {
            return outcome;
        }
        match self.mark().await {
            Ok(mark) => HostOutcome::AlreadyCurrent {
                mark: Some(mark),
                boot_before,
            },
            // Not certified: the boot default this run moved goes back
            // (boot only: what it runs was not this run's doing). Not for
            // a rollback's target: it stays on the proven generation, not
            // the one rolled away from.
            Err(reason) if boot_before.is_some() && !self.req.rolls_back => {
                self.fail_and_rollback(Gate::MarkKnownGood, reason, None)
                    .await
            }
            Err(reason) if boot_before.is_some() => self.not_marked(reason),
            Err(reason) => self.fail_clean(Gate::MarkKnownGood, reason),
        }
    }

    /// Where a rollback after `gate` failed goes, and how far. Never "back"
    /// to the candidate that just failed (a push of the known-good closure
    /// to a host running something else, a rollback to it): then back to
    /// what the host ran. A mark that failed says nothing against the
    /// candidate: one that is the known-good stays.
    ///
    /// A live rollback's known-good needing a reboot from what the host
    /// ran is not its target ([`inhibitors::live_rollback_target`]).
    async fn rollback_target(&self, gate: Gate) -> (StorePath, RollbackMode) {
        let known_good = (self.known_good.clone())
            .filter(|k| gate == Gate::MarkKnownGood || *k != self.req.candidate);
        // Rebooted into the candidate: back by a reboot, to any target
        // (none is switched live on the candidate's systemd and kernel).
        // A failed mark's known-good that is the candidate stays: what
        // runs, switched again in place (the live path below would pick
        // the system it ran before, across that systemd, live).
        if self.rebooted_in {
            let to = known_good.unwrap_or(self.pre_current.clone());
            let mode = if to == self.req.candidate {
                RollbackMode::Persistent
            } else {
                RollbackMode::Reboot
            };
            return (to, mode);
        }
        if self.live_changed {
            let (remote, s, before) = (self.remote, self.s, &self.pre_current);
            let to =
                inhibitors::live_rollback_target(remote, s, before, known_good, self.emit).await;
            let mode = if self.boot_changed {
                RollbackMode::Persistent
            } else {
                RollbackMode::Live
            };
            (to, mode)
        } else {
            let to = (self.pre_profile.clone())
                .or(known_good)
                .unwrap_or(self.pre_current.clone());
            (to, RollbackMode::BootOnly)
        }
    }

    /// A gate failed after the host changed: roll back and say how it went.
    pub(super) async fn fail_and_rollback(
        &mut self,
        gate: Gate,
        reason: FailureReason,
        stop: Option<(Stop, &SwitchJob)>,
    ) -> HostOutcome {
        (self.emit)(ActivationEvent::GateFailed {
            gate,
            reason: reason.clone(),
        });
        // Another run's host now, or moved since: nothing of theirs undone.
        if let Err(outcome) = self.still_ours(gate, Next::RollBack).await {
            return outcome;
        }
        let (to, mode) = self.rollback_target(gate).await;
        // A switch still running at the deadline, or one whose start was
        // never confirmed (a lost answer, or a refused start that may be
        // queued still), is stopped before the rollback: else it could
        // switch the host to the candidate after the rollback settled,
        // with no revert armed (the rollback was reported as done). The
        // stop waits out a lost connection for the activation budget.
        // `stop` is `None` once stopped already ([`Stop::after`] says what).
        if let Some((stop, job)) = stop
            && let Err(e) = self.stop_switch(stop, job).await
        {
            let rollback_error = crate::activation::reactivate::RollbackError::StopHungSwitch {
                unit: job.unit.clone(),
                error: format!("{e:#}"),
            };
            return HostOutcome::RollbackFailed {
                gate,
                reason,
                to,
                rollback_error,
            };
        }
        // Switched again on the system it ran (nixgate's earlier switch of
        // it had failed: `switches_again`), with no known-good but it:
        // nothing to go back to. Re-activating the candidate that just
        // failed was reported a verified rollback (its units failing again
        // passed as failing before). Not for a failed mark: a known-good
        // candidate stays.
        let live = mode.changes_running_system();
        if live && gate != Gate::MarkKnownGood && to == self.req.candidate {
            let rollback_error = crate::activation::reactivate::RollbackError::NoTarget;
            return HostOutcome::RollbackFailed {
                gate,
                reason,
                to,
                rollback_error,
            };
        }
        if live {
            self.reset_new_failures().await;
        }
        (self.emit)(ActivationEvent::RollbackStarted {
            to: to.clone(),
            mode,
        });
        // Units failed before this deploy that fail again with the old
        // system's switch do not fail the rollback (a warning names them).
        let before = self.pre_failed.as_ref();
        let outcome = reactivate(
            self.remote,
            self.s,
            &self.req.run_id,
            &to,
            mode,
            before,
            self.emit,
        )
        .await;
        let outcome = rewrite_keys(self.remote, self.s, &self.req.keys, outcome, self.emit).await;
        let outcome = self.proven(outcome).await;
        (self.emit)(ActivationEvent::RollbackFinished {
            outcome: outcome.clone(),
        });
        match outcome {
            RollbackOutcome::RolledBack { to, .. } => HostOutcome::RolledBack { gate, reason, to },
            RollbackOutcome::Failed { to, error, .. } => HostOutcome::RollbackFailed {
                gate,
                reason,
                to,
                rollback_error: error,
            },
        }
    }
}

impl<R: Remote> Run<'_, R> {
    /// Before the live switch: which units are failed already (Linux;
    /// read with the critical components, one command). Best effort:
    /// without the list, nothing is reset before a rollback.
    pub(super) fn record_failed_units(&mut self, units: Option<BTreeSet<String>>) {
        if let Some(units) = &units
            && !units.is_empty()
        {
            self.step(Step::RecordFailedUnits {
                units: units.iter().cloned().collect(),
            });
        }
        self.pre_failed = units;
    }

    /// Clear the failed state of units that failed during this deploy.
    async fn reset_new_failures(&mut self) {
        let Some(before) = &self.pre_failed else {
            return;
        };
        let Ok(now) = crate::activation::failed_units::failed_units(self.remote, self.s.sudo).await
        else {
            return;
        };
        let new: std::collections::BTreeSet<String> = now.difference(before).cloned().collect();
        if new.is_empty() {
            return;
        }
        self.step(Step::ResetFailedUnits {
            units: new.iter().cloned().collect(),
        });
        // If this fails the rollback's switch may report these units again:
        // that is reported as it is, never hidden.
        let _ = crate::activation::failed_units::reset_failed(self.remote, self.s.sudo, &new).await;
    }
}

impl<R: Remote> Run<'_, R> {
    /// Stop a switch that may still run (see [`Stop`]), waiting out a
    /// lost connection for the activation budget.
    pub(super) async fn stop_switch(&self, stop: Stop, job: &SwitchJob) -> anyhow::Result<()> {
        self.step(Step::StopHungSwitch {
            unit: job.unit.clone(),
        });
        let patient = Patient::new(self.remote, self.s.activation_timeout);
        stop.run(&patient, job, self.s.sudo).await
    }
}
