//! A gate's evidence (or why it failed) as a few lines of words, and as
//! JSON text capped in size, kept for each span of the timeline.

use crate::activation::{FailureReason, GateEvidence, RollbackOutcome};
use crate::diff::HostDiff;
use crate::plan::Refusal;
use crate::report::human::words;

/// How much of a gate's evidence JSON a span keeps (the run report has
/// all of it).
pub const RAW_CAP: usize = 4096;

/// What a span shows when it is hovered or clicked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detail {
    pub lines: Vec<String>,
    /// The evidence as JSON, at most [`RAW_CAP`] bytes.
    pub raw: Option<String>,
}

impl Detail {
    pub fn lines(lines: Vec<String>) -> Detail {
        Detail { lines, raw: None }
    }

    fn with_raw(lines: Vec<String>, value: &impl serde::Serialize) -> Detail {
        let mut raw = serde_json::to_string(value).unwrap_or_default();
        if raw.len() > RAW_CAP {
            let mut cut = RAW_CAP;
            while !raw.is_char_boundary(cut) {
                cut -= 1;
            }
            raw.truncate(cut);
            raw.push_str("\n... (cut here: the run report has all of it)");
        }
        Detail {
            lines,
            raw: Some(raw),
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn units(what: &str, units: &[String], out: &mut Vec<String>) {
    if !units.is_empty() {
        out.push(format!("{what}: {}", units.join(", ")));
    }
}

/// Evidence that a gate passed.
pub fn gate(e: &GateEvidence) -> Detail {
    use crate::nix::copy::CopyOutcome;
    let lines = match e {
        GateEvidence::Copy(CopyOutcome::AlreadyPresent) => {
            vec!["the host already had the whole closure: nothing sent".into()]
        }
        GateEvidence::Copy(CopyOutcome::Substituted) => {
            vec!["the host realised the closure itself".into()]
        }
        GateEvidence::Copy(CopyOutcome::Copied {
            paths,
            bytes,
            fanout,
        }) => {
            let mut v = vec![format!("sent {paths} path(s), {}", mib(*bytes))];
            if let Some(f) = fanout.as_ref().filter(|f| f.hosts > 1) {
                v.push(format!(
                    "{} path(s) of them read once for {} hosts",
                    f.paths, f.hosts
                ));
            }
            v
        }
        GateEvidence::DryActivate(r) => {
            let mut v = Vec::new();
            units("would stop", &r.would_stop, &mut v);
            units("would restart", &r.would_restart, &mut v);
            units("would reload", &r.would_reload, &mut v);
            units("would start", &r.would_start, &mut v);
            units("would not stop (changed)", &r.would_not_stop, &mut v);
            units("would stop swap", &r.would_stop_swap, &mut v);
            if r.would_restart_systemd {
                v.push("would restart systemd".into());
            }
            if v.is_empty() {
                v.push("no unit would change".into());
            }
            v
        }
        GateEvidence::LiveActivate(s) => vec![format!(
            "switch-to-configuration {} ({}) settled in {:.1} s, {} poll(s); it runs {}",
            s.action,
            s.unit,
            s.elapsed.as_secs_f64(),
            s.polls,
            words::short_closure(&s.closure)
        )],
        GateEvidence::HealthChecks { reports } => health(reports),
        GateEvidence::Persist {
            profile,
            closure,
            boot,
        } => {
            let mut v = vec![format!("{profile} -> {}", words::short_closure(closure))];
            if let Some(b) = boot {
                v.push(format!(
                    "boot entry written ({}, {:.1} s)",
                    b.unit,
                    b.elapsed.as_secs_f64()
                ));
            }
            v
        }
        GateEvidence::Rebooted { booted } => {
            vec![format!("rebooted into {}", words::short_closure(booted))]
        }
        GateEvidence::MarkKnownGood(m) => {
            let gates: Vec<&str> = m.record.gates.iter().map(|g| g.gate.as_str()).collect();
            let mut v = vec![
                format!("known-good generation {} ({})", m.generation, m.record_path),
                format!("marked at {}", m.record.marked_at),
                format!("gates recorded: {}", gates.join(", ")),
            ];
            if let Some(c) = &m.record.commit {
                v.push(format!("commit {c}"));
            }
            // The record repeats every earlier gate's evidence: not again.
            let mut mark = m.clone();
            mark.record.gates.clear();
            return Detail::with_raw(v, &mark);
        }
    };
    Detail::with_raw(lines, e)
}

fn health(reports: &[crate::activation::health::HealthReport]) -> Vec<String> {
    use crate::activation::health::Attempt;
    reports
        .iter()
        .map(|r| {
            let last = match r.attempts.last() {
                Some(Attempt::Passed) => "passed".to_owned(),
                Some(Attempt::Failed { exit, tail }) => format!(
                    "failed ({exit}){}",
                    tail.last().map(|l| format!(": {l}")).unwrap_or_default()
                ),
                Some(Attempt::TimedOut { after }) => {
                    format!("timed out after {:.0} s", after.as_secs_f64())
                }
                Some(Attempt::Unreachable { error }) => format!("unreachable: {error}"),
                None => "not run".into(),
            };
            format!("{}: {last} ({} attempt(s))", r.command, r.attempts.len())
        })
        .collect()
}

/// Why a gate failed.
pub fn failure(r: &FailureReason) -> Detail {
    let mut lines = vec![words::failure(r)];
    if let FailureReason::HealthChecks { reports } = r {
        lines.extend(health(reports));
    }
    Detail::with_raw(lines, r)
}

pub fn rollback(o: &RollbackOutcome) -> Detail {
    Detail::with_raw(
        vec![words::rollback(
            o,
            &crate::report::human::labels::Labels::default(),
        )],
        o,
    )
}

pub fn refusal(r: &Refusal) -> Detail {
    Detail::with_raw(vec![format!("refused: {}", words::refusal(r))], r)
}

/// How many lines of a host's diff its diff gate shows (the report's
/// diffs section has all of it, once per group of hosts).
const DIFF_LINES: usize = 4;

/// The diff gate: what changes, in a few lines.
pub fn diff(d: &HostDiff) -> Detail {
    let mut lines: Vec<String> = d.render();
    if lines.len() > DIFF_LINES {
        let more = lines.len() - DIFF_LINES;
        lines.truncate(DIFF_LINES);
        lines.push(format!("... {more} more line(s) in the diffs"));
    }
    Detail::lines(lines)
}
