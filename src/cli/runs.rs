//! Past runs: `nixgate runs` (the state directory's run reports, newest
//! first), `nixgate show` (a run as push printed it, from its stored
//! events; `--json` gives the events), `nixgate report --html` (the HTML
//! report, and the metrics file, of a past run); and what every deploying
//! run writes when it ends besides its run report ([`after_run`]: the HTML
//! report, the metrics file, pruning to `--keep` reports).
//!
//! These read the state directory only: no inventory, no network, no lock.

use std::path::Path;

use crate::report::html::{self, Diffs};
use crate::report::human::{describe, tables};
use crate::report::stored::{Stamp, Stamped};
use crate::report::timeline::{Collector, Timeline};
use crate::report::{CommandName, Event, Table, json_line, metrics};
use crate::state::clock::Utc;
use crate::state::run_report::RunReport;
use crate::state::runs::{self, ResolveError, RunState};
use crate::state::{self};

use super::args::RunOutputs;
use super::{Fatal, Global, Outcome};

fn state_dir(g: &Global) -> anyhow::Result<std::path::PathBuf> {
    state::resolve_dir(g.state_dir.as_deref()).map_err(|e| Fatal::usage(format!("{e:#}")))
}

/// A run not there is a usage error (exit 2); a runs directory that cannot
/// be read is said with its path (exit 1), as `nixgate runs` says it.
fn resolve(dir: &Path, spec: &str) -> anyhow::Result<String> {
    runs::resolve(dir, spec).map_err(|e| match e {
        ResolveError::NotFound(e) => Fatal::usage(e.to_string()),
        ResolveError::Unreadable(e) => e,
    })
}

/// `nixgate runs`.
pub fn list(g: &Global, limit: usize) -> anyhow::Result<Outcome> {
    let dir = state_dir(g)?;
    let entries = runs::list(&dir, limit)?;
    if g.json {
        for e in &entries {
            json_line(&listing_json(e));
        }
        return Ok(Outcome::Success);
    }
    if entries.is_empty() {
        crate::report::stderr(format_args!(
            "no runs recorded in {}\n",
            dir.join("runs").display()
        ));
        return Ok(Outcome::Success);
    }
    let mut t = Table::new(&[
        "RUN",
        "STARTED",
        "COMMAND",
        "GOAL",
        "SELECTION",
        "HOSTS",
        "EXIT",
    ]);
    for e in &entries {
        t.row(listing_row(e));
    }
    crate::report::stdout(format_args!("{t}"));
    Ok(Outcome::Success)
}

fn selection(hosts: &[String]) -> String {
    match hosts.len() {
        0 => "-".into(),
        1..=3 => hosts.join(","),
        n => format!("{} +{}", hosts[..3].join(","), n - 3),
    }
}

fn outcomes(e: &runs::RunEntry, head: &runs::RunHead) -> String {
    match e.state {
        RunState::Interrupted => "interrupted (its report was never finished)".into(),
        RunState::Running => "running".into(),
        RunState::Finished => {
            let parts: Vec<String> = head
                .outcomes()
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            if parts.is_empty() {
                "none".into()
            } else {
                parts.join(", ")
            }
        }
    }
}

fn listing_row(e: &runs::RunEntry) -> Vec<String> {
    match &e.head {
        Ok(h) => vec![
            e.run_id.clone(),
            h.started.clone(),
            h.command.clone(),
            h.goal.clone(),
            selection(&h.selected),
            outcomes(e, h),
            h.exit_code.map_or("-".into(), |c| c.to_string()),
        ],
        Err(err) => vec![
            e.run_id.clone(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            format!("unreadable: {err}"),
            "-".into(),
        ],
    }
}

fn listing_json(e: &runs::RunEntry) -> Event {
    match &e.head {
        Ok(h) => Event::RunListed {
            run_id: e.run_id.clone(),
            state: e.state.as_str().to_owned(),
            command: Some(h.command.clone()),
            goal: Some(h.goal.clone()),
            started: Some(h.started.clone()),
            finished: h.finished.clone(),
            selected: h.selected.clone(),
            outcomes: h
                .outcomes()
                .iter()
                .map(|(k, n)| (k.as_str().to_owned(), *n))
                .collect(),
            exit_code: h.exit_code,
            error: None,
        },
        Err(err) => Event::RunListed {
            run_id: e.run_id.clone(),
            state: "unreadable".into(),
            command: None,
            goal: None,
            started: None,
            finished: None,
            selected: Vec::new(),
            outcomes: Default::default(),
            exit_code: None,
            error: Some(err.clone()),
        },
    }
}

use crate::report::human::strip_controls;
use crate::state::lock::Standing;

/// `nixgate show`.
pub fn show(g: &Global, spec: &str) -> anyhow::Result<Outcome> {
    let dir = state_dir(g)?;
    let id = resolve(&dir, spec)?;
    let read = if g.json {
        runs::read(&dir, &id, &mut |s| {
            json_line(&Stamp {
                at_ms: s.at_ms,
                event: &s.event,
            })
        })?
    } else {
        let mut replay = Replay::new(std::io::BufWriter::new(std::io::stdout().lock()));
        let read = runs::read(&dir, &id, &mut |s| replay.event(s))?;
        replay.end(&read.report);
        read
    };
    if g.json && read.report.finished.is_some() {
        json_line(&summary(&read.report));
    }
    notes(&dir, &read)
        .iter()
        .for_each(|n| crate::report::stderr(format_args!("nixgate: {n}\n")));
    Ok(Outcome::Success)
}

/// What a reader of a past run should know about how it was read.
fn notes(dir: &Path, read: &runs::Read) -> Vec<String> {
    let mut v = Vec::new();
    if read.report.finished.is_none() {
        let (id, started) = (&read.report.run_id, &read.report.started);
        let lock = crate::state::lock::standing(dir);
        // This very process (a run's own --html-report after its final
        // report could not be written) is not "still running".
        let ours = matches!(&lock, Standing::Held(Some(h))
            if h.pid == std::process::id() && h.run_id.as_deref() == Some(id.as_str()));
        let going = !ours && runs::still_running(&lock, id, started);
        v.push(format!(
            "run {id} {}{}",
            if going {
                "is still running"
            } else {
                "never finished (killed, or its report could not be written)"
            },
            if read.from_spool {
                ": its events are those it spooled so far"
            } else {
                ""
            }
        ));
    }
    let (cut, other): (Vec<_>, Vec<_>) = read.unreadable.iter().partition(|u| u.kind.is_none());
    if !cut.is_empty() {
        v.push(format!(
            "{} stored event(s) are not whole JSON (a killed run's last one is cut short)",
            cut.len()
        ));
    }
    if !other.is_empty() {
        let mut kinds: Vec<&str> = other.iter().filter_map(|u| u.kind.as_deref()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        v.push(format!(
            "{} stored event(s) could not be read (written by another version of nixgate?): {}",
            other.len(),
            kinds.join(", ")
        ));
    }
    v
}

/// The summary the run ended with (not stored as an event: the report's
/// hosts, exit code and ending are it).
fn summary(r: &RunReport) -> Event {
    let failed = r.hosts.iter().filter(|h| h.fails_run()).count();
    Event::Summary {
        command: command(r),
        run_id: Some(r.run_id.clone()),
        ending: r.ending(),
        exit_code: r.exit_code.unwrap_or(1),
        ok: r.hosts.len() - failed,
        failed,
        hosts: r.hosts.clone(),
    }
}

fn command(r: &RunReport) -> CommandName {
    serde_json::from_value(serde_json::Value::String(r.command.clone()))
        .unwrap_or(CommandName::Push)
}

/// The human reporter's words over stored events, each line with the time
/// its event was stored, all on stdout (`show | head` ends quietly: output
/// stops at the first failed write).
struct Replay<W: std::io::Write> {
    collected: tables::Collected,
    out: W,
    closed: bool,
}

impl<W: std::io::Write> Replay<W> {
    fn new(out: W) -> Self {
        Replay {
            collected: Default::default(),
            out,
            closed: false,
        }
    }

    fn print(&mut self, text: &str) {
        if !self.closed && self.out.write_all(text.as_bytes()).is_err() {
            self.closed = true;
        }
    }

    fn event(&mut self, s: Stamped) {
        if self.collected.take(&s.event) {
            return;
        }
        let text = match &s.event {
            Event::PlanReady {
                waves, cancelled, ..
            } => {
                let plan = strip_controls_lines(&self.collected.plan(waves, *cancelled));
                self.print(&plan);
                return;
            }
            ev => describe(ev),
        };
        let Some(text) = text else { return };
        let at = s.at_ms.map_or_else(
            || "-".into(),
            |ms| Utc::from_unix((ms / 1000) as i64).rfc3339(),
        );
        for line in text.lines() {
            self.print(&format!("{at} {}\n", strip_controls(line)));
        }
    }

    /// The run's end as push printed it: the hosts' table, then each
    /// failing host explained (its log's end, what was done, what to do
    /// next; before, only the table, and the story stayed in the JSON),
    /// then the last line.
    fn end(mut self, r: &RunReport) {
        if r.finished.is_some() {
            let labels = crate::report::human::labels::Labels::default();
            if !r.hosts.is_empty() {
                let table = tables::summary_table(&r.hosts, &labels).to_string();
                self.print(&strip_controls_lines(&table));
            }
            let command = command(r);
            let explained =
                crate::report::human::explain::failures(&r.hosts, command.as_str(), &labels, None);
            if !explained.is_empty() {
                self.print(&format!("\n{}", strip_controls_lines(&explained)));
            }
            let failed = r.hosts.iter().filter(|h| h.fails_run()).count();
            let line = tables::summary_line(
                &r.hosts,
                (r.hosts.len() - failed, failed),
                r.ending(),
                r.exit_code.unwrap_or(1),
            );
            self.print(&format!("{line}\n"));
        }
        let _ = self.out.flush();
    }
}

fn strip_controls_lines(text: &str) -> String {
    text.lines().map(|l| strip_controls(l) + "\n").collect()
}

/// A stored run, read once for everything written from it.
struct Built {
    report: RunReport,
    timeline: Timeline,
    diffs: Diffs,
    notes: Vec<String>,
}

/// The run `id`'s events read from disk, with `known`, its report in
/// memory, in place of the one on disk when the run building it has it: a
/// run whose final report could not be written (its state disk full) left
/// only its stub there, no host in it, and its metrics dropped every host
/// of a run that exited 1.
fn build(
    dir: &Path,
    id: &str,
    with_diffs: bool,
    known: Option<&RunReport>,
) -> anyhow::Result<Built> {
    let mut collector = Collector::new();
    let mut diffs = Diffs::default();
    let mut read = runs::read(dir, id, &mut |s| {
        if with_diffs && let Event::Diff { host, diff } = &s.event {
            diffs.add(host.clone(), diff.clone());
        }
        collector.event(s)
    })?;
    if let Some(r) = known {
        read.report = r.clone();
    }
    let mut notes = notes(dir, &read);
    let timeline = collector.finish(&read.report);
    if timeline.unstamped > 0 {
        notes.push(format!(
            "{} event(s) have no time (written before nixgate stamped them): left out of the timeline",
            timeline.unstamped
        ));
    }
    notes.push(format!(
        "written by nixgate {} from {}",
        env!("CARGO_PKG_VERSION"),
        state::run_report::path(dir, id).display()
    ));
    Ok(Built {
        report: read.report,
        timeline,
        diffs,
        notes,
    })
}

fn write_html(b: Built, path: &Path) -> anyhow::Result<()> {
    let text = html::render(&b.report, &b.timeline, b.diffs, b.notes)?;
    html::write(path, &text)
}

fn write_metrics(dir: &Path, b: &Built, path: &Path) -> anyhow::Result<()> {
    let (run, hosts) = metrics::carried::collect(dir, &b.report, &b.timeline);
    metrics::write(path, &metrics::render(&run, &hosts))
}

/// `nixgate report`.
pub fn report(
    g: &Global,
    spec: &str,
    html_path: Option<&Path>,
    metrics_path: Option<&Path>,
) -> anyhow::Result<Outcome> {
    let dir = state_dir(g)?;
    let id = resolve(&dir, spec)?;
    let built = build(&dir, &id, html_path.is_some(), None)?;
    if let Some(p) = metrics_path {
        write_metrics(&dir, &built, p)?;
        crate::report::stderr(format_args!("metrics of run {id}: {}\n", p.display()));
    }
    if let Some(p) = html_path {
        write_html(built, p)?;
        crate::report::stderr(format_args!("report of run {id}: {}\n", p.display()));
    }
    Ok(Outcome::Success)
}

/// At the end of a deploying run, after its report is written: the HTML
/// report and the metrics file if asked for, then the oldest reports
/// pruned. A failure here is a warning: the run itself is over.
pub fn after_run(dir: &Path, report: &RunReport, out: &RunOutputs) {
    let run_id = report.run_id.as_str();
    if out.html_report.is_some() || out.metrics_file.is_some() {
        match build(dir, run_id, out.html_report.is_some(), Some(report)) {
            Ok(built) => {
                if let Some(p) = &out.metrics_file
                    && let Err(e) = write_metrics(dir, &built, p)
                {
                    crate::report::stderr(format_args!("nixgate: warning: {e:#}\n"));
                }
                if let Some(p) = &out.html_report
                    && let Err(e) = write_html(built, p)
                {
                    crate::report::stderr(format_args!(
                        "nixgate: warning: could not write the HTML report {}: {e:#}\n",
                        p.display()
                    ));
                }
            }
            Err(e) => crate::report::stderr(format_args!(
                "nixgate: warning: the HTML report and metrics were not written: {e:#}\n"
            )),
        }
    }
    let keep = usize::try_from(out.keep).unwrap_or(usize::MAX);
    if let Err(e) = runs::prune(dir, keep, run_id) {
        crate::report::stderr(format_args!(
            "nixgate: warning: pruning old run reports (--keep {keep}): {e:#}\n"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::stored::fixture;

    /// A run whose final report could not be written (its state disk
    /// full): only its stub is on disk, no host in it. The metrics the run
    /// writes still carry its hosts, from the report it holds in memory
    /// (before: re-read from disk, they vanished from a run that exited 1).
    #[test]
    fn a_run_whose_report_was_not_written_still_has_its_hosts_in_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let run = fixture::run(0);
        let mut stub = run.report.clone();
        (stub.finished, stub.exit_code, stub.ending) = (None, None, None);
        stub.hosts.clear();
        crate::state::run_report::write(dir.path(), &stub, None).unwrap();
        let prom = dir.path().join("nixgate.prom");
        let out = RunOutputs {
            metrics_file: Some(prom.clone()),
            ..Default::default()
        };
        after_run(dir.path(), &run.report, &out);
        let text = std::fs::read_to_string(&prom).unwrap();
        for (host, outcome) in [("web3", "pending-reboot"), ("web2", "rolled-back")] {
            let want = format!("host=\"{host}\",wave=\"main\",outcome=\"{outcome}\"");
            assert!(
                text.lines()
                    .any(|l| l.starts_with("nixgate_host_last_outcome{") && l.contains(&want)),
                "{host}: {text}"
            );
        }
    }

    /// `nixgate show` of a run with a rolled-back host and a host whose
    /// soak was cut short: each is explained after the table as push
    /// explained it, and the cut host's NOTES cell says why it fails
    /// (before: the table alone, that cell empty, as for a clean
    /// known-good).
    #[test]
    fn show_explains_the_failing_hosts_as_push_did() {
        let mut report = fixture::run(0).report;
        let web1 = report.hosts.iter_mut().find(|h| h.host == "web1").unwrap();
        let cut = crate::runner::SoakCut::Cancelled;
        web1.soak_left = Some(crate::deploy::SoakLeft::CutShort { cut });
        let mut out = Vec::new();
        Replay::new(&mut out).end(&report);
        let text = String::from_utf8(out).unwrap();
        let row = text.lines().find(|l| l.starts_with("web1 ")).unwrap();
        assert!(row.contains("its soak was cut short"), "{row}");
        assert!(
            text.contains("web2: rolled-back\n  health-checks failed")
                && text.contains("  its log ends:\n      $ curl -sf localhost"),
            "{text}"
        );
        assert!(
            text.contains("push this commit again to soak it in full"),
            "{text}"
        );
    }
}
