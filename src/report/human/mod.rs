//! Human reporters: plain timestamped lines (cron, CI, pipes) or a live
//! terminal view on stderr, and each command's own output (tables, the
//! plan, built paths) on stdout. Words come from [`words`]; nothing here
//! decides anything about the run.

pub mod tables;
mod tty;
pub mod words;

use super::Reporter;
use super::event::{CommandName, Event};
use crate::runner::RunnerEvent;
use crate::runner::cancel::CancelLevel;
use crate::state::clock::Utc;

pub use tty::Tty;
pub use words::short_closure;

/// One line of human text for an event, or `None` for events shown
/// otherwise (progress ticks, tables, the plan).
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
            "run {run_id}: {} (goal {goal}) of {} host(s) at {}{}",
            command.as_str(),
            hosts.len(),
            commit.as_deref().map_or("no commit", |c| &c[..c.len().min(12)]),
            if *dirty { " +dirty" } else { "" }
        ),
        Event::CancelRequested { level } => match level {
            CancelLevel::Abort => "second Ctrl-C: aborting now; detached switches finish on the hosts (see `nixgate status`)".into(),
            _ => "Ctrl-C: starting nothing new; finishing and verifying the hosts in flight (Ctrl-C again to abort)".into(),
        },
        Event::SourceShipped { commit, reused } => format!(
            "source {} {} on the builder",
            &commit[..commit.len().min(12)],
            if *reused { "already" } else { "shipped" }
        ),
        Event::BuildStarted { hosts } => format!("building {} system(s) on the builder", hosts.len()),
        Event::BuilderFailed { error } => format!("the builder failed: {error}"),
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
        Event::HostBuilt { host, toplevel, .. } => {
            format!("{host}: built {}", short_closure(toplevel))
        }
        Event::GateStarted { host, gate } => format!("{host}: {gate} ..."),
        Event::GatePassed { host, gate, .. } => format!("{host}: {gate} passed"),
        Event::GateFailed { host, gate, reason } => {
            format!("{host}: {gate} FAILED: {}", words::failure(reason))
        }
        Event::Activation { host, activation } => return tty::describe_activation(host, activation),
        Event::Released { host, tag, branch } => {
            format!("{host}: released as {tag} ({branch} moved)")
        }
        Event::NotReleased { host, why } => {
            format!("{host}: known-good but not released: {}", words::not_released(why))
        }
        Event::NotPublished {
            host, remote, tag, why,
        } => format!(
            "{host}: {tag} not pushed to {remote}: {}",
            words::not_published(why)
        ),
        Event::HostFinished(s) => format!(
            "{}: {}{}",
            s.host,
            s.outcome(),
            words::end(&s.end).map(|r| format!(" ({r})")).unwrap_or_default()
        ),
        Event::ReportWritten { path } => format!("run report: {}", path.display()),
        Event::KeysUploaded { host, keys } if keys.is_empty() => format!("{host}: no keys"),
        Event::KeysUploaded { host, keys } => keys
            .iter()
            .map(|k| format!("{host}: {} written (sha256 {})", k.dest, k.sha256))
            .collect::<Vec<_>>()
            .join("\n"),
        Event::KeysFailed { host, reason } => {
            format!("{host}: keys NOT written: {}", words::keys_failure(reason))
        }
        Event::Summary {
            hosts,
            exit_code,
            ending,
            ok,
            failed,
            ..
        } => tables::summary_line(hosts, (*ok, *failed), *ending, *exit_code),
        Event::Runner(r) => return describe_runner(r),
        Event::BuildProgress { .. }
        | Event::CopyProgress { .. }
        | Event::Diff { .. }
        | Event::PlanReady { .. }
        | Event::InventoryError(_)
        | Event::InventoryOk { .. }
        | Event::Checked(_)
        | Event::Host { .. }
        | Event::Status(_)
        | Event::Release { .. }
        | Event::ReleaseDetail { .. } => return None,
    })
}

fn describe_runner(r: &RunnerEvent) -> Option<String> {
    Some(match r {
        RunnerEvent::WaveStarted {
            wave,
            hosts,
            max_parallel,
        } => format!(
            "wave {wave}: {} host(s), {max_parallel} at a time",
            hosts.len()
        ),
        RunnerEvent::HostNotStarted { host, why, .. } => {
            format!("{host}: not started ({})", words::not_started(why))
        }
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
        RunnerEvent::SoakChecked { host, healthy, .. } => format!(
            "{host}: after the soak {}",
            if *healthy {
                "healthy"
            } else {
                "UNHEALTHY: taking it back"
            }
        ),
    })
}

/// How lines reach the terminal.
enum Style {
    /// Timestamped lines on stderr, no control characters.
    Plain {
        quiet: bool,
    },
    Live(Tty),
}

/// The human reporter of one command.
pub struct Human {
    command: Option<CommandName>,
    style: Style,
    collected: tables::Collected,
}

impl Human {
    pub fn plain(command: Option<CommandName>, quiet: bool) -> Human {
        Human {
            command,
            style: Style::Plain { quiet },
            collected: Default::default(),
        }
    }

    pub fn live(command: Option<CommandName>) -> Human {
        Human {
            command,
            style: Style::Live(Tty::new()),
            collected: Default::default(),
        }
    }

    /// Print a block of text on stderr, around the live view.
    fn block(&mut self, text: &str) {
        match &mut self.style {
            Style::Plain { .. } => eprint!("{text}"),
            Style::Live(t) => t.print(text),
        }
    }

    fn line(&mut self, ev: &Event) {
        match &mut self.style {
            Style::Plain { quiet } => {
                if *quiet && !important(ev) {
                    return;
                }
                if let Some(text) = describe(ev) {
                    let now = Utc::now().rfc3339();
                    for line in text.lines() {
                        eprintln!("{now} {}", strip_controls(line));
                    }
                }
            }
            Style::Live(t) => t.event(ev),
        }
    }
}

/// What `-q` still shows: problems, host ends and the summary.
fn important(ev: &Event) -> bool {
    matches!(
        ev,
        Event::GateFailed { .. }
            | Event::KeysFailed { .. }
            | Event::HostFinished(_)
            | Event::BuilderFailed { .. }
            | Event::NotReleased { .. }
            | Event::NotPublished { .. }
            | Event::Summary { .. }
    )
}

fn strip_controls(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

impl Reporter for Human {
    fn event(&mut self, ev: &Event) {
        if self.collected.take(ev) {
            return;
        }
        match ev {
            Event::HostBuilt { host, toplevel, .. } if self.command == Some(CommandName::Build) => {
                println!("{host} {toplevel}");
            }
            Event::PlanReady {
                waves, cancelled, ..
            } => {
                let text = self.collected.plan(waves, *cancelled);
                if self.command == Some(CommandName::Plan) {
                    print!("{text}");
                } else if self.command != Some(CommandName::Build) {
                    self.block(&text);
                } else {
                    self.block(&tables::refusals(waves));
                }
            }
            Event::ReleaseDetail { release } => println!("{}", release.message.trim_end()),
            Event::Summary { hosts, .. } => {
                if let Style::Live(t) = &mut self.style {
                    t.clear();
                }
                if let Some(table) = self.collected.table(self.command) {
                    print!("{table}");
                }
                if !hosts.is_empty() {
                    eprint!("{}", tables::summary_table(hosts));
                }
                if let Some(failures) = self.collected.failures(self.command) {
                    eprint!("{failures}");
                }
                if self.command.is_some_and(|c| c.runs()) || !hosts.is_empty() {
                    self.line(ev);
                }
            }
            _ => self.line(ev),
        }
    }
}
