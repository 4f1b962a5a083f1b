//! Human reporters: a live terminal view on stderr with a few lines of
//! scrollback above it, or plain lines (timestamped when nobody watches: cron,
//! CI, pipes); each command's own output (tables, the plan, built paths) on
//! stdout. How much is said follows `-q`/`-v` ([`Level`]): by default a wave
//! is one line when it ends and a host that ends badly is one line when it
//! does, with the whole story after the summary table; gate-by-gate lines
//! only with `-v`. Words come from [`words`]; nothing here decides anything
//! about the run.

pub mod exec;
pub mod explain;
pub mod labels;
mod live;
pub mod tables;
mod tty;
pub mod words;

use std::collections::BTreeMap;

use super::Reporter;
use super::event::{CommandName, Event};
use crate::activation::ActivationEvent;
use crate::deploy::{HostSummary, OutcomeKind};
use crate::runner::RunnerEvent;
use crate::runner::cancel::CancelLevel;
use crate::state::clock::Utc;

pub use tty::Tty;

#[cfg(test)]
mod snapshots;
pub use words::short_closure;

/// How much a person asked to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `-q`: only problems and the summary.
    Quiet,
    Normal,
    /// `-v`: every gate of every host, and each step's news.
    Verbose,
}

impl Level {
    pub fn of(quiet: u8, verbose: u8) -> Level {
        if quiet > 0 {
            Level::Quiet
        } else if verbose > 0 {
            Level::Verbose
        } else {
            Level::Normal
        }
    }
}

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
        } => match commit {
            Some(c) => format!(
                "run {run_id}: {} (goal {goal}) of {} host(s) at {}{}",
                command.as_str(),
                hosts.len(),
                &c[..c.len().min(12)],
                if *dirty { " +dirty" } else { "" }
            ),
            None => format!("run {run_id}: {} of {} host(s)", command.as_str(), hosts.len()),
        },
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
        Event::BuildStep { drv, machine } => match machine {
            Some(m) => format!("building {} on {m}", drv.name()),
            None => return None,
        },
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
        Event::CachePushStarted { store, closures, .. } => {
            format!("pushing {closures} closure(s) to the cache {store}")
        }
        Event::CachePushFinished {
            store,
            paths,
            bytes,
            seconds,
        } => format!(
            "the cache {store} has every closure: {paths} path(s), {:.1} MiB copied in {seconds:.1} s",
            *bytes as f64 / 1048576.0
        ),
        Event::CachePushFailed { store, error } => {
            format!("the push to the cache {store} FAILED: {error}")
        }
        Event::HostBuilt { host, toplevel, .. } => {
            format!("{host}: built {}", short_closure(toplevel))
        }
        Event::GateStarted { host, gate } => format!("{host}: {gate} ..."),
        // Said every 10 s of the wait (relay; a relay batch waits for it)
        // or every tick of the builder's copy.
        Event::CopyProgress {
            host, idle_secs, ..
        } if *idle_secs > 0 => format!(
            "{host}: copy: taking nothing for {idle_secs} s (copy_stall_timeout fails it)"
        ),
        Event::GatePassed { host, gate, .. } => format!("{host}: {gate} passed"),
        Event::GateFailed { host, gate, reason } => {
            format!("{host}: {gate} FAILED: {}", words::about(host, &words::failure(reason)))
        }
        Event::Activation { host, activation } => return words::activation(host, activation),
        Event::Released {
            host,
            tag,
            branch,
            update,
        } => format!("{host}: released as {tag} ({})", words::branch_update(branch, update.as_ref())),
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
            words::end(&s.end, &labels::Labels::default())
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        Event::ReportWritten { path } => format!("run report: {}", path.display()),
        Event::KeysUploaded { host, keys } if keys.is_empty() => format!("{host}: no keys"),
        Event::KeysUploaded { host, keys } => keys
            .iter()
            .map(|k| format!("{host}: {} written (sha256 {})", k.dest, k.sha256))
            .collect::<Vec<_>>()
            .join("\n"),
        Event::KeysFailed { host, reason } => {
            format!("{host}: keys failed: {}", words::keys_failure(reason))
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
        | Event::CachePushProgress { .. }
        | Event::CopyProgress { .. }
        | Event::Diff { .. }
        | Event::History { .. }
        | Event::RunListed { .. }
        | Event::RollbackPreview { .. }
        | Event::PlanReady { .. }
        | Event::InventoryError(_)
        | Event::InventoryOk { .. }
        | Event::Checked(_)
        | Event::Host { .. }
        | Event::Status(_)
        | Event::Release { .. }
        | Event::ReleaseDetail { .. }
        | Event::ExecStarted { .. }
        | Event::ExecOutput { .. }
        | Event::ExecFinished { .. } => return None,
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
                "UNHEALTHY (its end says what was done)"
            }
        ),
    })
}

/// From which level an event's line is shown (`None`: never as a line).
/// `live`: the live view already shows where each host is.
fn shown_at(ev: &Event, live: bool) -> Option<Level> {
    use Level::*;
    let when_plain = |l: Level| if live { None } else { Some(l) };
    match ev {
        Event::CancelRequested { .. }
        | Event::BuilderFailed { .. }
        | Event::CachePushFailed { .. }
        | Event::KeysFailed { .. }
        | Event::NotReleased { .. }
        | Event::NotPublished { .. }
        | Event::Summary { .. } => Some(Quiet),
        Event::HostFinished(s) => match s.outcome() {
            // Its `host_not_started` said so, and why.
            OutcomeKind::NotStarted => None,
            _ if s.fails_run() => Some(Quiet),
            _ if live => Some(Verbose),
            _ => Some(Normal),
        },
        Event::RunStarted { .. } | Event::BuildFinished { .. } => Some(Normal),
        Event::BuildStarted { .. } => when_plain(Normal),
        Event::Runner(r) => match r {
            RunnerEvent::WaveStarted { .. } => when_plain(Normal).or(Some(Verbose)),
            RunnerEvent::WaveFinished { .. } | RunnerEvent::SoakStarted { .. } => Some(Normal),
            RunnerEvent::SoakChecked { healthy: false, .. } => Some(Quiet),
            RunnerEvent::SoakChecked { .. } | RunnerEvent::HostNotStarted { .. } => Some(Verbose),
        },
        Event::Activation { activation, .. } => match activation {
            ActivationEvent::Warning { .. }
            | ActivationEvent::ConnectionLost { .. }
            | ActivationEvent::Deferred { .. }
            | ActivationEvent::AwaitingRevert { .. }
            | ActivationEvent::RevertFailed { .. } => Some(Normal),
            _ => Some(Verbose),
        },
        // The live view shows it on the host's line.
        Event::CopyProgress { idle_secs, .. } if *idle_secs > 0 => when_plain(Normal),
        Event::GateStarted { .. } if live => None,
        Event::SourceShipped { .. }
        | Event::HostBuilt { .. }
        | Event::GateStarted { .. }
        | Event::GatePassed { .. }
        | Event::GateFailed { .. }
        | Event::Released { .. } => Some(Verbose),
        _ => None,
    }
}

/// How lines reach the terminal.
enum Style {
    /// Lines on stderr, no control characters; timestamped when nobody
    /// watches (stderr is not a terminal).
    Plain {
        stamped: bool,
    },
    Live(Tty),
}

/// The human reporter of one command.
pub struct Human {
    command: Option<CommandName>,
    level: Level,
    style: Style,
    collected: tables::Collected,
    /// The hosts of each wave as run (`selected` for `--host`/`--tag`).
    waves: BTreeMap<String, Vec<String>>,
    /// How each host ended.
    ends: std::collections::HashMap<String, OutcomeKind>,
    report: Option<std::path::PathBuf>,
    /// The plan is shown and no wave has started: the prompt may be on the
    /// terminal, its `^C` where the cursor is.
    before_waves: bool,
}

impl Human {
    pub fn plain(command: Option<CommandName>, level: Level, stamped: bool) -> Human {
        Human::with(command, level, Style::Plain { stamped })
    }

    pub fn live(command: Option<CommandName>, level: Level) -> Human {
        Human::with(command, level, Style::Live(Tty::new()))
    }

    fn with(command: Option<CommandName>, level: Level, style: Style) -> Human {
        Human {
            command,
            level,
            style,
            collected: Default::default(),
            waves: BTreeMap::new(),
            ends: Default::default(),
            report: None,
            before_waves: false,
        }
    }

    /// Print a block of text on stderr, around the live view.
    fn block(&mut self, text: &str) {
        match &mut self.style {
            Style::Plain { .. } => crate::report::stderr(format_args!("{}", for_terminal(text))),
            Style::Live(t) => t.print(text),
        }
    }

    /// The event's text, with what this reporter has counted.
    fn text(&self, ev: &Event) -> Option<String> {
        match ev {
            // Nothing runs yet: nothing to finish. A line of its own, not
            // after the prompt's `^C` (a timestamped log has no prompt).
            Event::CancelRequested {
                level: CancelLevel::StopStarting,
            } if self.before_waves => Some(
                match self.style {
                    Style::Plain { stamped: true } => "Ctrl-C: starting nothing",
                    _ => "\nCtrl-C: starting nothing",
                }
                .into(),
            ),
            Event::Runner(RunnerEvent::WaveFinished {
                wave,
                failures,
                allowed,
                stops_run,
            }) => {
                let mut counts = BTreeMap::new();
                for h in self.waves.get(wave).into_iter().flatten() {
                    if let Some(k) = self.ends.get(h) {
                        *counts.entry(*k).or_default() += 1;
                    }
                }
                Some(tables::wave_line(
                    wave, &counts, *failures, *allowed, *stops_run,
                ))
            }
            // A failed host: its cause now; what nixgate did about it, with
            // the rest of its story, after the summary.
            Event::HostFinished(s) => Some(format!(
                "{}: {}{}",
                s.host,
                s.outcome(),
                explain::cause(s, &self.collected.labels)
                    .or_else(|| words::end(&s.end, &self.collected.labels))
                    .map(|r| format!(" ({})", words::about(&s.host, &r)))
                    .unwrap_or_default()
            )),
            _ => describe(ev),
        }
    }

    fn line(&mut self, ev: &Event) {
        let live = matches!(self.style, Style::Live(_));
        if shown_at(ev, live).is_none_or(|l| self.level < l) {
            return;
        }
        let Some(text) = self.text(ev) else { return };
        match &mut self.style {
            Style::Plain { stamped } => {
                let now = stamped.then(|| Utc::now().rfc3339());
                for line in text.lines() {
                    match &now {
                        Some(now) => {
                            crate::report::stderr(format_args!("{now} {}\n", strip_controls(line)))
                        }
                        None => crate::report::stderr(format_args!("{}\n", strip_controls(line))),
                    }
                }
            }
            Style::Live(t) => t.print(&wrapped(&text, tty::size().0)),
        }
    }

    /// The end of every command: its table, the hosts' ends, the failures
    /// explained, the run report, the last line.
    fn summary(&mut self, ev: &Event) {
        let Event::Summary { hosts, .. } = ev else {
            return;
        };
        if let Style::Live(t) = &mut self.style {
            t.clear();
        }
        if let Some(table) = self.collected.table(self.command) {
            crate::report::stdout(format_args!("{}", for_terminal(&table)));
        }
        let width = tables::width_of(&std::io::stderr());
        crate::report::stderr(format_args!("{}", self.summary_block(hosts, width)));
        if self.command.is_some_and(|c| c.runs()) || !hosts.is_empty() {
            self.line(ev);
        }
    }

    /// What the end of a command says on stderr before its last line, in
    /// `width` columns: the hosts' table, the failures explained, the run
    /// report's path.
    fn summary_block(&mut self, hosts: &[HostSummary], width: Option<usize>) -> String {
        let mut out = String::new();
        if !hosts.is_empty() {
            let table = tables::summary_table(hosts, &self.collected.labels);
            out.push_str(&table.fit(width).to_string());
        }
        let command = self.command.map_or("push", |c| c.as_str());
        let explained = explain::failures(hosts, command, &self.collected.labels, width);
        if !explained.is_empty() {
            out.push('\n');
            out.push_str(&explained);
        }
        if let Some(failures) = self.collected.failures(self.command) {
            out.push_str(&failures);
        }
        if let Some(path) = &self.report {
            out.push_str(&format!("run report: {}\n", path.display()));
        }
        for_terminal(&out)
    }
}

/// Lines for a terminal `columns` wide: wrapped at spaces, so no word is
/// cut at the edge, their further lines indented.
fn wrapped(text: &str, columns: usize) -> String {
    let width = columns.saturating_sub(1).max(40);
    let mut out = String::new();
    for line in text.lines() {
        for (i, l) in crate::report::wrap(line, width - 2).into_iter().enumerate() {
            out.push_str(if i == 0 { "" } else { "  " });
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// Text of many lines as it reaches the terminal: its line breaks kept,
/// every other control character blanked ([`strip_controls`]). Applied
/// where [`Human`] writes a block, a live line or the summary: host text
/// reaches them through a log tail, a NOTES cell or a pre-check's output,
/// and `\x1b]0;x\x07` retitled the terminal, a bare `\r` overwrote a line.
pub(crate) fn for_terminal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for l in text.split_inclusive('\n') {
        let (body, end) = l.strip_suffix('\n').map_or((l, ""), |b| (b, "\n"));
        out.push_str(&strip_controls(body));
        out.push_str(end);
    }
    out
}

/// Control characters from a host's text never reach the terminal.
pub(crate) fn strip_controls(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

impl Human {
    /// Keep what later lines count: each wave's hosts, each host's end, the
    /// run report's path.
    fn count(&mut self, ev: &Event) {
        match ev {
            Event::HostFinished(s) => {
                self.ends.insert(s.host.clone(), s.outcome());
            }
            Event::Runner(RunnerEvent::HostNotStarted { host, .. }) => {
                self.ends.insert(host.clone(), OutcomeKind::NotStarted);
            }
            Event::Runner(RunnerEvent::WaveStarted { wave, hosts, .. }) => {
                self.waves.insert(wave.clone(), hosts.clone());
                self.before_waves = false;
            }
            Event::PlanReady { .. } => self.before_waves = true,
            Event::ReportWritten { path } => self.report = Some(path.clone()),
            _ => {}
        }
    }
}

impl Reporter for Human {
    fn event(&mut self, ev: &Event) {
        if let Style::Live(t) = &mut self.style {
            t.event(ev);
        }
        if self.collected.take(ev) {
            return;
        }
        self.count(ev);
        match ev {
            Event::ReportWritten { .. } => {}
            Event::HostBuilt { host, toplevel, .. } if self.command == Some(CommandName::Build) => {
                crate::report::stdout(format_args!("{host} {toplevel}\n"));
            }
            Event::PlanReady {
                waves, cancelled, ..
            } => {
                let text = self.collected.plan(waves, *cancelled);
                if self.command == Some(CommandName::Plan) {
                    crate::report::stdout(format_args!("{text}"));
                } else if self.command != Some(CommandName::Build) {
                    self.block(&text);
                } else {
                    self.block(&tables::refusals(waves));
                    self.block(&tables::build_logs(waves));
                }
            }
            Event::ReleaseDetail { release } => {
                crate::report::stdout(format_args!("{}\n", release.message.trim_end()))
            }
            Event::Summary { .. } => self.summary(ev),
            _ => self.line(ev),
        }
    }
}
