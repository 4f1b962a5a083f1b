//! Rebooting a host into a deferred change (Linux), and proving it landed:
//! the reboot is fired detached (a `systemd-run` timer, so the SSH command
//! returns before the host goes down), nixgate waits until the kernel's boot
//! id changes (the caller's `Remote` reconnects on demand), then checks that
//! `/run/booted-system` and `/run/current-system` are the expected closure.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::events::{ActivationEvent, Phase, Step};
use super::links::{boot_id, read_store_links};
use super::settings::{HostSettings, RunId};
use crate::nix::StorePath;
use crate::remote::patient::refused_for_good;
use crate::remote::{Command, Exit, Remote};

/// How a reboot ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RebootOutcome {
    /// Back, booted into and running the expected closure.
    Verified { booted: StorePath },
    /// The boot id could not be read before rebooting, or the reboot
    /// command could not be sent: not rebooted.
    Unreachable { error: String },
    /// The host refused to schedule the reboot.
    Refused { exit: Exit, tail: Vec<String> },
    /// Not back (same boot id, or no answer) within the reboot timeout.
    NotBack { after: Duration },
    /// Reconnecting was refused in a way waiting cannot change
    /// ([`crate::ssh::ConnectError::is_lasting`]): its host key changed or
    /// unknown (keys regenerated at boot: an impermanent root without a
    /// persisted `/etc/ssh`), revoked, no key to offer. Said at once: it
    /// was polled for the whole reboot timeout, then `not back`, and the
    /// rollback after failed on the same refusal with the cause buried.
    ReconnectRefused { error: String },
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

/// `$1`: the reboot timer's unit. Exit 0 when no reboot of it is pending:
/// never triggered and now stopped, or never loaded (`systemctl` exit 5).
/// Read before the stop: a transient timer that fired stays loaded until
/// stopped, and its stop then succeeds too (after it, `--collect` has
/// unloaded it and nothing tells). A `show` that fails (the busy bus that
/// refused the start) cannot tell either: maybe pending.
const STOP_REBOOT: &str = r#"fired=$(systemctl show --property=LastTriggerUSec --value "$1" 2>/dev/null) || exit 1
systemctl stop "$1" 2>/dev/null; rc=$?
case $rc:$fired in
  5:*) exit 0 ;;
  0:|0:n/a|0:0) exit 0 ;;
  *) exit 1 ;;
esac"#;

/// Stop this run's reboot timer: true when no reboot of it is pending.
async fn reboot_stopped<R: Remote>(remote: &R, run_id: &RunId, sudo: bool) -> bool {
    let stop = Command::script(STOP_REBOOT)
        .arg(format!("nixgate-reboot-{run_id}.timer"))
        .sudo(sudo);
    matches!(
        remote.exec(&stop).await.map(|o| o.exit),
        Ok(Exit::Code { code: 0 })
    )
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
        // A refusal may still have queued the timer (a D-Bus call that
        // timed out on a busy PID 1 can start the unit after all): it is
        // stopped before the refusal is believed, since the caller then
        // puts the boot default back, and a reboot 3 s later would land
        // in the middle of that. A timer that cannot be stopped may
        // still fire: waited for, like a reboot sent.
        Ok(out) if !out.success() && out.exit != Exit::ConnectionLost => {
            if reboot_stopped(remote, run_id, settings.sudo).await {
                return RebootOutcome::Refused {
                    exit: out.exit.clone(),
                    tail: out.tail(10),
                };
            }
        }
        // Never sent (the `Remote` contract: an error is a command that did
        // not start): no reboot is coming, none is waited for (it was, for
        // the whole reboot timeout, then called "not back").
        Err(e) => {
            return RebootOutcome::Unreachable {
                error: format!("{e:#}"),
            };
        }
        // Scheduled, or the connection went down with the host: both fine.
        Ok(_) => {}
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
            Err(e) if refused_for_good(&e) => {
                return RebootOutcome::ReconnectRefused {
                    error: format!("{e:#}"),
                };
            }
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
    let (booted, current) = match booted_and_current(remote, settings, start).await {
        Ok(links) => links,
        Err(error) => return RebootOutcome::ReconnectRefused { error },
    };
    match (&booted, &current) {
        (Some(b), Some(c)) if b == expected && c == expected => {
            RebootOutcome::Verified { booted: b.clone() }
        }
        _ => RebootOutcome::WrongSystem { booted, current },
    }
}

/// `/run/booted-system` and `/run/current-system` of a host just back from
/// its reboot, read in one command, again every few seconds while the read
/// fails (a host still bringing its network up answers the boot id, then
/// drops the next connection), until the reboot timeout: one failed read
/// was a wrong system, and the good host was rolled back. `Err`: a
/// reconnect refused for good (no waiting changes it).
async fn booted_and_current<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    start: tokio::time::Instant,
) -> Result<(Option<StorePath>, Option<StorePath>), String> {
    let paths = [
        settings.paths.booted_system.as_str(),
        settings.paths.current_system.as_str(),
    ];
    loop {
        match read_store_links(remote, &paths).await {
            Ok(links) => {
                if let [booted, current] = links.as_slice() {
                    return Ok((booted.clone(), current.clone()));
                }
            }
            Err(e) if refused_for_good(&e) => return Err(format!("{e:#}")),
            Err(_) => {}
        }
        if start.elapsed() >= settings.reboot_timeout {
            return Ok((None, None));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::activation::links::READ_LINKS;
    use crate::activation::verify_poll::tests::{NEW, sp};
    use crate::inventory::Os;
    use crate::remote::Output;
    use crate::remote::Streaming;
    use crate::remote::scripted::{ScriptedRemote, fail, ok};

    /// STOP_REBOOT against a `systemctl` played by a script: what it says
    /// of a timer never loaded, stopped before firing, fired, or one whose
    /// stop fails.
    #[test]
    fn the_stop_tells_a_fired_timer_from_a_stopped_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        for (trigger, stop_rc, pending) in [
            ("", 5, false),
            ("n/a", 0, false),
            ("Sat 2026-12-05 07:00:01 UTC", 0, true),
            ("n/a", 1, true),
            ("fail", 0, true),
        ] {
            let stub = format!(
                "#!/bin/sh\ncase $1 in show) [ '{trigger}' != fail ] || exit 1; echo '{trigger}' ;; stop) exit {stop_rc} ;; esac\n"
            );
            crate::remote::local::executable(format!("{d}/systemctl"), &stub);
            let out = std::process::Command::new("sh")
                .args(["-c", STOP_REBOOT, "nixgate", "nixgate-reboot-r1.timer"])
                .env("PATH", format!("{d}:/usr/bin:/bin"))
                .output()
                .unwrap();
            assert_eq!(
                !out.status.success(),
                pending,
                "{trigger} {stop_rc}: {out:?}"
            );
        }
    }

    /// A host whose boot id changes after the reboot command, and whose
    /// first `reads` link reads fail (its network still coming up).
    fn rebooting(failed_reads: usize) -> ScriptedRemote {
        let rebooted = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicUsize::new(0));
        ScriptedRemote::new("web1", move |c| {
            let a = c.argv();
            if a.iter().any(|w| w == "systemd-run") {
                rebooted.store(true, Ordering::SeqCst);
                ok("")
            } else if a.len() > 2 && a[2] == READ_LINKS {
                if reads.fetch_add(1, Ordering::SeqCst) < failed_reads {
                    return fail(255, "Connection reset by peer");
                }
                ok(&format!("{NEW}\n{NEW}\n"))
            } else if rebooted.load(Ordering::SeqCst) {
                ok("after\n")
            } else {
                ok("before\n")
            }
        })
    }

    async fn reboot<R: Remote>(r: &R) -> (RebootOutcome, Duration) {
        let started = tokio::time::Instant::now();
        let s = HostSettings::new(Os::Linux);
        let out = reboot_and_verify(r, &s, &RunId::parse("r1").unwrap(), &sp(NEW), &|_| {}).await;
        (out, started.elapsed())
    }

    /// Back on the candidate, the first reads of its links failing: read
    /// again, verified (one failed read was a wrong system, rolled back).
    #[tokio::test(start_paused = true)]
    async fn a_failed_read_after_the_reboot_is_read_again() {
        let (out, _) = reboot(&rebooting(2)).await;
        assert_eq!(out, RebootOutcome::Verified { booted: sp(NEW) });
    }

    /// A refused reboot whose timer was queued after all: stopped before
    /// the refusal is told; one that cannot be stopped, or that fired, is
    /// waited for.
    #[tokio::test(start_paused = true)]
    async fn a_refused_reboot_is_stopped_or_waited_for() {
        // The script's own answer (STOP_REBOOT: 0 none pending, 1 maybe).
        for (stop_exit, expect_refused) in [(0, true), (1, false)] {
            let rebooted = Arc::new(AtomicBool::new(false));
            let stopped = Arc::new(AtomicBool::new(false));
            let (r, st) = (rebooted.clone(), stopped.clone());
            let host = ScriptedRemote::new("web1", move |c| {
                let a = c.argv().join(" ");
                if a.contains("systemd-run") {
                    // Refused, yet queued: it fires unless stopped.
                    return fail(
                        1,
                        "Failed to start transient timer unit: Connection timed out",
                    );
                }
                if a.contains(STOP_REBOOT) {
                    st.store(stop_exit != 1, Ordering::SeqCst);
                    if stop_exit != 1 {
                        return Output::new(Exit::Code { code: stop_exit }, "", "");
                    }
                    r.store(true, Ordering::SeqCst);
                    return fail(1, "Failed to stop: Connection timed out");
                }
                if a.contains(READ_LINKS) {
                    return ok(&format!("{NEW}\n{NEW}\n"));
                }
                ok(if r.load(Ordering::SeqCst) {
                    "after\n"
                } else {
                    "before\n"
                })
            });
            let (out, _) = reboot(&host).await;
            if expect_refused {
                assert!(
                    matches!(out, RebootOutcome::Refused { .. }),
                    "{stop_exit}: {out:?}"
                );
                assert!(stopped.load(Ordering::SeqCst));
            } else {
                assert_eq!(
                    out,
                    RebootOutcome::Verified { booted: sp(NEW) },
                    "{stop_exit}"
                );
            }
        }
    }

    /// A host back from its reboot with new host keys (an impermanent root
    /// without a persisted `/etc/ssh`): the reconnect is refused for good,
    /// said at once with its cause. Before: polled for the reboot timeout
    /// (600 s), then `not back`, and the rollback failed on the same
    /// refusal. A login refused while it boots (`/run/nologin`) is waited
    /// out as before.
    #[tokio::test(start_paused = true)]
    async fn a_reconnect_refused_for_good_is_said_at_once() {
        /// After the reboot, its first `refusals` commands fail with
        /// `refused()`; then it answers as `rebooting(0)`.
        struct Reconnecting<F>(ScriptedRemote, AtomicBool, AtomicUsize, usize, F);
        impl<F: Fn() -> crate::ssh::ConnectError + Send + Sync> Remote for Reconnecting<F> {
            fn name(&self) -> &str {
                self.0.name()
            }
            async fn exec(&self, cmd: &Command) -> anyhow::Result<crate::remote::Output> {
                let rebooted = self.1.load(Ordering::SeqCst);
                if rebooted && self.2.fetch_add(1, Ordering::SeqCst) < self.3 {
                    return Err(anyhow::Error::new((self.4)()).context("reconnecting"));
                }
                self.1.fetch_or(
                    cmd.argv().iter().any(|w| w == "systemd-run"),
                    Ordering::SeqCst,
                );
                self.0.exec(cmd).await
            }
            async fn exec_stream(&self, cmd: &Command) -> anyhow::Result<Streaming> {
                self.0.exec_stream(cmd).await
            }
        }
        let new_keys = || crate::ssh::ConnectError::HostKeyChanged {
            target: "web1".into(),
            host: "web1".into(),
            addr: "10.0.0.1:22".into(),
            expected: vec!["SHA256:old (known_hosts:1)".into()],
            offered: "SHA256:new".into(),
        };
        let host = Reconnecting(rebooting(0), false.into(), 0.into(), usize::MAX, new_keys);
        let (out, took) = reboot(&host).await;
        assert!(
            matches!(&out, RebootOutcome::ReconnectRefused { error } if error.contains("HOST KEY CHANGED")),
            "{out:?}"
        );
        assert!(took <= Duration::from_secs(5), "{took:?}");
        let nologin = || crate::ssh::ConnectError::AuthFailed {
            target: "web1".into(),
            user: "deploy".into(),
            tried: vec!["agent key ed25519 (SHA256:x): rejected".into()],
        };
        let host = Reconnecting(rebooting(0), false.into(), 0.into(), 2, nologin);
        let (out, _) = reboot(&host).await;
        assert_eq!(out, RebootOutcome::Verified { booted: sp(NEW) });
    }

    /// The reboot command never sent: said at once, not waited out.
    #[tokio::test(start_paused = true)]
    async fn a_reboot_never_sent_is_not_waited_for() {
        struct Unsent(ScriptedRemote);
        impl Remote for Unsent {
            fn name(&self) -> &str {
                self.0.name()
            }
            async fn exec(&self, cmd: &Command) -> anyhow::Result<crate::remote::Output> {
                anyhow::ensure!(
                    !cmd.argv().iter().any(|w| w == "systemd-run"),
                    "the SSH session was closed"
                );
                self.0.exec(cmd).await
            }
            async fn exec_stream(&self, cmd: &Command) -> anyhow::Result<Streaming> {
                self.0.exec_stream(cmd).await
            }
        }
        let (out, took) = reboot(&Unsent(rebooting(0))).await;
        assert!(
            matches!(&out, RebootOutcome::Unreachable { error } if error.contains("closed")),
            "{out:?}"
        );
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
}
