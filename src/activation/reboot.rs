//! Rebooting a host into a deferred change (Linux), and proving it landed:
//! the reboot is fired detached (a `systemd-run` timer, so the SSH command
//! returns before the host goes down), nixgate waits until the kernel's boot
//! id changes (the caller's `Remote` reconnects on demand), then checks that
//! `/run/booted-system` and `/run/current-system` are the expected closure.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::events::{ActivationEvent, Phase, Step};
use super::links::{boot_id, read_store_link};
use super::settings::{HostSettings, RunId};
use crate::nix::StorePath;
use crate::remote::{Command, Exit, Remote};

/// How a reboot ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RebootOutcome {
    /// Back, booted into and running the expected closure.
    Verified { booted: StorePath },
    /// The boot id could not be read before rebooting.
    Unreachable { error: String },
    /// The host refused to schedule the reboot.
    Refused { exit: Exit, tail: Vec<String> },
    /// Not back (same boot id, or no answer) within the reboot timeout.
    NotBack { after: Duration },
    /// Back, but not on the expected closure.
    WrongSystem {
        booted: Option<StorePath>,
        current: Option<StorePath>,
    },
}

/// `systemd-run --unit=nixgate-reboot-<run id> --on-active=3 --collect
/// --no-ask-password systemctl reboot`.
pub fn reboot_command(run_id: &RunId, sudo: bool) -> Command {
    Command::new("systemd-run")
        .arg(format!("--unit=nixgate-reboot-{run_id}"))
        .args(["--on-active=3", "--collect", "--no-ask-password"])
        .args(["systemctl", "reboot"])
        .sudo(sudo)
}

/// Reboot and verify that `expected` is booted and running.
pub async fn reboot_and_verify<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    run_id: &RunId,
    expected: &StorePath,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> RebootOutcome {
    let before = match boot_id(remote, &settings.paths.boot_id).await {
        Ok(id) => id,
        Err(e) => {
            return RebootOutcome::Unreachable {
                error: format!("{e:#}"),
            };
        }
    };
    emit(ActivationEvent::Step { step: Step::Reboot });
    match remote.exec(&reboot_command(run_id, settings.sudo)).await {
        Ok(out) if !out.success() && out.exit != Exit::ConnectionLost => {
            return RebootOutcome::Refused {
                exit: out.exit.clone(),
                tail: out.tail(10),
            };
        }
        // Scheduled, or the connection went down with the host: both fine.
        _ => {}
    }
    emit(ActivationEvent::Step {
        step: Step::WaitForReboot,
    });
    let start = tokio::time::Instant::now();
    let mut attempt = 0u32;
    loop {
        let wait = Duration::from_secs(5);
        tokio::time::sleep(wait).await;
        match boot_id(remote, &settings.paths.boot_id).await {
            Ok(id) if id != before => break,
            Ok(_) => {}
            Err(e) => {
                attempt += 1;
                emit(ActivationEvent::ConnectionLost {
                    phase: Phase::Reboot,
                    attempt,
                    retry_in: wait,
                    error: format!("{e:#}"),
                });
            }
        }
        if start.elapsed() >= settings.reboot_timeout {
            return RebootOutcome::NotBack {
                after: start.elapsed(),
            };
        }
    }
    let booted = read_store_link(remote, &settings.paths.booted_system)
        .await
        .ok()
        .flatten();
    let current = read_store_link(remote, &settings.paths.current_system)
        .await
        .ok()
        .flatten();
    match (&booted, &current) {
        (Some(b), Some(c)) if b == expected && c == expected => {
            RebootOutcome::Verified { booted: b.clone() }
        }
        _ => RebootOutcome::WrongSystem { booted, current },
    }
}
