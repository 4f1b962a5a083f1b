//! Rollback: re-activate a given closure (the host's last known-good, or the
//! system it ran before) with its own activation, by the same detached,
//! verified path as any switch. A rollback that did not verify is a
//! [`RollbackOutcome::Failed`], never reported as success (deploy-rs#214).

use serde::{Deserialize, Serialize};

use super::detached::{RebootReason, SwitchEvidence, SwitchFailure, SwitchResult, run_detached};
use super::events::{ActivationEvent, Step};
use super::links::current_system;
use super::profile;
use super::settings::{HostSettings, Os, RunId};
use super::switch::{JobPurpose, Stop, SwitchJob};
use crate::gates::SwitchAction;
use crate::nix::StorePath;
use crate::remote::Remote;
use crate::remote::patient::Patient;

/// How far back to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackMode {
    /// The boot default was never touched: `test` the target, profile untouched.
    Live,
    /// The boot default changed too: profile set + `switch` to the target.
    Persistent,
    /// Only the boot default changed: profile set + `boot` the target.
    BootOnly,
    /// The host was rebooted into what is rolled back: profile set + `boot`
    /// the target, then a reboot, verified booted there. What the host
    /// runs now (its systemd, its kernel) came by a reboot, and going back
    /// across them live is what nixgate refuses forward: NixOS 25.11's
    /// switch inhibitors refuse it (`rollback-failed`), older NixOS ran the
    /// old system on the newer systemd and kernel.
    Reboot,
}

impl RollbackMode {
    pub fn action(self) -> SwitchAction {
        match self {
            RollbackMode::Live => SwitchAction::Test,
            RollbackMode::Persistent => SwitchAction::Switch,
            RollbackMode::BootOnly | RollbackMode::Reboot => SwitchAction::Boot,
        }
    }

    /// Does this rollback change what the host runs?
    pub fn changes_running_system(self) -> bool {
        self != RollbackMode::BootOnly
    }
}

/// Why a rollback failed (adjacently tagged: the wrapped values carry a
/// `kind` of their own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum RollbackError {
    ReadCurrentSystem {
        error: String,
    },
    /// The rollback's own switch failed so that it may still run (hung,
    /// or a start never confirmed), and stopping it failed too: it may yet
    /// switch the host, and holds the switch lock while it runs.
    SwitchNotStopped {
        failure: SwitchFailure,
        unit: String,
        error: String,
    },
    /// A hung switch could not be stopped, so nothing could be re-activated.
    StopHungSwitch {
        unit: String,
        error: String,
    },
    /// The host's own revert, under way for longer than any switch may
    /// take, could not be stopped: nothing is switched while it runs.
    StopStuckRevert {
        unit: String,
        error: String,
    },
    ProfileSet {
        error: String,
    },
    Switch(SwitchFailure),
    /// The target itself cannot be activated live.
    NeedsReboot(RebootReason),
    /// There is nothing to go back to.
    NoTarget,
    /// The target is the boot default again, but the reboot into it did
    /// not end verified there ([`RollbackMode::Reboot`]).
    Reboot(super::reboot::RebootOutcome),
    /// The rollback was from a lockout (the host refused new connections)
    /// and verified over a session opened before it ran (sshd keeps
    /// established ones), but no new connection then found the host on its
    /// target: still locked out (`no_new_connection`), or on another
    /// system (`not_on_candidate`). See `pipeline::lockout`.
    Unconfirmed(super::outcome::CutOff),
    /// Rebooted into the target ([`RollbackMode::Reboot`]), verified, but
    /// a key of the run could not be written again there (the reboot
    /// emptied `/run/keys`): the system runs without it.
    Keys(crate::keys::KeyUploadError),
}

/// How a rollback ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RollbackOutcome {
    RolledBack {
        to: StorePath,
        mode: RollbackMode,
        /// The verified re-activation; `None` for a Darwin boot-only
        /// rollback, which is the profile alone, and when the switch's only
        /// complaint was units already failed before the deploy.
        evidence: Option<SwitchEvidence>,
    },
    Failed {
        to: StorePath,
        mode: RollbackMode,
        error: RollbackError,
    },
}

/// `/run/current-system` for a rollback: read again while it cannot be
/// read, within the activation budget (backoff 1, 2, 4, 8, then 15 s).
/// Seen on the fault matrix (host rebooted while its switch was polled):
/// the host answered while going down, `readlink -f` exited 1 (its `/nix`
/// already unmounted), and one failed read ended the rollback
/// `rollback-failed`, for a host that was up on its boot default seconds
/// later. A read is safe to repeat; the budget bounds the wait.
async fn read_current<R: Remote>(
    remote: &Patient<'_, R>,
    settings: &HostSettings,
) -> anyhow::Result<StorePath> {
    let deadline = tokio::time::Instant::now() + settings.activation_timeout;
    let mut attempt = 0;
    loop {
        let err = match current_system(remote, &settings.paths.current_system).await {
            Ok(now) => return Ok(now),
            // Asked again, the host refuses again (its key changed): the
            // budget (300 s) was waited out for it. A login refused is
            // asked again: sshd refuses them while the host boots.
            Err(e) if crate::remote::patient::refused_for_good(&e) => return Err(e),
            Err(e) => e,
        };
        let wait = crate::remote::patient::backoff(attempt);
        attempt += 1;
        if tokio::time::Instant::now() + wait >= deadline {
            return Err(err.context(format!("tried {attempt} times")));
        }
        tracing::info!(host = %remote.name(), attempt, "reading the current system failed: {err:#}; again in {wait:?}");
        tokio::time::sleep(wait).await;
    }
}

/// Re-activate `to` on the host. Its reads and its profile change survive
/// a lost connection for the activation budget (a rollback is most often
/// needed when the host is in trouble: rebooting, its sshd restarting); its
/// switch is fired and polled as every switch is.
pub async fn reactivate<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    run_id: &RunId,
    to: &StorePath,
    mode: RollbackMode,
    earlier_failed: Option<&std::collections::BTreeSet<String>>,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> RollbackOutcome {
    let failed = |error| RollbackOutcome::Failed {
        to: to.clone(),
        mode,
        error,
    };
    let patient = Patient::new(remote, settings.activation_timeout);
    emit(ActivationEvent::Step {
        step: Step::ReadCurrentSystem,
    });
    let now = match read_current(&patient, settings).await {
        Ok(now) => now,
        Err(e) => {
            return failed(RollbackError::ReadCurrentSystem {
                error: format!("{e:#}"),
            });
        }
    };
    if mode != RollbackMode::Live
        && let Err(e) = set_profile(&patient, settings, to, emit).await
    {
        return failed(e);
    }
    if mode == RollbackMode::BootOnly && settings.os == Os::Darwin {
        return RollbackOutcome::RolledBack {
            to: to.clone(),
            mode,
            evidence: None,
        };
    }
    let action = mode.action();
    let mut job = SwitchJob::new(
        run_id,
        JobPurpose::Rollback,
        action,
        to,
        settings.os,
        &settings.paths,
    );
    // `boot` leaves the running system as it is.
    let expected = if action.changes_running_system() {
        to
    } else {
        &now
    };
    match run_detached(
        remote,
        settings,
        &mut job,
        expected,
        &now,
        earlier_failed,
        emit,
    )
    .await
    {
        SwitchResult::Settled { evidence, .. } if mode == RollbackMode::Reboot => {
            match super::reboot::reboot_and_verify(remote, settings, run_id, to, emit).await {
                super::reboot::RebootOutcome::Verified { .. } => RollbackOutcome::RolledBack {
                    to: to.clone(),
                    mode,
                    evidence: Some(evidence),
                },
                other => failed(RollbackError::Reboot(other)),
            }
        }
        SwitchResult::Settled { evidence, .. } => RollbackOutcome::RolledBack {
            to: to.clone(),
            mode,
            evidence: Some(evidence),
        },
        SwitchResult::Failed(f) => {
            failed(stop_failed_switch(remote, settings, &job, f, emit).await)
        }
        SwitchResult::NeedsReboot(r) => failed(RollbackError::NeedsReboot(r)),
    }
}

/// A rollback by reboot came up on its target with `/run/keys` empty (a
/// tmpfs): the known-good system ran without its keys, reported rolled
/// back. The run's keys are written again there, both stages, as a push
/// rebooted into its candidate writes them; a key that cannot be written
/// fails the rollback. Any other outcome is returned as it is.
pub async fn rewrite_keys<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    keys: &[crate::keys::ResolvedKey],
    outcome: RollbackOutcome,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> RollbackOutcome {
    let RollbackOutcome::RolledBack {
        to,
        mode: RollbackMode::Reboot,
        ..
    } = &outcome
    else {
        return outcome;
    };
    use crate::keys::UploadAt;
    for stage in [UploadAt::PreActivation, UploadAt::PostActivation] {
        let written = super::key_stage::write_stage(remote, keys, stage, settings.sudo, emit);
        if let Err(e) = written.await {
            return RollbackOutcome::Failed {
                to: to.clone(),
                mode: RollbackMode::Reboot,
                error: RollbackError::Keys(e),
            };
        }
    }
    outcome
}

/// Point the system profile at `to` (a rollback that touches the boot
/// default), riding out a lost connection with `patient`.
async fn set_profile<R: Remote>(
    patient: &Patient<'_, R>,
    settings: &HostSettings,
    to: &StorePath,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> Result<(), RollbackError> {
    emit(ActivationEvent::Step {
        step: Step::SetProfile {
            profile: settings.system_profile.clone(),
            closure: to.clone(),
        },
    });
    profile::set(patient, &settings.system_profile, to, settings.sudo)
        .await
        .map_err(|e| RollbackError::ProfileSet {
            error: format!("{e:#}"),
        })
}

/// The rollback's own switch failed: one that may still run (hung at the
/// deadline, or a start never confirmed) is stopped, as a candidate's is
/// before its rollback. Left running, it held the switch lock (a
/// `nixos-rebuild` by hand failed on it; the next run waited its whole
/// budget for it), and a queued start could switch the host after a
/// person had repaired it.
///
/// The stop rides out a lost connection for the activation budget, from
/// now (the rollback's own patience ended with its switch's deadline).
async fn stop_failed_switch<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    job: &SwitchJob,
    f: SwitchFailure,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> RollbackError {
    let Some(stop) = Stop::after(&f) else {
        return RollbackError::Switch(f);
    };
    emit(ActivationEvent::Step {
        step: Step::StopHungSwitch {
            unit: job.unit.clone(),
        },
    });
    let patient = Patient::new(remote, settings.activation_timeout);
    match stop.run(&patient, job, settings.sudo).await {
        Ok(()) => RollbackError::Switch(f),
        Err(e) => RollbackError::SwitchNotStopped {
            failure: f,
            unit: job.unit.clone(),
            error: format!("{e:#}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::remote::patient::refusing::Refusing;

    /// A host that refuses the rollback's reconnect (its host key changed
    /// with the candidate): the rollback fails at once, on the first
    /// answer (it read again with backoff for the whole budget, 285 s of
    /// the default 300, before saying what it knew from the start).
    #[tokio::test(start_paused = true)]
    async fn a_refused_reconnect_fails_the_rollback_at_once() {
        let remote = Refusing(AtomicU32::new(0));
        let mut settings = HostSettings::new(Os::Linux);
        settings.activation_timeout = Duration::from_secs(300);
        let to =
            StorePath::parse("/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.05")
                .unwrap();
        let run_id = RunId::parse("r1").unwrap();
        let started = tokio::time::Instant::now();
        let outcome = reactivate(
            &remote,
            &settings,
            &run_id,
            &to,
            RollbackMode::Live,
            None,
            &|_| {},
        )
        .await;
        match outcome {
            RollbackOutcome::Failed {
                error: RollbackError::ReadCurrentSystem { error },
                ..
            } => assert!(error.contains("HOST KEY CHANGED"), "{error}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(remote.0.load(Ordering::SeqCst), 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    /// A login refused is asked again (sshd refuses logins while
    /// `/run/nologin` exists: a host booting, as after a reboot during its
    /// switch), until the host answers.
    #[tokio::test(start_paused = true)]
    async fn a_refused_login_is_asked_again() {
        const SYS: &str = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.05";
        let remote = crate::remote::scripted::ScriptedRemote::new("web1", move |_| {
            crate::remote::scripted::ok(&format!("{SYS}\n"))
        });
        let refusing = RefusingLogins {
            inner: remote,
            left: AtomicU32::new(2),
        };
        let settings = HostSettings::new(Os::Linux);
        let patient = Patient::new(&refusing, settings.activation_timeout);
        let now = read_current(&patient, &settings).await.unwrap();
        assert_eq!(now.as_str(), SYS);
    }

    /// Refuses the login `left` times, then hands over to `inner`.
    struct RefusingLogins {
        inner: crate::remote::scripted::ScriptedRemote,
        left: AtomicU32,
    }

    impl Remote for RefusingLogins {
        fn name(&self) -> &str {
            "web1"
        }
        async fn exec(
            &self,
            cmd: &crate::remote::Command,
        ) -> anyhow::Result<crate::remote::Output> {
            if self.left.load(Ordering::SeqCst) > 0 {
                self.left.fetch_sub(1, Ordering::SeqCst);
                anyhow::bail!(crate::ssh::ConnectError::AuthFailed {
                    target: "web1".into(),
                    user: "deploy".into(),
                    tried: vec!["~/.ssh/id_ed25519: rejected".into()],
                });
            }
            self.inner.exec(cmd).await
        }
        async fn exec_stream(
            &self,
            _: &crate::remote::Command,
        ) -> anyhow::Result<crate::remote::Streaming> {
            anyhow::bail!("no streams")
        }
    }
}
