//! The per-host activation pipeline: steps 1-7 run gate by gate for a goal.
//!
//! Rules made structural here:
//! - cancellation is only looked at between gates BEFORE anything on the host
//!   changes; once a switch fired, [`activate_host`] runs to a verified end
//!   (or a timeout, a rollback, and the rollback's verified end);
//! - any failure after the host changed rolls back to the host's last
//!   known-good (else the system it ran before) by the same detached,
//!   verified path; the boot default is only touched by the rollback if the
//!   deploy had touched it;
//! - a rollback that does not verify is `RollbackFailed`, never success.

use std::future::Future;
use std::pin::Pin;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::detached::{RebootReason, SwitchFailure, SwitchResult, run_detached};
use super::events::{ActivationEvent, GateEvidence, Step, Warning};
use super::known_good::{self, GateRecord, MarkRequest};
use super::outcome::{CutOff, FailureReason, HostOutcome};
use super::profile::{self, ProfileCheck};
use super::reactivate::{RollbackMode, RollbackOutcome, reactivate, rewrite_keys};
use super::realise::RealiseOutcome;
use super::reboot::{RebootOutcome, reboot_and_verify};
use super::settings::{HostSettings, Os, RunId, STEP_LIMIT};
use super::switch::{JobPurpose, SwitchJob};
use super::{dry_activate, health, inhibitors, leftovers, links, privilege, realise};
use crate::gates::{Gate, Goal, SwitchAction};
use crate::keys::UploadAt;
use crate::nix::StorePath;
use crate::remote::Command;
use crate::remote::Remote;
use crate::remote::batch::{Prefetched, prefetch};

use hold::Next;
pub use hold::{HostHold, NotTaken, Unlocked};

/// What to activate where.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationRequest {
    pub settings: HostSettings,
    pub candidate: StorePath,
    pub goal: Goal,
    pub run_id: RunId,
    /// The git commit the candidate was built from, for the known-good record.
    pub commit: Option<String>,
    /// Evidence of the gates the controller ran (build, diff, copy), copied
    /// into the known-good record.
    pub earlier_gates: Vec<GateRecord>,
    /// The candidate is this known-good generation (a rollback): marking
    /// re-selects it instead of adding a generation.
    pub known_good_generation: Option<u64>,
    /// The run rolls the host back to a known-good system (a generation,
    /// or the baseline nixgate found): what it rolls away from is never
    /// where a failure sends its boot default.
    pub rolls_back: bool,
    /// The host's keys, read on the controller by the plan.
    pub keys: std::sync::Arc<Vec<crate::keys::ResolvedKey>>,
    /// What the plan read the host running (the diff shown, and a soak's
    /// take-back, are against it). A host found running something else
    /// when its activation starts was changed since (an auto-upgrade, a
    /// `nixos-rebuild` by hand while the prompt waited): left alone, unless
    /// the change was nixgate's own earlier run settled just before (a
    /// re-run after a killed controller must converge; the take-back target
    /// then is still the plan's read).
    pub planned_current: Option<StorePath>,
}

/// Opens a NEW connection to the host being activated: fresh TCP,
/// handshake and authentication, apart from the run's session (the proof
/// magic rollback asks for; see [`super::deadman`]).
pub trait Reconnect<R>: Send + Sync {
    fn fresh(&self) -> Pin<Box<dyn Future<Output = anyhow::Result<R>> + Send + '_>>;

    /// A new connection where the host took SSH before this run changed
    /// it: its own address, not its `confirm_address` (where the candidate
    /// of a deploy that moves SSH answers). A host taken back answers
    /// there ([`lockout`]). The same as [`Reconnect::fresh`] for a host
    /// with no other address.
    fn fresh_as_before(&self) -> Pin<Box<dyn Future<Output = anyhow::Result<R>> + Send + '_>> {
        self.fresh()
    }
}

/// Activate `req.candidate` on the host for `req.goal`. `fresh` opens new
/// connections to confirm a live switch when `req.settings` arms magic
/// rollback. `hold` is the run's lock on the host, asked before each step
/// that changes it ([`hold`]).
pub async fn activate_host<R, F>(
    remote: &R,
    fresh: &dyn Reconnect<R>,
    hold: &dyn HostHold,
    req: &ActivationRequest,
    cancel: &CancellationToken,
    emit: &F,
) -> HostOutcome
where
    R: Remote,
    F: Fn(ActivationEvent) + Send + Sync,
{
    let fresh = super::reach::Counted::new(fresh);
    let mut run = Run {
        remote,
        fresh: &fresh,
        hold,
        armed: None,
        req,
        s: &req.settings,
        emit,
        records: req.earlier_gates.clone(),
        pre_current: req.candidate.clone(),
        pre_profile: None,
        known_good: None,
        live_changed: false,
        proven_already: false,
        rebooted_in: false,
        boot_changed: false,
        profile_set: false,
        pre_failed: None,
        unstopped: None,
        lockout: false,
    };
    run.go(cancel).await
}

struct Run<'a, R> {
    remote: &'a R,
    /// Every new connection of the run, the logins the host rejected
    /// counted ([`lockout`] reads them).
    fresh: &'a super::reach::Counted<'a, R>,
    hold: &'a dyn HostHold,
    /// The dead-man revert armed for this live switch, and when it fires.
    armed: Option<(super::deadman::Armed, tokio::time::Instant)>,
    req: &'a ActivationRequest,
    s: &'a HostSettings,
    emit: &'a (dyn Fn(ActivationEvent) + Send + Sync),
    records: Vec<GateRecord>,
    pre_current: StorePath,
    pre_profile: Option<StorePath>,
    known_good: Option<StorePath>,
    live_changed: bool,
    /// The host ran the candidate before this run, and this run's live
    /// gates proved it there (a new connection, the health checks): a
    /// `boot` that fails leaves it as proven, as after a switch
    /// ([`off_path`]).
    proven_already: bool,
    /// The host was rebooted into the candidate and verified there (its
    /// systemd, its kernel came by that reboot): a rollback goes back by a
    /// reboot too ([`RollbackMode::Reboot`]).
    rebooted_in: bool,
    boot_changed: bool,
    profile_set: bool,
    /// Units failed before the live switch (Linux; `None` when unknown).
    pub(super) pre_failed: Option<std::collections::BTreeSet<String>>,
    /// A switch that may still run and could not be stopped before the
    /// revert was waited for (`CutOff::StartNotStopped`): should the
    /// controller roll back itself (the revert failed), it stops it first
    /// (read by `roll_back_unconfirmed` alone).
    unstopped: Option<(off_path::Stop, SwitchJob)>,
    /// The failure rolled back from is a lockout (no new connection got
    /// in): the rollback is proven over a new connection too ([`lockout`]).
    lockout: bool,
}

/// Past a step's host-side limit: time for the host's `timeout` to end it
/// and the answer to come back.
const SLACK: Duration = Duration::from_secs(15);

/// A step bounded on the controller's side too: a connection can hang while
/// its keepalives still succeed, and a host may lack `timeout(1)`.
async fn bounded<T>(
    step: &'static str,
    limit: Duration,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "{step}: no answer within {}s (a garbage collection holding Nix's lock, or a hung connection?)",
            limit.as_secs()
        ))
    })
}

fn remote_err(step: &'static str, e: anyhow::Error) -> FailureReason {
    FailureReason::Remote {
        step,
        error: format!("{e:#}"),
    }
}

impl<'a, R: Remote> Run<'a, R> {
    /// This run, from here on over `remote` (a new connection: the run's
    /// own session was lost while new ones are answered). No revert is
    /// armed in it: it is for the controller's own rollback.
    fn over<'b>(&'b self, remote: &'b R) -> Run<'b, R> {
        Run {
            remote,
            fresh: self.fresh,
            hold: self.hold,
            armed: None,
            req: self.req,
            s: self.s,
            emit: self.emit,
            records: self.records.clone(),
            pre_current: self.pre_current.clone(),
            pre_profile: self.pre_profile.clone(),
            known_good: self.known_good.clone(),
            live_changed: self.live_changed,
            proven_already: self.proven_already,
            rebooted_in: self.rebooted_in,
            boot_changed: self.boot_changed,
            profile_set: self.profile_set,
            pre_failed: self.pre_failed.clone(),
            unstopped: self.unstopped.clone(),
            lockout: self.lockout,
        }
    }

    fn step(&self, step: Step) {
        (self.emit)(ActivationEvent::Step { step });
    }

    fn start(&self, gate: Gate) {
        (self.emit)(ActivationEvent::GateStarted { gate });
    }

    fn pass(&mut self, gate: Gate, evidence: GateEvidence) {
        // The mark's evidence is the record itself: nothing follows it.
        if gate != Gate::MarkKnownGood {
            self.records.push(GateRecord::new(gate, &evidence));
        }
        (self.emit)(ActivationEvent::GatePassed { gate, evidence });
    }

    /// A rollback's target whose mark failed: it stays where it is.
    fn not_marked(&self, reason: FailureReason) -> HostOutcome {
        (self.emit)(ActivationEvent::GateFailed {
            gate: Gate::MarkKnownGood,
            reason: reason.clone(),
        });
        HostOutcome::NotMarked {
            reason,
            generation: self.req.known_good_generation,
        }
    }

    /// A failure before the host changed: no rollback.
    fn fail_clean(&self, gate: Gate, reason: FailureReason) -> HostOutcome {
        (self.emit)(ActivationEvent::GateFailed {
            gate,
            reason: reason.clone(),
        });
        HostOutcome::Failed { gate, reason }
    }

    fn job(&self, purpose: JobPurpose, action: SwitchAction) -> SwitchJob {
        SwitchJob::new(
            &self.req.run_id,
            purpose,
            action,
            &self.req.candidate,
            self.s.os,
            &self.s.paths,
        )
    }

    /// The three links the run starts from: the running system, the
    /// system profile, the known-good.
    fn start_links(&self) -> [&str; 3] {
        let paths = &self.s.paths;
        [
            &paths.current_system,
            &self.s.system_profile,
            &paths.known_good_profile,
        ]
    }

    /// The command reading [`Self::start_links`]: the known-good only when
    /// its generation has its record ([`links::READ_START`]).
    fn start_read(&self) -> Command {
        let [current, profile, known_good] = self.start_links();
        let records = &self.s.paths.known_good_records;
        links::read_start_command(current, profile, known_good, records)
    }

    /// Does this run settle what earlier runs left ([`leftovers`]) before
    /// it reads the links? Every goal that may change the host.
    fn settles_earlier_runs(&self) -> bool {
        !matches!(self.req.goal, Goal::Copy | Goal::DryActivate)
    }

    /// Does the live switch compare critical components (and list failed
    /// units) first? Linux, for a goal that switches live.
    fn compares_components(&self, goal: Goal) -> bool {
        self.s.os == Os::Linux && matches!(goal, Goal::Test | Goal::Gated | Goal::Switch)
    }

    /// The quick commands after the copy: realise, earlier runs' units,
    /// the links; one round trip for all (see [`crate::remote::batch`]).
    fn after_copy_reads(&self) -> Vec<Command> {
        let goal = self.req.goal;
        let mut cmds = vec![realise::realise_command(&self.req.candidate)];
        if goal == Goal::Copy {
            return cmds;
        }
        if self.settles_earlier_runs() {
            cmds.push(leftovers::list_command(
                self.s.os,
                &self.s.paths,
                self.s.sudo,
                &self.req.candidate,
            ));
        }
        cmds.push(self.start_read());
        // The live switch's first read, when nothing runs on the host
        // before it (no dry activation, no keys written first).
        let keys_first = self
            .req
            .keys
            .iter()
            .any(|k| k.spec.upload_at == UploadAt::PreActivation);
        if self.compares_components(goal) && !goal.runs_dry_activate() && !keys_first {
            let cs = &self.s.paths.current_system;
            let sudo = self.s.sudo;
            cmds.push(inhibitors::compare_command(cs, &self.req.candidate, sudo));
        }
        cmds
    }

    /// Realise the candidate, settle what earlier runs left, and read the
    /// links the run starts from (not for goal `copy`). The host's answers
    /// read ahead and not used yet come back with it, and nixgate's last
    /// switch of the candidate on this boot ([`leftovers::LastSwitch`]).
    async fn realise_and_read(
        &mut self,
        first: Gate,
    ) -> Result<(Prefetched<'a, R>, Option<leftovers::LastSwitch>), HostOutcome> {
        let goal = self.req.goal;
        let cand = self.req.candidate.clone();
        self.step(Step::Realise {
            closure: cand.clone(),
        });
        let remote = self.remote;
        let ahead = async { Ok(prefetch(remote, self.after_copy_reads()).await) };
        let ahead = match bounded("realise", self.s.activation_timeout, ahead).await {
            Ok(a) => a,
            Err(e) => return Err(self.fail_clean(Gate::Copy, remote_err("realise", e))),
        };
        let keys = &self.s.trusted_public_keys;
        let realise = realise::realise_trusting(&ahead, &cand, self.s.require_signatures, keys);
        match bounded("realise", self.s.activation_timeout, realise).await {
            Ok(RealiseOutcome::Realised) => {}
            Ok(RealiseOutcome::SignatureMismatch { untrusted, tail }) => {
                return Err(HostOutcome::SignatureMismatch { untrusted, tail });
            }
            Ok(failed) => return Err(self.fail_clean(Gate::Copy, FailureReason::Realise(failed))),
            Err(e) => return Err(self.fail_clean(Gate::Copy, remote_err("realise", e))),
        }
        if goal == Goal::Copy {
            return Ok((ahead, None));
        }
        let mut settled = leftovers::Settled::default();
        if self.settles_earlier_runs() {
            match leftovers::settle(&ahead, self.s, &self.req.run_id, &cand, self.emit).await {
                Ok(s) => settled = s,
                Err(e) => {
                    return Err(self.fail_clean(first, remote_err("an earlier run's units", e)));
                }
            }
        }
        self.step(Step::ReadCurrentSystem);
        let (links, cmd) = (self.start_links(), self.start_read());
        let current_system = &self.s.paths.current_system;
        // One command reads all three links.
        let read = async {
            let links = links::read_store_links_by(&ahead, &cmd, &links).await?;
            let [current, profile, known_good]: [Option<StorePath>; 3] = links
                .try_into()
                .map_err(|_| anyhow::anyhow!("reading three links gave another count"))?;
            let current =
                current.ok_or_else(|| links::no_current_system(current_system, remote.name()))?;
            anyhow::Ok((current, profile, known_good))
        };
        match bounded("read the current system", STEP_LIMIT, read).await {
            Ok((c, p, k)) => (self.pre_current, self.pre_profile, self.known_good) = (c, p, k),
            Err(e) => return Err(self.fail_clean(first, remote_err("read current system", e))),
        }
        // Changed by nixgate's own earlier run just settled (its revert
        // ran, its switch ended: a re-run after a killed controller) is
        // known, not a change behind the plan's back.
        if let Some(planned) = &self.req.planned_current
            && *planned != self.pre_current
            && !settled.changed
        {
            let reason = FailureReason::ChangedSincePlan {
                planned: planned.clone(),
                now: self.pre_current.clone(),
            };
            return Err(self.fail_clean(first, reason));
        }
        Ok((ahead, settled.last_switch))
    }

    async fn go(&mut self, cancel: &CancellationToken) -> HostOutcome {
        let goal = self.req.goal;
        let cand = self.req.candidate.clone();
        let first = goal.host_gates().first().copied().unwrap_or(Gate::Copy);
        if cancel.is_cancelled() {
            return HostOutcome::Cancelled { before: first };
        }
        if self.s.sudo {
            self.step(Step::SudoPreflight);
            match privilege::sudo_preflight(self.remote).await {
                Ok(privilege::SudoCheck::Ready) => {}
                Ok(check) => return self.fail_clean(first, FailureReason::Sudo(check)),
                Err(e) => return self.fail_clean(first, remote_err("sudo preflight", e)),
            }
        }
        let (mut ahead, last_switch) = match self.realise_and_read(first).await {
            Ok(read) => read,
            Err(outcome) => return outcome,
        };
        if goal == Goal::Copy {
            return HostOutcome::Activated { goal };
        }
        if cancel.is_cancelled() {
            return HostOutcome::Cancelled { before: first };
        }
        if goal.writes_keys()
            && let Err(outcome) = self.upload_keys(UploadAt::PreActivation, first).await
        {
            return outcome;
        }
        let mut deferred = None;
        if goal.runs_dry_activate() {
            deferred = match self.dry_activate_gate(&mut ahead).await {
                Ok(deferred) => deferred,
                Err(outcome) => return outcome,
            };
        }
        if goal == Goal::DryActivate {
            return HostOutcome::Activated { goal };
        }
        if self.pre_current == cand && !self.switches_again(last_switch.as_ref()) {
            return self.already_current().await;
        }
        let next = if goal == Goal::Boot {
            Gate::Persist
        } else {
            Gate::LiveActivate
        };
        if cancel.is_cancelled() {
            return HostOutcome::Cancelled { before: next };
        }
        // From here on the host changes: no more cancellation.
        if goal == Goal::Boot {
            self.start(Gate::Persist);
            return match self.persist(Gate::Persist).await {
                Ok(()) => HostOutcome::Activated { goal },
                Err(outcome) => outcome,
            };
        }
        self.start(Gate::LiveActivate);
        if self.compares_components(goal) && deferred.is_none() {
            self.step(Step::CheckInhibitors);
            let compare = inhibitors::before_live_switch(
                &ahead,
                &self.s.paths.current_system,
                &cand,
                self.s.sudo,
            );
            match bounded("compare critical components", STEP_LIMIT, compare).await {
                Ok(before) => {
                    self.record_failed_units(before.failed);
                    if !before.changes.is_empty() {
                        let changes = before.changes;
                        deferred = Some(RebootReason::Components { changes })
                    }
                }
                Err(e) => return self.fail_clean(Gate::LiveActivate, remote_err("inhibitors", e)),
            }
        }
        if let Some(reason) = deferred {
            return self.defer(reason).await;
        }
        self.live_activate().await
    }

    /// The dry-activate gate; `Some` when the switch inhibitors defer the
    /// change to a reboot. The live switch's first read (critical
    /// components, failed units) rides with it, one round trip for both,
    /// and is left in `ahead`.
    async fn dry_activate_gate(
        &mut self,
        ahead: &mut Prefetched<'a, R>,
    ) -> Result<Option<RebootReason>, HostOutcome> {
        let cand = &self.req.candidate;
        self.start(Gate::DryActivate);
        let (os, sudo, remote) = (self.s.os, self.s.sudo, self.remote);
        let mut cmds = vec![dry_activate::dry_activate_command(cand, os, sudo)];
        if self.compares_components(self.req.goal) {
            let cs = &self.s.paths.current_system;
            cmds.push(inhibitors::compare_command(cs, cand, sudo));
        }
        let dry = async {
            *ahead = prefetch(remote, cmds).await;
            dry_activate::dry_activate(&*ahead, cand, os, sudo).await
        };
        match bounded("dry-activate", self.s.activation_timeout, dry).await {
            Ok(dry_activate::DryActivateOutcome::Passed(report)) => {
                self.pass(Gate::DryActivate, GateEvidence::DryActivate(report));
                Ok(None)
            }
            Ok(dry_activate::DryActivateOutcome::Inhibited { tail }) => {
                Ok(Some(RebootReason::SwitchInhibitors { log_tail: tail }))
            }
            Ok(dry_activate::DryActivateOutcome::InitInterfaceChanged { tail }) => {
                Ok(Some(RebootReason::InitInterfaceChanged { log_tail: tail }))
            }
            Ok(other) => Err(self.fail_clean(Gate::DryActivate, FailureReason::DryActivate(other))),
            Err(e) => Err(self.fail_clean(Gate::DryActivate, remote_err("dry-activate", e))),
        }
    }

    async fn live_activate(&mut self) -> HostOutcome {
        let goal = self.req.goal;
        let cand = self.req.candidate.clone();
        let action = goal.switch_action().unwrap_or(SwitchAction::Test);
        if let Err(outcome) = self.still_ours(Gate::LiveActivate, Next::Change).await {
            return outcome;
        }
        let mut job = self.job(JobPurpose::Candidate, action);
        if goal == Goal::Switch {
            job = match self.with_profile_set(job, Gate::LiveActivate).await {
                Ok(job) => job,
                Err(outcome) => return outcome,
            };
        }
        let previous = self.pre_current.clone();
        let mut job = match self.arm(job).await {
            Ok(job) => job,
            Err(outcome) => return outcome,
        };
        // The candidate's exit 4 fails it even when only units failing
        // before fail again (unlike the rollback's: see
        // `detached::earlier_failures_only`): the same exit 4 hides a
        // failed reload, a unit stuck restarting, or a stale failure the
        // candidate made real.
        let result = run_detached(
            self.remote,
            self.s,
            &mut job,
            &cand,
            &previous,
            None,
            self.emit,
        )
        .await;
        self.note_profile_fire(&job);
        match result {
            SwitchResult::Settled {
                evidence: ev,
                profile,
            } => {
                self.live_changed = true;
                if let Err(outcome) = self.confirm(&job).await {
                    return outcome;
                }
                if let Err(outcome) = self.still_ours(Gate::LiveActivate, Next::Change).await {
                    return outcome;
                }
                // The dead-man revert, if any, is disarmed: the profile is
                // where the switch's last poll saw it.
                self.self_correct(profile).await;
                if let Err(outcome) = self
                    .upload_keys(UploadAt::PostActivation, Gate::LiveActivate)
                    .await
                {
                    return outcome;
                }
                self.pass(Gate::LiveActivate, GateEvidence::LiveActivate(ev));
            }
            SwitchResult::NeedsReboot(reason) => {
                if !self.disarm_here().await {
                    return self.undisarmed_deferral().await;
                }
                return self.defer(reason).await;
            }
            SwitchResult::Failed(SwitchFailure::ProfileSet { error }) => {
                self.disarm_or_warn().await;
                return self.profile_set_failed(Gate::LiveActivate, error).await;
            }
            SwitchResult::Failed(SwitchFailure::Arm { error }) => {
                return self.arm_failed(error).await;
            }
            SwitchResult::Failed(f) if f.changed_nothing() => {
                self.disarm_or_warn().await;
                if self.profile_set {
                    self.self_correct_to_previous().await;
                }
                return self.fail_clean(Gate::LiveActivate, FailureReason::Switch(f));
            }
            SwitchResult::Failed(f) => {
                self.live_changed = true;
                // A switch that may still run (hung, or a start never
                // confirmed) is stopped before the revert is disarmed: one
                // that cannot be stopped may still switch the host, and
                // the revert stops it before it reverts.
                let mut hung = off_path::Stop::after(&f).map(|s| (s, &job));
                if self.armed.is_some()
                    && let Some((stop, _)) = hung
                {
                    if let Err(e) = self.stop_switch(stop, &job).await {
                        let error = format!("{e:#}");
                        self.unstopped = Some((stop, job.clone()));
                        return self
                            .await_revert(CutOff::StartNotStopped { failure: f, error })
                            .await;
                    }
                    hung = None;
                }
                // Still reachable: disarm, and roll back as always, verified.
                // Not: the host takes itself back; wait for it and look.
                if self.armed.is_some() && !self.disarm_here().await {
                    return self
                        .await_revert(CutOff::LostDuringSwitch { failure: f })
                        .await;
                }
                return self
                    .fail_and_rollback(Gate::LiveActivate, FailureReason::Switch(f), hung)
                    .await;
            }
        }
        self.after_live(false).await
    }

    /// Disarm the revert of a switch that changed nothing; one left armed
    /// (its disarm failed) is said, with what it will do when it fires.
    async fn disarm_or_warn(&mut self) {
        let unit = self.armed.as_ref().map(|(a, _)| a.unit.clone());
        if !self.disarm_here().await
            && let Some(unit) = unit
        {
            (self.emit)(ActivationEvent::Warning {
                warning: Warning::RevertStillArmed { unit },
            });
        }
    }

    /// The change needs a reboot, but the revert armed for the live switch
    /// could not be disarmed: persisting the candidate as the boot default
    /// now would be undone when the revert fires (it puts the profile and
    /// boot default back), and the run would have reported a pending
    /// reboot that never comes. Nothing changed live: fail, as it was.
    async fn undisarmed_deferral(&mut self) -> HostOutcome {
        if self.profile_set {
            self.self_correct_to_previous().await;
        }
        let unit = self.armed.as_ref().map(|(a, _)| a.unit.clone());
        let reason = FailureReason::Remote {
            step: "disarm the dead-man revert",
            error: format!(
                "the change needs a reboot, but the revert timer {} could not be disarmed \
                 (it would undo the boot default): not persisted; nothing changed live",
                unit.unwrap_or_default()
            ),
        };
        self.fail_clean(Gate::LiveActivate, reason)
    }

    /// Health checks, persist (gated), mark (gated).
    async fn after_live(&mut self, persisted: bool) -> HostOutcome {
        let goal = self.req.goal;
        if goal.runs_health_checks() {
            self.start(Gate::HealthChecks);
            let reports =
                health::run_health_checks(self.remote, &self.s.health_checks, self.s.os).await;
            if !reports.iter().all(health::HealthReport::passed) {
                return self
                    .fail_and_rollback(
                        Gate::HealthChecks,
                        FailureReason::HealthChecks { reports },
                        None,
                    )
                    .await;
            }
            self.pass(Gate::HealthChecks, GateEvidence::HealthChecks { reports });
        }
        if goal.persist_action().is_some() && !persisted {
            self.start(Gate::Persist);
            if let Err(outcome) = self.persist(Gate::Persist).await {
                return outcome;
            }
        }
        if !goal.marks_known_good() {
            return HostOutcome::Activated { goal };
        }
        if let Err(outcome) = self.still_ours(Gate::MarkKnownGood, Next::Change).await {
            return outcome;
        }
        match self.mark().await {
            Ok(mark) => HostOutcome::KnownGood { mark },
            // A rollback's target stays: see `HostOutcome::NotMarked`.
            Err(reason) if self.req.rolls_back => self.not_marked(reason),
            Err(reason) => {
                self.fail_and_rollback(Gate::MarkKnownGood, reason, None)
                    .await
            }
        }
    }

    async fn mark(&mut self) -> Result<known_good::KnownGoodMark, FailureReason> {
        self.start(Gate::MarkKnownGood);
        self.step(Step::MarkKnownGood);
        let req = MarkRequest {
            closure: self.req.candidate.clone(),
            reselect: self.req.known_good_generation,
            previous: Some(self.pre_current.clone()),
            commit: self.req.commit.clone(),
            run_id: self.req.run_id.clone(),
            gates: self.records.clone(),
            at: std::time::SystemTime::now(),
            patience: self.s.activation_timeout,
            soak_follows: self.s.soak_follows,
            rolled_back_from: (self.req.rolls_back && self.pre_current != self.req.candidate)
                .then(|| self.pre_current.clone()),
        };
        let mark = known_good::mark(self.remote, &self.s.paths, self.s.sudo, req);
        // The mark is tried for `activation_timeout` while its connection is
        // lost, then undone for as long: the bound leaves room for both (at
        // 2 x 120 s + 15 s it cut a lost mark off before its undo with the
        // default 300 s, leaving known-good on the candidate rolled back).
        let patience = self.s.activation_timeout.saturating_add(STEP_LIMIT);
        let limit = patience.saturating_mul(2).saturating_add(SLACK);
        match bounded("mark known-good", limit, mark).await {
            Ok(mark) => {
                self.pass(
                    Gate::MarkKnownGood,
                    GateEvidence::MarkKnownGood(mark.clone()),
                );
                Ok(mark)
            }
            Err(e) => Err(FailureReason::MarkKnownGood {
                error: format!("{e:#}"),
            }),
        }
    }
}

mod confirm;
mod hold;
mod key_gates;
mod lockout;
mod off_path;
mod profile_steps;

#[cfg(test)]
mod tests;
