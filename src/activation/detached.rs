//! Steps 4 + 5 together: check the lock, fire the detached job (retrying a
//! fire whose answer was lost, without ever starting a second run), poll it
//! to the end, and classify the result: settled, needs a reboot (NixOS switch
//! inhibitors, an incompatible `init`), or a typed failure. Once fired, this
//! does not return before the job finished or the activation timeout passed.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::events::{ActivationEvent, Phase, Step, Warning};
use super::inhibitors::{ComponentChange, pre_switch_failure};
use super::settings::HostSettings;
use super::switch::{self, Around, FireOutcome, Launch, SwitchJob};
use super::verify_poll::{
    self, FirstPoll, JobState, PollEvent, PollFailed, PollSnapshot, VerifyOutcome, Watched,
};
use crate::gates::SwitchAction;
use crate::nix::StorePath;
use crate::remote::patient::Patient;
use crate::remote::{Exit, Remote};

/// Why a change can only land by rebooting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RebootReason {
    /// nixgate's own check: these critical components change.
    Components { changes: Vec<ComponentChange> },
    /// NixOS 25.11+ `switchInhibitors` pre-switch check refused.
    SwitchInhibitors { log_tail: Vec<String> },
    /// `switch-to-configuration` exited 100: the new `init` is incompatible.
    InitInterfaceChanged { log_tail: Vec<String> },
}

/// Proof that a detached run settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchEvidence {
    pub unit: String,
    pub action: SwitchAction,
    pub closure: StorePath,
    pub elapsed: Duration,
    pub polls: u32,
}

/// One refused start of the job's transient unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedFire {
    pub unit: String,
    pub exit: Exit,
    pub tail: Vec<String>,
}

/// How many times a job whose unit the host refused to start is fired, each
/// time under a fresh unit name. Real systemd refuses transient units now
/// and then (a D-Bus timeout under load, a unit name still loaded); one
/// refusal must not roll back a host that passed every live gate.
pub const FIRE_ATTEMPTS: u32 = 3;

/// The pause between two fires of a refused job.
const REFIRE_PAUSE: Duration = Duration::from_secs(1);

/// Why a detached run failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SwitchFailure {
    /// Another switch holds `switch-to-configuration`'s lock (nothing
    /// fired): the switch units loaded, and the processes holding it.
    LockHeld {
        holders: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        processes: Vec<switch::LockProcess>,
    },
    /// The lock check could not be run (nothing fired).
    LockCheck { error: String },
    /// The fire's `nix-env --set` of the profile failed (nothing fired;
    /// see [`super::switch::SwitchJob::sets_profile`]).
    ProfileSet { error: String },
    /// The fire could not arm the dead-man revert (nothing fired, the
    /// profile not set; see [`super::switch::SwitchJob::arms`]).
    Arm { error: String },
    /// The host refused to start the job, every time it was asked under a
    /// fresh unit name (nothing fired).
    FireRefused { attempts: Vec<RefusedFire> },
    /// No answer from the host until the deadline: it may or may not have fired.
    FireUnconfirmed { error: String },
    /// Every start was refused, yet whether one went through all the same
    /// could not be told (a start that timed out may be queued), or a
    /// re-fire found the lock taken after its check (by an earlier attempt
    /// refused yet queued, or by another switch). Every attempt is stopped
    /// before anything else.
    RefusedUnconfirmed {
        attempts: Vec<RefusedFire>,
        error: String,
    },
    /// A NixOS pre-switch check other than the inhibitors failed (nothing changed).
    PreSwitchCheckFailed {
        check: Option<String>,
        log_tail: Vec<String>,
    },
    /// `switch-to-configuration` could not install the boot loader (a full
    /// ESP, `/boot` not mounted): it says so and stops before activating
    /// anything, `/run/current-system` where it was. The entries the failed
    /// install wrote may be half there; the next install rewrites them.
    /// A `switch` that stopped there changed nothing live: rolled back with
    /// `switch`, the old system's install failed the same way, and a host
    /// running what it ran was reported `rollback-failed`.
    BootLoader { code: u32, log_tail: Vec<String> },
    /// Non-zero exit (4: units failed after switching).
    Exited {
        code: u32,
        seen: Option<StorePath>,
        log_tail: Vec<String>,
    },
    FlippedToUnexpected {
        seen: StorePath,
        code: Option<u32>,
        log_tail: Vec<String>,
    },
    NotFlipped {
        seen: Option<StorePath>,
        log_tail: Vec<String>,
    },
    Vanished {
        started: bool,
        log_tail: Vec<String>,
    },
    /// Still running at the deadline; the job is left to the caller to stop.
    Timeout {
        elapsed: Duration,
        seen: Option<StorePath>,
        last: Option<JobState>,
    },
    /// Reconnecting to poll the job was refused in a way waiting cannot
    /// change ([`VerifyOutcome::ReconnectRefused`]), `elapsed` after
    /// firing: said at once, not polled until the deadline. The job may
    /// still run; the caller stops it as a hung one (over the same
    /// refusal, that fails at once too).
    ReconnectRefused {
        error: String,
        elapsed: Duration,
        seen: Option<StorePath>,
    },
}

impl SwitchFailure {
    /// Whether the switch's start was never confirmed: it may run yet
    /// (every attempt is stopped before anything else).
    pub fn start_unconfirmed(&self) -> bool {
        matches!(
            self,
            SwitchFailure::FireUnconfirmed { .. } | SwitchFailure::RefusedUnconfirmed { .. }
        )
    }

    /// True when the failure happened before the host changed at all (a
    /// failed boot loader install at most half-wrote its entries).
    pub fn changed_nothing(&self) -> bool {
        matches!(
            self,
            SwitchFailure::LockHeld { .. }
                | SwitchFailure::LockCheck { .. }
                | SwitchFailure::ProfileSet { .. }
                | SwitchFailure::Arm { .. }
                | SwitchFailure::FireRefused { .. }
                | SwitchFailure::PreSwitchCheckFailed { .. }
                | SwitchFailure::BootLoader { .. }
        )
    }
}

/// The result of a detached run (adjacently tagged: the wrapped values
/// carry a `kind` of their own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum SwitchResult {
    /// `profile` is the system profile as the last poll read it (step 6
    /// starts from there; `None`: not read, read it again).
    Settled {
        evidence: SwitchEvidence,
        #[serde(skip)]
        profile: Option<Option<StorePath>>,
    },
    NeedsReboot(RebootReason),
    Failed(SwitchFailure),
}

/// Run `job` detached and verified. `expected` is what `/run/current-system`
/// must be afterwards, `previous` what it was before. A job refused at its
/// start is fired again under a fresh name: `job` is left as the one that
/// ran (to stop it, read its log). `earlier_failed`: the units failed
/// before this deploy (see [`earlier_failures_only`]).
pub async fn run_detached<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    job: &mut SwitchJob,
    expected: &StorePath,
    previous: &StorePath,
    earlier_failed: Option<&BTreeSet<String>>,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> SwitchResult {
    // The lock check and the fire are one command (Linux; see
    // `switch::FIRE_LINUX`): both steps are announced before it.
    emit(ActivationEvent::Step {
        step: Step::CheckSwitchLock,
    });
    emit(ActivationEvent::Step {
        step: Step::FireSwitch {
            unit: job.unit.clone(),
            action: job.action,
            closure: job.closure.clone(),
        },
    });
    let watched = Watched {
        current_system: &settings.paths.current_system,
        profile: Some(&settings.system_profile),
    };
    // One budget, from firing to a settled link: firing (and finding out
    // whether a lost fire started) and polling share it.
    let deadline = tokio::time::Instant::now() + settings.activation_timeout;
    let first = match fire_retried(remote, settings, job, watched, deadline, emit).await {
        Ok(first) => first,
        Err(failure) => return SwitchResult::Failed(failure),
    };
    let job = &*job;
    emit(ActivationEvent::Step {
        step: Step::VerifyPoll {
            unit: job.unit.clone(),
        },
    });
    let unit = job.unit.clone();
    let on_poll = |e: PollEvent| match e {
        PollEvent::Polled { elapsed, snapshot } => emit(ActivationEvent::Polling {
            unit: unit.clone(),
            elapsed,
            job: snapshot.job,
            current: snapshot.current,
        }),
        PollEvent::ConnectionLost {
            attempt,
            retry_in,
            error,
            ..
        } => emit(ActivationEvent::ConnectionLost {
            phase: Phase::Poll,
            attempt,
            retry_in,
            error,
        }),
    };
    let outcome = verify_poll::verify_poll(
        remote,
        job,
        watched,
        expected,
        previous,
        settings.poll_interval,
        deadline,
        first,
        &on_poll,
    )
    .await;
    if let Some(before) = earlier_failed
        && let Some(units) =
            earlier_failures_only(remote, settings.sudo, expected, &outcome, before).await
    {
        emit(ActivationEvent::Warning {
            warning: Warning::UnitsFailedBeforeDeploy { units },
        });
        if let VerifyOutcome::Exited { elapsed, polls, .. } = outcome {
            let evidence = SwitchEvidence {
                unit: job.unit.clone(),
                action: job.action,
                closure: job.closure.clone(),
                elapsed,
                polls,
            };
            return SwitchResult::Settled {
                evidence,
                profile: None,
            };
        }
    }
    classify(remote, job, outcome, previous).await
}

/// Whether a refused attempt's poll shows it never ran: `Some(false)` it
/// ran (a status, or its unit alive), `Some(true)` it did not, `None` it
/// cannot tell. Did not: no status and its unit failed, or gone after a
/// refusal systemd decided (`Job for ... failed`: `--collect` unloads a
/// failed start; a name taken by a leftover; access denied). Gone after a
/// call that timed out or lost its bus (or said nothing) may be a start
/// PID 1 has not taken up yet; `systemctl` failing (the bus that timed
/// the start out), or the unit loaded and idle with no status (a start
/// queued), cannot tell either. On Darwin nothing is refused that ran:
/// the pid file decides.
fn never_ran(s: &PollSnapshot, os: super::settings::Os, refusal: &RefusedFire) -> Option<bool> {
    if s.job != (JobState::Gone { started: false }) {
        return Some(false);
    }
    let undecided = [
        "timed out",
        "timeout",
        "transport endpoint",
        "connection reset",
        "broken pipe",
    ];
    // What systemd-run said (a tail without stderr is the fire's own
    // stdout: it said nothing); killed by a signal, it said nothing either.
    let said: Vec<String> = (refusal.tail.iter())
        .filter(|l| !l.starts_with("Nixgate"))
        .map(|l| l.to_ascii_lowercase())
        .collect();
    let decided = !refusal.exit.killed()
        && !said.is_empty()
        && !said.iter().any(|l| undecided.iter().any(|u| l.contains(u)));
    match &s.unit {
        Some(u) if u.active_state == "failed" => Some(true),
        Some(u) => (u.load_state == "not-found" && decided).then_some(true),
        None if os == super::settings::Os::Darwin => Some(true),
        None => None,
    }
}

/// `switch-to-configuration` exits 4 when any unit is failed once it is
/// done. It resets the failed state first, but a unit that was failing
/// before (a broken backup job pulled in by `multi-user.target`) is started
/// again with its target and fails again. A rollback's switch that exited 4
/// with the link on `expected`, with only units failed that were failed
/// before, is back where the host was: the units, else `None` (any other
/// exit, another link, a unit this deploy broke, or the list not read: a
/// failure, as before). Not for a candidate's switch: its exit 4 may also
/// be a failed reload (no unit left failed), a unit stuck restarting, or a
/// stale failure the candidate made real; it is rolled back, and the
/// rollback's warning names the units that were failing before.
async fn earlier_failures_only<R: Remote>(
    remote: &R,
    sudo: bool,
    expected: &StorePath,
    outcome: &VerifyOutcome,
    before: &BTreeSet<String>,
) -> Option<Vec<String>> {
    let VerifyOutcome::Exited {
        code: 4,
        seen: Some(seen),
        ..
    } = outcome
    else {
        return None;
    };
    if seen != expected || before.is_empty() {
        return None;
    }
    let now = super::failed_units::failed_units(remote, sudo).await.ok()?;
    (!now.is_empty() && now.is_subset(before)).then(|| now.into_iter().collect())
}

/// Fire, and fire again under a fresh unit name while the host refuses to
/// start it ([`FIRE_ATTEMPTS`] in all, a second apart), keeping every
/// refusal's reason. No fire is sent with the budget spent in the pause
/// before it: with a pause or less left, the refusals so far are the
/// answer (every fire was refused: nothing changed).
async fn fire_retried<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    job: &mut SwitchJob,
    watched: Watched<'_>,
    deadline: tokio::time::Instant,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> Result<FirstPoll, SwitchFailure> {
    let mut refused = Vec::new();
    for attempt in 1..=FIRE_ATTEMPTS {
        if attempt > 1 {
            *job = job.renamed(attempt);
            emit(ActivationEvent::Step {
                step: Step::FireSwitch {
                    unit: job.unit.clone(),
                    action: job.action,
                    closure: job.closure.clone(),
                },
            });
        }
        match fire_confirmed(remote, settings, job, watched, deadline, emit).await {
            Err(SwitchFailure::FireRefused { attempts }) => {
                refused.extend(attempts);
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if attempt < FIRE_ATTEMPTS && left > REFIRE_PAUSE {
                    emit(ActivationEvent::Warning {
                        warning: super::events::Warning::FireRefused {
                            unit: job.unit.clone(),
                            attempt,
                        },
                    });
                    tokio::time::sleep(REFIRE_PAUSE).await;
                    continue;
                }
                break;
            }
            // A later attempt that failed without firing (its lock check,
            // arm or profile step) leaves the earlier refusals as they
            // were: one of them may have started after all, and "nothing
            // changed" would then leave the host on an unverified
            // candidate, nothing rolled back. Looked at as when every
            // attempt was refused; none ran: this attempt's failure.
            Err(failure) if !refused.is_empty() && failure.changed_nothing() => {
                let failed = job.clone();
                return match refused_yet_ran(remote, job, watched, refused, emit).await {
                    Err(SwitchFailure::FireRefused { .. }) => {
                        *job = failed;
                        Err(failure)
                    }
                    found => found,
                };
            }
            other => return other,
        }
    }
    refused_yet_ran(remote, job, watched, refused, emit).await
}

/// Every fire was refused, but a refusal is what `systemd-run` said, not
/// what the host did: a start whose D-Bus call timed out may have gone
/// through. A later fire finds such an attempt while it still runs (it
/// holds the lock, see [`FireOutcome::EarlierAttempt`]); one that finished
/// before the next fire, or the last attempt, is found only by looking.
/// Each refused attempt's unit is polled once, latest first: one that ran
/// (running, exited, or gone after starting) becomes `job` and is verified
/// like any fire (reporting "nothing changed" there was a lie: the host
/// switched, and nothing rolled it back). Only a unit seen not to have run
/// ([`never_ran`]) is passed over; a poll without an answer, or one that
/// cannot tell, makes the fire unconfirmed (it may have run; `job` is that
/// attempt, for the rollback to stop). Bounded by
/// [`verify_poll::POLL_TIMEOUT`] per unit, past the budget if need be: the
/// answer decides a rollback.
async fn refused_yet_ran<R: Remote>(
    remote: &R,
    job: &mut SwitchJob,
    watched: Watched<'_>,
    refused: Vec<RefusedFire>,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> Result<FirstPoll, SwitchFailure> {
    // A lost connection is waited out (one blip must not roll a host back).
    let patient = Patient::new(remote, verify_poll::POLL_TIMEOUT);
    let mut looked: Vec<&str> = Vec::new();
    for refusal in refused.iter().rev() {
        let unit = refusal.unit.as_str();
        if looked.contains(&unit) {
            continue;
        }
        looked.push(unit);
        let attempt = job.named(unit.to_owned());
        let poll = verify_poll::poll_once(&patient, &attempt, watched, Duration::ZERO);
        let error = match tokio::time::timeout(2 * verify_poll::POLL_TIMEOUT, poll).await {
            Ok(Ok(s)) if never_ran(&s, job.os, refusal) == Some(true) => continue,
            Ok(Ok(s)) if never_ran(&s, job.os, refusal).is_none() => {
                let unit = s
                    .unit
                    .map(|u| format!("{}/{}", u.load_state, u.active_state));
                let state = unit.unwrap_or_else(|| "its unit's state unreadable".into());
                format!("it has no status yet ({state})")
            }
            Ok(Ok(s)) => {
                emit(ActivationEvent::Warning {
                    warning: Warning::RefusedFireRan {
                        unit: unit.to_owned(),
                    },
                });
                *job = attempt;
                let fired_at = tokio::time::Instant::now();
                return Ok(FirstPoll {
                    fired_at,
                    snapshot: Some(s),
                });
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer to a poll".to_owned(),
        };
        *job = attempt;
        let error = format!("whether {unit} ran anyway could not be read: {error}");
        return Err(SwitchFailure::RefusedUnconfirmed {
            attempts: refused,
            error,
        });
    }
    Err(SwitchFailure::FireRefused { attempts: refused })
}

/// Fire once (with the lock check before and the first poll after, one
/// command on Linux), and if the answer was lost, find out whether it
/// started before firing again (the unit name makes a second concurrent
/// run impossible). Every command is bounded by the deadline. `job`
/// becomes an earlier attempt found running (see
/// [`FireOutcome::EarlierAttempt`]).
async fn fire_confirmed<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    job: &mut SwitchJob,
    watched: Watched<'_>,
    deadline: tokio::time::Instant,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> Result<FirstPoll, SwitchFailure> {
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let mut lost = 0u32;
    loop {
        let fired_at = tokio::time::Instant::now();
        let around = Around {
            lock: &settings.paths.switch_lock,
            watched,
            wait: settings.poll_interval.min(left()),
        };
        let how = (settings.sudo, settings.install_bootloader);
        let fired = tokio::time::timeout(left(), switch::fire(remote, job, how, around, lost > 0))
            .await
            .unwrap_or_else(|_| Launch::Tried {
                unchecked: false,
                outcome: FireOutcome::Unconfirmed {
                    error: "no answer from the host before the activation budget ran out".into(),
                },
                first: None,
            });
        let snapshot = match read_launch(fired, job, emit)? {
            Fired::Running(first) => first,
            Fired::RunningAs(unit) => {
                *job = job.named(unit);
                None
            }
            Fired::Unconfirmed { error, loaded } => {
                let lost_fire = LostFire { error, loaded };
                if !started(remote, job, watched, deadline, &mut lost, lost_fire, emit).await? {
                    continue;
                }
                None
            }
        };
        return Ok(FirstPoll { fired_at, snapshot });
    }
}

/// A fire whose answer did not say whether the job started: why, and the
/// refusal it is should the unit turn out not to be the job (a re-fire
/// that found the unit loaded already).
struct LostFire {
    error: String,
    loaded: Option<RefusedFire>,
}

/// Whether the job of a fire whose answer was lost started (`false`:
/// nothing ran, fire again), polling it with backoff (`lost` counts the
/// losses) until the deadline, or a reconnect refused for good (then
/// unconfirmed at once). A re-fire that found the unit loaded is
/// not a refusal until a poll after it finds that unit neither running
/// nor having run the job (else it is the first fire, and runs).
async fn started<R: Remote>(
    remote: &R,
    job: &SwitchJob,
    watched: Watched<'_>,
    deadline: tokio::time::Instant,
    lost: &mut u32,
    LostFire { mut error, loaded }: LostFire,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> Result<bool, SwitchFailure> {
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    loop {
        if left().is_zero() {
            return Err(SwitchFailure::FireUnconfirmed { error });
        }
        let retry_in = verify_poll::backoff(*lost);
        *lost += 1;
        emit(ActivationEvent::ConnectionLost {
            phase: Phase::Fire,
            attempt: *lost,
            retry_in,
            error: error.clone(),
        });
        tokio::time::sleep(retry_in.min(left())).await;
        let poll = verify_poll::poll_once(remote, job, watched, Duration::ZERO);
        match tokio::time::timeout(verify_poll::POLL_TIMEOUT.min(left()), poll).await {
            Ok(Ok(s)) if s.job == (JobState::Gone { started: false }) => {
                return match loaded {
                    // Loaded, yet not running and never ran the job: a
                    // leftover of this name refused it.
                    Some(refusal) => Err(SwitchFailure::FireRefused {
                        attempts: vec![refusal],
                    }),
                    None => Ok(false),
                };
            }
            Ok(Ok(_)) => return Ok(true),
            // Asked again, the host refuses again: whether it started is
            // not known, and waiting until the deadline cannot tell.
            Ok(Err(PollFailed::Refused(e))) => {
                return Err(SwitchFailure::FireUnconfirmed { error: e });
            }
            Ok(Err(e)) => error = e.to_string(),
            Err(_) => error = "no answer to a poll".into(),
        }
    }
}

/// A fire that did not fail: the job runs (with the fire's own poll of
/// it, when it made one), an earlier attempt of it under this unit name
/// runs, or whether it started is not known yet (`loaded`: the re-fire's
/// refusal, should the unit of this name turn out not to be the job).
enum Fired {
    Running(Option<PollSnapshot>),
    RunningAs(String),
    Unconfirmed {
        error: String,
        loaded: Option<RefusedFire>,
    },
}

/// What one fire's answer means for the switch.
fn read_launch(
    launch: Launch,
    job: &SwitchJob,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> Result<Fired, SwitchFailure> {
    let (unchecked, outcome, first) = match launch {
        Launch::LockHeld { holders, processes } => {
            return Err(SwitchFailure::LockHeld { holders, processes });
        }
        Launch::LockCheckFailed { error } => return Err(SwitchFailure::LockCheck { error }),
        Launch::ProfileSetFailed { error } => return Err(SwitchFailure::ProfileSet { error }),
        Launch::ArmFailed { error } => return Err(SwitchFailure::Arm { error }),
        Launch::Tried {
            unchecked,
            outcome,
            first,
        } => (unchecked, outcome, first),
    };
    if unchecked {
        emit(ActivationEvent::Warning {
            warning: super::events::Warning::SwitchLockUnchecked,
        });
    }
    let refusal = |exit, tail| RefusedFire {
        unit: job.unit.clone(),
        exit,
        tail,
    };
    match outcome {
        FireOutcome::Started | FireOutcome::AlreadyRunning => Ok(Fired::Running(first.map(|s| *s))),
        FireOutcome::EarlierAttempt { unit } => Ok(Fired::RunningAs(unit)),
        FireOutcome::Refused { exit, tail } => Err(SwitchFailure::FireRefused {
            attempts: vec![refusal(exit, tail)],
        }),
        FireOutcome::Loaded { exit, tail } => Ok(Fired::Unconfirmed {
            error: format!("{} is loaded already: {}", job.unit, tail.join(" / ")),
            loaded: Some(refusal(exit, tail)),
        }),
        FireOutcome::Unconfirmed { error } => Ok(Fired::Unconfirmed {
            error,
            loaded: None,
        }),
    }
}

/// What `switch-to-configuration` says when the boot loader's install
/// failed, before it activates anything (`switch-to-configuration-ng`; the
/// Perl one exits 1 saying nothing of its own: such a failure stays
/// [`SwitchFailure::Exited`]).
const BOOT_LOADER_FAILED: &str = "Failed to install bootloader";

async fn classify<R: Remote>(
    remote: &R,
    job: &SwitchJob,
    outcome: VerifyOutcome,
    previous: &StorePath,
) -> SwitchResult {
    let failure = match outcome {
        VerifyOutcome::Settled {
            elapsed,
            polls,
            profile,
        } => {
            let evidence = SwitchEvidence {
                unit: job.unit.clone(),
                action: job.action,
                closure: job.closure.clone(),
                elapsed,
                polls,
            };
            return SwitchResult::Settled { evidence, profile };
        }
        VerifyOutcome::Timeout {
            elapsed,
            seen,
            last,
        } => SwitchFailure::Timeout {
            elapsed,
            seen,
            last,
        },
        VerifyOutcome::Exited { code, seen, .. } => {
            let log_tail = switch::log_tail(remote, job).await;
            if let Some(f) = pre_switch_failure(&log_tail) {
                if f.is_inhibitor() {
                    return SwitchResult::NeedsReboot(RebootReason::SwitchInhibitors { log_tail });
                }
                SwitchFailure::PreSwitchCheckFailed {
                    check: f.check,
                    log_tail,
                }
            } else if job.action.writes_boot_default()
                && seen.as_ref() == Some(previous)
                && log_tail.iter().any(|l| l.contains(BOOT_LOADER_FAILED))
            {
                SwitchFailure::BootLoader { code, log_tail }
            } else if code == 100 && job.action.changes_running_system() {
                return SwitchResult::NeedsReboot(RebootReason::InitInterfaceChanged { log_tail });
            } else if code == 11
                && let Some(lock) = log_tail
                    .iter()
                    .find(|l| l.contains("Could not acquire lock"))
            {
                if job.attempt() == 1 {
                    SwitchFailure::LockHeld {
                        holders: Vec::new(),
                        processes: Vec::new(),
                    }
                } else {
                    // The holder may be an earlier attempt, refused yet
                    // queued, which started after this fire's lock check
                    // and switches: not "nothing changed".
                    SwitchFailure::RefusedUnconfirmed {
                        attempts: Vec::new(),
                        error: format!(
                            "{} found the switch lock taken after its check \
                             (an earlier attempt, refused yet queued, or another switch): {}",
                            job.unit,
                            lock.trim()
                        ),
                    }
                }
            } else {
                SwitchFailure::Exited {
                    code,
                    seen,
                    log_tail,
                }
            }
        }
        VerifyOutcome::FlippedToUnexpected { seen, code } => SwitchFailure::FlippedToUnexpected {
            seen,
            code,
            log_tail: switch::log_tail(remote, job).await,
        },
        VerifyOutcome::ReconnectRefused {
            error,
            elapsed,
            seen,
        } => SwitchFailure::ReconnectRefused {
            error,
            elapsed,
            seen,
        },
        VerifyOutcome::NotFlipped { seen } => SwitchFailure::NotFlipped {
            seen,
            log_tail: switch::log_tail(remote, job).await,
        },
        VerifyOutcome::Vanished { started, .. } => SwitchFailure::Vanished {
            started,
            log_tail: switch::log_tail(remote, job).await,
        },
    };
    SwitchResult::Failed(failure)
}

#[cfg(test)]
mod tests {
    //! The fire's retries against a fake or scripted host, in paused time.

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::activation::fake_host::{FakeHost, Job, describe};
    use crate::activation::settings::Os;
    use crate::remote::Output;
    use crate::remote::scripted::{ScriptedRemote, ok};

    use crate::activation::verify_poll::tests::{NEW, OLD, job, sp};

    fn settings(budget: Duration) -> HostSettings {
        let mut s = HostSettings::new(Os::Linux);
        s.activation_timeout = budget;
        s
    }

    async fn run<R: Remote>(r: &R, budget: Duration, job: &mut SwitchJob) -> SwitchResult {
        run_detached(r, &settings(budget), job, &sp(NEW), &sp(OLD), None, &|_| {}).await
    }

    /// The fires of a fake host's commands, as described.
    fn fires(r: &ScriptedRemote) -> Vec<String> {
        let all = r.commands().iter().map(describe).collect::<Vec<_>>();
        all.into_iter().filter(|c| c.starts_with("fire ")).collect()
    }

    /// Refused with less than the pause between fires left: that refusal
    /// is the answer, at once (it was: a pause past the budget, and a
    /// fire sent with none left, which could only end unconfirmed).
    #[tokio::test(start_paused = true)]
    async fn a_refusal_with_less_than_the_pause_left_is_the_answer() {
        for (budget, tries) in [(500, 1), (1000, 1), (1500, 2)] {
            let host = FakeHost::new(&sp(OLD));
            host.state().refuse_fires = vec!["test"; 3];
            let r = host.remote();
            let t0 = tokio::time::Instant::now();
            let budget = Duration::from_millis(budget);
            let result = run(&r, budget, &mut job()).await;
            match &result {
                SwitchResult::Failed(f @ SwitchFailure::FireRefused { attempts }) => {
                    assert_eq!(attempts.len(), tries, "{budget:?}");
                    assert!(f.changed_nothing());
                }
                other => panic!("{budget:?}: {other:?}"),
            }
            assert_eq!(fires(&r).len(), tries, "{budget:?}: {:#?}", fires(&r));
            assert!(t0.elapsed() <= budget, "{budget:?}: {:?}", t0.elapsed());
        }
    }

    /// A scripted Linux host: fires and polls answered from their lists
    /// (the last poll answer repeats).
    fn scripted(fires: Vec<Output>, polls: Vec<Output>) -> ScriptedRemote {
        let (fires, polls) = (Mutex::new(VecDeque::from(fires)), Mutex::new(polls));
        ScriptedRemote::new("web1", move |cmd| {
            let script = cmd.argv()[2].as_str();
            if script == switch::FIRE_LINUX {
                fires.lock().unwrap().pop_front().expect("a fire's answer")
            } else if script == verify_poll::POLL_LINUX {
                let mut p = polls.lock().unwrap();
                if p.len() > 1 {
                    p.remove(0)
                } else {
                    p[0].clone()
                }
            } else {
                ok("")
            }
        })
    }

    fn poll(state: &str, status: &str, current: &str) -> Output {
        let load = if state == "inactive" {
            "not-found"
        } else {
            "loaded"
        };
        ok(&format!(
            "Result=success\nExecMainCode=0\nExecMainStatus=0\nLoadState={load}\nActiveState={state}\nSubState=x\nNixgateStatus={status}\nNixgateCurrent={current}\n"
        ))
    }

    const LOADED: &str = "Failed to start transient service unit: Unit nixgate-switch-r1.service was already loaded or has a fragment file.\n";

    fn lost() -> Output {
        Output::new(Exit::ConnectionLost, "", "")
    }

    fn loaded() -> Output {
        Output::new(
            Exit::Code { code: 0 },
            "NixgateLock=free\nNixgateFire=1\n",
            LOADED,
        )
    }

    /// A fire's answer lost, a poll that sees nothing yet; the re-fire
    /// finds the unit loaded: the first fire, slow to start, which settles.
    fn lost_then_loaded() -> ScriptedRemote {
        scripted(
            vec![lost(), loaded()],
            vec![
                poll("inactive", "absent", OLD),
                poll("active", "started", OLD),
                poll("inactive", "exited 0", NEW),
            ],
        )
    }

    /// Answers its first `.1` commands as `.0` does; refuses every later
    /// one for good, as a host whose key changed does
    /// ([`crate::remote::patient::refusing::Refusing`]).
    struct RefusedAfter(ScriptedRemote, u32, std::sync::atomic::AtomicU32);

    impl Remote for RefusedAfter {
        fn name(&self) -> &str {
            "web1"
        }
        async fn exec(&self, cmd: &crate::remote::Command) -> anyhow::Result<Output> {
            use std::sync::atomic::{AtomicU32, Ordering};
            if self.2.fetch_add(1, Ordering::SeqCst) < self.1 {
                return self.0.exec(cmd).await;
            }
            let refusing = crate::remote::patient::refusing::Refusing(AtomicU32::new(0));
            refusing.exec(cmd).await
        }
        async fn exec_stream(
            &self,
            _: &crate::remote::Command,
        ) -> anyhow::Result<crate::remote::Streaming> {
            anyhow::bail!("no streams")
        }
    }

    /// Fired, then every reconnect refused for good (the host key changed):
    /// the switch fails at once, saying so: `reconnect_refused` when the
    /// fire's answer came, `fire_unconfirmed` when it was lost. Before, it
    /// was polled until the budget ran out (60 s here): a `timeout`, or
    /// unconfirmed, then.
    #[tokio::test(start_paused = true)]
    async fn a_reconnect_refused_for_good_fails_the_switch_at_once() {
        let polled = poll("active", "started", OLD).stdout_str();
        let running = ok(&format!("NixgateLock=free\nNixgateFire=0\n{polled}"));
        for fire in [running, lost()] {
            let answered = fire.exit != Exit::ConnectionLost;
            let polls = vec![poll("active", "started", OLD)];
            let r = RefusedAfter(scripted(vec![fire], polls), 1, Default::default());
            let t0 = tokio::time::Instant::now();
            let result = run(&r, Duration::from_secs(60), &mut job()).await;
            let error = match result {
                SwitchResult::Failed(SwitchFailure::ReconnectRefused { error, seen, .. })
                    if answered =>
                {
                    assert_eq!(seen, Some(sp(OLD)));
                    error
                }
                SwitchResult::Failed(SwitchFailure::FireUnconfirmed { error }) if !answered => {
                    error
                }
                other => panic!("answered {answered}: {other:?}"),
            };
            assert!(error.contains("HOST KEY CHANGED"), "{error}");
            assert!(t0.elapsed() <= Duration::from_secs(1), "{:?}", t0.elapsed());
        }
    }

    /// Every attempt of a fire that arms the revert arms it for what is
    /// left until the one due time: a re-fire after a lost answer (the
    /// first may never have reached the host) arms it for less, so the
    /// host reverts when the controller counts on it, not later.
    #[tokio::test(start_paused = true)]
    async fn a_refire_arms_the_revert_for_what_is_left_until_it_is_due() {
        let r = lost_then_loaded();
        let mut j = job().arming(crate::activation::deadman::FireArm {
            unit: "nixgate-confirm-r1".into(),
            due: tokio::time::Instant::now() + Duration::from_secs(90),
            script: "/run/nixgate/nixgate-confirm-r1.sh".into(),
            body: String::new(),
        });
        let result = run(&r, Duration::from_secs(60), &mut j).await;
        assert!(matches!(result, SwitchResult::Settled { .. }), "{result:?}");
        let secs: Vec<u64> = r
            .argvs()
            .into_iter()
            .filter(|a| a[2] == switch::FIRE_LINUX)
            .map(|a| a[17].parse().unwrap())
            .collect();
        // The re-fire, after the polls that found nothing started, within
        // the 60 s budget.
        assert_eq!(secs.len(), 2);
        assert_eq!(secs[0], 90);
        assert!(30 < secs[1] && secs[1] < 90, "{secs:?}");
    }

    /// The fire's answer was lost and the poll after it saw nothing yet;
    /// the re-fire finds the unit loaded: the first fire, slow to start.
    /// It is polled to the end under its own name (it was: a refusal, and
    /// a second switch fired under a fresh name), and the re-fire kept
    /// its files.
    #[tokio::test(start_paused = true)]
    async fn a_refire_that_finds_the_unit_loaded_polls_it() {
        let r = lost_then_loaded();
        let mut j = job();
        let result = run(&r, Duration::from_secs(60), &mut j).await;
        assert!(matches!(result, SwitchResult::Settled { .. }), "{result:?}");
        assert_eq!(j.unit, "nixgate-switch-r1");
        let fires: Vec<Vec<String>> = r
            .argvs()
            .into_iter()
            .filter(|a| a[2] == switch::FIRE_LINUX)
            .collect();
        assert_eq!(fires.len(), 2, "{fires:#?}");
        assert!(fires.iter().all(|a| a[21] == "--unit=nixgate-switch-r1"));
        assert_eq!((fires[0][12].as_str(), fires[1][12].as_str()), ("0", "1"));
    }

    /// The same, but the unit loaded is a leftover that neither runs nor
    /// ran the job (left loaded after a failed start): a refusal, fired
    /// again under a fresh name, well within the budget.
    #[tokio::test(start_paused = true)]
    async fn a_refire_that_finds_a_leftover_loaded_renames_the_job() {
        let started = format!(
            "NixgateLock=free\nNixgateFire=0\nResult=success\nExecMainCode=0\nExecMainStatus=0\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nNixgateStatus=exited 0\nNixgateCurrent={NEW}\n"
        );
        let r = scripted(
            vec![lost(), loaded(), ok(&started)],
            vec![
                poll("inactive", "absent", OLD),
                poll("failed", "absent", OLD),
            ],
        );
        let mut j = job();
        let t0 = tokio::time::Instant::now();
        let result = run(&r, Duration::from_secs(300), &mut j).await;
        assert!(matches!(result, SwitchResult::Settled { .. }), "{result:?}");
        assert_eq!(j.unit, "nixgate-switch-r1-try2");
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    }

    /// An earlier attempt of the job, refused yet started, holds the lock
    /// when the next attempt is fired: that attempt is the job, polled to
    /// the end under its name; nothing else fires.
    #[tokio::test(start_paused = true)]
    async fn an_earlier_attempt_holding_the_lock_is_the_job() {
        let host = FakeHost::new(&sp(OLD));
        {
            let mut st = host.state();
            st.jobs
                .insert("nixgate-switch-r1".into(), Job::running_test(&sp(NEW)));
            st.lock_held = true;
        }
        let r = host.remote();
        let mut j = job().renamed(2);
        let result = run(&r, Duration::from_secs(60), &mut j).await;
        match result {
            SwitchResult::Settled { evidence, .. } => {
                assert_eq!(evidence.unit, "nixgate-switch-r1")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(j.unit, "nixgate-switch-r1");
        assert_eq!(fires(&r).len(), 1);
        assert!(!host.state().jobs.contains_key("nixgate-switch-r1-try2"));
    }

    fn refused() -> Output {
        Output::new(
            Exit::Code { code: 0 },
            "NixgateLock=free\nNixgateFire=1\n",
            "Job for x.service failed because of unavailable resources or another system error.\n",
        )
    }

    /// The units the scripted host was polled for, in order.
    fn polled(r: &ScriptedRemote) -> Vec<String> {
        let all = r.argvs().into_iter();
        let polls = all.filter(|a| a[2] == verify_poll::POLL_LINUX);
        polls.map(|a| a[4].clone()).collect()
    }

    /// Every start refused, yet one went through (a D-Bus timeout): the
    /// attempt that ran is verified like any fire, the latest found first,
    /// whether it still runs or finished before the next fire. It was "the
    /// host refused: nothing changed", on a host that had switched, and
    /// nothing rolled it back.
    #[tokio::test(start_paused = true)]
    async fn a_refused_fire_that_ran_is_verified() {
        let ran = |status| poll("inactive", status, NEW);
        let absent = poll("inactive", "absent", OLD);
        let cases = [
            (vec![ran("exited 0")], "nixgate-switch-r1-try3"),
            (
                vec![absent.clone(), absent.clone(), ran("exited 0")],
                "nixgate-switch-r1",
            ),
            (
                vec![poll("active", "started", OLD), ran("exited 0")],
                "nixgate-switch-r1-try3",
            ),
        ];
        for (polls, unit) in cases {
            let r = scripted(vec![refused(), refused(), refused()], polls);
            let events = Mutex::new(Vec::new());
            let emit = |e: ActivationEvent| events.lock().unwrap().push(e);
            let mut j = job();
            let settings = settings(Duration::from_secs(60));
            let result = run_detached(&r, &settings, &mut j, &sp(NEW), &sp(OLD), None, &emit).await;
            assert!(
                matches!(result, SwitchResult::Settled { .. }),
                "{unit}: {result:?}"
            );
            assert_eq!(j.unit, unit);
            assert_eq!(fires(&r).len(), 3);
            assert_eq!(polled(&r)[0], "nixgate-switch-r1-try3.service");
            let warned = events.into_inner().unwrap().iter().any(|e| {
                matches!(e, ActivationEvent::Warning { warning: Warning::RefusedFireRan { unit: u } } if u == unit)
            });
            assert!(warned, "{unit}");
        }
    }

    /// The first start refused, the second attempt failing before it fires
    /// (its lock check lost the bus): the first may still have run, and
    /// is looked at. It ran: verified. It did not: the second's failure.
    #[tokio::test(start_paused = true)]
    async fn a_later_attempt_failing_still_looks_at_the_earlier_refusal() {
        let bus = || {
            Output::new(
                Exit::Code { code: 1 },
                "",
                "Failed to connect to bus: Connection timed out\n",
            )
        };
        let r = scripted(
            vec![refused(), bus()],
            vec![poll("inactive", "exited 0", NEW)],
        );
        let mut j = job();
        let result = run(&r, Duration::from_secs(60), &mut j).await;
        assert!(matches!(result, SwitchResult::Settled { .. }), "{result:?}");
        assert_eq!(j.unit, "nixgate-switch-r1");
        let r = scripted(
            vec![refused(), bus()],
            vec![poll("inactive", "absent", OLD)],
        );
        let mut j = job();
        let result = run(&r, Duration::from_secs(60), &mut j).await;
        assert!(
            matches!(&result, SwitchResult::Failed(f @ SwitchFailure::LockCheck { .. }) if f.changed_nothing()),
            "{result:?}"
        );
        assert_eq!(j.unit, "nixgate-switch-r1-try2");
    }

    /// Every start refused, and no attempt's unit ran: the refusals are the
    /// answer (nothing changed), each attempt looked at once. A look that
    /// gets no answer cannot say so: the fire is unconfirmed (it may have
    /// run), not "nothing changed".
    #[tokio::test(start_paused = true)]
    async fn refused_fires_are_looked_at_once_each() {
        let absent = poll("inactive", "absent", OLD);
        let r = scripted(vec![refused(), refused(), refused()], vec![absent.clone()]);
        let result = run(&r, Duration::from_secs(60), &mut job()).await;
        match &result {
            SwitchResult::Failed(f @ SwitchFailure::FireRefused { attempts }) => {
                assert_eq!(attempts.len(), 3);
                assert!(f.changed_nothing());
            }
            other => panic!("{other:?}"),
        }
        let units = ["r1-try3", "r1-try2", "r1"].map(|u| format!("nixgate-switch-{u}.service"));
        assert_eq!(polled(&r), units);

        // No answer, `systemctl` failed (the bus that refused the start),
        // or loaded and idle without a status (a start still queued): it
        // cannot tell, and the attempt it looked at is the job to stop.
        let unreadable = ok(&format!(
            "NixgateSystemctl=failed\nNixgateStatus=absent\nNixgateCurrent={OLD}\n"
        ));
        let queued = ok(&format!(
            "LoadState=loaded\nActiveState=inactive\nSubState=dead\nNixgateStatus=absent\nNixgateCurrent={OLD}\n"
        ));
        // Gone after a refusal systemd did not decide (a D-Bus timeout: PID
        // 1 may not have taken the start up yet) cannot tell either.
        let timed_out = Output::new(
            Exit::Code { code: 0 },
            "NixgateLock=free\nNixgateFire=1\n",
            "Failed to start transient service unit: Connection timed out\n",
        );
        let all_refused = || vec![refused(), refused(), refused()];
        for (fires, polls, unit) in [
            (all_refused(), vec![lost()], "nixgate-switch-r1-try3"),
            (all_refused(), vec![unreadable], "nixgate-switch-r1-try3"),
            (
                all_refused(),
                vec![absent.clone(), queued],
                "nixgate-switch-r1-try2",
            ),
            (
                vec![refused(), refused(), timed_out],
                vec![absent.clone()],
                "nixgate-switch-r1-try3",
            ),
        ] {
            let r = scripted(fires, polls);
            let mut j = job();
            let result = run(&r, Duration::from_secs(60), &mut j).await;
            match &result {
                SwitchResult::Failed(f @ SwitchFailure::RefusedUnconfirmed { attempts, error }) => {
                    assert!(error.contains(unit), "{error}");
                    assert_eq!(attempts.len(), 3);
                    assert!(!f.changed_nothing());
                }
                other => panic!("{unit}: {other:?}"),
            }
            assert_eq!(j.unit, unit);
        }
    }

    /// On the fake host, which keeps the job of a refused start that ran:
    /// a lone attempt (a budget too short to fire again) refused yet run
    /// is polled to the end and settles.
    #[tokio::test(start_paused = true)]
    async fn a_lone_refused_start_that_ran_settles() {
        let host = FakeHost::new(&sp(OLD));
        {
            let mut st = host.state();
            st.refuse_fires = vec!["test"];
            st.refused_yet_runs = true;
        }
        let r = host.remote();
        let mut j = job();
        let result = run(&r, Duration::from_millis(900), &mut j).await;
        assert!(matches!(result, SwitchResult::Settled { .. }), "{result:?}");
        assert_eq!(j.unit, "nixgate-switch-r1");
        assert_eq!(fires(&r).len(), 1);
        assert_eq!(host.state().current, sp(NEW));
    }

    /// Which refusals let a unit that is gone count as never run: those
    /// systemd decided (the call answered), not a call that timed out or
    /// lost its bus (or said nothing), whose start may still be taken up.
    #[test]
    fn a_gone_unit_is_never_run_only_after_a_decided_refusal() {
        let gone = verify_poll::parse_poll(&format!(
            "LoadState=not-found\nActiveState=inactive\nNixgateStatus=absent\nNixgateCurrent={OLD}\n"
        ))
        .unwrap();
        let refusal = |line: &str| RefusedFire {
            unit: "nixgate-switch-r1".into(),
            exit: Exit::Code { code: 1 },
            tail: [line]
                .iter()
                .filter(|l| !l.is_empty())
                .map(|l| l.to_string())
                .collect(),
        };
        for (line, never) in [
            (
                "Job for nixgate-switch-r1.service failed because of unavailable resources or another system error.",
                Some(true),
            ),
            (
                "Failed to start transient service unit: Unit nixgate-switch-r1.service was already loaded or has a fragment file.",
                Some(true),
            ),
            (
                "Failed to start transient service unit: Access denied",
                Some(true),
            ),
            (
                "Failed to start transient service unit: Connection timed out",
                None,
            ),
            (
                "Failed to start transient service unit: Transport endpoint is not connected",
                None,
            ),
            ("", None),
            ("NixgateFire=1", None),
        ] {
            assert_eq!(
                never_ran(&gone, Os::Linux, &refusal(line)),
                never,
                "{line:?}"
            );
        }
    }

    /// A switch that exits 11 on "Could not acquire lock": a first fire's
    /// is another switch holding it (nothing changed); a re-fire's may be
    /// an earlier attempt of its own, refused yet started, which switches:
    /// unconfirmed, the lock's line in its error.
    #[tokio::test]
    async fn a_lock_lost_after_the_check_is_unconfirmed_on_a_re_fire() {
        let lock = "Could not acquire lock on /run/nixos/switch-to-configuration.lock";
        let r = ScriptedRemote::new("web1", move |_| ok(&format!("activating\n{lock}\n")));
        let exited = || VerifyOutcome::Exited {
            code: 11,
            seen: Some(sp(OLD)),
            unit: None,
            elapsed: Duration::from_secs(1),
            polls: 1,
        };
        let first = job();
        match classify(&r, &first, exited(), &sp(OLD)).await {
            SwitchResult::Failed(SwitchFailure::LockHeld { .. }) => {}
            other => panic!("{other:?}"),
        }
        match classify(&r, &first.renamed(2), exited(), &sp(OLD)).await {
            SwitchResult::Failed(SwitchFailure::RefusedUnconfirmed { error, .. }) => {
                assert!(error.contains("nixgate-switch-r1-try2"), "{error}");
                assert!(error.ends_with(lock), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
}
