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
use crate::state::run_report::RunReport;

const TEMPLATE: &str = include_str!("report.html");

/// How many host names a diff group's title shows.
const NAMES_SHOWN: usize = 8;

/// Hosts whose diffs are the same, as `plan` prints them together.
#[derive(Default)]
pub struct Diffs {
    groups: Vec<(Vec<String>, HostDiff)>,
    by_text: HashMap<Vec<String>, usize>,
}

impl Diffs {
    pub fn add(&mut self, host: String, diff: HostDiff) {
        let key = diff.render();
        match self.by_text.get(&key) {
            Some(&i) => self.groups[i].0.push(host),
            None => {
                self.by_text.insert(key, self.groups.len());
                self.groups.push((vec![host], diff));
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
    closures: String,
    sections: Vec<Section>,
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
                reason: end
                    .and_then(|e| {
                        words::end(&e.end, &crate::report::human::labels::Labels::default())
                    })
                    .unwrap_or_default(),
            }
        })
        .collect()
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
    let mut groups = diffs.groups;
    for (hosts, _) in &mut groups {
        hosts.sort_by_key(|h| position.get(h.as_str()).copied().unwrap_or(usize::MAX));
    }
    groups.sort_by_key(|(hosts, _)| position.get(hosts[0].as_str()).copied());
    groups
        .into_iter()
        .map(|(hosts, diff)| {
            let shown = hosts.len().min(NAMES_SHOWN);
            let mut short = hosts[..shown].join(", ");
            if hosts.len() > shown {
                short.push_str(&format!(" and {} more", hosts.len() - shown));
            }
            Group {
                hosts_short: short,
                hosts_all: hosts.join(", "),
                count: hosts.len(),
                shown,
                closures: format!(
                    "{} -> {}",
                    diff.current
                        .as_ref()
                        .map_or("(no known system)".into(), words::short_closure),
                    words::short_closure(&diff.candidate)
                ),
                sections: sections(&diff),
            }
        })
        .collect()
}

/// A diff in the sections `plan` shows: versions, additions, removals,
/// rebuilt at the same version with the causes, flake inputs, drift, size.
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
    let causes = render::render_causes(&d.structural);
    let mut out = vec![
        Section {
            title: "package versions",
            lines: versions,
        },
        Section {
            title: "added",
            lines: added,
        },
        Section {
            title: "removed",
            lines: removed,
        },
        Section {
            title: "rebuilt at the same version",
            lines: rebuilt,
        },
        Section {
            title: "why (what changed in the derivations)",
            lines: causes,
        },
        Section {
            title: "flake inputs",
            lines: d
                .flake_inputs
                .as_deref()
                .map(render::render_inputs)
                .unwrap_or_default()
                .into_iter()
                .chain(
                    d.flake_inputs_unknown
                        .as_ref()
                        .map(render::render_inputs_unknown),
                )
                .collect(),
        },
        Section {
            title: "not expected (drift)",
            lines: render::render_drift(&d.drift),
        },
        Section {
            title: "closure size",
            lines: size,
        },
    ];
    out.retain(|s| !s.lines.is_empty());
    if d.packages.is_none() {
        out.insert(
            0,
            Section {
                title: "package versions",
                lines: vec!["the host runs no known system: everything is new".into()],
            },
        );
    }
    out
}

/// Write `html` to `path` atomically.
pub fn write(path: &std::path::Path, html: &str) -> anyhow::Result<()> {
    crate::state::write_atomic(path, html.as_bytes())
}

#[cfg(test)]
mod tests;
