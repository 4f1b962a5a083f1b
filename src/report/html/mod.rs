//! The run report as one self-contained HTML file: the run's header and
//! outcome counts, the timeline ([`svg`]), the summary table, the diffs
//! grouped as `plan` groups them (hosts with the same diff together,
//! collapsible), and every host's gates with their evidence. No network:
//! styles and the small script that opens a bar's evidence are inline, a
//! Content-Security-Policy forbids loading anything, and the page works
//! without the script (a bar links to its evidence).
//!
//! The page is rendered by minijinja from `report.html` (compiled into the
//! binary; HTML auto-escaping on, so everything from the inventory, the
//! configuration or a host is escaped); the SVG is written in Rust. Both
//! escape with [`svg::esc`] (`&<>"'`): minijinja's own escaping also turns
//! every `/` of a store path into the six bytes of `&#x2f;`.
//!
//! Measured (README, `scripts/bench-report`): a real 500-host run's page is
//! 3.7 MB (7.4 KB a host: 70% gates with their evidence, 27% timeline);
//! headless Chromium fires its load event after 1.3-2.3 s on a loaded
//! 2-core machine; `nixgate report` writes it in under 1.5 s.

pub mod svg;

use std::collections::HashMap;

use serde::Serialize;

use super::human::words;
use super::timeline::{SpanResult, Timeline};
use crate::diff::HostDiff;
use crate::diff::packages::Change;
use crate::diff::render;
use crate::nix::StorePath;
use crate::state::run_report::RunReport;

const TEMPLATE: &str = include_str!("report.html");

/// How many host names a diff group's title shows.
const NAMES_SHOWN: usize = 8;

/// Hosts whose diffs are the same, as `plan` prints them together. The
/// text has no store paths: hosts of a group may go from and to different
/// closures (each host's system is its own), so each host's are kept.
#[derive(Default)]
pub struct Diffs {
    groups: Vec<DiffGroup>,
    by_text: HashMap<Vec<String>, usize>,
}

struct DiffGroup {
    /// Each host, with what it ran and its candidate.
    hosts: Vec<(String, Closures)>,
    /// The first host's diff: the group's text.
    diff: HostDiff,
}

type Closures = (Option<StorePath>, StorePath);

impl Diffs {
    pub fn add(&mut self, host: String, diff: HostDiff) {
        let key = diff.render();
        let closures = (diff.current.clone(), diff.candidate.clone());
        match self.by_text.get(&key) {
            Some(&i) => self.groups[i].hosts.push((host, closures)),
            None => {
                self.by_text.insert(key, self.groups.len());
                self.groups.push(DiffGroup {
                    hosts: vec![(host, closures)],
                    diff,
                });
            }
        }
    }
}

#[derive(Serialize)]
struct Field {
    name: &'static str,
    value: String,
    bad: bool,
}

#[derive(Serialize)]
struct Count {
    outcome: &'static str,
    n: usize,
    failing: bool,
}

#[derive(Serialize)]
struct Legend {
    class: &'static str,
    words: &'static str,
    colour: &'static str,
}

#[derive(Serialize)]
struct SummaryRow {
    index: usize,
    host: String,
    wave: String,
    outcome: String,
    failing: bool,
    closure: String,
    time: String,
    reason: String,
}

#[derive(Serialize)]
struct Section {
    title: &'static str,
    lines: Vec<String>,
}

#[derive(Serialize)]
struct Group {
    hosts_short: String,
    hosts_all: String,
    count: usize,
    shown: usize,
    closures: GroupClosures,
    sections: Vec<Section>,
}

/// What a diff group's hosts go from and to.
#[derive(Serialize)]
struct GroupClosures {
    /// Every host goes from and to these.
    same: Option<String>,
    /// How many different (current, candidate) pairs.
    distinct: usize,
    /// `host: current -> candidate`, when they differ.
    per_host: Vec<String>,
}

#[derive(Serialize)]
struct SpanView {
    id: String,
    gate: &'static str,
    result: &'static str,
    colour: &'static str,
    start: String,
    end: String,
    secs: String,
    inferred: bool,
    lines: Vec<String>,
    raw: Option<String>,
}

#[derive(Serialize)]
struct HostView {
    index: usize,
    host: String,
    wave: String,
    outcome: String,
    spans: Vec<SpanView>,
}

#[derive(Serialize)]
struct Page {
    title: String,
    command: String,
    run_id: String,
    header: Vec<Field>,
    counts: Vec<Count>,
    legend: Vec<Legend>,
    summary: Vec<SummaryRow>,
    diff_groups: Vec<Group>,
    hosts: Vec<HostView>,
    notes: Vec<String>,
}

/// The id of a span's evidence, shared by the SVG and the hosts section.
fn span_id(row: usize, span: usize) -> String {
    format!("s{row}-{span}")
}

/// Render the page. `notes` are said at the end (events that could not be
/// read, a killed run's spool).
pub fn render(
    report: &RunReport,
    timeline: &Timeline,
    diffs: Diffs,
    notes: Vec<String>,
) -> anyhow::Result<String> {
    let page = Page {
        title: format!("nixgate {} {}", report.command, report.run_id),
        command: report.command.clone(),
        run_id: report.run_id.clone(),
        header: header(report, timeline),
        counts: counts(report),
        legend: SpanResult::ALL
            .into_iter()
            .map(|r| Legend {
                class: r.class(),
                words: r.words(),
                colour: svg::colour(r),
            })
            .collect(),
        summary: summary(timeline),
        diff_groups: groups(diffs, timeline),
        hosts: hosts(timeline),
        notes,
    };
    let mut env = minijinja::Environment::new();
    // HTML-escaped as the SVG is (`& < > " '`), not also `/` as minijinja
    // does by default: store paths fill the page, and `&#x2f;` is six
    // times a slash.
    env.set_formatter(|out, state, value| {
        if value.is_safe() || *state.auto_escape() != minijinja::AutoEscape::Html {
            return minijinja::escape_formatter(out, state, value);
        }
        out.write_str(&svg::esc(&value.to_string())).map_err(|_| {
            minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "writing the page")
        })
    });
    env.add_template("report.html", TEMPLATE)?;
    let svg = minijinja::Value::from_safe_string(svg::timeline(timeline, span_id));
    let ctx = minijinja::context! { svg, ..minijinja::Value::from(minijinja::value::Serde(&page)) };
    Ok(env.get_template("report.html")?.render(ctx)?)
}

fn header(r: &RunReport, t: &Timeline) -> Vec<Field> {
    let f = |name, value: String| Field {
        name,
        value,
        bad: false,
    };
    let mut v = vec![
        f("command", format!("{} (goal {})", r.command, r.goal)),
        f(
            "commit",
            match &r.commit {
                Some(c) => format!("{}{}", c, if r.dirty { " +dirty" } else { "" }),
                None => "none".into(),
            },
        ),
        f("run by", r.user.clone().unwrap_or_else(|| "unknown".into())),
        f("started", r.started.clone()),
    ];
    match &r.finished {
        Some(fin) => v.push(f(
            "finished",
            format!(
                "{fin} ({})",
                svg::offset(t.end_ms.saturating_sub(t.start_ms)).trim_start_matches('+')
            ),
        )),
        None => v.push(Field {
            name: "finished",
            value: "never: the run was killed (or is still running)".into(),
            bad: true,
        }),
    }
    let exit = r.exit_code.map_or_else(|| "none".into(), |c| c.to_string());
    v.push(Field {
        name: "exit code",
        bad: r.exit_code.is_some_and(|c| c != 0),
        value: exit,
    });
    v.push(f("hosts", r.selected.len().to_string()));
    v
}

fn counts(r: &RunReport) -> Vec<Count> {
    let mut m: std::collections::BTreeMap<crate::deploy::OutcomeKind, (usize, bool)> =
        Default::default();
    for h in &r.hosts {
        let (n, failing) = m.entry(h.outcome()).or_default();
        *n += 1;
        *failing |= h.fails_run();
    }
    m.into_iter()
        .map(|(k, (n, failing))| Count {
            outcome: k.as_str(),
            n,
            failing,
        })
        .collect()
}

fn summary(t: &Timeline) -> Vec<SummaryRow> {
    t.rows
        .iter()
        .enumerate()
        .map(|(index, r)| {
            let end = r.end.as_ref();
            SummaryRow {
                index,
                host: r.host.clone(),
                wave: r.wave.clone(),
                outcome: end.map_or("unfinished".into(), |e| e.outcome().as_str().into()),
                failing: end.is_none_or(crate::deploy::HostSummary::fails_run),
                closure: end
                    .and_then(|e| e.closure.as_ref())
                    .map_or("-".into(), words::short_closure),
                time: end.map_or("-".into(), |e| format!("{:.1} s", e.seconds)),
                reason: end.and_then(reason).unwrap_or_default(),
            }
        })
        .collect()
}

/// Why a host ended as it did; for a known-good host whose mark the run
/// left soak pending, why it fails the run (its end alone reads clean).
fn reason(e: &crate::deploy::HostSummary) -> Option<String> {
    let labels = crate::report::human::labels::Labels::default();
    e.soak_left
        .map(words::soak_left)
        .or_else(|| words::end(&e.end, &labels))
}

fn hosts(t: &Timeline) -> Vec<HostView> {
    t.rows
        .iter()
        .enumerate()
        .map(|(index, r)| HostView {
            index,
            host: r.host.clone(),
            wave: r.wave.clone(),
            outcome: r
                .end
                .as_ref()
                .map_or("unfinished".into(), |e| e.outcome().as_str().into()),
            spans: r
                .spans
                .iter()
                .enumerate()
                .map(|(j, s)| SpanView {
                    id: span_id(index, j),
                    gate: s.kind.label(),
                    result: s.result.words(),
                    colour: svg::colour(s.result),
                    start: svg::offset(s.start_ms.saturating_sub(t.start_ms)),
                    end: svg::offset(s.end_ms.saturating_sub(t.start_ms)),
                    secs: format!("{:.1} s", s.seconds()),
                    inferred: s.start_inferred,
                    lines: s.detail.lines.clone(),
                    raw: s.detail.raw.clone(),
                })
                .collect(),
        })
        .collect()
}

fn groups(diffs: Diffs, t: &Timeline) -> Vec<Group> {
    let position: HashMap<&str, usize> = t
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.host.as_str(), i))
        .collect();
    let at = |h: &str| position.get(h).copied().unwrap_or(usize::MAX);
    let mut groups = diffs.groups;
    for g in &mut groups {
        g.hosts.sort_by_key(|(h, _)| at(h));
    }
    groups.sort_by_key(|g| g.hosts.first().map(|(h, _)| at(h)));
    groups
        .into_iter()
        .map(|g| {
            let names: Vec<&str> = g.hosts.iter().map(|(h, _)| h.as_str()).collect();
            let shown = names.len().min(NAMES_SHOWN);
            let mut short = names[..shown].join(", ");
            if names.len() > shown {
                short.push_str(&format!(" and {} more", names.len() - shown));
            }
            Group {
                hosts_short: short,
                hosts_all: names.join(", "),
                count: names.len(),
                shown,
                closures: group_closures(&g.hosts),
                sections: sections(&g.diff),
            }
        })
        .collect()
}

/// A group's closures: one line when every host goes from and to the same
/// ones; else each host's (one host's paths are not the group's).
fn group_closures(hosts: &[(String, Closures)]) -> GroupClosures {
    let line = |(current, candidate): &Closures| {
        format!(
            "{} -> {}",
            current
                .as_ref()
                .map_or("(no known system)".into(), words::short_closure),
            words::short_closure(candidate)
        )
    };
    let mut distinct: Vec<&Closures> = hosts.iter().map(|(_, c)| c).collect();
    distinct.sort_unstable();
    distinct.dedup();
    match distinct[..] {
        [one] => GroupClosures {
            same: Some(line(one)),
            distinct: 1,
            per_host: vec![],
        },
        _ => GroupClosures {
            same: None,
            distinct: distinct.len(),
            per_host: (hosts.iter())
                .map(|(h, c)| format!("{h}: {}", line(c)))
                .collect(),
        },
    }
}

/// A diff in the sections `plan` shows: what it is compared with (an
/// unvalidated system, none known, no change), versions, additions,
/// removals, rebuilt at the same version with the causes, flake inputs,
/// drift, size.
fn sections(d: &HostDiff) -> Vec<Section> {
    let mut versions = Vec::new();
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut rebuilt = Vec::new();
    let mut size = Vec::new();
    if let Some(p) = &d.packages {
        for c in &p.changes {
            let line = format!(
                "{}{}",
                render::render_change(&c.name, &c.change),
                if c.selected { "" } else { " (dependency)" }
            );
            match c.change {
                Change::Added { .. } => added.push(line),
                Change::Removed { .. } => removed.push(line),
                Change::Rebuilt { .. } => rebuilt.push(line),
                _ => versions.push(line),
            }
        }
        size.extend(render::render_packages(p).pop());
    }
    let inputs = (d.flake_inputs.as_deref())
        .map(render::render_inputs)
        .unwrap_or_default()
        .into_iter()
        .chain(
            d.flake_inputs_unknown
                .as_ref()
                .map(render::render_inputs_unknown),
        )
        .collect();
    [
        ("compared with", d.basis()),
        ("package versions", versions),
        ("added", added),
        ("removed", removed),
        ("rebuilt at the same version", rebuilt),
        (
            "why (what changed in the derivations)",
            render::render_causes(&d.structural),
        ),
        ("flake inputs", inputs),
        ("not expected (drift)", render::render_drift(&d.drift)),
        ("closure size", size),
    ]
    .into_iter()
    .filter(|(_, lines)| !lines.is_empty())
    .map(|(title, lines)| Section { title, lines })
    .collect()
}

/// Write `html` to `path` atomically.
pub fn write(path: &std::path::Path, html: &str) -> anyhow::Result<()> {
    crate::state::write_atomic(path, html.as_bytes())
}

#[cfg(test)]
mod tests;
