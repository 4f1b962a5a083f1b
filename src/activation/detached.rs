//! Steps 4 + 5 together: check the lock, fire the detached job (retrying a
//! fire whose answer was lost, without ever starting a second run), poll it
//! to the end, and classify the result: settled, needs a reboot (NixOS switch
//! inhibitors, an incompatible `init`), or a typed failure. Once fired, this
//! does not return before the job finished or the activation timeout passed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::events::{ActivationEvent, Phase, Step};
use super::inhibitors::{ComponentChange, pre_switch_failure};
use super::settings::HostSettings;
use super::switch::{self, Around, FireOutcome, Launch, SwitchJob};
use super::verify_poll::{
    self, FirstPoll, JobState, PollEvent, PollSnapshot, VerifyOutcome, Watched,
};
use crate::gates::SwitchAction;
use crate::nix::StorePath;
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

/// Why a detached run failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SwitchFailure {
    /// Another switch holds `switch-to-configuration`'s lock (nothing fired).
    LockHeld { holders: Vec<String> },
    /// The lock check could not be run (nothing fired).
    LockCheck { error: String },
    /// The host refused to start the job, every time it was asked under a
    /// fresh unit name (nothing fired).
    FireRefused { attempts: Vec<RefusedFire> },
    /// No answer from the host until the deadline: it may or may not have fired.
    FireUnconfirmed { error: String },
    /// A NixOS pre-switch check other than the inhibitors failed (nothing changed).
    PreSwitchCheckFailed {
        check: Option<String>,
        log_tail: Vec<String>,
    },
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
}

impl SwitchFailure {
    /// True when the failure happened before the host changed at all.
    pub fn changed_nothing(&self) -> bool {
        matches!(
            self,
            SwitchFailure::LockHeld { .. }
                | SwitchFailure::LockCheck { .. }
                | SwitchFailure::FireRefused { .. }
                | SwitchFailure::PreSwitchCheckFailed { .. }
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
/// ran (to stop it, read its log).
pub async fn run_detached<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    job: &mut SwitchJob,
    expected: &StorePath,
    previous: &StorePath,
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
    classify(remote, job, outcome).await
}

/// Fire, and fire again under a fresh unit name while the host refuses to
/// start it ([`FIRE_ATTEMPTS`] in all, a second apart), keeping every
/// refusal's reason.
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
                if attempt < FIRE_ATTEMPTS && tokio::time::Instant::now() < deadline {
                    emit(ActivationEvent::Warning {
                        warning: super::events::Warning::FireRefused {
                            unit: job.unit.clone(),
                            attempt,
                        },
                    });
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                return Err(SwitchFailure::FireRefused { attempts: refused });
            }
            other => return other,
        }
    }
    Err(SwitchFailure::FireRefused { attempts: refused })
}

/// Fire once (with the lock check before and the first poll after, one
/// command on Linux), and if the answer was lost, find out whether it
/// started before firing again (the unit name makes a second concurrent
/// run impossible). Every command is bounded by the deadline.
async fn fire_confirmed<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    job: &SwitchJob,
    watched: Watched<'_>,
    deadline: tokio::time::Instant,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> Result<FirstPoll, SwitchFailure> {
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let mut lost = 0u32;
    'fire: loop {
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
        let mut error = match read_launch(fired, job, emit)? {
            Fired::Running(first) => {
                return Ok(FirstPoll {
                    fired_at,
                    snapshot: first,
                });
            }
            Fired::Unconfirmed(error) => error,
        };
        loop {
            if left().is_zero() {
                return Err(SwitchFailure::FireUnconfirmed { error });
            }
            let retry_in = verify_poll::backoff(lost);
            lost += 1;
            emit(ActivationEvent::ConnectionLost {
                phase: Phase::Fire,
                attempt: lost,
                retry_in,
                error: error.clone(),
            });
            tokio::time::sleep(retry_in.min(left())).await;
            let poll = verify_poll::poll_once(remote, job, watched, Duration::ZERO);
            match tokio::time::timeout(verify_poll::POLL_TIMEOUT.min(left()), poll).await {
                Ok(Ok(s)) if s.job == (JobState::Gone { started: false }) => continue 'fire,
                Ok(Ok(_)) => {
                    return Ok(FirstPoll {
                        fired_at,
                        snapshot: None,
                    });
                }
                Ok(Err(e)) => error = e,
                Err(_) => error = "no answer to a poll".into(),
            }
        }
    }
}

/// A fire that did not fail: the job runs (with the fire's own poll of
/// it, when it made one), or whether it started is not known yet.
enum Fired {
    Running(Option<PollSnapshot>),
    Unconfirmed(String),
}

/// What one fire's answer means for the switch.
fn read_launch(
    launch: Launch,
    job: &SwitchJob,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> Result<Fired, SwitchFailure> {
    let (unchecked, outcome, first) = match launch {
        Launch::LockHeld { holders } => return Err(SwitchFailure::LockHeld { holders }),
        Launch::LockCheckFailed { error } => return Err(SwitchFailure::LockCheck { error }),
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
    match outcome {
        FireOutcome::Started | FireOutcome::AlreadyRunning => Ok(Fired::Running(first.map(|s| *s))),
        FireOutcome::Refused { exit, tail } => Err(SwitchFailure::FireRefused {
            attempts: vec![RefusedFire {
                unit: job.unit.clone(),
                exit,
                tail,
            }],
        }),
        FireOutcome::Unconfirmed { error } => Ok(Fired::Unconfirmed(error)),
    }
}

async fn classify<R: Remote>(remote: &R, job: &SwitchJob, outcome: VerifyOutcome) -> SwitchResult {
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
            } else if code == 100 && job.action.changes_running_system() {
                return SwitchResult::NeedsReboot(RebootReason::InitInterfaceChanged { log_tail });
            } else if code == 11
                && log_tail
                    .iter()
                    .any(|l| l.contains("Could not acquire lock"))
            {
                SwitchFailure::LockHeld {
                    holders: Vec::new(),
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
