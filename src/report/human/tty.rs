//! The live terminal view (stderr): one line per host in flight showing its
//! gate, an overall bar, finished hosts collapsed to their outcome line.

use std::collections::HashMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{describe, words};
use crate::activation::events::Warning;
use crate::activation::{ActivationEvent, RollbackMode};
use crate::report::event::Event;
use crate::runner::RunnerEvent;

/// A host's activation event in words (`None`: shown only live).
pub fn describe_activation(host: &str, ev: &ActivationEvent) -> Option<String> {
    Some(match ev {
        ActivationEvent::GateStarted { gate } => format!("{host}: {gate} ..."),
        ActivationEvent::GatePassed { gate, .. } => format!("{host}: {gate} passed"),
        ActivationEvent::GateFailed { gate, reason } => {
            format!("{host}: {gate} FAILED: {}", words::failure(reason))
        }
        ActivationEvent::ConnectionLost {
            attempt, retry_in, ..
        } => format!(
            "{host}: connection lost (attempt {attempt}), retrying in {}s; the detached switch goes on",
            retry_in.as_secs()
        ),
        ActivationEvent::Warning { warning } => {
            format!("{host}: warning: {}", warning_words(warning))
        }
        ActivationEvent::Deferred { reason } => format!(
            "{host}: {}: made the boot default, it runs after a reboot",
            words::reboot_reason(reason)
        ),
        ActivationEvent::RollbackStarted { to, mode } => format!(
            "{host}: rolling back to {} ({})",
            words::short_closure(to),
            match mode {
                RollbackMode::Live => "live, boot default untouched",
                RollbackMode::Persistent => "live and as the boot default",
                RollbackMode::BootOnly => "as the boot default only",
            }
        ),
        ActivationEvent::RollbackFinished { outcome } => {
            format!("{host}: {}", words::rollback(outcome))
        }
        ActivationEvent::Confirmed { .. } => {
            format!("{host}: confirmed over a new connection; the dead-man revert is disarmed")
        }
        ActivationEvent::AwaitingRevert { cause, .. } => format!(
            "{host}: {}; waiting for the host to take itself back",
            words::cut_off(cause)
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

fn warning_words(w: &Warning) -> String {
    match w {
        Warning::Profile { profile, check } => {
            format!("the activation moved {profile}; nixgate put it back ({check:?})")
        }
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
        Warning::RevokeFailed { generation, error } => {
            format!("known-good generation {generation} could not be revoked: {error}")
        }
    }
}

/// The live view.
pub struct Tty {
    multi: MultiProgress,
    overall: ProgressBar,
    lines: HashMap<String, ProgressBar>,
}

impl Default for Tty {
    fn default() -> Self {
        Tty::new()
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
        overall.enable_steady_tick(Duration::from_millis(500));
        Tty {
            multi,
            overall,
            lines: HashMap::new(),
        }
    }

    fn line(&mut self, host: &str) -> &ProgressBar {
        let multi = &self.multi;
        self.lines.entry(host.to_owned()).or_insert_with(|| {
            let pb = multi.add(ProgressBar::new_spinner());
            pb.set_style(
                ProgressStyle::with_template("{spinner} {prefix:>12} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            pb.set_prefix(host.to_owned());
            pb.enable_steady_tick(Duration::from_millis(120));
            pb
        })
    }

    fn done(&mut self, host: &str) {
        if let Some(pb) = self.lines.remove(host) {
            pb.finish_and_clear();
        }
    }

    /// Print text above the live lines.
    pub fn print(&self, text: &str) {
        self.multi.suspend(|| eprint!("{text}"));
    }

    fn say(&self, ev: &Event) {
        if let Some(line) = describe(ev) {
            self.multi.suspend(|| eprintln!("{line}"));
        }
    }

    /// Take the live view off the screen.
    pub fn clear(&mut self) {
        for (_, pb) in self.lines.drain() {
            pb.finish_and_clear();
        }
        self.overall.finish_and_clear();
        let _ = self.multi.clear();
    }

    pub fn event(&mut self, ev: &Event) {
        match ev {
            Event::RunStarted { hosts, .. } => self.overall.set_length(hosts.len() as u64),
            Event::GateStarted { host, gate } => self.line(host).set_message(gate.to_string()),
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
                self.say(ev);
            }
            Event::BuildFinished { .. } => {
                self.done(crate::fleet::BUILDER);
                self.say(ev);
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
                self.done(&s.host);
                self.overall.inc(1);
                self.say(ev);
            }
            Event::Runner(RunnerEvent::HostNotStarted { host, .. }) => {
                self.done(host);
                self.overall.inc(1);
                self.say(ev);
            }
            Event::Summary { .. } => {
                self.clear();
                self.say(ev);
            }
            _ => self.say(ev),
        }
    }
}
