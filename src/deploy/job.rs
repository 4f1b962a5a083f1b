//! The per-host pipeline the runner schedules: stage (make sure the closure
//! is on the host), then take the host through the activation gates,
//! reporting typed events on the way. The host's lock was taken by the plan
//! and is held until the runner lets the host go.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::activation::host_lock::{self, HostLock};
use crate::activation::known_good::{self, GateRecord};
use crate::activation::pipeline::{HostHold, NotTaken};
use crate::activation::settings::STEP_LIMIT;
use crate::activation::{
    ActivationEvent, ActivationRequest, FailureReason, HostOutcome, HostSettings, RunId,
    activate_host, take_back,
};
use crate::fleet::Fleet;
use crate::gates::{Gate, Goal};
use crate::inventory::{Host, Inventory};
use crate::nix::copy::CopyOutcome;
use crate::nix::{StorePath, gcroots};
use crate::plan::{Candidate, Plan, Verdict};
use crate::remote::{Command, Remote, unpoisoned};
use crate::report::{Event, EventSink};
use crate::runner::{HostJob, Interrupted, SoakCut};

use super::{HostEnd, HostSummary, Kept, RunContext, SoakLeft};

/// Staging: how the closure reaches the host before activation.
pub trait Stager: Send + Sync + 'static {
    /// Does the closure this stager delivers need a root on the host until
    /// the host's turn, when it was staged ahead of its wave? Not when it
    /// was there already, rooted (a rollback's known-good generation).
    const ROOTED_AHEAD: bool = true;

    /// Make `closure` present on `host`; `Err` fails the host at the copy gate.
    fn stage(
        &self,
        host: Arc<str>,
        closure: StorePath,
    ) -> impl std::future::Future<Output = anyhow::Result<CopyOutcome>> + Send;
}

/// Nothing to stage: the closure must already be on the host (rollbacks).
pub struct AlreadyThere;

impl Stager for AlreadyThere {
    const ROOTED_AHEAD: bool = false;

    async fn stage(&self, _: Arc<str>, _: StorePath) -> anyhow::Result<CopyOutcome> {
        Ok(CopyOutcome::AlreadyPresent)
    }
}

/// Why a host's staging did not deliver the closure.
#[derive(Debug)]
pub enum StageError {
    /// The first Ctrl-C came before the copy finished.
    Cancelled,
    /// `copy = "substitute"`: a path is signed by no key the host trusts.
    Untrusted {
        untrusted: Vec<String>,
        tail: Vec<String>,
    },
    Failed(String),
}

impl StageError {
    /// How a staging that did not deliver the closure ends its host.
    fn outcome(&self) -> HostOutcome {
        match self {
            StageError::Cancelled => HostOutcome::Cancelled { before: Gate::Copy },
            StageError::Untrusted { untrusted, tail } => HostOutcome::SignatureMismatch {
                untrusted: untrusted.clone(),
                tail: tail.clone(),
            },
            StageError::Failed(error) => HostOutcome::Failed {
                gate: Gate::Copy,
                reason: FailureReason::Copy {
                    error: error.clone(),
                },
            },
        }
    }

    fn of(e: anyhow::Error) -> StageError {
        match e.downcast_ref::<crate::nix::copy::SubstituteFailed>() {
            Some(crate::nix::copy::SubstituteFailed::Untrusted { untrusted, tail }) => {
                StageError::Untrusted {
                    untrusted: untrusted.clone(),
                    tail: tail.clone(),
                }
            }
            _ => StageError::Failed(format!("{e:#}")),
        }
    }
}

/// A ready host: its candidate, and what it ran when planned.
struct Ready {
    candidate: Candidate,
    running: Option<StorePath>,
}

pub struct DeployJob<F: Fleet, S: Stager> {
    inventory: Arc<Inventory>,
    fleet: Arc<F>,
    goal: Goal,
    run_id: RunId,
    /// The commit the candidates were built from, for their known-good
    /// records. None from a dirty work tree (`--allow-dirty`): HEAD is not
    /// what was built, and recorded as if it were, the next plan took its
    /// `flake.lock` for the running system's, and its diff named flake
    /// inputs that had not moved (or missed ones that had).
    commit: Option<String>,
    ready: HashMap<String, Ready>,
    /// Hosts the plan refused, with their ends.
    refused: HashMap<String, HostSummary>,
    stager: S,
    sink: EventSink,
    stop: CancellationToken,
    allow_reboot: bool,
    allow_pending_reboot: bool,
    magic_rollback: bool,
    /// The host locks the plan took, held until each host is let go. One
    /// mutex for every host: held only to read or swap an entry, never
    /// across a command on a host (one host's lock taken again held up
    /// every other host's activation and let-go).
    locks: std::sync::Mutex<HashMap<String, HostLock>>,
    /// Hosts taken back to an earlier system: let go, they keep their
    /// connection until the run ends (its summary reads their history).
    taken_back: std::sync::Mutex<HashSet<String>>,
    lock_holder: String,
    /// Each ready host's keys, read by the plan.
    keys: crate::plan::preflight::HostKeys,
    /// The units each host had failed before its live switch (as its
    /// pipeline recorded them): a soak's take-back judges its rollback's
    /// exit 4 against them, as the pipeline's own rollback does.
    failed_before: FailedBefore,
    /// Hosts whose soak take-back (or revoke) has begun: one cut off by
    /// the second Ctrl-C is not known-good any more (see `recheck_cut`).
    /// Each host is re-checked once a run: never cleared.
    taking_back: std::sync::Mutex<HashSet<String>>,
    /// The hosts whose closure this run copied, and which of them it rooted
    /// there, copied ahead of their wave.
    staged_roots: super::staged_roots::StagedRoots,
    /// Hosts in a wave with a soak: their marks are provisional until
    /// their re-check passes.
    soaking: HashSet<String>,
    /// Hosts whose soak passed with their mark still provisional, and the
    /// generation: made final as the host is let go (off the wave's path).
    soaked: std::sync::Mutex<HashMap<String, u64>>,
    /// Hosts whose soak's new connection failed for a reason of this
    /// machine's own ([`SoakReach::Unproven`]): their mark stays pending,
    /// and the run stops ([`HostJob::controllers_own`]).
    unproven: std::sync::Mutex<HashSet<String>>,
    /// Hosts whose soak passed but whose mark could not be made final as
    /// they were let go ([`SoakLeft::NotRecorded`]).
    unrecorded: std::sync::Mutex<HashSet<String>>,
}

/// Units failed before the live switch, by host.
type FailedBefore = Arc<std::sync::Mutex<HashMap<String, BTreeSet<String>>>>;

/// The activation settings of an inventory host (magic rollback as the
/// inventory says, unless the run turned it off).
pub fn settings_for(h: &Host, allow_reboot: bool, magic_rollback: bool) -> HostSettings {
    let mut s = HostSettings::new(h.os);
    s.sudo = h.sudo;
    s.system_profile = h.profile.clone();
    s.activation_timeout = h.activation_timeout;
    s.require_signatures = h.require_signatures;
    s.trusted_public_keys = h.pull.trusted_public_keys.clone();
    s.health_checks = h
        .health_checks
        .iter()
        .map(|c| crate::activation::health::HealthCheck {
            command: c.command.clone(),
            timeout: c.timeout,
            retries: c.retries,
        })
        .collect();
    s.allow_reboot = allow_reboot;
    s.confirm_timeout = (h.magic_rollback && magic_rollback).then_some(h.confirm_timeout);
    s.new_connection_within = h.confirm_timeout;
    // Polls are one command on an open connection, and each waits on the
    // host up to this long for the switch to end (answering when it does):
    // this is how often a running switch reports progress.
    s.poll_interval = std::time::Duration::from_millis(500);
    s
}

impl<F: Fleet, S: Stager> DeployJob<F, S> {
    pub fn new(
        ctx: &RunContext<F>,
        plan: &Plan,
        stager: S,
        locks: HashMap<String, HostLock>,
    ) -> Self {
        let mut job = DeployJob {
            inventory: ctx.inventory.clone(),
            fleet: ctx.fleet.clone(),
            goal: plan.goal,
            run_id: ctx.run_id.clone(),
            commit: (plan.source.as_ref())
                .filter(|s| !s.dirty)
                .map(|s| s.commit.clone()),
            ready: HashMap::new(),
            refused: HashMap::new(),
            stager,
            sink: ctx.sink.clone(),
            stop: ctx.stop.clone(),
            allow_reboot: ctx.allow_reboot,
            allow_pending_reboot: ctx.allow_pending_reboot,
            magic_rollback: ctx.magic_rollback,
            locks: std::sync::Mutex::new(locks),
            taken_back: std::sync::Mutex::default(),
            lock_holder: host_lock::holder(&ctx.run_id),
            keys: plan.keys.clone(),
            failed_before: Arc::default(),
            taking_back: std::sync::Mutex::default(),
            staged_roots: Default::default(),
            soaking: (plan.waves.iter())
                .filter(|w| !w.group.soak.is_zero())
                .flat_map(|w| w.group.hosts.iter().cloned())
                .collect(),
            soaked: std::sync::Mutex::default(),
            unproven: std::sync::Mutex::default(),
            unrecorded: std::sync::Mutex::default(),
        };
        for h in plan.hosts() {
            match &h.verdict {
                Verdict::Ready { candidate, running } => {
                    let ready = Ready {
                        candidate: candidate.clone(),
                        running: running.clone(),
                    };
                    job.ready.insert(h.host.clone(), ready);
                }
                Verdict::Refused { refusal } => {
                    let end = HostEnd::Refused {
                        refusal: refusal.clone(),
                    };
                    let s = job.summary(&h.host, end);
                    job.refused.insert(h.host.clone(), s);
                }
                Verdict::Interrupted { .. } => {}
            }
        }
        job
    }

    /// A host's summary with this end (no time spent).
    pub fn summary(&self, host: &str, end: HostEnd) -> HostSummary {
        HostSummary {
            host: host.to_owned(),
            wave: self.inventory.wave_name(host),
            closure: self.ready.get(host).map(|r| r.candidate.closure.clone()),
            end,
            seconds: 0.0,
            pending_reboot_allowed: self.allow_pending_reboot,
            soak_left: None,
        }
    }

    fn fail_at_copy(&self, host: &str, error: String) -> HostOutcome {
        let reason = FailureReason::Copy { error };
        self.sink.emit(Event::GateFailed {
            host: host.to_owned(),
            gate: Gate::Copy,
            reason: reason.clone(),
        });
        HostOutcome::Failed {
            gate: Gate::Copy,
            reason,
        }
    }

    async fn activate(&self, host: &str, staged: Result<CopyOutcome, StageError>) -> HostOutcome {
        let Some(ready) = self.ready.get(host) else {
            return self.fail_at_copy(host, "no candidate closure for this host".into());
        };
        // A failed copy's gate failure was told as it failed (`stage`).
        let copied = match staged {
            Ok(c) => c,
            Err(e) => return e.outcome(),
        };
        let Some(inv_host) = self.inventory.host(host) else {
            return self.fail_at_copy(host, "not in the inventory".into());
        };
        let remote = match self.fleet.host(host).await {
            Ok(s) => s,
            Err(e) => return self.fail_at_copy(host, e.to_string()),
        };
        if let Err(reason) = self.keep_lock(host, &remote, inv_host).await {
            let gate = self
                .goal
                .host_gates()
                .first()
                .copied()
                .unwrap_or(Gate::Copy);
            self.sink.emit(Event::GateFailed {
                host: host.to_owned(),
                gate,
                reason: reason.clone(),
            });
            return HostOutcome::Failed { gate, reason };
        }
        let mut earlier = ready.candidate.earlier_gates.clone();
        earlier.push(GateRecord::new(Gate::Copy, &copied));
        let mut settings = settings_for(inv_host, self.allow_reboot, self.magic_rollback);
        settings.soak_follows = self.soak_follows(host);
        let req = ActivationRequest {
            settings,
            candidate: ready.candidate.closure.clone(),
            goal: self.goal,
            run_id: self.run_id.clone(),
            // A rollback's target keeps the commit of its record.
            commit: ready
                .candidate
                .commit
                .clone()
                .or_else(|| self.commit.clone()),
            earlier_gates: earlier,
            known_good_generation: ready.candidate.generation,
            rolls_back: ready.candidate.is_rollback_target(),
            keys: self.keys.get(host).cloned().unwrap_or_default(),
            planned_current: ready.running.clone(),
        };
        let emit = recording_failed_units(forward(&self.sink, host), &self.failed_before, host);
        let fresh = self.fresh_for(host, inv_host);
        let hold = KeptLock {
            job: self,
            host,
            remote: &remote,
            inv_host,
        };
        activate_host(&remote, &fresh, &hold, &req, &self.stop, &emit).await
    }

    /// Take `host`'s lost lock again before its pipeline changes it (see
    /// [`KeptLock`]). Another run's hold is final at once; this run's own
    /// lock command, holding on until its lease ends (the host never saw
    /// the connection drop), is waited for; a lock command that failed (the
    /// host not reachable yet: rebooting, a network blip) is tried again
    /// for as long as a rollback would wait for it (the activation budget,
    /// at least a lease and a read's patience), but not past a refusal
    /// waiting cannot change (its host key changed). It gave up after
    /// four tries, 7 s: a host that dropped off for a few seconds was
    /// left unreachable, never rolled back. `Ok(true)`: taken again;
    /// `Ok(false)`: it was not lost (or there is none to keep).
    async fn take_lock_again(
        &self,
        host: &str,
        remote: &F::Remote,
        inv_host: &Host,
    ) -> Result<bool, NotTaken> {
        let patience = (host_lock::LEASE + READ_PATIENCE).max(inv_host.activation_timeout);
        let until = tokio::time::Instant::now() + patience;
        let mut attempt = 0;
        loop {
            let (holder, error, again) = match self.retake(host, remote, inv_host).await {
                Ok(retaken) => return Ok(retaken),
                Err(host_lock::HostLockError::Held { holder }) => {
                    let own = holder == self.lock_holder;
                    (Some(holder), None, own)
                }
                Err(host_lock::HostLockError::Failed(e)) => {
                    let lasting = crate::remote::patient::refused_for_good(&e);
                    (None, Some(format!("{e:#}")), !lasting)
                }
            };
            let wait = crate::remote::patient::backoff(attempt);
            if !again || tokio::time::Instant::now() + wait > until {
                return Err(NotTaken { holder, error });
            }
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// New connections to `host`, at its confirm endpoint when it has one.
    fn fresh_for(&self, host: &str, inv_host: &Host) -> FreshConnection<F> {
        FreshConnection {
            fleet: self.fleet.clone(),
            host: host.to_owned(),
            at: inv_host.confirm.clone(),
        }
    }

    /// Before changing a host: its lock must still be held. One lost with
    /// its connection (the session reconnected since) is taken again
    /// (`Ok(true)`); if another run has it now, this host is left alone.
    async fn keep_lock(
        &self,
        host: &str,
        remote: &F::Remote,
        inv_host: &Host,
    ) -> Result<bool, FailureReason> {
        match self.retake(host, remote, inv_host).await {
            Ok(retaken) => Ok(retaken),
            Err(host_lock::HostLockError::Held { holder }) => Err(FailureReason::LockLost {
                holder: Some(holder),
                error: None,
            }),
            Err(host_lock::HostLockError::Failed(e)) => Err(FailureReason::LockLost {
                holder: None,
                error: Some(format!("{e:#}")),
            }),
        }
    }

    /// [`Self::keep_lock`], its error as the lock command gave it.
    async fn retake(
        &self,
        host: &str,
        remote: &F::Remote,
        inv_host: &Host,
    ) -> Result<bool, host_lock::HostLockError> {
        match unpoisoned(&self.locks).get(host) {
            // A plan made without locks (library use, tests): nothing to keep.
            None => return Ok(false),
            Some(l) if !l.is_lost() => return Ok(false),
            Some(_) => {}
        }
        let paths = crate::activation::HostPaths::for_os(inv_host.os);
        let path = host_lock::path(&paths);
        match host_lock::acquire(remote, inv_host.os, &path, &self.lock_holder, inv_host.sudo).await
        {
            Ok(lock) => {
                // Kept in place of the lost one; a host let go meanwhile
                // keeps none (dropped, it lets go).
                if let Some(held) = unpoisoned(&self.locks).get_mut(host) {
                    *held = lock;
                }
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// May this run take `host` back after its soak? Its lock held all
    /// along; or lost (its connection dropped past the lease), taken again
    /// (a failure to take it is tried again for a while: only another
    /// run's hold is final), and the host as this run left it: running the
    /// candidate, its known-good profile on it if this run marked it. A run
    /// that came in between and moved it is not undone.
    async fn still_ours(
        &self,
        host: &str,
        remote: &F::Remote,
        inv_host: &Host,
        done: &HostSummary,
    ) -> bool {
        // This run's own lock command may hold on until its lease ends (the
        // host never saw the connection drop): waited for.
        match self.take_lock_again(host, remote, inv_host).await {
            Ok(true) => {}
            Ok(false) => return true,
            Err(_) => return false,
        }
        // Taken again, read, and still held (the lock rides the session:
        // a drop during the read let it go again).
        self.as_left(host, remote, inv_host, done).await && !self.lock_lost(host)
    }

    /// Was `host`'s lock lost (its command ended with its connection)?
    fn lock_lost(&self, host: &str) -> bool {
        (unpoisoned(&self.locks).get(host)).is_some_and(HostLock::is_lost)
    }

    /// Does the host run what this run left it on, its boot default too
    /// if the goal persisted it, its known-good profile if this run marked
    /// it? Read patiently (the session has just reconnected); unread, no.
    async fn as_left(
        &self,
        host: &str,
        remote: &F::Remote,
        inv_host: &Host,
        done: &HostSummary,
    ) -> bool {
        let Some(ready) = self.ready.get(host) else {
            return false;
        };
        let paths = crate::activation::HostPaths::for_os(inv_host.os);
        let marked = matches!(
            done.end.outcome(),
            Some(HostOutcome::KnownGood { .. } | HostOutcome::AlreadyCurrent { mark: Some(_), .. })
        );
        let links = [
            paths.current_system.as_str(),
            inv_host.profile.as_str(),
            paths.known_good_profile.as_str(),
        ];
        let patient = crate::remote::patient::Patient::new(remote, READ_PATIENCE);
        let read = crate::activation::links::read_store_links(&patient, &links);
        let Ok(Ok(read)) = tokio::time::timeout(READ_PATIENCE * 2, read).await else {
            return false;
        };
        let on =
            |i: usize| (read.get(i)).is_some_and(|c| c.as_ref() == Some(&ready.candidate.closure));
        on(0) && (!self.goal.persists_boot() || on(1)) && (!marked || on(2))
    }

    /// An unhealthy host the soak does not take back, and why: a host that
    /// already ran the candidate (this run did not change what it runs;
    /// its known-good generation is revoked only when this run's mark
    /// added it, see [`Self::revoke_kept`]), or a rollback's target (going
    /// back means the system it rolled away from; its generation was
    /// proven by an earlier run).
    fn kept_unhealthy(&self, host: &str, done: &HostSummary) -> Option<Kept> {
        if (self.ready.get(host)).is_some_and(|r| r.candidate.is_rollback_target()) {
            return Some(Kept::RollbackTarget);
        }
        matches!(done.end.outcome(), Some(HostOutcome::AlreadyCurrent { .. }))
            .then_some(Kept::NotChanged)
    }

    /// Will a soak re-check `host` after its wave (if it ends well)? Its
    /// wave soaks, and the run's goal switches what it runs (see
    /// [`Self::checks_see_change`]): its mark is provisional until then.
    fn soak_follows(&self, host: &str) -> bool {
        self.soaking.contains(host)
            && (self.goal.switch_action()).is_some_and(|a| a.changes_running_system())
    }

    /// Whether health checks now say anything of what this run did to a
    /// host that ended `done`.
    fn checks_see_change(&self, done: &HostSummary) -> bool {
        // A goal that did not switch the running system (copy,
        // dry-activate, boot) changed nothing the checks look at: they
        // check what it ran before, and its "take-back" was a switch on a
        // host the run had promised not to switch. The run's goal, not the
        // host's outcome: a host already running the candidate ends
        // `AlreadyCurrent` under `--goal boot` too, and its boot default is
        // what that run was asked to set.
        if (self.goal.switch_action()).is_none_or(|a| !a.changes_running_system()) {
            return false;
        }
        // Nor a host a first Ctrl-C stopped before it changed (re-checked
        // now with its wave, it was switched to what it ran when unhealthy:
        // a host the cancel had promised to leave alone), nor a change
        // deferred to the next boot (`--allow-pending-reboot`): the host
        // still runs what it ran, and checks of that said nothing of the
        // candidate (it was taken back, its pending boot default dropped,
        // for them).
        !matches!(
            done.end.outcome(),
            Some(HostOutcome::Cancelled { .. } | HostOutcome::DeferredPendingReboot { .. })
        )
    }

    /// After its wave's soak: a host whose health checks fail now is taken
    /// back to the known-good before this run's, and its mark revoked. One
    /// that passes has its provisional mark made final as it is let go,
    /// unless the soak was `cut` short: a check after part of the soak
    /// proves less than the wave asks, so the mark stays pending (said);
    /// or unless no new connection was made, for a reason of this
    /// machine's own: the lockout check never ran, so the mark stays
    /// pending too (the warning says why), and the run stops, as after a
    /// live switch this machine could not confirm (before: the mark was
    /// made final, the host released, and the next wave's first host
    /// failed the same way).
    async fn take_back_unhealthy(
        &self,
        host: &str,
        done: HostSummary,
        cut: Option<SoakCut>,
    ) -> HostSummary {
        if !self.checks_see_change(&done) {
            return done;
        }
        let (Some(inv_host), Ok(remote)) = (self.inventory.host(host), self.fleet.host(host).await)
        else {
            return done;
        };
        let settings = settings_for(inv_host, false, false);
        let (reach, checks) = self.soak_checks(host, inv_host, &remote, &settings).await;
        let unproven = reach == SoakReach::Unproven;
        if unproven {
            unpoisoned(&self.unproven).insert(host.to_owned());
        }
        let locked_out = match reach {
            SoakReach::LockedOut(error) => Some(error),
            SoakReach::Reached | SoakReach::Unproven => None,
        };
        if locked_out.is_none() && checks.iter().all(|r| r.passed()) {
            let Some(generation) = provisional_mark(&done).map(|m| m.generation) else {
                return done;
            };
            let soak_left = match cut {
                None if unproven => Some(SoakLeft::Unproven),
                None => {
                    unpoisoned(&self.soaked).insert(host.to_owned(), generation);
                    None
                }
                Some(cut) => {
                    let warning = crate::activation::Warning::SoakCutShort { generation, cut };
                    forward(&self.sink, host)(ActivationEvent::Warning { warning });
                    Some(SoakLeft::CutShort { cut })
                }
            };
            return HostSummary { soak_left, ..done };
        }
        let found = Found { checks, locked_out };
        if !self.still_ours(host, &remote, inv_host, &done).await {
            return found.end(done, (None, None), Some(Kept::LockLost));
        }
        if let Some(kept) = self.kept_unhealthy(host, &done) {
            let revoked = self.revoke_kept(host, &remote, &settings, &done).await;
            let rollback = match kept {
                Kept::NotChanged => self.boot_back(host, &remote, &settings, &done).await,
                Kept::RollbackTarget | Kept::LockLost => None,
            };
            return found.end(done, (revoked, rollback), Some(kept));
        }
        let Some((revoked, rollback)) = self
            .take_back_changed(host, &remote, &settings, &done)
            .await
        else {
            return done;
        };
        found.end(done, (revoked, Some(rollback)), None)
    }

    /// Take back a host this run changed: its mark revoked (if it marked),
    /// to what it ran before, as far as the run's goal went. `None`: the
    /// host was not in the plan.
    async fn take_back_changed(
        &self,
        host: &str,
        remote: &F::Remote,
        settings: &HostSettings,
        done: &HostSummary,
    ) -> Option<(Option<u64>, crate::activation::RollbackOutcome)> {
        let mark = match done.end.outcome() {
            Some(HostOutcome::KnownGood { mark }) => Some(mark.generation),
            _ => None,
        };
        let mode = take_back_mode(done.end.outcome());
        let ready = self.ready.get(host)?;
        let before = ready.running.as_ref().unwrap_or(&ready.candidate.closure);
        let emit = forward(&self.sink, host);
        if mark.is_none() && *before == ready.candidate.closure {
            Some((None, crate::activation::take_back::nowhere(before)))
        } else {
            unpoisoned(&self.taking_back).insert(host.to_owned());
            let failed = unpoisoned(&self.failed_before).get(host).cloned();
            let taken = take_back(
                remote,
                settings,
                &self.run_id,
                (mark, mode),
                (before, failed.as_ref()),
                self.keys.get(host).map_or(&[][..], |k| k.as_slice()),
                &emit,
            );
            Some(taken.await)
        }
    }
}

impl<F: Fleet, S: Stager> DeployJob<F, S> {
    /// The re-check after a soak: does a NEW connection still get in (the
    /// run's own session would go on through a lockout, sshd keeping
    /// established sessions), then the host's health checks over the run's
    /// session. Locked out: no checks run.
    async fn soak_checks(
        &self,
        host: &str,
        inv_host: &crate::inventory::Host,
        remote: &F::Remote,
        settings: &HostSettings,
    ) -> (SoakReach, Vec<crate::activation::health::HealthReport>) {
        let fresh = self.fresh_for(host, inv_host);
        let (cs, within) = (
            &settings.paths.current_system,
            settings.new_connection_within,
        );
        let reach = match crate::activation::reach::new_connection(&fresh, cs, within).await {
            Ok(_) => SoakReach::Reached,
            // No key to offer (an agent gone in a long soak) says nothing
            // of the host: every host of the wave would have been taken back.
            Err(u) if u.controllers_own => {
                let warning = crate::activation::Warning::NewConnectionUnproven { error: u.error };
                forward(&self.sink, host)(ActivationEvent::Warning { warning });
                SoakReach::Unproven
            }
            Err(u) => return (SoakReach::LockedOut(u.error), Vec::new()),
        };
        let checks = &settings.health_checks;
        let reports = crate::activation::health::run_health_checks(remote, checks, inv_host.os);
        (reach, reports.await)
    }

    /// A kept host that already ran the candidate, whose known-good
    /// generation this run's mark added (the host said so: `created`), or
    /// whose mark the host holds provisional (`soak_pending`: no soak ever
    /// passed on it; an earlier run's controller killed mid-soak left it,
    /// and this run's re-mark re-used it): no earlier proof stands, and the
    /// soak disproved it, so it is revoked (a host certified known-good
    /// while unhealthy is the lie the soak is there to catch). One an
    /// earlier run proved (the mark re-used it, final), or whose answer did
    /// not say, is kept: REVOKE deletes the generation. Returns the
    /// generation revoked.
    async fn revoke_kept(
        &self,
        host: &str,
        remote: &F::Remote,
        settings: &HostSettings,
        done: &HostSummary,
    ) -> Option<u64> {
        let Some(HostOutcome::AlreadyCurrent { mark: Some(m), .. }) = done.end.outcome() else {
            return None;
        };
        if m.record.created != Some(true) && !m.record.soak_pending {
            return None;
        }
        let emit = forward(&self.sink, host);
        unpoisoned(&self.taking_back).insert(host.to_owned());
        crate::activation::take_back::revoke_only(remote, settings, m.generation, &emit).await
    }

    /// A kept host whose boot default this run moved to the candidate it
    /// already ran (`HostOutcome::AlreadyCurrent::boot_before`: an earlier
    /// `--goal test`, or a switch outside nixgate, had left the boot
    /// default elsewhere, proven or not; the run's goal switched live): the
    /// soak disproved the candidate, so the boot default goes back, by the
    /// same verified path as any rollback, boot only (what it runs was not
    /// this run's doing). Before, a reboot booted the system the soak had
    /// just found unhealthy. `None`: this run moved nothing.
    async fn boot_back(
        &self,
        host: &str,
        remote: &F::Remote,
        settings: &HostSettings,
        done: &HostSummary,
    ) -> Option<crate::activation::RollbackOutcome> {
        let Some(HostOutcome::AlreadyCurrent {
            boot_before: Some(to),
            ..
        }) = done.end.outcome()
        else {
            return None;
        };
        let emit = forward(&self.sink, host);
        unpoisoned(&self.taking_back).insert(host.to_owned());
        let unmarked = (None, crate::activation::RollbackMode::BootOnly);
        let (_, rollback) = take_back(
            remote,
            settings,
            &self.run_id,
            unmarked,
            (to, None),
            &[],
            &emit,
        )
        .await;
        Some(rollback)
    }
}

impl<F: Fleet, S: Stager> DeployJob<F, S> {
    /// Make this run's mark of `generation` on `host` final: its soak
    /// passed. Not done (the connection gone for good), the host keeps it
    /// provisional: `status` says its soak is pending, it is no rollback
    /// target, and the next push of the commit marks and soaks it again.
    /// The run's report says so (a warning): its host ended known-good, and
    /// the operator would take that mark for final.
    async fn mark_soaked(&self, host: &str, generation: u64) {
        let Some(inv_host) = self.inventory.host(host) else {
            return;
        };
        let paths = crate::activation::HostPaths::for_os(inv_host.os);
        let done = match self.fleet.host(host).await {
            Ok(remote) => {
                let mark = (generation, &self.run_id);
                let passed =
                    known_good::soak_passed(&remote, &paths, inv_host.sudo, mark, READ_PATIENCE);
                passed.await.map(|_| ())
            }
            Err(e) => Err(anyhow::Error::new(e)),
        };
        if let Err(e) = done {
            let error = format!("{e:#}");
            let warning = crate::activation::Warning::SoakPassNotRecorded { generation, error };
            forward(&self.sink, host)(ActivationEvent::Warning { warning });
            unpoisoned(&self.unrecorded).insert(host.to_owned());
        }
    }

    /// `s` as the run ends: a host whose soak pass it could not record
    /// leaves its mark pending ([`SoakLeft::NotRecorded`]), told as its
    /// last `host_finished` (its let-go ran after its end was told).
    pub(super) fn as_ended(&self, mut s: HostSummary) -> HostSummary {
        if s.soak_left.is_none() && unpoisoned(&self.unrecorded).contains(&s.host) {
            s.soak_left = Some(SoakLeft::NotRecorded);
            self.sink.emit(Event::HostFinished(s.clone()));
        }
        s
    }
}

/// A host's lock as its pipeline asks for it: held while this run's lock
/// command runs; lost, taken again ([`DeployJob::take_lock_again`]), in
/// place of the lost one.
struct KeptLock<'a, F: Fleet, S: Stager> {
    job: &'a DeployJob<F, S>,
    host: &'a str,
    remote: &'a F::Remote,
    inv_host: &'a Host,
}

impl<F: Fleet, S: Stager> HostHold for KeptLock<'_, F, S> {
    fn held(&self) -> bool {
        !self.job.lock_lost(self.host)
    }

    fn take_again(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), NotTaken>> + Send + '_>>
    {
        let again = self
            .job
            .take_lock_again(self.host, self.remote, self.inv_host);
        Box::pin(async move { again.await.map(|_| ()) })
    }
}

/// How long a read after a soak rides out a lost connection.
const READ_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// What a soak's new connection to a host proved.
#[derive(Debug, PartialEq, Eq)]
enum SoakReach {
    /// One got in: no lockout.
    Reached,
    /// Every try failed for a reason of this machine's own: nothing is
    /// proven either way ([`crate::activation::reach::Unreached::controllers_own`]).
    Unproven,
    /// None got in, the host's doing: why (the last try's error).
    LockedOut(String),
}

/// What the re-check after a soak found wrong.
struct Found {
    checks: Vec<crate::activation::health::HealthReport>,
    locked_out: Option<String>,
}

impl Found {
    /// `done`'s end after the soak: what was revoked and how it was taken
    /// back (or why not: `kept`).
    fn end(
        self,
        done: HostSummary,
        (revoked, rollback): (Option<u64>, Option<crate::activation::RollbackOutcome>),
        kept: Option<Kept>,
    ) -> HostSummary {
        HostSummary {
            end: HostEnd::SoakFailed {
                checks: self.checks,
                locked_out: self.locked_out,
                revoked,
                rollback,
                kept,
            },
            ..done
        }
    }
}

/// This run's mark of a host that ended `done`, if the host holds it
/// provisional (a soak follows it).
fn provisional_mark(done: &HostSummary) -> Option<&crate::activation::known_good::KnownGoodMark> {
    match done.end.outcome()? {
        HostOutcome::KnownGood { mark }
        | HostOutcome::AlreadyCurrent {
            mark: Some(mark), ..
        } if mark.record.soak_pending => Some(mark),
        _ => None,
    }
}

/// How a soak's take-back switches: as far as the run's goal went. `test`
/// left the boot default alone (one pending a reboot into something else
/// included); the gated push and `switch` moved it too; a host rebooted
/// into its candidate goes back by a reboot (not live across its systemd
/// or kernel).
fn take_back_mode(outcome: Option<&HostOutcome>) -> crate::activation::RollbackMode {
    use crate::activation::RollbackMode;
    match outcome {
        Some(HostOutcome::KnownGood { mark }) if mark.record.rebooted_in() => RollbackMode::Reboot,
        Some(HostOutcome::Activated { goal })
            if goal
                .switch_action()
                .is_some_and(|a| !a.writes_boot_default()) =>
        {
            RollbackMode::Live
        }
        _ => RollbackMode::Persistent,
    }
}

/// New connections to a host (magic rollback's confirmation), through the
/// fleet, at the host's `confirm_address`/`confirm_port` when set.
struct FreshConnection<F: Fleet> {
    fleet: Arc<F>,
    host: String,
    at: Option<crate::inventory::ConfirmEndpoint>,
}

type Connecting<'a, R> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<R>> + Send + 'a>>;

impl<F: Fleet> FreshConnection<F> {
    fn to<'a>(
        &'a self,
        at: Option<&'a crate::inventory::ConfirmEndpoint>,
    ) -> Connecting<'a, F::Remote> {
        Box::pin(async move {
            // The connect error as it is (not behind `SessionError`'s
            // transparent wrapper): why it failed is read from it.
            self.fleet.fresh(&self.host, at).await.map_err(|e| match e {
                crate::fleet::SessionError::Connect(c) => anyhow::Error::new(c),
                other => anyhow::Error::new(other),
            })
        })
    }
}

impl<F: Fleet> crate::activation::Reconnect<F::Remote> for FreshConnection<F> {
    fn fresh(&self) -> Connecting<'_, F::Remote> {
        self.to(self.at.as_ref())
    }

    /// The host's own address: where the system a rollback goes back to
    /// answers.
    fn fresh_as_before(&self) -> Connecting<'_, F::Remote> {
        self.to(None)
    }
}

/// Where a host's activation events go: gate events as the run's own (one
/// shape for every gate), the rest as activation events of the host.
/// `emit`, keeping the units the host's pipeline recorded as failed
/// before its live switch (a typed step, read, never parsed from text).
fn recording_failed_units(
    emit: impl Fn(ActivationEvent) + Send + Sync,
    failed_before: &FailedBefore,
    host: &str,
) -> impl Fn(ActivationEvent) + Send + Sync {
    let (failed_before, host) = (failed_before.clone(), host.to_owned());
    move |ev| {
        if let ActivationEvent::Step {
            step: crate::activation::Step::RecordFailedUnits { units },
        } = &ev
        {
            let units = units.iter().cloned().collect();
            unpoisoned(&failed_before).insert(host.clone(), units);
        }
        emit(ev)
    }
}

fn forward(sink: &EventSink, host: &str) -> impl Fn(ActivationEvent) + Send + Sync + use<> {
    let (sink, host) = (sink.clone(), host.to_owned());
    move |ev| sink.emit(Event::from_activation(&host, ev))
}

impl<F: Fleet, S: Stager> DeployJob<F, S> {
    /// Copy the host's candidate closure to it (the first Ctrl-C stops it).
    async fn copy(&self, host: &Arc<str>) -> Result<CopyOutcome, StageError> {
        let Some(ready) = self.ready.get(&**host) else {
            return Err(StageError::Failed(format!(
                "no candidate closure for {host}"
            )));
        };
        if self.stop.is_cancelled() {
            return Err(StageError::Cancelled);
        }
        self.sink.emit(Event::GateStarted {
            host: host.to_string(),
            gate: Gate::Copy,
        });
        let copy = self
            .stager
            .stage(host.clone(), ready.candidate.closure.clone());
        tokio::select! {
            r = copy => r.map_err(StageError::of),
            // Dropping the copy closes its streams: the host keeps only the
            // paths it acknowledged whole.
            _ = self.stop.cancelled() => Err(StageError::Cancelled),
        }
    }

    /// Root the closure copied to `host` ahead of its wave, under the run's
    /// name ([`crate::nix::gcroots`]: the host's garbage collector deleted
    /// it during an earlier wave's soak). Removing other runs' roots there
    /// only while the host's lock is held: they are a dead run's then. A
    /// root that fails is a warning: the host is no worse off than unrooted.
    async fn hold_staged(&self, host: &str) {
        let (Some(ready), Some(inv_host)) = (self.ready.get(host), self.inventory.host(host))
        else {
            return;
        };
        let dir = crate::activation::HostPaths::for_os(inv_host.os).staged_roots;
        let locked = (unpoisoned(&self.locks).get(host)).is_some_and(|l| !l.is_lost());
        let closure = &ready.candidate.closure;
        let cmd = gcroots::hold_staged_command(&dir, &self.run_id, closure, locked, inv_host.sudo);
        let held = self
            .staged_roots
            .hold(host, self.on_host(host, cmd, "rooting"));
        if let Some(Err(error)) = held.await {
            let root = format!("{dir}/{}", self.run_id);
            let warning = crate::activation::Warning::StagedNotRooted { root, error };
            forward(&self.sink, host)(ActivationEvent::Warning { warning });
        }
    }

    /// Remove the root [`Self::hold_staged`] made on `host`, if it made one
    /// (the run lets the host go: its profile holds the closure, or the
    /// run is done with it).
    async fn release_staged(&self, host: &str) {
        let Some(inv_host) = self.inventory.host(host) else {
            return;
        };
        let dir = crate::activation::HostPaths::for_os(inv_host.os).staged_roots;
        let cmd = gcroots::release_staged_command(&dir, &self.run_id, inv_host.sudo);
        let released = self
            .staged_roots
            .release(host, self.on_host(host, cmd, "removing"));
        if let Some(Err(error)) = released.await {
            let root = format!("{dir}/{}", self.run_id);
            let warning = crate::activation::Warning::StagedRootLeft { root, error };
            forward(&self.sink, host)(ActivationEvent::Warning { warning });
        }
    }

    /// Run one small command on `host`, bounded: the error, told whole.
    async fn on_host(&self, host: &str, cmd: Command, what: &str) -> Result<(), String> {
        let run = async {
            let remote = self.fleet.host(host).await?;
            let out = remote.exec(&cmd).await?;
            out.check(&format!("{what} the staged closure's GC root"))?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(STEP_LIMIT, run).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err(format!("no answer within {}s", STEP_LIMIT.as_secs())),
        }
    }
}

impl<F: Fleet, S: Stager> HostJob for DeployJob<F, S> {
    type Staged = Result<CopyOutcome, StageError>;
    type Done = HostSummary;

    /// The copy, its gate's end told as it ends (a failure at once, not
    /// when its host's turn to activate comes).
    async fn stage(self: Arc<Self>, host: Arc<str>) -> Self::Staged {
        let r = self.copy(&host).await;
        match &r {
            Ok(copied) => {
                if S::ROOTED_AHEAD {
                    self.staged_roots.copied(&host);
                }
                self.sink.emit(Event::GatePassed {
                    host: host.to_string(),
                    gate: Gate::Copy,
                    evidence: crate::activation::GateEvidence::Copy(copied.clone()),
                })
            }
            Err(StageError::Failed(error)) => self.sink.emit(Event::GateFailed {
                host: host.to_string(),
                gate: Gate::Copy,
                reason: FailureReason::Copy {
                    error: error.clone(),
                },
            }),
            Err(StageError::Cancelled | StageError::Untrusted { .. }) => {}
        }
        r
    }

    async fn run(self: Arc<Self>, host: Arc<str>, staged: Self::Staged) -> HostSummary {
        let started = Instant::now();
        let outcome = self.activate(&host, staged).await;
        HostSummary {
            seconds: started.elapsed().as_secs_f64(),
            ..self.summary(&host, HostEnd::activation(outcome))
        }
    }

    async fn staged_ahead(self: Arc<Self>, host: Arc<str>) {
        self.hold_staged(&host).await
    }

    fn interrupted(&self, host: &str, why: Interrupted) -> HostSummary {
        self.summary(host, HostEnd::Interrupted { why })
    }

    fn is_failure(&self, d: &HostSummary) -> bool {
        d.end.counts_against_wave(self.allow_pending_reboot)
    }

    /// A host whose live switch no new connection could confirm, every try
    /// failing on this side ([`HostOutcome::controllers_own`]), or whose
    /// soak's new connection failed so ([`SoakReach::Unproven`]).
    fn controllers_own(&self, d: &HostSummary) -> bool {
        d.end.outcome().is_some_and(HostOutcome::controllers_own)
            || unpoisoned(&self.unproven).contains(&d.host)
    }

    fn to_recheck(&self, d: &HostSummary) -> bool {
        !self.is_failure(d) && self.checks_see_change(d)
    }

    fn planned_end(&self, host: &str) -> Option<HostSummary> {
        self.refused.get(host).cloned()
    }

    /// A copy that failed (or a path no key the host trusts signed) ends
    /// the host. A copy the first Ctrl-C stopped does not: the cancel
    /// stops the wave, which does not start the host.
    fn staged_end(&self, host: &str, staged: &Self::Staged) -> Option<HostSummary> {
        match staged {
            Ok(_) | Err(StageError::Cancelled) => None,
            Err(e) => Some(self.summary(host, HostEnd::activation(e.outcome()))),
        }
    }

    async fn recheck(
        self: Arc<Self>,
        host: Arc<str>,
        done: HostSummary,
        cut: Option<SoakCut>,
    ) -> HostSummary {
        self.take_back_unhealthy(&host, done, cut).await
    }

    fn recheck_cut(&self, host: &str, done: HostSummary) -> HostSummary {
        if unpoisoned(&self.taking_back).contains(host) {
            return self.interrupted(host, Interrupted::Aborted);
        }
        done
    }

    fn ended(&self, host: &str, done: &HostSummary) {
        if done.was_taken_back() {
            unpoisoned(&self.taken_back).insert(host.to_owned());
        }
        self.sink.emit(Event::HostFinished(done.clone()));
    }

    /// A host whose soak passed has its provisional mark made final first
    /// (one command, under its lock, off the wave's path: the next wave
    /// does not wait for it).
    ///
    /// The host's lock is dropped (its stream closes: the host lets go at
    /// EOF, without a round trip waited for: waiting for the host's answer
    /// held the end of every run one round trip, 53 ms at 50 ms), the root
    /// of a closure copied ahead removed (a host that had none waits for
    /// nothing), then its connection closed, unless the host was taken
    /// back: the run's summary reads its known-good history over it
    /// (`RunSession::report_rollback_targets`), and the run's end closes it.
    async fn let_go(self: Arc<Self>, host: Arc<str>) {
        let soaked = unpoisoned(&self.soaked).remove(&*host);
        if let Some(generation) = soaked {
            self.mark_soaked(&host, generation).await;
        }
        let lock = unpoisoned(&self.locks).remove(&*host);
        drop(lock);
        self.release_staged(&host).await;
        if !unpoisoned(&self.taken_back).contains(&*host) {
            self.fleet.close(&host).await;
        }
    }
}
