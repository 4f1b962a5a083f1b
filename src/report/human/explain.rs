//! Failures explained, after the summary table: for each host that ended
//! badly, what failed (the failed units by name), the last lines of the log
//! that says why (indented), what nixgate did about it (rolled back to which
//! generation, or nothing changed), and the next command to run. Hosts that
//! never started get one line between them. Sentences come from [`words`].

use std::fmt::Write as _;

use super::labels::Labels;
use super::words::{self, failed_units};
use crate::activation::detached::SwitchFailure;
use crate::activation::dry_activate::DryActivateOutcome;
use crate::activation::health::{Attempt, HealthReport};
use crate::activation::realise::RealiseOutcome;
use crate::activation::reboot::RebootOutcome;
use crate::activation::{FailureReason, HostOutcome};
use crate::deploy::{HostEnd, HostSummary, OutcomeKind, SoakLeft};
use crate::nix::build::BuildFailure;
use crate::plan::Refusal;
use crate::report::wrap;

/// How many lines of a log are shown.
const LOG_LINES: usize = 6;

/// The last non-empty lines of a log.
fn tail(lines: &[String]) -> Vec<String> {
    let kept: Vec<&String> = lines.iter().filter(|l| !l.trim().is_empty()).collect();
    kept[kept.len().saturating_sub(LOG_LINES)..]
        .iter()
        .map(|l| l.trim_end().to_owned())
        .collect()
}

fn health_tail(reports: &[HealthReport]) -> Vec<String> {
    let mut out = Vec::new();
    for r in reports.iter().filter(|r| !r.passed()) {
        out.push(format!("$ {}", r.command));
        if let Some(Attempt::Failed { tail: t, .. }) = r.attempts.last() {
            out.extend(tail(t));
        }
    }
    out
}

/// The log lines that say why a gate failed.
fn log_of(r: &FailureReason) -> Vec<String> {
    match r {
        FailureReason::Switch(f) => match f {
            SwitchFailure::Exited { log_tail, .. }
            | SwitchFailure::FlippedToUnexpected { log_tail, .. }
            | SwitchFailure::NotFlipped { log_tail, .. }
            | SwitchFailure::PreSwitchCheckFailed { log_tail, .. }
            | SwitchFailure::BootLoader { log_tail, .. } => tail(log_tail),
            SwitchFailure::FireRefused { attempts }
            | SwitchFailure::RefusedUnconfirmed { attempts, .. } => {
                attempts.last().map(|a| tail(&a.tail)).unwrap_or_default()
            }
            SwitchFailure::ReconnectRefused { error, .. } => error_lines(error),
            _ => Vec::new(),
        },
        FailureReason::HealthChecks { reports } => health_tail(reports),
        FailureReason::DryActivate(
            DryActivateOutcome::Failed { tail: t, .. }
            | DryActivateOutcome::PreSwitchCheckFailed { tail: t, .. }
            | DryActivateOutcome::Inhibited { tail: t }
            | DryActivateOutcome::InitInterfaceChanged { tail: t },
        ) => tail(t),
        FailureReason::Realise(RealiseOutcome::Failed { tail: t, .. }) => tail(t),
        FailureReason::Copy { error }
        | FailureReason::Remote { error, .. }
        | FailureReason::Reboot(RebootOutcome::ReconnectRefused { error }) => error_lines(error),
        _ => Vec::new(),
    }
}

/// An error's lines, when it has more than the one the reason shows (a
/// changed host key's message says what to do).
fn error_lines(error: &str) -> Vec<String> {
    let lines: Vec<String> = error.lines().map(str::to_owned).collect();
    if lines.len() > 1 {
        tail(&lines)
    } else {
        Vec::new()
    }
}

/// What to run next after a gate failed for this reason.
fn next_for(host: &str, command: &str, r: &FailureReason) -> String {
    let units = match r {
        FailureReason::Switch(SwitchFailure::Exited { log_tail, .. }) => failed_units(log_tail),
        _ => Vec::new(),
    };
    match r {
        _ if !units.is_empty() => format!(
            "`journalctl -u {}` on {host} says why; fix the configuration, then `nixgate {command} {host}`",
            units.join(" -u ")
        ),
        FailureReason::HealthChecks { .. } => format!(
            "run the failed check on {host} to see why; fix it, then `nixgate {command} {host}`"
        ),
        FailureReason::ChangedSincePlan { .. } => format!(
            "`nixgate plan {host}` shows the change against what it runs now; then `nixgate {command} {host}`"
        ),
        FailureReason::Sudo(_) => format!(
            "let the deploy user run sudo without a password on {host}, then `nixgate {command} {host}`"
        ),
        _ => format!("fix the cause, then `nixgate {command} {host}`"),
    }
}

fn refusal_next(host: &str, command: &str, r: &Refusal) -> String {
    match r {
        Refusal::Build {
            failure: BuildFailure::NoSpace { .. },
        } => format!("once the builder has room, `nixgate {command} {host}`"),
        Refusal::Build {
            failure: BuildFailure::Build { log_tail },
        } => match words::failed_drv(log_tail) {
            Some(drv) => format!(
                "`nixgate build {host}` shows the build's last lines; `nix log {drv}` on the builder its whole log"
            ),
            None => format!("`nixgate build {host}` shows the build's last lines"),
        },
        Refusal::Build { .. } => format!("`nixgate build {host}` shows Nix's last lines"),
        Refusal::Builder { .. } => "`nixgate check` shows whether the builder answers".into(),
        Refusal::Unreachable { .. } => format!("`nixgate check {host}` tells what fails"),
        Refusal::DiffFailed { .. } => format!("`nixgate plan {host}` tries the diff again"),
        Refusal::Drift { .. } => format!(
            "`nixgate plan {host}` shows the change; if it is meant, add the packages to --expect"
        ),
        Refusal::NoCurrentSystem { .. } => format!(
            "`nixgate check {host}` shows what it runs; to install a first system on it, `nixgate {command} {host}` without --expect"
        ),
        Refusal::Locked { .. } | Refusal::LockFailed { .. } => {
            format!("`nixgate status {host}` shows who holds it; then `nixgate {command} {host}`")
        }
        Refusal::NoRollbackTarget {
            why: crate::plan::NoTarget::Moved { .. },
        } => format!("`nixgate {command} {host}` again goes back from where it stands now"),
        Refusal::NoRollbackTarget { .. } => {
            format!("`nixgate status --history {host}` lists its known-good generations")
        }
        Refusal::KeySource { .. } => {
            format!("fix the key's text, file or command, then `nixgate {command} {host}`")
        }
        Refusal::RolledBack { .. } => format!(
            "fix the configuration and push the new commit; or, if what made you roll back is gone, `nixgate {command} --allow-rolled-back {host}`"
        ),
        Refusal::PreChecks { .. } => {
            format!("make the failing pre_check pass on {host}, then `nixgate {command} {host}`")
        }
        Refusal::Sudo { .. } => format!(
            "check the sudo password (--ask-sudo-password or sudo_password_command), then `nixgate {command} {host}`"
        ),
        Refusal::CachePush { store, .. } => {
            format!("make {store} writable from the builder, then `nixgate {command} {host}`")
        }
    }
}

/// One host's story: (what failed, its log, what nixgate did, what next).
type Story = (String, Vec<String>, Option<String>, String);

fn activation_story(host: &str, command: &str, o: &HostOutcome, labels: &Labels) -> Option<Story> {
    let status = format!("`nixgate status {host}`");
    Some(match o {
        HostOutcome::RolledBack { gate, reason, to } => (
            format!("{gate} failed: {}", words::failure(reason)),
            log_of(reason),
            Some(format!(
                "nixgate rolled it back to {}, verified",
                labels.words(to)
            )),
            next_for(host, command, reason),
        ),
        HostOutcome::RollbackFailed {
            gate,
            reason,
            to,
            rollback_error,
        } => (
            format!("{gate} failed: {}", words::failure(reason)),
            log_of(reason),
            Some(format!(
                "nixgate tried to roll it back to {}, and that failed too: {}",
                labels.words(to),
                words::rollback_error(rollback_error)
            )),
            format!("{status}, then repair it by hand (console)"),
        ),
        HostOutcome::Failed { gate, reason } => (
            format!("{gate} failed: {}", words::failure(reason)),
            log_of(reason),
            Some(words::unchanged_but_keys(reason, "nothing on it changed")),
            next_for(host, command, reason),
        ),
        HostOutcome::SignatureMismatch { untrusted, tail: t } => (
            format!(
                "{} path(s) not signed by a key the host trusts",
                untrusted.len()
            ),
            tail(t),
            Some("nothing on it changed".into()),
            "sign the closures on the builder (`signing_key`) with a key the host trusts".into(),
        ),
        HostOutcome::RevertedByHost { cause, to, .. } => (
            words::cut_off(cause),
            Vec::new(),
            Some(format!(
                "the host took itself back to {} (magic rollback), verified over a new connection",
                labels.words(to)
            )),
            format!("look for what cut SSH off in the change, then `nixgate {command} {host}`"),
        ),
        HostOutcome::MovedByOther {
            cause: cause @ crate::activation::CutOff::LockLost { .. },
            now,
            ..
        } => (
            words::cut_off(cause),
            Vec::new(),
            Some(format!(
                "it runs {}; nothing more was done to it (no rollback): another run has it now, or moved it",
                labels.words(now)
            )),
            format!("see what the other run did with it, then {status}"),
        ),
        HostOutcome::MovedByOther { cause, now, .. } => (
            words::cut_off(cause),
            Vec::new(),
            Some(format!(
                "then found on {}, put there by someone else (not this run, not its revert): left as it is",
                labels.words(now)
            )),
            format!("ask who moved it, then {status}"),
        ),
        HostOutcome::Unreachable {
            cause, last_seen, ..
        } => (
            words::cut_off(cause),
            Vec::new(),
            Some(format!(
                "not reached again; last seen on {}",
                labels.words(last_seen)
            )),
            format!("look at it on its console, then {status}"),
        ),
        _ => return short_of_end(host, command, o),
    })
}

/// The story of a host that got somewhere short of the goal's end: live
/// but not persisted, a rollback's target not marked, a change waiting for
/// a reboot.
fn short_of_end(host: &str, command: &str, o: &HostOutcome) -> Option<Story> {
    Some(match o {
        HostOutcome::NotPersisted { reason } => (
            format!(
                "proven live but not made the boot default: {}",
                words::switch_failure(reason)
            ),
            Vec::new(),
            None,
            if command == "rollback" {
                // A plain `rollback` picks from where the host stands now,
                // not this target.
                format!(
                    "`nixgate rollback --to <its generation> {host}` to persist it (`nixgate \
                     status {host}` lists the generations; a plain `nixgate rollback` picks from \
                     where the host stands now, not this target)"
                )
            } else {
                format!(
                    "`nixgate {command} {host}` again to persist it, or `nixgate rollback {host}`"
                )
            },
        ),
        HostOutcome::NotMarked { reason, generation } => (
            words::failure(reason),
            Vec::new(),
            Some(
                "it runs the rollback's target, and boots it as far as the goal went; its \
                 known-good profile still names the generation rolled away from"
                    .into(),
            ),
            match generation {
                Some(g) => format!("`nixgate rollback --to {g} {host}` to mark it"),
                None => format!(
                    "it runs what it ran before nixgate's first deploy, which no generation names: \
                     fix the cause, and look at `nixgate status {host}` before any rollback (a plain \
                     one would go to the generation rolled away from)"
                ),
            },
        ),
        // Told only when the run did not allow it (then it fails the run).
        HostOutcome::DeferredPendingReboot { reason } => (
            format!(
                "{}: made the boot default, not proven live",
                words::reboot_reason(reason)
            ),
            Vec::new(),
            Some("it runs the system it ran until it reboots".into()),
            if command == "rollback" {
                format!(
                    "reboot it to finish the rollback (`--reboot` reboots and verifies), \
                     then `nixgate status {host}`; `--allow-pending-reboot` accepts it pending"
                )
            } else {
                format!(
                    "reboot it, then `nixgate {command} {host}` to prove it live \
                     (`--reboot` does both; `--allow-pending-reboot` accepts it pending)"
                )
            },
        ),
        _ => return None,
    })
}

fn story(h: &HostSummary, command: &str, labels: &Labels) -> Option<Story> {
    let host = h.host.as_str();
    if let Some(left) = h.soak_left {
        return Some(soak_left_story(h, command, left));
    }
    match &h.end {
        HostEnd::Activation { activation } => activation_story(host, command, activation, labels),
        HostEnd::Refused { refusal } => Some((
            words::refusal(refusal),
            Vec::new(),
            Some("refused before anything changed".into()),
            refusal_next(host, command, refusal),
        )),
        HostEnd::Interrupted { .. } => Some((
            words::end(&h.end, labels).unwrap_or_default(),
            Vec::new(),
            None,
            format!("`nixgate status {host}`"),
        )),
        HostEnd::SoakFailed {
            checks,
            locked_out,
            revoked,
            rollback,
            kept,
        } => Some((
            words::soak_failure(checks, locked_out.as_deref()),
            health_tail(checks),
            Some(format!(
                "{}{}",
                revoked.map_or_else(String::new, |g| format!(
                    "known-good generation {g} revoked; "
                )),
                words::soak_rollback(rollback.as_ref(), *kept, labels)
            )),
            format!("fix the cause, then `nixgate {command} {host}`"),
        )),
        HostEnd::NotStarted { .. } => None,
    }
}

/// A host on the candidate, its early re-check passed, whose mark the run
/// left soak pending: it did not prove what its wave asks.
fn soak_left_story(h: &HostSummary, command: &str, left: SoakLeft) -> Story {
    let generation = match &h.end {
        HostEnd::Activation { activation } => match activation.as_ref() {
            HostOutcome::KnownGood { mark }
            | HostOutcome::AlreadyCurrent {
                mark: Some(mark), ..
            } => Some(mark.generation),
            _ => None,
        },
        _ => None,
    };
    let generation = generation.map_or_else(String::new, |g| format!(" {g}"));
    (
        words::soak_left(left),
        Vec::new(),
        Some(format!(
            "it runs the candidate; known-good generation{generation} stays soak pending \
             (no rollback target, not released)"
        )),
        format!(
            "push this commit again to soak it in full: `nixgate {command} {}`",
            h.host
        ),
    )
}

/// What went wrong on a host that is explained after the summary: the
/// cause alone (what nixgate did about it is told there).
pub fn cause(h: &HostSummary, labels: &Labels) -> Option<String> {
    if !h.fails_run() {
        return None;
    }
    story(h, "", labels).map(|(what, ..)| words::about(&h.host, &what))
}

/// For the summary table of a host explained below it: the cause's first
/// clause, and where the rest is.
pub fn brief(h: &HostSummary, labels: &Labels) -> Option<String> {
    let what = cause(h, labels)?;
    let head = what.split(": ").next().unwrap_or(&what);
    Some(format!("{head}; see below"))
}

/// Every failed host explained, then one line for the hosts never started;
/// lines of prose wrap at spaces to `width`.
pub fn failures(
    hosts: &[HostSummary],
    command: &str,
    labels: &Labels,
    width: Option<usize>,
) -> String {
    let width = width.unwrap_or(usize::MAX).max(40);
    let mut out = String::new();
    let para = |out: &mut String, indent: usize, text: &str| {
        for l in wrap(text, width.saturating_sub(indent)) {
            let _ = writeln!(out, "{:indent$}{l}", "");
        }
    };
    for h in hosts {
        if !h.fails_run() {
            continue;
        }
        let Some((what, log, did, next)) = story(h, command, labels) else {
            continue;
        };
        let _ = writeln!(out, "{}: {}", h.host, h.outcome());
        para(&mut out, 2, &words::about(&h.host, &what));
        if !log.is_empty() {
            let _ = writeln!(out, "  its log ends:");
            for l in &log {
                let _ = writeln!(out, "      {l}");
            }
        }
        if let Some(did) = did {
            para(&mut out, 2, &words::about(&h.host, &did));
        }
        para(&mut out, 2, &format!("next: {next}"));
    }
    let idle: Vec<&str> = hosts
        .iter()
        .filter(|h| h.outcome() == OutcomeKind::NotStarted)
        .map(|h| h.host.as_str())
        .collect();
    if !idle.is_empty() {
        let again = if idle.len() <= 5 {
            format!("`nixgate {command} {}`", idle.join(" "))
        } else {
            format!("`nixgate {command}` again")
        };
        para(
            &mut out,
            0,
            &format!(
                "{} host(s) not started, nothing changed on them: {again} when ready",
                idle.len()
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::detached::RebootReason;

    fn pending_db1() -> HostSummary {
        HostSummary {
            host: "db1".into(),
            wave: "main".into(),
            closure: None,
            end: HostEnd::activation(HostOutcome::DeferredPendingReboot {
                reason: RebootReason::SwitchInhibitors { log_tail: vec![] },
            }),
            seconds: 1.0,
            pending_reboot_allowed: false,
            soak_left: None,
        }
    }

    /// A pending reboot fails the run unless the run allowed it: then, and
    /// only then, it is explained after the table, with what to do.
    #[test]
    fn a_pending_reboot_is_explained_when_it_fails_the_run() {
        for allowed in [false, true] {
            let h = HostSummary {
                pending_reboot_allowed: allowed,
                ..pending_db1()
            };
            let text = failures(&[h], "push", &Labels::default(), None);
            if allowed {
                assert_eq!(text, "");
            } else {
                assert!(text.contains("db1"), "{text}");
                assert!(text.contains("not proven live"), "{text}");
                assert!(text.contains("`nixgate push db1`"), "{text}");
                assert!(text.contains("--allow-pending-reboot"), "{text}");
                // Run again, a rollback would pick another target: it
                // says to reboot, not to roll back again.
                let h = HostSummary {
                    pending_reboot_allowed: false,
                    ..pending_db1()
                };
                let text = failures(&[h], "rollback", &Labels::default(), None);
                assert!(text.contains("reboot it to finish the rollback"), "{text}");
                assert!(!text.contains("`nixgate rollback db1`"), "{text}");
                assert!(text.contains("--allow-pending-reboot"), "{text}");
            }
        }
    }

    /// A known-good host whose soak was cut short fails the run: explained
    /// after the table, its mark named as still pending, and what to do.
    #[test]
    fn a_soak_cut_short_is_explained() {
        let mark = crate::report::stored::fixture::mark("web1");
        let h = HostSummary {
            host: "web1".into(),
            end: HostEnd::activation(HostOutcome::KnownGood { mark }),
            soak_left: Some(SoakLeft::CutShort {
                cut: crate::runner::SoakCut::Cancelled,
            }),
            ..pending_db1()
        };
        let text = failures(&[h], "push", &Labels::default(), None);
        assert!(text.starts_with("web1: known-good\n"), "{text}");
        assert!(
            text.contains("its soak was cut short (Ctrl-C or SIGTERM)"),
            "{text}"
        );
        assert!(text.contains("generation 7 stays soak pending"), "{text}");
        assert!(text.contains("`nixgate push web1`"), "{text}");
    }

    /// A rollback that reached its target but not its boot default, or not
    /// its mark: the next step names the generation by number (a plain
    /// `nixgate rollback` would stand on the target and go one further
    /// back); a push says to push again.
    #[test]
    fn a_rollback_short_of_its_end_says_to_name_the_generation() {
        let end = |o: HostOutcome, command: &str| {
            let h = HostSummary {
                end: HostEnd::activation(o),
                ..pending_db1()
            };
            failures(&[h], command, &Labels::default(), None)
        };
        let not_persisted = HostOutcome::NotPersisted {
            reason: SwitchFailure::LockCheck {
                error: "connection lost".into(),
            },
        };
        let not_marked = |generation| HostOutcome::NotMarked {
            reason: FailureReason::MarkKnownGood {
                error: "no space left on device".into(),
            },
            generation,
        };
        let text = end(not_persisted.clone(), "rollback");
        assert!(
            text.contains("`nixgate rollback --to <its generation> db1`"),
            "{text}"
        );
        let text = end(not_marked(Some(3)), "rollback");
        assert!(
            text.contains("`nixgate rollback --to 3 db1` to mark it"),
            "{text}"
        );
        // The baseline has no generation: nothing to name, and a plain
        // rollback would go to the one rolled away from.
        let text = end(not_marked(None), "rollback");
        assert!(text.contains("no generation names"), "{text}");
        for text in [end(not_persisted.clone(), "rollback"), text] {
            assert!(!text.contains("`nixgate rollback db1`"), "{text}");
        }
        let text = end(not_persisted, "push");
        assert!(
            text.contains("`nixgate push db1` again to persist it"),
            "{text}"
        );
    }
}
