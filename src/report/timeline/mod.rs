//! A run as a story in time, from its stored events: per host, each gate as
//! a span from its start to its end with its result and its evidence in
//! words; per wave, when it ran and soaked. The HTML report draws it and
//! the metrics take the gates' durations from it.
//!
//! Events are fed one at a time ([`Collector::event`]) as they are read
//! from the report, and only what is drawn is kept: evidence is reduced to
//! a few lines of words and a capped JSON text as it arrives (a known-good
//! mark's record repeats every earlier gate's evidence, the diff among them:
//! hundreds of kilobytes a host on a large change).
//!
//! Where the events give no start, the span says so: the build of every
//! host starts with the builder's batch (`build_started`), and the diff
//! gate of every host when the build finished (`build_finished`; the diffs
//! then run 32 at a time, so a host's diff bar includes its wait).

mod evidence;

use std::collections::HashMap;

use super::Event;
use super::stored::Stamped;
use crate::activation::{ActivationEvent, RollbackOutcome};
use crate::deploy::HostSummary;
use crate::gates::Gate;
use crate::runner::RunnerEvent;
use crate::state::run_report::RunReport;

pub use evidence::Detail;

/// What a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Gate(Gate),
    /// Taking the host back to its known-good after a failed gate or soak.
    Rollback,
    /// Refused by the plan (after its last plan gate).
    Refused,
    /// Its wave never started it.
    NotStarted,
}

impl SpanKind {
    pub fn label(self) -> &'static str {
        match self {
            SpanKind::Gate(g) => g.as_str(),
            SpanKind::Rollback => "rollback",
            SpanKind::Refused => "refused",
            SpanKind::NotStarted => "not started",
        }
    }
}

/// How a span ended: its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpanResult {
    Passed,
    Failed,
    RolledBack,
    /// Made the boot default; runs after a reboot (not proven live).
    Deferred,
    NotStarted,
    /// Started and never ended (the run was killed or aborted).
    Unfinished,
}

impl SpanResult {
    pub const ALL: [SpanResult; 6] = [
        SpanResult::Passed,
        SpanResult::Failed,
        SpanResult::RolledBack,
        SpanResult::Deferred,
        SpanResult::NotStarted,
        SpanResult::Unfinished,
    ];

    /// The CSS class (and the word in the legend).
    pub fn class(self) -> &'static str {
        match self {
            SpanResult::Passed => "passed",
            SpanResult::Failed => "failed",
            SpanResult::RolledBack => "rolled-back",
            SpanResult::Deferred => "deferred",
            SpanResult::NotStarted => "not-started",
            SpanResult::Unfinished => "unfinished",
        }
    }

    pub fn words(self) -> &'static str {
        match self {
            SpanResult::Passed => "passed",
            SpanResult::Failed => "failed",
            SpanResult::RolledBack => "rolled back",
            SpanResult::Deferred => "deferred to boot",
            SpanResult::NotStarted => "not started",
            SpanResult::Unfinished => "unfinished",
        }
    }
}

/// One bar of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub kind: SpanKind,
    pub start_ms: u64,
    pub end_ms: u64,
    pub result: SpanResult,
    /// The start is not in the events (see the module docs).
    pub start_inferred: bool,
    pub detail: Detail,
}

impl Span {
    pub fn seconds(&self) -> f64 {
        self.end_ms.saturating_sub(self.start_ms) as f64 / 1000.0
    }
}

/// One host's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub host: String,
    pub wave: String,
    pub spans: Vec<Span>,
    /// How it ended, once it did.
    pub end: Option<HostSummary>,
}

/// One wave: when it ran, and its soak.
#[derive(Debug, Clone, PartialEq)]
pub struct Wave {
    pub name: String,
    pub hosts: Vec<String>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Start and end of its soak: the planned end, or the wave's end if
    /// that came first (a Ctrl-C cuts the wait short).
    pub soak: Option<(u64, u64)>,
    pub stopped_run: bool,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub start_ms: u64,
    pub end_ms: u64,
    pub waves: Vec<Wave>,
    /// Rows in run order (wave by wave, as planned).
    pub rows: Vec<Row>,
    /// Events without a time (a report written before they had one).
    pub unstamped: usize,
}

impl Timeline {
    /// The rows of one wave.
    pub fn rows_of<'a>(&'a self, wave: &'a str) -> impl Iterator<Item = &'a Row> + 'a {
        self.rows.iter().filter(move |r| r.wave == wave)
    }
}

/// A started gate waiting for its end.
struct Open {
    start_ms: u64,
    inferred: bool,
}

#[derive(Default)]
struct HostState {
    spans: Vec<Span>,
    open: HashMap<SpanKind, Open>,
    deferred: bool,
    end: Option<HostSummary>,
    wave: Option<String>,
}

/// Builds a [`Timeline`] from events fed in order.
#[derive(Default)]
pub struct Collector {
    hosts: HashMap<String, HostState>,
    /// Host names in the order first seen (for rows no plan placed).
    order: Vec<String>,
    waves: Vec<Wave>,
    first_ms: Option<u64>,
    last_ms: u64,
    build_started: Option<u64>,
    build_finished: Option<u64>,
    unstamped: usize,
}

impl Collector {
    pub fn new() -> Collector {
        Collector::default()
    }

    fn host(&mut self, name: &str) -> &mut HostState {
        if !self.hosts.contains_key(name) {
            self.order.push(name.to_owned());
        }
        self.hosts.entry(name.to_owned()).or_default()
    }

    fn wave(&mut self, name: &str) -> &mut Wave {
        if let Some(i) = self.waves.iter().position(|w| w.name == name) {
            return &mut self.waves[i];
        }
        self.waves.push(Wave {
            name: name.to_owned(),
            hosts: Vec::new(),
            started_ms: None,
            finished_ms: None,
            soak: None,
            stopped_run: false,
        });
        self.waves.last_mut().expect("just pushed")
    }

    fn open(&mut self, host: &str, kind: SpanKind, at: u64, inferred: bool) {
        self.host(host).open.insert(
            kind,
            Open {
                start_ms: at,
                inferred,
            },
        );
    }

    /// Close the open span `kind` of `host` (or a zero-length one at `at`).
    fn close(&mut self, host: &str, kind: SpanKind, at: u64, result: SpanResult, detail: Detail) {
        let h = self.host(host);
        let open = h.open.remove(&kind).unwrap_or(Open {
            start_ms: at,
            inferred: true,
        });
        h.spans.push(Span {
            kind,
            start_ms: open.start_ms.min(at),
            end_ms: at,
            result,
            start_inferred: open.inferred,
            detail,
        });
    }

    /// Take the next event.
    pub fn event(&mut self, s: Stamped) {
        let Some(at) = s.at_ms else {
            self.unstamped += 1;
            return;
        };
        self.first_ms = Some(self.first_ms.map_or(at, |f| f.min(at)));
        self.last_ms = self.last_ms.max(at);
        match s.event {
            Event::RunStarted { hosts, .. } => {
                for h in hosts {
                    self.host(&h);
                }
            }
            Event::BuildStarted { hosts } => {
                self.build_started = Some(at);
                for h in hosts {
                    self.open(&h, SpanKind::Gate(Gate::Build), at, false);
                }
            }
            Event::HostBuilt { host, toplevel, .. } => {
                let detail = Detail::lines(vec![format!(
                    "built {}",
                    crate::report::human::words::short_closure(&toplevel)
                )]);
                self.close(
                    &host,
                    SpanKind::Gate(Gate::Build),
                    at,
                    SpanResult::Passed,
                    detail,
                );
            }
            Event::BuildFinished { .. } => self.build_finished = Some(at),
            Event::Diff { host, diff } => {
                let start = self.build_finished.or(self.build_started).unwrap_or(at);
                self.open(&host, SpanKind::Gate(Gate::Diff), start, true);
                let detail = evidence::diff(&diff);
                self.close(
                    &host,
                    SpanKind::Gate(Gate::Diff),
                    at,
                    SpanResult::Passed,
                    detail,
                );
            }
            Event::PlanReady { waves, .. } => self.plan(at, waves),
            Event::GateStarted { host, gate } => self.open(&host, SpanKind::Gate(gate), at, false),
            Event::GatePassed {
                host,
                gate,
                evidence,
            } => {
                let deferred = gate == Gate::Persist && self.host(&host).deferred;
                let result = if deferred {
                    SpanResult::Deferred
                } else {
                    SpanResult::Passed
                };
                let detail = evidence::gate(&evidence);
                self.close(&host, SpanKind::Gate(gate), at, result, detail);
            }
            Event::GateFailed { host, gate, reason } => {
                let detail = evidence::failure(&reason);
                self.close(&host, SpanKind::Gate(gate), at, SpanResult::Failed, detail);
            }
            Event::Activation { host, activation } => self.activation(&host, at, activation),
            Event::HostFinished(summary) => self.finished(at, summary),
            Event::Runner(r) => self.runner(at, r),
            _ => {}
        }
    }

    fn plan(&mut self, at: u64, waves: Vec<crate::plan::PlannedWave>) {
        let build_finished = self.build_finished;
        for w in waves {
            let wave = self.wave(&w.group.name);
            wave.hosts = w.planned.iter().map(|p| p.host.clone()).collect();
            let name = w.group.name.clone();
            for p in w.planned {
                let h = self.host(&p.host);
                h.wave = Some(name.clone());
                // A host the build never reported: its build did not end.
                if let crate::plan::Verdict::Refused { refusal } = p.verdict {
                    let failed_build = matches!(
                        refusal,
                        crate::plan::Refusal::Build { .. } | crate::plan::Refusal::Builder { .. }
                    );
                    let kind = if failed_build {
                        SpanKind::Gate(Gate::Build)
                    } else {
                        SpanKind::Refused
                    };
                    let from = h
                        .spans
                        .last()
                        .map(|s| s.end_ms)
                        .or(build_finished)
                        .unwrap_or(at);
                    h.open.remove(&SpanKind::Gate(Gate::Build));
                    let detail = evidence::refusal(&refusal);
                    h.spans.push(Span {
                        kind,
                        start_ms: from.min(at),
                        end_ms: at,
                        result: SpanResult::Failed,
                        start_inferred: true,
                        detail,
                    });
                }
            }
        }
    }

    fn activation(&mut self, host: &str, at: u64, a: ActivationEvent) {
        match a {
            ActivationEvent::Deferred { reason } => {
                // The gate that found it (live activation) ends here: its
                // change waits for the next boot.
                let open: Vec<SpanKind> = self.host(host).open.keys().copied().collect();
                for kind in open {
                    let detail = Detail::lines(vec![format!(
                        "{}: made the boot default instead",
                        crate::report::human::words::reboot_reason(&reason)
                    )]);
                    self.close(host, kind, at, SpanResult::Deferred, detail);
                }
                self.host(host).deferred = true;
            }
            ActivationEvent::RollbackStarted { .. } => {
                self.open(host, SpanKind::Rollback, at, false)
            }
            ActivationEvent::RollbackFinished { outcome } => {
                let result = match outcome {
                    RollbackOutcome::RolledBack { .. } => SpanResult::RolledBack,
                    RollbackOutcome::Failed { .. } => SpanResult::Failed,
                };
                let detail = evidence::rollback(&outcome);
                self.close(host, SpanKind::Rollback, at, result, detail);
            }
            _ => {}
        }
    }

    fn finished(&mut self, at: u64, summary: HostSummary) {
        let h = self.host(&summary.host);
        // A gate that reported no end ends with its host.
        let mut open: Vec<(SpanKind, Open)> = h.open.drain().collect();
        open.sort_by_key(|(_, o)| o.start_ms);
        for (kind, o) in open {
            h.spans.push(Span {
                kind,
                start_ms: o.start_ms.min(at),
                end_ms: at,
                result: SpanResult::Unfinished,
                start_inferred: o.inferred,
                detail: Detail::lines(vec!["started; no end was reported".into()]),
            });
        }
        h.wave.get_or_insert_with(|| summary.wave.clone());
        h.end = Some(summary);
    }

    fn runner(&mut self, at: u64, r: RunnerEvent) {
        match r {
            RunnerEvent::WaveStarted { wave, hosts, .. } => {
                let w = self.wave(&wave);
                w.started_ms = Some(at);
                if w.hosts.is_empty() {
                    w.hosts = hosts;
                }
            }
            RunnerEvent::WaveFinished {
                wave, stops_run, ..
            } => {
                let w = self.wave(&wave);
                w.finished_ms = Some(at);
                w.stopped_run = stops_run;
                // A wave finishes after its soak, which a Ctrl-C cuts short.
                if let Some((_, end)) = &mut w.soak {
                    *end = (*end).min(at);
                }
            }
            RunnerEvent::SoakStarted { wave, seconds } => {
                self.wave(&wave).soak = Some((at, at + seconds.saturating_mul(1000)));
            }
            RunnerEvent::SoakChecked { host, healthy, .. } => {
                if !healthy {
                    let detail = Detail::lines(vec![
                        "unhealthy after its wave's soak (the host's end says what was done)"
                            .into(),
                    ]);
                    let h = self.host(&host);
                    h.spans.push(Span {
                        kind: SpanKind::Gate(Gate::HealthChecks),
                        start_ms: at,
                        end_ms: at,
                        result: SpanResult::Failed,
                        start_inferred: false,
                        detail,
                    });
                }
            }
            RunnerEvent::HostNotStarted { host, wave, why } => {
                let h = self.host(&host);
                h.wave.get_or_insert(wave);
                h.spans.push(Span {
                    kind: SpanKind::NotStarted,
                    start_ms: at,
                    end_ms: at,
                    result: SpanResult::NotStarted,
                    start_inferred: false,
                    detail: Detail::lines(vec![crate::report::human::words::not_started(&why)]),
                });
            }
        }
    }

    /// The timeline, with the run's report for what the events lack (the
    /// selection) and for how each host ended, which it has the final say
    /// on.
    pub fn finish(mut self, report: &RunReport) -> Timeline {
        let start = self.first_ms.unwrap_or(0);
        let end = self.last_ms.max(start);
        // The report's hosts are the run's last word: an end told in the
        // events may have changed after (a soak cut short leaves a
        // known-good host failing the run, said in its summary only).
        for s in &report.hosts {
            let h = self.host(&s.host);
            h.wave.get_or_insert_with(|| s.wave.clone());
            h.end = Some(s.clone());
        }
        for name in &report.selected {
            self.host(name);
        }
        let rows = self.rows(end);
        // A wave known only from its hosts' summaries.
        let mut waves = std::mem::take(&mut self.waves);
        for r in &rows {
            if !waves.iter().any(|w| w.name == r.wave) {
                waves.push(Wave {
                    name: r.wave.clone(),
                    hosts: Vec::new(),
                    started_ms: None,
                    finished_ms: None,
                    soak: None,
                    stopped_run: false,
                });
            }
            let w = waves.iter_mut().find(|w| w.name == r.wave).expect("added");
            if !w.hosts.contains(&r.host) {
                w.hosts.push(r.host.clone());
            }
        }
        let mut ordered = Vec::with_capacity(rows.len());
        let mut rows: HashMap<String, Row> =
            rows.into_iter().map(|r| (r.host.clone(), r)).collect();
        for w in &waves {
            for h in &w.hosts {
                if let Some(r) = rows.remove(h) {
                    ordered.push(r);
                }
            }
        }
        Timeline {
            start_ms: start,
            end_ms: end,
            waves,
            rows: ordered,
            unstamped: self.unstamped,
        }
    }

    /// Every host's row; spans still open end where the run ends.
    fn rows(&mut self, end: u64) -> Vec<Row> {
        let order = std::mem::take(&mut self.order);
        order
            .into_iter()
            .filter_map(|name| {
                let mut h = self.hosts.remove(&name)?;
                let mut open: Vec<(SpanKind, Open)> = h.open.drain().collect();
                open.sort_by_key(|(_, o)| o.start_ms);
                for (kind, o) in open {
                    h.spans.push(Span {
                        kind,
                        start_ms: o.start_ms,
                        end_ms: end,
                        result: SpanResult::Unfinished,
                        start_inferred: o.inferred,
                        detail: Detail::lines(vec!["started, never ended".into()]),
                    });
                }
                if let Some(ns) = h.spans.iter_mut().find(|s| s.kind == SpanKind::NotStarted) {
                    ns.end_ms = end;
                }
                Some(Row {
                    wave: h.wave.unwrap_or_else(|| "(not planned)".into()),
                    host: name,
                    spans: h.spans,
                    end: h.end,
                })
            })
            .collect()
    }
}

/// The timeline of a stored run.
pub fn of_run(report: &RunReport, events: impl IntoIterator<Item = Stamped>) -> Timeline {
    let mut c = Collector::new();
    for e in events {
        c.event(e);
    }
    c.finish(report)
}

#[cfg(test)]
mod tests;
