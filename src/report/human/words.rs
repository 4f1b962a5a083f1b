//! Words for people: every typed end, refusal and failure said once, in
//! plain language, with what to do next where there is something to do.
//! The only place that turns these values into sentences.

use crate::activation::detached::{RebootReason, SwitchFailure};
use crate::activation::reactivate::RollbackError;
use crate::activation::{FailureReason, HostOutcome, RollbackOutcome};
use crate::deploy::HostEnd;
use crate::deploy::releases::{NotPublished, NotReleased};
use crate::nix::StorePath;
use crate::nix::build::BuildFailure;
use crate::plan::{NoTarget, Refusal};
use crate::runner::{Interrupted, NotStarted};

/// A closure as people tell them apart: the first hash characters and the name.
pub fn short_closure(p: &StorePath) -> String {
    format!("{}-{}", &p.hash()[..8], p.name())
}

fn first_line(s: &str) -> &str {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

fn last_line(lines: &[String]) -> &str {
    lines.last().map(String::as_str).unwrap_or("")
}

/// The line of a Nix log that says what went wrong: the last `error:` line
/// (Nix follows it with hints such as `--show-trace`), else the last line.
fn error_line(lines: &[String]) -> &str {
    lines
        .iter()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error:").map(str::trim))
        .unwrap_or_else(|| last_line(lines))
}

/// Why the plan refused a host (nothing on it changed).
pub fn refusal(r: &Refusal) -> String {
    match r {
        Refusal::Build { failure } => match failure {
            BuildFailure::Eval { log_tail } => {
                format!(
                    "its configuration does not evaluate: {}",
                    error_line(log_tail)
                )
            }
            BuildFailure::Build { log_tail } => {
                format!("its configuration does not build: {}", error_line(log_tail))
            }
        },
        Refusal::Builder { error } => {
            format!("the builder could not be used: {}", first_line(error))
        }
        Refusal::Unreachable { error } => format!("unreachable: {}", first_line(error)),
        Refusal::DiffFailed { error } => {
            format!("the change could not be explained: {}", first_line(error))
        }
        Refusal::Drift { packages } => format!(
            "drift: {} changed, not expected (--expect)",
            packages.join(", ")
        ),
        Refusal::Locked { holder } => {
            format!(
                "another nixgate run holds the host ({holder}); wait for it, or see `nixgate status`"
            )
        }
        Refusal::LockFailed { error } => {
            format!("the host lock could not be taken: {}", first_line(error))
        }
        Refusal::NoRollbackTarget { why } => no_target(why),
        Refusal::KeySource { error } => format!("{error}; nothing on the host was changed"),
        Refusal::PreChecks { reports } => pre_checks(reports),
        Refusal::Sudo { check } => sudo_check(check),
    }
}

/// Why `upload-keys` wrote nothing (or not everything) on a host.
pub fn keys_failure(f: &crate::keys::standalone::KeysFailure) -> String {
    use crate::keys::standalone::KeysFailure;
    match f {
        KeysFailure::Source(e) => format!("{e}; nothing was written"),
        KeysFailure::Unreachable { error } => format!("unreachable: {}", first_line(error)),
        KeysFailure::Sudo(check) => sudo_check(check),
        KeysFailure::Upload(e) => first_line(&e.to_string()).to_owned(),
    }
}

/// The pre-check that refused a host, with the end of its output.
fn pre_checks(reports: &[crate::activation::health::HealthReport]) -> String {
    use crate::activation::health::Attempt;
    let Some(failed) = reports.iter().find(|r| !r.passed()) else {
        return "a pre-check failed".into();
    };
    let how = match failed.attempts.last() {
        Some(Attempt::Failed { exit, tail }) if tail.is_empty() => format!("{exit}"),
        Some(Attempt::Failed { exit, tail }) => format!("{exit}: {}", tail.join(" / ")),
        Some(Attempt::TimedOut { after }) => format!("timed out after {}s", after.as_secs()),
        Some(Attempt::Unreachable { error }) => format!("could not run: {}", first_line(error)),
        Some(Attempt::Passed) | None => "failed".into(),
    };
    format!("pre-check `{}` failed ({how})", failed.command)
}

/// Why sudo did not work on a host, and what to do.
pub fn sudo_check(check: &crate::activation::privilege::SudoCheck) -> String {
    use crate::activation::privilege::SudoCheck;
    match check {
        SudoCheck::Ready => "sudo works".into(),
        SudoCheck::PasswordRequired => "sudo asks for a password: pass --ask-sudo-password, set sudo_password_command, or grant NOPASSWD".into(),
        SudoCheck::WrongPassword => "sudo refused the password (wrong password?); nothing on the host was changed".into(),
        SudoCheck::NotInSudoers => "the user may not use sudo".into(),
        SudoCheck::SudoMissing => "there is no sudo on the host".into(),
        SudoCheck::Refused { exit, tail } => format!("sudo refused ({exit}): {}", last_line(tail)),
    }
}

fn no_target(why: &NoTarget) -> String {
    match why {
        NoTarget::NoKnownGood => {
            "no known-good generation yet: nothing proven to go back to".into()
        }
        NoTarget::NothingEarlier { generation } => format!(
            "it runs its only known-good (generation {generation}): nothing earlier to go back to"
        ),
        NoTarget::NoSuchGeneration { generation, have } => format!(
            "no known-good generation {generation} (it has: {})",
            if have.is_empty() {
                "none".into()
            } else {
                have.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        NoTarget::Missing { generation } => {
            format!("known-good generation {generation} is no longer in the host's store")
        }
        NoTarget::Unreadable { error } => {
            format!(
                "its known-good history could not be read: {}",
                first_line(error)
            )
        }
    }
}

/// Why a host never started.
pub fn not_started(n: &NotStarted) -> String {
    match n {
        NotStarted::Cancelled => "cancelled before it started".into(),
        NotStarted::WaveFailed { wave } => format!("wave {wave} went over its failure budget"),
        NotStarted::EarlierWaveFailed { wave } => {
            format!("wave {wave} failed, so later waves do not start")
        }
    }
}

/// A few words on why a gate failed.
pub fn failure(r: &FailureReason) -> String {
    match r {
        FailureReason::Copy { error } => format!("copy: {}", first_line(error)),
        FailureReason::LockLost { holder, error } => match (holder, error) {
            (Some(h), _) => format!(
                "its lock was lost with its connection and another run holds it now ({h}): left alone"
            ),
            (None, Some(e)) => format!(
                "its lock was lost with its connection and could not be taken again: {}",
                first_line(e)
            ),
            (None, None) => "its lock was lost with its connection".into(),
        },
        FailureReason::Switch(f) => switch_failure(f),
        FailureReason::HealthChecks { reports } => format!(
            "{} health check(s) failed",
            reports.iter().filter(|r| !r.passed()).count()
        ),
        FailureReason::NeedsReboot(r) => {
            format!("{}; the goal does not persist it", reboot_reason(r))
        }
        FailureReason::Remote { step, error } => format!("{step}: {}", first_line(error)),
        FailureReason::ProfileSet { error } => {
            format!("setting the profile: {}", first_line(error))
        }
        FailureReason::MarkKnownGood { error } => {
            format!("marking known-good: {}", first_line(error))
        }
        FailureReason::Sudo(check) => sudo_check(check),
        FailureReason::Keys { stage, error } => {
            format!(
                "writing {} keys: {}",
                stage.as_str(),
                first_line(&error.to_string())
            )
        }
        FailureReason::Realise(r) => format!("the closure is not complete on the host: {r:?}"),
        FailureReason::DryActivate(d) => format!("dry-activate failed: {d:?}"),
        FailureReason::Reboot(r) => format!("the reboot did not verify: {r:?}"),
    }
}

/// Why a detached switch failed.
pub fn switch_failure(f: &SwitchFailure) -> String {
    match f {
        SwitchFailure::Exited { code, log_tail, .. } => {
            format!("the switch exited {code}: {}", last_line(log_tail))
        }
        SwitchFailure::Timeout { elapsed, .. } => format!(
            "the switch was still running after {}s (activation_timeout)",
            elapsed.as_secs()
        ),
        SwitchFailure::FlippedToUnexpected { seen, .. } => format!(
            "/run/current-system moved to an unexpected {}",
            short_closure(seen)
        ),
        SwitchFailure::NotFlipped { .. } => {
            "the switch exited 0 but /run/current-system did not move".into()
        }
        SwitchFailure::Vanished { started, .. } => {
            if *started {
                "the switch disappeared without an exit status (killed?)".into()
            } else {
                "the switch never started".into()
            }
        }
        SwitchFailure::LockHeld { holders } => format!(
            "another switch holds switch-to-configuration's lock ({})",
            holders.join(", ")
        ),
        SwitchFailure::LockCheck { error } => {
            format!(
                "the switch lock could not be checked: {}",
                first_line(error)
            )
        }
        SwitchFailure::FireRefused { attempts } => {
            let last = attempts.last();
            format!(
                "the host refused to start the switch {} time(s) ({}): {}",
                attempts.len(),
                last.map_or_else(String::new, |a| a.exit.to_string()),
                last.map_or("", |a| last_line(&a.tail))
            )
        }
        SwitchFailure::FireUnconfirmed { error } => format!(
            "the host never confirmed the switch started: {}",
            first_line(error)
        ),
        SwitchFailure::PreSwitchCheckFailed { check, log_tail } => format!(
            "NixOS pre-switch check {} failed: {}",
            check.as_deref().unwrap_or("(unnamed)"),
            last_line(log_tail)
        ),
    }
}

pub fn reboot_reason(r: &RebootReason) -> String {
    match r {
        RebootReason::Components { changes } => {
            use crate::activation::inhibitors::Component;
            let mut names: Vec<&str> = changes
                .iter()
                .map(|c| match c.component {
                    Component::Systemd | Component::SystemdBinary => "systemd",
                    Component::DbusService => "dbus",
                    Component::Kernel => "the kernel",
                })
                .collect();
            names.dedup();
            format!("{} changes (needs a reboot)", names.join(" and "))
        }
        RebootReason::SwitchInhibitors { .. } => {
            "NixOS switch inhibitors refuse a live switch (needs a reboot)".into()
        }
        RebootReason::InitInterfaceChanged { .. } => {
            "the new init is incompatible with the running one (needs a reboot)".into()
        }
    }
}

fn rollback_error(e: &RollbackError) -> String {
    match e {
        RollbackError::ReadCurrentSystem { error } | RollbackError::ProfileSet { error } => {
            first_line(error).to_owned()
        }
        RollbackError::StopHungSwitch { unit, error } => {
            format!(
                "the hung switch {unit} could not be stopped: {}",
                first_line(error)
            )
        }
        RollbackError::Switch(f) => switch_failure(f),
        RollbackError::NeedsReboot(r) => reboot_reason(r),
        RollbackError::NoTarget => "there was nothing to go back to".into(),
    }
}

/// How the controller lost a host after its live switch.
pub fn cut_off(c: &crate::activation::CutOff) -> String {
    use crate::activation::CutOff;
    match c {
        CutOff::NoNewConnection { error } => format!(
            "unreachable over a new connection after the switch ({})",
            first_line(error)
        ),
        CutOff::LostDuringSwitch { failure } => {
            format!("lost during the switch ({})", switch_failure(failure))
        }
        CutOff::NotOnCandidate { seen } => format!(
            "a new connection found it on {}, not the candidate",
            seen.as_ref()
                .map_or_else(|| "nothing".into(), short_closure)
        ),
    }
}

/// How a rollback ended.
pub fn rollback(o: &RollbackOutcome) -> String {
    match o {
        RollbackOutcome::RolledBack { to, .. } => {
            format!("rolled back to {}, verified", short_closure(to))
        }
        RollbackOutcome::Failed { to, error, .. } => format!(
            "ROLLBACK to {} FAILED: {}; the host needs a person: see `nixgate status`",
            short_closure(to),
            rollback_error(error)
        ),
    }
}

fn outcome(o: &HostOutcome) -> Option<String> {
    Some(match o {
        HostOutcome::KnownGood { mark } => format!("known-good generation {}", mark.generation),
        HostOutcome::AlreadyCurrent { mark: Some(m) } => {
            format!("already running it; known-good generation {}", m.generation)
        }
        HostOutcome::AlreadyCurrent { mark: None } | HostOutcome::Activated { .. } => return None,
        HostOutcome::DeferredPendingReboot { reason } => format!(
            "{}: made the boot default; it runs after a reboot (not proven live)",
            reboot_reason(reason)
        ),
        HostOutcome::NotPersisted { reason } => format!(
            "proven live but not made the boot default ({}): it runs the new system until it reboots; \
             run `nixgate push` again to persist it, or `nixgate rollback`",
            switch_failure(reason)
        ),
        HostOutcome::RolledBack { gate, reason, to } => format!(
            "{gate} failed: {}; rolled back to {}",
            failure(reason),
            short_closure(to)
        ),
        HostOutcome::RollbackFailed {
            gate,
            reason,
            to,
            rollback_error: e,
        } => format!(
            "{gate} failed: {}; ROLLBACK to {} FAILED too ({}): fix the host by hand, see `nixgate status`",
            failure(reason),
            short_closure(to),
            rollback_error(e)
        ),
        HostOutcome::Failed { gate, reason } => {
            format!("{gate} failed: {} (nothing changed)", failure(reason))
        }
        HostOutcome::SignatureMismatch { untrusted, .. } => format!(
            "{} path(s) not signed by a key the host trusts (nothing changed)",
            untrusted.len()
        ),
        HostOutcome::Cancelled { before } => format!("cancelled before {before} (nothing changed)"),
        HostOutcome::RevertedByHost { cause, to, .. } => format!(
            "{}; the host took itself back to {} (magic rollback), verified over a new connection",
            cut_off(cause),
            short_closure(to)
        ),
        HostOutcome::Unreachable {
            cause,
            last_seen,
            revert_due,
        } => format!(
            "{}; not reached again{}: last seen on {}; what it runs now is unknown: look at it (console), then `nixgate status`",
            cut_off(cause),
            if *revert_due {
                " after its revert was due"
            } else {
                ""
            },
            short_closure(last_seen)
        ),
    })
}

/// How a host ended, in a few words (`None`: nothing to add to its outcome).
pub fn end(e: &HostEnd) -> Option<String> {
    match e {
        HostEnd::Activation { activation } => outcome(activation),
        HostEnd::Refused { refusal: r } => Some(format!("refused: {} (nothing changed)", refusal(r))),
        HostEnd::NotStarted { why } => Some(not_started(why)),
        HostEnd::Interrupted { why } => Some(
            match why {
                Interrupted::Aborted => {
                    "aborted by a second Ctrl-C; a detached switch may still finish: see `nixgate status`"
                }
                Interrupted::StageLost => "the copy task ended without a result (nixgate bug)",
                Interrupted::Panicked => "nixgate bug: the host's task panicked",
            }
            .to_owned(),
        ),
        HostEnd::SoakFailed {
            checks, rollback: r, revoked, ..
        } => Some(format!(
            "unhealthy after its wave's soak ({} check(s) failed){}; {}",
            checks.iter().filter(|c| !c.passed()).count(),
            revoked
                .map(|g| format!("; known-good generation {g} revoked"))
                .unwrap_or_default(),
            rollback(r)
        )),
    }
}

pub fn not_released(n: &NotReleased) -> String {
    match n {
        NotReleased::Refused { refusal } => refusal.to_string(),
        NotReleased::Failed { error } => first_line(error).to_owned(),
    }
}

pub fn not_published(n: &NotPublished) -> String {
    match n {
        NotPublished::Rejected { outcome } => match outcome {
            crate::release::PushOutcome::Failed { stderr_tail, .. } => {
                first_line(stderr_tail).to_owned()
            }
            crate::release::PushOutcome::Pushed { .. } => "pushed".into(),
        },
        NotPublished::Failed { error } => first_line(error).to_owned(),
    }
}
