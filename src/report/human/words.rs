//! Words for people: every typed end, refusal and failure said once, in
//! plain language, with what to do next where there is something to do.
//! The only place that turns these values into sentences.

use crate::activation::detached::{RebootReason, SwitchFailure};
use crate::activation::dry_activate::DryActivateOutcome;
use crate::activation::events::Warning;
use crate::activation::privilege::SudoCheck;
use crate::activation::profile::ProfileCheck;
use crate::activation::reactivate::{RollbackError, RollbackMode};
use crate::activation::realise::RealiseOutcome;
use crate::activation::reboot::RebootOutcome;
use crate::activation::{ActivationEvent, FailureReason, HostOutcome, RollbackOutcome};
use crate::deploy::HostEnd;
use crate::deploy::releases::{NotPublished, NotReleased};
use crate::nix::StorePath;
use crate::nix::build::BuildFailure;
use crate::nix::space::StoreSpace;
use crate::plan::{NoTarget, PlanStage, Refusal};

use super::labels::Labels;
use crate::runner::{Interrupted, NotStarted, SoakCut};

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
    lines
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// The units a switch's log names as failed (`switch-to-configuration`
/// says `the following units failed: a.service, b.service`).
pub fn failed_units(log_tail: &[String]) -> Vec<String> {
    let mut units: Vec<String> = Vec::new();
    for l in log_tail {
        let Some((_, list)) = l.split_once("the following units failed:") else {
            continue;
        };
        for u in list.split([',', ' ']).map(str::trim) {
            if u.contains('.') && !units.iter().any(|x| x == u) {
                units.push(u.to_owned());
            }
        }
    }
    units
}

/// The stage of planning Ctrl-C stopped.
pub fn plan_stage(s: &PlanStage) -> &'static str {
    match s {
        PlanStage::Build => "building",
        PlanStage::Diff => "explaining the change",
        PlanStage::Targets => "reading the rollback targets",
        PlanStage::Lock => "taking the host locks",
        PlanStage::CachePush => "pushing to the binary cache",
        PlanStage::Preflight => "checking keys, pre_checks and sudo",
    }
}

/// Why a host did not start, in a word or two (for the last line).
pub fn not_started_briefly(e: &HostEnd) -> Option<String> {
    match e {
        HostEnd::NotStarted { why } => Some(match why {
            NotStarted::Cancelled => "cancelled".into(),
            NotStarted::WaveFailed { wave } => format!("wave {wave} over its budget"),
            NotStarted::EarlierWaveFailed { wave } => format!("wave {wave} failed"),
            NotStarted::ControllerFailed { host } => {
                format!("this machine failed at {host}")
            }
        }),
        HostEnd::Activation { activation } => match activation.as_ref() {
            HostOutcome::Cancelled { .. } => Some("cancelled".into()),
            _ => None,
        },
        _ => None,
    }
}

/// The line of a Nix log that says what went wrong: the last derivation
/// whose own builder failed (`builder for '…-hello-2.12.drv' failed with
/// exit code 1`; newer Nix's `Cannot build '…drv'.` followed by `Reason:
/// builder failed`, not the one whose reason is that dependencies failed:
/// the system's own last line names none of them), else the last `error:`
/// line (Nix follows it with hints such as `--show-trace`), else the last
/// line.
fn error_line(lines: &[String]) -> &str {
    fn error(l: &str) -> Option<&str> {
        l.trim().strip_prefix("error:").map(str::trim)
    }
    failed_builder(lines)
        .and_then(|i| error(&lines[i]))
        .or_else(|| lines.iter().rev().find_map(|l| error(l)))
        .unwrap_or_else(|| last_line(lines))
}

/// The index of the last line naming a derivation whose builder failed.
fn failed_builder(lines: &[String]) -> Option<usize> {
    (0..lines.len()).rev().find(|&i| {
        let l = &lines[i];
        l.contains("builder for '")
            || l.contains("Cannot build '")
                && !lines
                    .get(i + 1)
                    .is_some_and(|next| next.contains("dependenc"))
    })
}

/// The derivation whose builder failed, from a Nix log: what `nix log`
/// shows the whole log of.
pub fn failed_drv(lines: &[String]) -> Option<&str> {
    let l = &lines[failed_builder(lines)?];
    let rest = (l
        .split_once("builder for '")
        .or_else(|| l.split_once("Cannot build '")))?
    .1;
    let drv = rest.split_once('\'')?.0;
    drv.ends_with(".drv").then_some(drv)
}

/// Words about `host`, said after its name: errors that start with the
/// host's name (an SSH error names its host) do not say it twice.
pub fn about(host: &str, text: &str) -> String {
    text.replace(&format!("{host}: "), "")
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
            BuildFailure::LockIncomplete { .. } => "its flake.lock does not lock every input, and the builder's Nix will not change it: run `nix flake lock`, commit flake.lock, then push again".into(),
            BuildFailure::NoMachine {
                unreachable,
                log_tail,
            } => match unreachable.first() {
                Some(m) => format!(
                    "no machine could build it: remote builder {} failed: {} (the builder builds nothing itself with max_jobs = 0)",
                    m.machine, m.error
                ),
                None => format!("no machine could build it: {}", error_line(log_tail)),
            },
            BuildFailure::NoSpace {
                said,
                store,
                database_unusable,
                ..
            } => no_space(said, store.as_ref(), *database_unusable),
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
        Refusal::NoCurrentSystem { link } => format!(
            "--expect cannot be checked: {link} does not exist on the host, so there is no running system to compare the candidate with"
        ),
        Refusal::CachePush { store, error } => format!(
            "the closures could not be pushed to the cache {store}: {}; nothing changed on any host (fix the cache or [cache] push_to, and push again)",
            first_line(error)
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
        Refusal::RolledBack { away } => format!(
            "rolled back: `nixgate rollback` (run {}, {}) took it away from this very system to known-good generation {}, where it stands; nothing on the host was changed",
            away.run_id, away.at, away.generation
        ),
        Refusal::KeySource { error } => format!("{error}; nothing on the host was changed"),
        Refusal::PreChecks { reports } => pre_checks(reports),
        Refusal::Sudo { check } => sudo_check(check),
    }
}

/// A build that ran out of disk space on the builder: which store, how
/// full, what frees it, and Nix's words last (they hold colons of their
/// own, and the summary table shows the words up to the first).
fn no_space(said: &str, store: Option<&StoreSpace>, database_unusable: bool) -> String {
    let gc = if database_unusable {
        "Nix cannot open its database on a disk this full, `nix-collect-garbage` included: free some space on that disk outside the store first (or give it a bigger disk), then `nix-collect-garbage` on the builder, then push again"
    } else {
        "free space with `nix-collect-garbage` on the builder (or `--delete-older-than` to keep recent generations), or give its store a bigger disk, then push again"
    };
    let (what, advice) = match store {
        Some(s) if s.nearly_full() => (
            format!(
                "the builder's store is full ({} on {}, {} free of {})",
                s.dir,
                s.mounted_on,
                bytes(s.free_bytes),
                bytes(s.size_bytes)
            ),
            gc,
        ),
        // Nix also fails a build whose temporary directory (TMPDIR, /tmp)
        // filled, and a store can have room again by the time it is
        // measured (another build finished, a GC ran).
        Some(s) => (
            format!(
                "the builder ran out of disk space ({} on {} has {} free of {} now, so the build's temporary directory, TMPDIR, may be what filled)",
                s.dir,
                s.mounted_on,
                bytes(s.free_bytes),
                bytes(s.size_bytes)
            ),
            "free space there or in the store (`nix-collect-garbage` on the builder), then push again",
        ),
        None => (
            "the builder ran out of disk space (how full its store is could not be read)".into(),
            gc,
        ),
    };
    format!("{what}: {advice} (Nix said: {said})")
}

/// A size in the binary unit that keeps it short (`48.0 MiB`).
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Why `upload-keys` wrote nothing (or not everything) on a host.
pub fn keys_failure(f: &crate::keys::standalone::KeysFailure) -> String {
    use crate::keys::standalone::KeysFailure;
    match f {
        KeysFailure::Source(e) => format!("{e}; no key was written"),
        KeysFailure::Unreachable { error } => {
            format!("unreachable: {}; no key was written", first_line(error))
        }
        KeysFailure::Sudo(check) => format!("{}; no key was written", sudo_check(check)),
        KeysFailure::Upload(e) => {
            // Every line: the cause (`id: 'nginx': no such user`) comes after
            // the first, which only says that writing failed.
            let text = e.to_string();
            let lines: Vec<&str> = (text.lines().map(str::trim))
                .filter(|l| !l.is_empty())
                .collect();
            let written: Vec<&str> = e.written.iter().map(|r| r.name.as_str()).collect();
            match written.as_slice() {
                [] => format!("{}; no key was written", lines.join(" / ")),
                w => format!(
                    "{}; written before it, replacing what the host had: {}",
                    lines.join(" / "),
                    w.join(", ")
                ),
            }
        }
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

/// The generations `--to` would take instead, or where to look.
fn usable_for_to(usable: &[u64]) -> String {
    match usable {
        [] => "`nixgate status --history` shows it".to_owned(),
        gens => format!(
            "its known-good generations for `--to`: {}",
            gens.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
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
        NoTarget::Unrecorded { generation, usable } => format!(
            "generation {generation} of the known-good profile has no record: its mark never \
             finished (the host went down as it was marked), so it proves nothing; {}",
            usable_for_to(usable)
        ),
        NoTarget::SoakPending { generation, usable } => format!(
            "known-good generation {generation} never passed its soak (the run that marked it \
             was stopped or killed while soaking), so it proves nothing; {}",
            usable_for_to(usable)
        ),
        NoTarget::Unreadable { error } => {
            format!(
                "its known-good history could not be read: {}",
                first_line(error)
            )
        }
        NoTarget::Moved { was, now } => {
            let at = |g: &Option<u64>| g.map_or("none".to_owned(), |g| format!("generation {g}"));
            format!(
                "its known-good profile moved from {} to {} while the rollback was planned \
                 (another run marked it): run the rollback again",
                at(was),
                at(now)
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
        NotStarted::ControllerFailed { host } => format!(
            "this machine could make no new connection to {host} for a reason of its own (see \
             {host}), which would fail every host after it: fix it and push again"
        ),
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
        FailureReason::Sudo(check) => sudo(check),
        FailureReason::Realise(r) => realise(r),
        FailureReason::DryActivate(d) => dry_activate(d),
        FailureReason::Reboot(r) => reboot(r),
        FailureReason::Keys { stage, error } => {
            format!(
                "writing {} keys: {}",
                stage.as_str(),
                first_line(&error.to_string())
            )
        }
        FailureReason::ChangedSincePlan { planned, now } => format!(
            "it changed since the plan: the plan was of {}, it now runs {} (switched by something \
             else: an auto-upgrade, a nixos-rebuild); nothing done",
            short_closure(planned),
            short_closure(now)
        ),
    }
}

fn sudo(c: &SudoCheck) -> String {
    sudo_check(c)
}

fn realise(r: &RealiseOutcome) -> String {
    match r {
        RealiseOutcome::Realised => "the closure is complete on the host".into(),
        RealiseOutcome::SignatureMismatch { untrusted, .. } => format!(
            "{} path(s) not signed by a key the host trusts",
            untrusted.len()
        ),
        RealiseOutcome::Failed { exit, tail } => format!(
            "the closure is not complete on the host ({exit}): {}",
            last_line(tail)
        ),
    }
}

fn dry_activate(d: &DryActivateOutcome) -> String {
    match d {
        DryActivateOutcome::Passed(_) => "dry-activate passed".into(),
        DryActivateOutcome::Inhibited { .. } => {
            "NixOS switch inhibitors refuse a live switch (needs a reboot)".into()
        }
        DryActivateOutcome::InitInterfaceChanged { .. } => {
            "the new init is incompatible with the running one (needs a reboot)".into()
        }
        DryActivateOutcome::PreSwitchCheckFailed { check, tail } => format!(
            "NixOS pre-switch check {} failed: {}",
            check.as_deref().unwrap_or("(unnamed)"),
            last_line(tail)
        ),
        DryActivateOutcome::Failed { exit, tail } => {
            format!("dry-activate failed ({exit}): {}", last_line(tail))
        }
    }
}

fn reboot(r: &RebootOutcome) -> String {
    match r {
        RebootOutcome::Verified { booted } => {
            format!("rebooted into {}", short_closure(booted))
        }
        RebootOutcome::Unreachable { error } => format!(
            "its boot id could not be read before rebooting: {}",
            first_line(error)
        ),
        RebootOutcome::Refused { exit, tail } => format!(
            "the host refused to schedule the reboot ({exit}): {}",
            last_line(tail)
        ),
        RebootOutcome::NotBack { after } => {
            format!("not back from its reboot after {}s", after.as_secs())
        }
        RebootOutcome::ReconnectRefused { error } => format!(
            "its reconnect during the reboot was refused for good (waiting cannot change it): {}",
            first_line(error)
        ),
        RebootOutcome::WrongSystem { booted, current } => format!(
            "back from its reboot, but booted {} and running {}",
            booted
                .as_ref()
                .map_or_else(|| "nothing known".into(), short_closure),
            current
                .as_ref()
                .map_or_else(|| "nothing known".into(), short_closure)
        ),
    }
}

/// What the profile check after an activation found and did.
pub fn profile_check(profile: &str, c: &ProfileCheck) -> String {
    match c {
        ProfileCheck::Intact => format!("{profile} is where it should be"),
        ProfileCheck::Corrected { found, restored } => format!(
            "the activation moved {profile} (to {}); nixgate put it back to {}",
            found
                .as_ref()
                .map_or_else(|| "nothing".into(), short_closure),
            short_closure(restored)
        ),
        ProfileCheck::CorrectionFailed {
            found,
            expected,
            error,
        } => format!(
            "the activation moved {profile} (to {}) and it could not be put back to {}: {}",
            found
                .as_ref()
                .map_or_else(|| "nothing".into(), short_closure),
            short_closure(expected),
            first_line(error)
        ),
    }
}

/// A warning from a host's activation.
pub fn warning(w: &Warning) -> String {
    match w {
        Warning::Profile { profile, check } => profile_check(profile, check),
        Warning::SwitchLockUnchecked => {
            "flock is missing: an orphaned switch could not be looked for".into()
        }
        Warning::UnitsFailedBeforeDeploy { units } => format!(
            "{} were failing before this deploy and still are: left alone",
            units.join(", ")
        ),
        Warning::FireRefused { unit, attempt } => format!(
            "the host refused to start {unit} (attempt {attempt}); firing it again under a fresh name"
        ),
        Warning::RefusedFireRan { unit } => {
            format!("the host refused every start, yet {unit} ran: verifying it like any switch")
        }
        Warning::RevokeFailed { generation, error } => format!(
            "known-good generation {generation} could not be revoked: {}",
            first_line(error)
        ),
        Warning::RevertStillArmed { unit } => format!(
            "the revert {unit} could not be disarmed: when it fires (within the confirm window) it \
             re-activates the system the host runs and puts its profile back, undoing any change \
             made by hand before then (`systemctl stop {unit}.timer` on the host stops it)"
        ),
        Warning::NewConnectionUnproven { error } => format!(
            "after the soak, no new connection could be made for a reason on this side ({}): \
             not judged locked out; its health checks ran over the run's own session",
            first_line(error)
        ),
        Warning::StagedNotRooted { root, error } => format!(
            "the closure copied ahead of its wave could not be rooted at {root} ({}): the host's \
             garbage collector may delete it before its wave starts, failing its copy gate",
            first_line(error)
        ),
        Warning::KnownGoodNeedsReboot {
            known_good,
            changes,
        } => format!(
            "rolled back to the system it ran before this deploy, not to known-good {}: going \
             there needs a reboot ({}); `nixgate rollback` with `--reboot` takes it there",
            short_closure(known_good),
            reboot_reason(&RebootReason::Components {
                changes: changes.clone()
            })
        ),
        Warning::StagedRootLeft { root, error } => format!(
            "the root {root} of the closure copied ahead could not be removed ({}): it keeps that \
             closure until the next run copying ahead to this host, or `rm {root}` there",
            first_line(error)
        ),
        Warning::SoakCutShort { generation, cut } => format!(
            "its soak was cut short ({}) before its full time: known-good generation \
             {generation} stays soak pending (no rollback target) until a push of this commit \
             soaks it in full",
            soak_cut(*cut)
        ),
        Warning::SoakPassNotRecorded { generation, error } => format!(
            "its soak passed, but known-good generation {generation} could not be made final \
             ({}): it stays soak pending (no rollback target) until a push of this commit marks \
             and soaks it again",
            first_line(error)
        ),
    }
}

/// Why a run left a host's mark soak pending.
pub fn soak_left(left: crate::deploy::SoakLeft) -> String {
    match left {
        crate::deploy::SoakLeft::CutShort { cut } => format!(
            "its soak was cut short ({}) before its full time",
            soak_cut(cut)
        ),
        crate::deploy::SoakLeft::Unproven => "after its soak no new connection could be made, \
             for a reason on this machine's side: the lockout check never ran"
            .into(),
        crate::deploy::SoakLeft::NotRecorded => "its soak passed, but the host could not record \
             it: its mark stays pending (`nixgate status` flags it; the next push of the commit \
             soaks it again)"
            .into(),
    }
}

/// Why a wave's soak ended early.
fn soak_cut(cut: SoakCut) -> &'static str {
    match cut {
        SoakCut::Cancelled => "Ctrl-C or SIGTERM",
        SoakCut::WaveOverBudget => "its wave went over its failure budget",
        SoakCut::ControllerFailed => "a failure on this machine's side stopped the run",
    }
}

/// How a rollback goes back.
pub fn rollback_mode(m: &RollbackMode) -> &'static str {
    match m {
        RollbackMode::Live => "live, boot default untouched",
        RollbackMode::Persistent => "live and as the boot default",
        RollbackMode::BootOnly => "as the boot default only",
        RollbackMode::Reboot => "as the boot default, then rebooted into",
    }
}

/// A host's activation event in words (`None`: shown only live).
pub fn activation(host: &str, ev: &ActivationEvent) -> Option<String> {
    Some(match ev {
        ActivationEvent::GateStarted { gate } => format!("{host}: {gate} ..."),
        ActivationEvent::GatePassed { gate, .. } => format!("{host}: {gate} passed"),
        ActivationEvent::GateFailed { gate, reason } => {
            format!("{host}: {gate} FAILED: {}", failure(reason))
        }
        ActivationEvent::ConnectionLost {
            attempt, retry_in, ..
        } => format!(
            "{host}: connection lost (attempt {attempt}), retrying in {}s; the detached switch goes on",
            retry_in.as_secs()
        ),
        ActivationEvent::Warning { warning: w } => format!("{host}: warning: {}", warning(w)),
        ActivationEvent::Deferred { reason } => format!(
            "{host}: {}: made the boot default, it runs after a reboot",
            reboot_reason(reason)
        ),
        ActivationEvent::RollbackStarted { to, mode } => format!(
            "{host}: rolling back to {} ({})",
            short_closure(to),
            rollback_mode(mode)
        ),
        ActivationEvent::RollbackFinished { outcome } => {
            format!("{host}: {}", rollback(outcome, &Labels::default()))
        }
        ActivationEvent::Confirmed { .. } => {
            format!("{host}: confirmed over a new connection; the dead-man revert is disarmed")
        }
        ActivationEvent::AwaitingRevert { cause, .. } => format!(
            "{host}: {}; waiting for the host to take itself back",
            cut_off(cause)
        ),
        ActivationEvent::RevertFailed { record } => format!(
            "{host}: its own revert ran and did not take it back ({}; running {})",
            record.result,
            StorePath::parse(&record.current)
                .map(|p| short_closure(&p))
                .unwrap_or_else(|_| record.current.clone())
        ),
        ActivationEvent::KeysUploaded { stage, keys } => format!(
            "{host}: {} key(s) written ({}): {}",
            keys.len(),
            stage.as_str(),
            keys.iter()
                .map(|k| format!("{} sha256:{}", k.dest, &k.sha256[..12.min(k.sha256.len())]))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        ActivationEvent::Step { .. } | ActivationEvent::Polling { .. } => return None,
    })
}

/// Why a detached switch failed.
pub fn switch_failure(f: &SwitchFailure) -> String {
    match f {
        SwitchFailure::Exited { code, log_tail, .. } => {
            let units = failed_units(log_tail);
            if units.is_empty() {
                format!("the switch exited {code}: {}", last_line(log_tail))
            } else {
                format!("the switch exited {code}: {} failed", units.join(", "))
            }
        }
        SwitchFailure::Timeout { elapsed, .. } => format!(
            "the switch was still running after {}s (activation_timeout)",
            elapsed.as_secs()
        ),
        SwitchFailure::ReconnectRefused { elapsed, error, .. } => format!(
            "its reconnect to poll the switch was refused for good after {}s (waiting cannot change it): {}",
            elapsed.as_secs(),
            first_line(error)
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
        SwitchFailure::LockHeld { holders, processes } => lock_held(holders, processes),
        SwitchFailure::LockCheck { error } => {
            format!(
                "the switch lock could not be checked: {}",
                first_line(error)
            )
        }
        SwitchFailure::ProfileSet { error } => format!(
            "the system profile could not be set before the switch: {}",
            first_line(error)
        ),
        SwitchFailure::Arm { error } => format!(
            "the dead-man revert could not be armed before the switch: {}",
            first_line(error)
        ),
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
        SwitchFailure::RefusedUnconfirmed { attempts, error } => format!(
            "the host refused to start the switch{}, and it may have started all the same: {}",
            match attempts.len() {
                0 => String::new(),
                n => format!(" {n} time(s)"),
            },
            first_line(error)
        ),
        SwitchFailure::BootLoader { code, log_tail } => format!(
            "the boot loader could not be installed (exit {code}), so nothing was activated; \
             its entries may be half-written: free /boot (or mount it) and push again: {}",
            last_line(log_tail)
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

pub fn rollback_error(e: &RollbackError) -> String {
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
        RollbackError::StopStuckRevert { unit, error } => {
            format!(
                "the host's own revert {unit} may still be running and could not be stopped, \
                 so nothing was switched over it: look at the host (Linux: `journalctl -u {unit}`) ({})",
                first_line(error)
            )
        }
        RollbackError::Switch(f) => switch_failure(f),
        RollbackError::SwitchNotStopped {
            failure,
            unit,
            error,
        } => format!(
            "{}; stopping it failed too ({}): {unit} may still switch the host and holds its \
             switch lock: stop it first (Linux: `systemctl stop {unit}`)",
            switch_failure(failure),
            first_line(error)
        ),
        RollbackError::NeedsReboot(r) => reboot_reason(r),
        RollbackError::NoTarget => "there was nothing to go back to".into(),
        RollbackError::Reboot(r) => format!(
            "it is the boot default again, but the reboot into it: {}",
            reboot(r)
        ),
        RollbackError::Unconfirmed(cut) => unconfirmed(cut),
        RollbackError::Keys(e) => format!(
            "it rebooted into it, but its keys could not be written again: {}",
            first_line(&e.to_string())
        ),
    }
}

/// What a failure before the host changed left changed: `nothing`, or
/// the keys written before a key that failed.
pub(crate) fn unchanged_but_keys(reason: &FailureReason, nothing: &str) -> String {
    let written = reason.keys_written();
    if written.is_empty() {
        return nothing.to_owned();
    }
    let names: Vec<&str> = written.iter().map(|k| k.name.as_str()).collect();
    format!(
        "only keys changed: {} written before the one that failed",
        names.join(", ")
    )
}

/// A rollback from a lockout that no new connection confirmed.
fn unconfirmed(cut: &crate::activation::CutOff) -> String {
    use crate::activation::CutOff;
    let back = "back as a session opened before the rollback reads it";
    match cut {
        CutOff::NoNewConnection { error, .. } => format!(
            "{back}, but it still refuses new SSH connections ({}): reach it over its console",
            first_line(error)
        ),
        CutOff::NotOnCandidate { seen } => format!(
            "{back}, but a new connection then found it on {}",
            seen.as_ref()
                .map_or_else(|| "nothing".into(), short_closure)
        ),
        other => format!("{back}, but {}", cut_off(other)),
    }
}

/// How the controller lost a host after its live switch.
pub fn cut_off(c: &crate::activation::CutOff) -> String {
    use crate::activation::CutOff;
    match c {
        CutOff::NoNewConnection { error, .. } => format!(
            "unreachable over a new connection after the switch ({})",
            first_line(error)
        ),
        CutOff::LostDuringSwitch { failure } => {
            format!("lost during the switch ({})", switch_failure(failure))
        }
        CutOff::StartNotStopped { failure, error } => format!(
            "its switch, which may still run ({}), could not be stopped ({}): left to its own revert",
            switch_failure(failure),
            first_line(error)
        ),
        CutOff::RevertBegan => {
            "a new connection reached it only after its own revert had begun".into()
        }
        CutOff::LockLost { holder, error } => match (holder, error) {
            (Some(h), _) => format!(
                "its lock was lost with its connection (the controller suspended or cut off past the lease) and another run holds it now ({h})"
            ),
            (None, Some(e)) => format!(
                "its lock was lost with its connection (the controller suspended or cut off past the lease) and could not be taken again, or the host read: {}",
                first_line(e)
            ),
            (None, None) => "its lock was lost with its connection (the controller suspended or cut off past the lease); taken again, the host was not as this run left it".into(),
        },
        CutOff::NotOnCandidate { seen } => format!(
            "a new connection found it on {}, not the candidate",
            seen.as_ref()
                .map_or_else(|| "nothing".into(), short_closure)
        ),
    }
}

/// How a rollback ended.
pub fn rollback(o: &RollbackOutcome, labels: &Labels) -> String {
    match o {
        RollbackOutcome::RolledBack { to, .. } => {
            format!("rolled back to {}, verified", labels.words(to))
        }
        RollbackOutcome::Failed { to, error, .. } => format!(
            "ROLLBACK to {} FAILED: {}; the host needs a person: see `nixgate status`",
            labels.words(to),
            rollback_error(error)
        ),
    }
}

fn outcome(o: &HostOutcome, labels: &Labels) -> Option<String> {
    Some(match o {
        HostOutcome::KnownGood { mark } => format!("generation {}", mark.generation),
        HostOutcome::AlreadyCurrent { mark: Some(m), .. } => {
            format!("already running it; known-good generation {}", m.generation)
        }
        HostOutcome::AlreadyCurrent { mark: None, .. } | HostOutcome::Activated { .. } => {
            return None;
        }
        HostOutcome::DeferredPendingReboot { reason } => format!(
            "{}: made the boot default; it runs after a reboot (not proven live)",
            reboot_reason(reason)
        ),
        HostOutcome::NotPersisted { reason } => format!(
            "proven live but not made the boot default ({}): it runs the new system until it \
             reboots, then the one it ran before",
            switch_failure(reason)
        ),
        HostOutcome::NotMarked { reason, .. } => format!(
            "{}; it stays on the rollback's target (its known-good profile not moved)",
            failure(reason)
        ),
        HostOutcome::RolledBack { gate, reason, to } => format!(
            "{gate} failed: {}; rolled back to {}",
            failure(reason),
            labels.words(to)
        ),
        HostOutcome::RollbackFailed {
            gate,
            reason,
            to,
            rollback_error: e,
        } => format!(
            "{gate} failed: {}; ROLLBACK to {} FAILED too ({}): fix the host by hand, see `nixgate status`",
            failure(reason),
            labels.words(to),
            rollback_error(e)
        ),
        HostOutcome::Failed { gate, reason } => {
            let changed = unchanged_but_keys(reason, "nothing changed");
            format!("{gate} failed: {} ({changed})", failure(reason))
        }
        HostOutcome::SignatureMismatch { untrusted, .. } => format!(
            "{} path(s) not signed by a key the host trusts (nothing changed)",
            untrusted.len()
        ),
        HostOutcome::Cancelled { before } => format!("cancelled before {before} (nothing changed)"),
        HostOutcome::RevertedByHost { cause, to, .. } => format!(
            "{}; the host took itself back to {} (magic rollback), verified over a new connection",
            cut_off(cause),
            labels.words(to)
        ),
        HostOutcome::MovedByOther {
            cause: cause @ crate::activation::CutOff::LockLost { .. },
            now,
            ..
        } => format!(
            "{}: left to it as it is, nothing more done (it runs {})",
            cut_off(cause),
            labels.words(now)
        ),
        HostOutcome::MovedByOther { cause, now, .. } => format!(
            "{}; then found on {}, which neither this run nor its revert put there (someone else moved it): left as it is",
            cut_off(cause),
            labels.words(now)
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
            labels.words(last_seen)
        ),
    })
}

/// How a host ended, in a few words (`None`: nothing to add to its outcome).
pub fn end(e: &HostEnd, labels: &Labels) -> Option<String> {
    match e {
        HostEnd::Activation { activation } => outcome(activation, labels),
        HostEnd::Refused { refusal: r } => Some(format!("{} (nothing changed)", refusal(r))),
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
            checks,
            locked_out,
            rollback: r,
            revoked,
            kept,
        } => Some(format!(
            "{}{}; {}",
            soak_failure(checks, locked_out.as_deref()),
            revoked
                .map(|g| format!("; known-good generation {g} revoked"))
                .unwrap_or_default(),
            soak_rollback(r.as_ref(), *kept, labels)
        )),
    }
}

/// What the re-check after a soak found.
pub fn soak_failure(
    checks: &[crate::activation::health::HealthReport],
    locked_out: Option<&str>,
) -> String {
    match locked_out {
        Some(error) => format!(
            "locked out after its wave's soak: no new SSH connection got in ({error}; the run's own \
             session went on, as sshd keeps established ones)"
        ),
        None => format!(
            "unhealthy after its wave's soak: {} check(s) failed",
            checks.iter().filter(|c| !c.passed()).count()
        ),
    }
}

/// What the soak's take-back did, or why there was none.
pub fn soak_rollback(
    r: Option<&RollbackOutcome>,
    kept: Option<crate::deploy::Kept>,
    labels: &Labels,
) -> String {
    use crate::deploy::Kept;
    match (r, kept) {
        (Some(RollbackOutcome::RolledBack { to, .. }), Some(Kept::NotChanged)) => format!(
            "not taken back: this run did not change what it runs (it already ran the candidate); \
             the boot default this run had moved went back to {}, verified",
            labels.words(to)
        ),
        (Some(RollbackOutcome::Failed { to, error, .. }), Some(Kept::NotChanged)) => format!(
            "not taken back: this run did not change what it runs (it already ran the candidate); \
             PUTTING ITS BOOT DEFAULT BACK to {} FAILED: {}; a reboot may boot the candidate: \
             see `nixgate status`",
            labels.words(to),
            rollback_error(error)
        ),
        (Some(r), _) => rollback(r, labels),
        (None, Some(Kept::LockLost)) => "not taken back, its mark not revoked: its host lock \
            was lost during the soak and could not be taken again (another run may hold it: \
            `nixgate status` names who does); nothing is undone under another run"
            .into(),
        (None, Some(Kept::RollbackTarget)) => "not taken back: this run rolled it back to a \
            known-good generation, and going back means the system it rolled away from; \
            look at the host (`nixgate status`)"
            .into(),
        (None, _) => {
            "not taken back: this run did not change what it runs (it already ran the candidate)"
                .into()
        }
    }
}

/// Who holds the switch lock, and (a process outside any switch unit, an
/// orphan: deploy-rs#390) what to do about it.
fn lock_held(holders: &[String], processes: &[crate::activation::switch::LockProcess]) -> String {
    let mut s = "another switch holds switch-to-configuration's lock".to_owned();
    if !holders.is_empty() {
        s.push_str(&format!(" ({})", holders.join(", ")));
    }
    for p in processes {
        let unit = p
            .unit
            .as_ref()
            .map(|u| format!(", in {u}"))
            .unwrap_or_default();
        let ran = p
            .running_secs
            .map(|t| {
                format!(
                    ", running for {}",
                    crate::inventory::duration::format(std::time::Duration::from_secs(t))
                )
            })
            .unwrap_or_default();
        s.push_str(&format!(
            "; held by pid {} (`{}`{unit}{ran})",
            p.pid, p.command
        ));
    }
    if holders.is_empty() && !processes.is_empty() {
        let pids: Vec<String> = processes.iter().map(|p| p.pid.to_string()).collect();
        s.push_str(&format!(
            ": if that is no switch that should still be running (an auto-upgrade or another \
             tool's may be), `kill {}` on the host",
            pids.join(" ")
        ));
    }
    s
}

/// How a release moved its branch: `release/web1 moved`.
pub fn branch_update(branch: &str, update: Option<&crate::release::BranchUpdate>) -> String {
    use crate::release::BranchUpdate;
    let short = |c: &str| c.chars().take(12).collect::<String>();
    let Some(update) = update else {
        return format!("{branch} moved");
    };
    match update {
        BranchUpdate::Created => format!("{branch} created"),
        BranchUpdate::FastForward { .. } => format!("{branch} moved"),
        BranchUpdate::Unchanged => format!("{branch} already there"),
        BranchUpdate::Forced { from } => format!("{branch} forced, from {}", short(from)),
    }
}

pub fn not_released(n: &NotReleased) -> String {
    match n {
        NotReleased::Refused { refusal } => refusal.to_string(),
        NotReleased::Failed { error } => first_line(error).to_owned(),
        NotReleased::Stopped => {
            "the run was stopped at once (second Ctrl-C): a push of the same commit releases it"
                .to_owned()
        }
        NotReleased::MovedSince { marked, now } => format!(
            "its known-good moved since this run marked generation {marked} (now {}: a rollback, \
             or another run's mark): the release would certify what it no longer is",
            now.map_or("none".to_owned(), |g| format!("generation {g}"))
        ),
        NotReleased::Unconfirmed { error } => format!(
            "whether its known-good is still this run's could not be read ({}): a push of the \
             same commit releases it",
            first_line(error)
        ),
        NotReleased::SoakPending { marked } => format!(
            "its known-good generation {marked} is still soak pending (its soak never passed in \
             full): a push of the same commit whose soak passes releases it"
        ),
    }
}

pub fn not_published(n: &NotPublished) -> String {
    match n {
        NotPublished::Rejected { outcome } => match outcome {
            // `reason` is empty only in reports from before it existed.
            crate::release::PushOutcome::Failed {
                reason,
                stderr_tail,
                ..
            } if reason.is_empty() => first_line(stderr_tail).to_owned(),
            crate::release::PushOutcome::Failed { reason, .. } => reason.clone(),
            crate::release::PushOutcome::Pushed { .. } => "pushed".into(),
        },
        NotPublished::Failed { error } => first_line(error).to_owned(),
        NotPublished::Overtaken {
            branch,
            remote_at,
            from,
        } => format!(
            "its {branch} is on {}, not on this repository's {branch} (it moved from {}) \
             nor behind it: someone else published a release there, and it is not \
             overwritten; fetch that branch and look before releasing again",
            super::labels::short_commit(remote_at),
            super::labels::short_commit(from)
        ),
    }
}

#[cfg(test)]
mod no_space_words {
    use super::*;

    fn refused(store: Option<StoreSpace>) -> String {
        refusal(&Refusal::Build {
            failure: BuildFailure::NoSpace {
                said: "writing to file: No space left on device".into(),
                store,
                database_unusable: false,
                log_tail: Vec::new(),
            },
        })
    }

    #[test]
    fn a_store_too_full_for_nix_to_open_its_database() {
        let words = refusal(&Refusal::Build {
            failure: BuildFailure::NoSpace {
                said: "executing SQLite statement 'pragma synchronous = normal': disk I/O error (in '/nix/var/nix/db/db.sqlite')".into(),
                store: store(0),
                database_unusable: true,
                log_tail: Vec::new(),
            },
        });
        assert!(
            words.starts_with(
                "the builder's store is full (/nix/store on /nix, 0 B free of 48.0 MiB): \
                 Nix cannot open its database on a disk this full, `nix-collect-garbage` \
                 included: free some space on that disk outside the store first"
            ),
            "{words}"
        );
    }

    fn store(free_bytes: u64) -> Option<StoreSpace> {
        Some(StoreSpace {
            dir: "/nix/store".into(),
            mounted_on: "/nix".into(),
            size_bytes: 48 << 20,
            free_bytes,
        })
    }

    #[test]
    fn which_store_how_full_and_what_frees_it() {
        assert_eq!(
            refused(store(100 << 10)),
            "the builder's store is full (/nix/store on /nix, 100.0 KiB free of 48.0 MiB): \
             free space with `nix-collect-garbage` on the builder (or `--delete-older-than` \
             to keep recent generations), or give its store a bigger disk, then push again \
             (Nix said: writing to file: No space left on device)"
        );
        // Room in the store by the time it was measured: not called full.
        let roomy = refused(store(30 << 20));
        assert!(
            roomy.starts_with("the builder ran out of disk space (/nix/store on /nix has 30.0 MiB free of 48.0 MiB now, so the build's temporary directory, TMPDIR, may be what filled): "),
            "{roomy}"
        );
        let unknown = refused(None);
        assert!(
            unknown.contains("could not be read") && unknown.contains("nix-collect-garbage"),
            "{unknown}"
        );
        // The summary table shows the words up to the first colon: the
        // store and how full, not half of Nix's words.
        for words in [refused(store(0)), roomy, unknown] {
            let head = words.split(": ").next().unwrap();
            assert!(head.ends_with(')') && !head.contains("Nix said"), "{head}");
        }
    }

    /// A host whose own revert failed: what its record said, and what
    /// runs there, in a line.
    #[test]
    fn a_failed_revert_says_what_its_record_said() {
        let record = crate::activation::deadman::RevertRecord {
            result: "test-exited-4".into(),
            current: format!("/nix/store/{}-nixos-system-web1", "a".repeat(32)),
            ..Default::default()
        };
        let line = activation("web1", &ActivationEvent::RevertFailed { record });
        assert_eq!(
            line.as_deref(),
            Some(
                "web1: its own revert ran and did not take it back (test-exited-4; running aaaaaaaa-nixos-system-web1)"
            )
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(48 << 20), "48.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}

#[cfg(test)]
mod tests {
    use crate::activation::switch::LockProcess;

    /// A dependency of the system failed to build (`--keep-going`): Nix's
    /// last `error:` line names only the system; the refusal names the
    /// derivation whose builder failed, and where its whole log is.
    #[test]
    fn a_failed_build_names_the_derivation_that_failed() {
        let log: Vec<String> = [
            "building '/nix/store/aaaa-hello-2.12.drv'...",
            "error: builder for '/nix/store/aaaa-hello-2.12.drv' failed with exit code 1;",
            "       last 10 log lines:",
            "       > make: *** [Makefile:10: all] Error 1",
            "       For full logs, run 'nix log /nix/store/aaaa-hello-2.12.drv'.",
            "error: 1 dependencies of derivation '/nix/store/bbbb-nixos-system-web1.drv' failed to build",
        ]
        .map(String::from)
        .into();
        let failure = crate::nix::build::BuildFailure::Build {
            log_tail: log.clone(),
        };
        let said = super::refusal(&crate::plan::Refusal::Build { failure });
        assert_eq!(
            said,
            "its configuration does not build: builder for '/nix/store/aaaa-hello-2.12.drv' \
             failed with exit code 1;"
        );
        assert_eq!(
            super::failed_drv(&log),
            Some("/nix/store/aaaa-hello-2.12.drv")
        );
        // Newer Nix's words: the builder that failed, not the system whose
        // dependency it is (said last, the same way).
        let newer: Vec<String> = [
            "error: Cannot build '/nix/store/cccc-jq-1.7.drv'.",
            "       Reason: builder failed with exit code 2.",
            "error: Cannot build '/nix/store/dddd-nixos-system-web1.drv'.",
            "       Reason: 1 dependency failed.",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            super::failed_drv(&newer),
            Some("/nix/store/cccc-jq-1.7.drv")
        );
        assert_eq!(
            super::error_line(&newer),
            "Cannot build '/nix/store/cccc-jq-1.7.drv'."
        );
        // An evaluation error: its own last line.
        let eval = vec!["error: undefined variable 'pkgs'".to_string()];
        assert_eq!(super::error_line(&eval), "undefined variable 'pkgs'");
        assert_eq!(super::failed_drv(&eval), None);
    }

    /// A lock held outside any switch unit names the process and what to
    /// do (before: "holds switch-to-configuration's lock ()").
    #[test]
    fn an_orphaned_lock_names_its_process_and_the_way_out() {
        let p = LockProcess {
            pid: 4242,
            running_secs: Some(11_520),
            unit: Some("session-3.scope".into()),
            command: "/nix/store/x/bin/switch-to-configuration switch".into(),
        };
        assert_eq!(
            super::lock_held(&[], &[p]),
            "another switch holds switch-to-configuration's lock; held by pid 4242 \
             (`/nix/store/x/bin/switch-to-configuration switch`, in session-3.scope, running for \
             3h12m): if that is no switch that should still be running (an auto-upgrade or \
             another tool's may be), `kill 4242` on the host"
        );
        assert_eq!(
            super::lock_held(&["nixgate-switch-r0.service active running".into()], &[]),
            "another switch holds switch-to-configuration's lock \
             (nixgate-switch-r0.service active running)"
        );
    }

    /// A soak's take-back in words: a kept host whose boot default went
    /// back says it still runs the candidate and where its boot default
    /// went; one whose put-back failed says so as any rollback does.
    #[test]
    fn a_kept_hosts_boot_default_put_back_is_told_apart() {
        use crate::activation::{RollbackMode, RollbackOutcome};
        use crate::deploy::Kept;
        use crate::nix::StorePath;
        let to =
            StorePath::parse(&format!("/nix/store/{}-nixos-system-x", "a".repeat(32))).unwrap();
        let labels = super::Labels::default();
        let back = RollbackOutcome::RolledBack {
            to: to.clone(),
            mode: RollbackMode::BootOnly,
            evidence: None,
        };
        let kept = super::soak_rollback(Some(&back), Some(Kept::NotChanged), &labels);
        assert_eq!(
            kept,
            "not taken back: this run did not change what it runs (it already ran the candidate); \
             the boot default this run had moved went back to aaaaaaaa-nixos-system-x, verified"
        );
        assert_eq!(
            super::soak_rollback(None, Some(Kept::NotChanged), &labels),
            "not taken back: this run did not change what it runs (it already ran the candidate)"
        );
        let taken = super::soak_rollback(Some(&back), None, &labels);
        assert_eq!(taken, "rolled back to aaaaaaaa-nixos-system-x, verified");
        let failed = RollbackOutcome::Failed {
            to,
            mode: RollbackMode::BootOnly,
            error: crate::activation::reactivate::RollbackError::ProfileSet {
                error: "nix-env: disk full".into(),
            },
        };
        let kept = super::soak_rollback(Some(&failed), Some(Kept::NotChanged), &labels);
        assert_eq!(
            kept,
            "not taken back: this run did not change what it runs (it already ran the candidate); \
             PUTTING ITS BOOT DEFAULT BACK to aaaaaaaa-nixos-system-x FAILED: nix-env: disk full; \
             a reboot may boot the candidate: see `nixgate status`"
        );
    }

    /// `upload-keys` whose second key failed: the first replaced the
    /// host's key, and the cause on the error's second line is shown (it
    /// said "keys NOT written", and only the first line, "writing the key
    /// failed").
    #[test]
    fn a_partial_upload_names_what_it_wrote_and_why_it_stopped() {
        use crate::keys::standalone::KeysFailure;
        use crate::keys::{KeyReceipt, upload::KeyUploadError};
        let failed = |written: Vec<KeyReceipt>| {
            super::keys_failure(&KeysFailure::Upload(KeyUploadError {
                key: "b.key".into(),
                dest: "/run/keys/b.key".into(),
                error: "writing the key failed (exit code 1):\nid: 'nginx': no such user".into(),
                written,
            }))
        };
        let a = KeyReceipt {
            name: "a.key".into(),
            dest: "/run/keys/a.key".into(),
            sha256: "00".into(),
        };
        assert_eq!(
            failed(vec![a]),
            "key b.key (/run/keys/b.key): writing the key failed (exit code 1): / id: 'nginx': no such user; \
             written before it, replacing what the host had: a.key"
        );
        assert!(failed(Vec::new()).ends_with("no such user; no key was written"));
    }
}
