//! Metrics for monitoring: a Prometheus text-format file for
//! node_exporter's textfile collector, replaced atomically at the end of
//! every run (written beside it, made readable by all, synced, renamed over
//! it: a reader sees the old file or the new one, never half of one; the
//! collector skips the temporary file, whose name does not end in `.prom`).
//!
//! Every host the newest [`carried::REPORTS_READ`] run reports name has its
//! series, not only this run's hosts: a run of one host must not make the
//! rest of the fleet's series vanish (and an `absent()` alert fire). Each
//! host's values are from its last run; what it runs (its known-good, a
//! pending reboot, the known-good's generation and time) is carried forward
//! through the reports, oldest first, and is `NaN` while no report says or
//! after a run that left it unknown. A run killed before it ended (its
//! report unfinished, and no run holds the controller lock for it) is each
//! selected host's last run: outcome `interrupted`, failed, what it runs
//! unknown as far as its goal changes hosts (a killed `--goal copy` changed
//! nothing). A run still going is not read yet. Gate durations are from
//! each host's last run.
//!
//! Names follow Prometheus's conventions: `nixgate_` prefix, base units
//! (`_seconds`, `_timestamp_seconds`), gauges, one series per host per
//! host metric.

pub mod carried;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::deploy::OutcomeKind;

/// A known-good generation and when it was marked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnownGood {
    pub generation: u64,
    pub marked_at: Option<i64>,
}

/// How a host's last run ended for it: the `outcome` label of
/// `nixgate_host_last_outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastOutcome {
    /// The run ended, and so did the host's part in it.
    Ended(OutcomeKind),
    /// The run was killed before it ended (its report never finished):
    /// where it left the host is unknown.
    Interrupted,
}

impl LastOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            LastOutcome::Ended(k) => k.as_str(),
            LastOutcome::Interrupted => "interrupted",
        }
    }
}

/// One host's series.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub host: String,
    pub wave: String,
    pub outcome: LastOutcome,
    /// Its last run did not end well for it (as exit code 1).
    pub last_run_failed: bool,
    /// When its last run finished (Unix seconds; `None`: it never did).
    pub last_run_at: Option<i64>,
    /// How long its part took (NaN: its run never finished).
    pub seconds: f64,
    pub runs_known_good: Option<bool>,
    pub pending_reboot: Option<bool>,
    pub known_good: Option<KnownGood>,
    /// Each gate of its last run, once, and how long it took (all its
    /// spans summed).
    pub gates: Vec<(&'static str, f64)>,
}

/// The run the file is written at the end of.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub run_id: String,
    pub command: String,
    pub goal: String,
    pub started: Option<i64>,
    pub finished: Option<i64>,
    pub seconds: f64,
    pub exit_code: Option<u8>,
    pub outcomes: BTreeMap<OutcomeKind, usize>,
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn value(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "NaN".into(),
    }
}

fn flag(b: Option<bool>) -> Option<f64> {
    b.map(|b| if b { 1.0 } else { 0.0 })
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} gauge");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: Option<f64>) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels.join(","))
        };
        let _ = writeln!(self.0, "{name}{labels} {}", value(v));
    }
}

/// The file's text.
pub fn render(run: &Run, hosts: &[Host]) -> String {
    let mut o = Out(String::new());
    run_series(&mut o, run);
    type Metric = (&'static str, &'static str, fn(&Host) -> Option<f64>);
    let per_host: [Metric; 8] = [
        (
            "nixgate_host_last_run_failed",
            "1 if the host's last run did not end well for it (failed, rolled back, refused, not started, interrupted: the run was killed)",
            |h| Some(if h.last_run_failed { 1.0 } else { 0.0 }),
        ),
        (
            "nixgate_host_last_run_timestamp_seconds",
            "When the host's last run finished, NaN if it never did (killed)",
            |h| h.last_run_at.map(|t| t as f64),
        ),
        (
            "nixgate_host_last_run_duration_seconds",
            "How long the host's part of its last run took, NaN if that run never finished",
            |h| Some(h.seconds),
        ),
        (
            "nixgate_host_runs_known_good",
            "1 if the host runs its known-good closure, 0 if not, NaN if unknown (no run report says, or its last run left it unknown)",
            |h| flag(h.runs_known_good),
        ),
        (
            "nixgate_host_pending_reboot",
            "1 if the host's boot default is not what it runs (a change waits for a reboot), NaN if unknown",
            |h| flag(h.pending_reboot),
        ),
        (
            "nixgate_host_known_good_generation",
            "The host's known-good generation, NaN if unknown",
            |h| h.known_good.map(|k| k.generation as f64),
        ),
        (
            "nixgate_host_known_good_timestamp_seconds",
            "When the host's known-good was marked, NaN if unknown",
            |h| h.known_good.and_then(|k| k.marked_at).map(|t| t as f64),
        ),
        (
            "nixgate_host_last_outcome",
            "The outcome of the host's last run (1, labelled with it; interrupted: the run was killed before it ended)",
            |_| Some(1.0),
        ),
    ];
    for (name, help, get) in per_host {
        o.family(name, help);
        for h in hosts {
            if name == "nixgate_host_last_outcome" {
                let labels = [
                    ("host", h.host.as_str()),
                    ("wave", h.wave.as_str()),
                    ("outcome", h.outcome.as_str()),
                ];
                o.sample(name, &labels, get(h));
            } else {
                o.sample(name, &[("host", h.host.as_str())], get(h));
            }
        }
    }
    o.family(
        "nixgate_gate_duration_seconds",
        "How long the host's last run spent in each gate, from its start to its end (summed when the gate ran more than once: a copy done again, a soak's re-check)",
    );
    for h in hosts {
        for (gate, secs) in &h.gates {
            o.sample(
                "nixgate_gate_duration_seconds",
                &[("host", h.host.as_str()), ("gate", gate)],
                Some(*secs),
            );
        }
    }
    o.0
}

fn run_series(o: &mut Out, run: &Run) {
    o.family(
        "nixgate_run_info",
        "The run this file was written at the end of (1, labelled with it)",
    );
    o.sample(
        "nixgate_run_info",
        &[
            ("run_id", &run.run_id),
            ("command", &run.command),
            ("goal", &run.goal),
        ],
        Some(1.0),
    );
    o.family(
        "nixgate_run_exit_code",
        "The run's exit code (NaN: it never finished)",
    );
    o.sample("nixgate_run_exit_code", &[], run.exit_code.map(f64::from));
    o.family("nixgate_run_duration_seconds", "How long the run took");
    o.sample("nixgate_run_duration_seconds", &[], Some(run.seconds));
    o.family(
        "nixgate_run_start_timestamp_seconds",
        "When the run started",
    );
    o.sample(
        "nixgate_run_start_timestamp_seconds",
        &[],
        run.started.map(|t| t as f64),
    );
    o.family("nixgate_run_end_timestamp_seconds", "When the run finished");
    o.sample(
        "nixgate_run_end_timestamp_seconds",
        &[],
        run.finished.map(|t| t as f64),
    );
    o.family("nixgate_run_hosts", "The run's hosts, by how they ended");
    for k in OutcomeKind::all() {
        let n = run.outcomes.get(&k).copied().unwrap_or(0);
        o.sample(
            "nixgate_run_hosts",
            &[("outcome", k.as_str())],
            Some(n as f64),
        );
    }
}

/// Replace `path` with `text` atomically, readable by all (the collector
/// runs as another user; the rollout services' umask is 0077).
pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("the metrics file needs a file name")?;
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing the metrics file {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
