//! Human reporters: plain timestamped lines (cron, CI, pipes) and a live
//! terminal view (one line per active host, an overall bar, a final table).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::event::{Event, HostSummary};
use super::{Reporter, Table};
use crate::activation::{ActivationEvent, FailureReason, RollbackOutcome};
use crate::runner::RunnerEvent;
use crate::state::clock::Utc;

/// One line of human text for an event, or `None` for events only the live
/// view shows (progress ticks).
pub fn describe(ev: &Event) -> Option<String> {
    Some(match ev {
        Event::RunStarted {
            run_id,
            command,
            goal,
            commit,
            dirty,
            hosts,
            ..
        } => format!(
            "run {run_id}: {command} (goal {goal}) of {} host(s) at {}{}",
            hosts.len(),
            commit
                .as_deref()
                .map_or("no commit", |c| &c[..c.len().min(12)]),
            if *dirty { " +dirty" } else { "" }
        ),
        Event::SourceShipped { commit, reused } => format!(
            "source {} {} on the builder",
            &commit[..commit.len().min(12)],
            if *reused { "already" } else { "shipped" }
        ),
        Event::BuildStarted { hosts } => {
            format!("building {} system(s) on the builder", hosts.len())
        }
        Event::BuildProgress { .. } | Event::CopyProgress { .. } => return None,
        Event::HostBuilt { host, toplevel } => format!("{host}: built {toplevel}"),
        Event::BuildFinished {
            built,
            failed,
            seconds,
        } => {
            let mut m = format!("built {built} system(s) in {seconds:.1} s");
            if *failed > 0 {
                m.push_str(&format!(", {failed} failed"));
            }
            m
        }
        Event::GateStarted { host, gate } => format!("{host}: {gate} ..."),
        Event::GatePassed { host, gate, .. } => format!("{host}: {gate} passed"),
        Event::GateFailed { host, gate, reason } => format!("{host}: {gate} FAILED: {reason}"),
        Event::Activation { host, activation } => return describe_activation(host, activation),
        Event::Diff { host, diff } => {
            let lines = diff.render();
            format!("{host}: changes:\n  {}", lines.join("\n  "))
        }
        Event::Released { host, tag, branch } => {
            format!("{host}: released as {tag} ({branch} moved)")
        }
        Event::NotReleased { host, reason } => {
            format!("{host}: known-good but not released: {reason}")
        }
        Event::HostFinished(s) => format!(
            "{}: {}{}",
            s.host,
            s.outcome.as_str(),
            s.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        Event::Warning { host, message } => match host {
            Some(h) => format!("{h}: warning: {message}"),
            None => format!("warning: {message}"),
        },
        Event::Summary {
            hosts, exit_code, ..
        } => {
            let failed = hosts.iter().filter(|h| h.outcome.is_failure()).count();
            format!(
                "done: {} host(s), {failed} failed, exit {exit_code}",
                hosts.len()
            )
        }
        Event::Runner(r) => match r {
            RunnerEvent::WaveStarted {
                wave,
                hosts,
                max_parallel,
            } => {
                format!(
                    "wave {wave}: {} host(s), {max_parallel} at a time",
                    hosts.len()
                )
            }
            RunnerEvent::HostNotStarted { host, why, .. } => format!(
                "{host}: not started ({})",
                serde_json::to_value(why)
                    .ok()
                    .and_then(|v| v["reason"].as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
            RunnerEvent::WaveFinished {
                wave,
                failures,
                allowed,
                stops_run,
            } => format!(
                "wave {wave} finished: {failures} failure(s), {allowed} allowed{}",
                if *stops_run { "; stopping the run" } else { "" }
            ),
            RunnerEvent::SoakStarted { wave, seconds } => {
                format!("wave {wave}: soaking {seconds}s before the health re-check")
            }
            RunnerEvent::SoakChecked { host, healthy, .. } => {
                format!(
                    "{host}: after soak {}",
                    if *healthy { "healthy" } else { "UNHEALTHY" }
                )
            }
            RunnerEvent::CancelRequested { level } => format!(
                "cancel requested ({level:?}): {}",
                match level {
                    crate::runner::cancel::CancelLevel::Abort =>
                        "aborting; detached switches finish on the hosts",
                    _ =>
                        "starting nothing new; finishing and verifying hosts in flight (Ctrl-C again to abort)",
                }
            ),
        },
    })
}

fn describe_activation(host: &str, ev: &ActivationEvent) -> Option<String> {
    Some(match ev {
        ActivationEvent::GateStarted { gate } => format!("{host}: {gate} ..."),
        ActivationEvent::GatePassed { gate, .. } => format!("{host}: {gate} passed"),
        ActivationEvent::GateFailed { gate, reason } => {
            format!("{host}: {gate} FAILED: {}", describe_failure(reason))
        }
        ActivationEvent::ConnectionLost {
            attempt, retry_in, ..
        } => {
            format!(
                "{host}: connection lost (attempt {attempt}), retrying in {}s; the detached switch goes on",
                retry_in.as_secs()
            )
        }
        ActivationEvent::Warning { warning } => format!(
            "{host}: warning: {}",
            serde_json::to_string(warning).unwrap_or_default()
        ),
        ActivationEvent::Deferred { .. } => {
            format!("{host}: critical components change: made the boot default, reboot to run it")
        }
        ActivationEvent::RollbackStarted { to, mode } => {
            format!("{host}: rolling back to {} ({mode:?})", to.name())
        }
        ActivationEvent::RollbackFinished { outcome } => match outcome {
            RollbackOutcome::RolledBack { to, .. } => {
                format!("{host}: rolled back to {}, verified", to.name())
            }
            RollbackOutcome::Failed { to, error, .. } => {
                format!(
                    "{host}: ROLLBACK to {} FAILED: {}",
                    to.name(),
                    serde_json::to_string(error).unwrap_or_default()
                )
            }
        },
        ActivationEvent::Step { .. } | ActivationEvent::Polling { .. } => return None,
    })
}

/// A few words on why a gate failed.
pub fn describe_failure(r: &FailureReason) -> String {
    use crate::activation::detached::SwitchFailure as S;
    match r {
        FailureReason::Switch(S::Exited { code, log_tail, .. }) => {
            format!(
                "switch exited {code}{}",
                log_tail
                    .last()
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            )
        }
        FailureReason::Switch(S::Timeout { elapsed, .. }) => {
            format!("switch still running after {}s", elapsed.as_secs())
        }
        FailureReason::Switch(S::FlippedToUnexpected { seen, .. }) => {
            format!(
                "/run/current-system flipped to an unexpected {}",
                seen.name()
            )
        }
        FailureReason::Switch(S::LockHeld { holders }) => {
            format!("another switch holds the lock ({})", holders.join(", "))
        }
        FailureReason::Switch(other) => serde_json::to_value(other)
            .ok()
            .and_then(|v| {
                v["kind"]
                    .as_str()
                    .map(|k| format!("switch: {}", k.replace('_', " ")))
            })
            .unwrap_or_else(|| "switch failed".into()),
        FailureReason::HealthChecks { reports } => format!(
            "{} health check(s) failed",
            reports.iter().filter(|r| !r.passed()).count()
        ),
        FailureReason::NeedsReboot(_) => "the change needs a reboot".into(),
        FailureReason::Remote { step, error } => {
            format!("{step}: {}", error.lines().next().unwrap_or(""))
        }
        FailureReason::ProfileSet { error } | FailureReason::MarkKnownGood { error } => {
            error.lines().next().unwrap_or("").to_owned()
        }
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.as_object().and_then(|o| o.keys().next().cloned()))
            .unwrap_or_else(|| "failed".into()),
    }
}

/// A closure as people tell them apart: the first hash characters and the name.
pub fn short_closure(p: &crate::nix::StorePath) -> String {
    format!("{}-{}", &p.hash()[..8], p.name())
}

/// The final table: host, outcome, closure, duration, notes.
pub fn summary_table(hosts: &[HostSummary]) -> Table {
    let mut t = Table::new(&["HOST", "WAVE", "OUTCOME", "CLOSURE", "TIME", "NOTES"]);
    for h in hosts {
        t.row(vec![
            h.host.clone(),
            h.wave.clone(),
            h.outcome.as_str().to_owned(),
            h.closure
                .as_ref()
                .map_or_else(|| "-".into(), |c| c.name().to_owned()),
            format!("{:.1}s", h.seconds),
            h.reason.clone().unwrap_or_default(),
        ]);
    }
    t
}

/// Plain lines with a UTC timestamp, no control characters: for cron, CI
/// and anything that is not a terminal. Writes to stderr; stdout stays for
/// the command's own output.
#[derive(Default)]
pub struct Plain {
    pub quiet: bool,
}

fn strip_controls(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

impl Reporter for Plain {
    fn event(&mut self, ev: &Event) {
        if self.quiet
            && !matches!(
                ev,
                Event::GateFailed { .. } | Event::HostFinished(_) | Event::Warning { .. }
            )
        {
            return;
        }
        if let Some(text) = describe(ev) {
            let now = Utc::now().rfc3339();
            for line in text.lines() {
                eprintln!("{now} {}", strip_controls(line));
            }
        }
        if let Event::Summary { hosts, .. } = ev {
            eprint!("{}", summary_table(hosts));
        }
    }
}

/// The live terminal view.
pub struct Tty {
    multi: MultiProgress,
    overall: ProgressBar,
    lines: HashMap<String, (ProgressBar, Instant)>,
}

impl Default for Tty {
    fn default() -> Self {
        Tty::new()
    }
}

impl Tty {
    pub fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} hosts {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        overall.set_prefix("fleet");
        Tty {
            multi,
            overall,
            lines: HashMap::new(),
        }
    }

    fn line(&mut self, host: &str) -> &ProgressBar {
        let multi = &self.multi;
        &self
            .lines
            .entry(host.to_owned())
            .or_insert_with(|| {
                let pb = multi.add(ProgressBar::new_spinner());
                pb.set_style(
                    ProgressStyle::with_template("{spinner} {prefix:>12} {elapsed:>4} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                pb.set_prefix(host.to_owned());
                pb.enable_steady_tick(Duration::from_millis(120));
                (pb, Instant::now())
            })
            .0
    }
}

fn human_bytes(b: u64) -> String {
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

impl Reporter for Tty {
    fn event(&mut self, ev: &Event) {
        match ev {
            Event::RunStarted { hosts, .. } => self.overall.set_length(hosts.len() as u64),
            Event::GateStarted { host, gate } => self.line(host).set_message(format!("{gate}")),
            Event::BuildProgress {
                built,
                to_build,
                running,
                failed,
            } => {
                let mut m = format!("build {built}/{to_build} derivations");
                if *running > 0 {
                    m.push_str(&format!(", {running} running"));
                }
                if *failed > 0 {
                    m.push_str(&format!(", {failed} failed"));
                }
                self.line(crate::fleet::BUILDER).set_message(m);
            }
            Event::BuildStarted { .. } => {
                self.line(crate::fleet::BUILDER)
                    .set_message("evaluating".to_string());
                if let Some(line) = describe(ev) {
                    self.multi.suspend(|| eprintln!("{line}"));
                }
            }
            Event::BuildFinished { .. } => {
                if let Some((pb, _)) = self.lines.remove(crate::fleet::BUILDER) {
                    pb.finish_and_clear();
                }
                if let Some(line) = describe(ev) {
                    self.multi.suspend(|| eprintln!("{line}"));
                }
            }
            Event::CopyProgress {
                host,
                bytes,
                paths,
                total_paths,
            } => self.line(host).set_message(format!(
                "copy {paths}/{total_paths} paths, {}",
                human_bytes(*bytes)
            )),
            Event::HostFinished(s) => {
                if let Some((pb, _)) = self.lines.remove(&s.host) {
                    pb.finish_and_clear();
                }
                self.overall.inc(1);
                if let Some(line) = describe(ev) {
                    self.multi.suspend(|| eprintln!("{line}"));
                }
            }
            Event::Runner(RunnerEvent::HostNotStarted { .. }) => self.overall.inc(1),
            Event::Summary { hosts, .. } => {
                for (_, (pb, _)) in self.lines.drain() {
                    pb.finish_and_clear();
                }
                self.overall.finish_and_clear();
                let _ = self.multi.clear();
                eprint!("{}", summary_table(hosts));
                if let Some(line) = describe(ev) {
                    eprintln!("{line}");
                }
            }
            _ => {
                if let Some(line) = describe(ev) {
                    self.multi.suspend(|| eprintln!("{line}"));
                }
            }
        }
    }
}
