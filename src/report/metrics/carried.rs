//! Each host's state from the run reports: its last run, and what it runs
//! carried forward from the reports oldest first (a known-good marked, a
//! change deferred to the next boot, a rollback...). Older reports are read
//! for their `hosts` only, each host's end reduced to what matters here as
//! it is parsed (a known-good mark's record, with every gate's evidence,
//! is skipped, not kept).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::{Host, KnownGood, LastOutcome, Run};
use crate::activation::HostOutcome;
use crate::deploy::{HostEnd, HostSummary, OutcomeKind};
use crate::gates::Goal;
use crate::report::timeline::{self, SpanKind, Timeline};
use crate::runner::Interrupted;
use crate::state::clock::parse_rfc3339;
use crate::state::run_report::RunReport;
use crate::state::runs::{self, RunState};

/// How many of the newest run reports are read.
pub const REPORTS_READ: usize = 50;

/// A host's end, reduced.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Light {
    host: String,
    wave: String,
    outcome: OutcomeKind,
    seconds: f64,
    #[serde(default = "crate::deploy::end::allowed_before")]
    pending_reboot_allowed: bool,
    /// The run left its mark soak pending ([`crate::deploy::SoakLeft`]).
    #[serde(default)]
    soak_left: Option<crate::deploy::SoakLeft>,
    #[serde(default)]
    activation: Option<LightActivation>,
    /// A known-good generation revoked after a failed soak.
    #[serde(default)]
    revoked: Option<u64>,
    /// An interrupted end's `why`.
    #[serde(default)]
    why: Option<Why>,
}

/// The `why` of a host's end: why the runner cut its work short (an
/// interrupted end: a word), or anything else (a not-started end's reason,
/// an object), not needed here.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
enum Why {
    Interrupted(Interrupted),
    Other(serde::de::IgnoredAny),
}

impl Light {
    /// Does this end leave what the host runs (and boots) unknown?
    /// Aborted: a detached switch may still finish. Unreachable: lost after
    /// the live switch, its revert unconfirmed. Moved by another: it runs
    /// what someone else put there. Its task panicked: it may
    /// have been anywhere, the switch included. Every other end says what
    /// it runs, or changed nothing (failed, refused, not started, a copy
    /// task lost, reverted by the host to what it ran).
    fn leaves_unknown(&self) -> bool {
        matches!(
            self.outcome,
            OutcomeKind::Aborted | OutcomeKind::Unreachable | OutcomeKind::MovedByOther
        ) || self.why == Some(Why::Interrupted(Interrupted::Panicked))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct LightActivation {
    #[serde(default)]
    mark: Option<LightMark>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct LightMark {
    generation: u64,
    record: LightRecord,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct LightRecord {
    marked_at: String,
}

#[derive(Debug, Deserialize)]
struct Head {
    run_id: String,
    goal: Goal,
    started: String,
    finished: Option<String>,
    /// The hosts the run was started on (in its report from its start).
    #[serde(default)]
    selected: Vec<String>,
    #[serde(default)]
    hosts: Vec<Light>,
}

/// A run report as the metrics read it, oldest first.
enum Report {
    /// A finished run (or the one the file is written for): its hosts'
    /// ends.
    Ended {
        goal: Goal,
        finished: Option<String>,
        hosts: Vec<Light>,
    },
    /// A run killed before it ended (its report never finished, and no
    /// run holds the controller lock for it now): the hosts it selected.
    /// Any of them may have been mid-switch; what each runs is unknown, as
    /// far as its `goal` changes hosts.
    Interrupted { goal: Goal, selected: Vec<String> },
}

fn light(s: &HostSummary) -> Light {
    let mark = match &s.end {
        HostEnd::Activation { activation } => match activation.as_ref() {
            HostOutcome::KnownGood { mark }
            | HostOutcome::AlreadyCurrent {
                mark: Some(mark), ..
            } => Some(LightMark {
                generation: mark.generation,
                record: LightRecord {
                    marked_at: mark.record.marked_at.clone(),
                },
            }),
            _ => None,
        },
        _ => None,
    };
    Light {
        host: s.host.clone(),
        wave: s.wave.clone(),
        outcome: s.outcome(),
        seconds: s.seconds,
        pending_reboot_allowed: s.pending_reboot_allowed,
        soak_left: s.soak_left,
        activation: Some(LightActivation { mark }),
        revoked: match &s.end {
            HostEnd::SoakFailed { revoked, .. } => *revoked,
            _ => None,
        },
        why: match &s.end {
            HostEnd::Interrupted { why } => Some(Why::Interrupted(*why)),
            _ => None,
        },
    }
}

/// What a host runs, as far as the reports say.
#[derive(Debug, Clone, Default)]
struct State {
    runs_known_good: Option<bool>,
    pending_reboot: Option<bool>,
    /// Known-goods marked, newest last (a revoked one is popped).
    known_good: Vec<KnownGood>,
}

impl State {
    /// A run with `goal` killed while it had the host: what it runs is
    /// unknown if the goal changes the running system, and what it boots
    /// if the goal sets the boot default; the rest is as the reports said
    /// (a killed `--goal copy` or `dry-activate` run changed neither, and
    /// turned a known-good host's series NaN). Its known-goods stay: a
    /// killed run revokes none it did not add, and one it added is unknown
    /// until a later mark says.
    fn interrupted(&mut self, goal: Goal) {
        if goal.activates_live() {
            self.runs_known_good = None;
        }
        if goal.persists_boot() {
            self.pending_reboot = None;
        }
    }

    fn apply(&mut self, goal: Goal, h: &Light) {
        let mark = h
            .activation
            .as_ref()
            .and_then(|a| a.mark.as_ref())
            .map(|m| KnownGood {
                generation: m.generation,
                marked_at: parse_rfc3339(&m.record.marked_at),
            });
        if let Some(m) = mark {
            self.known_good.retain(|k| k.generation != m.generation);
            self.known_good.push(m);
        }
        if let Some(g) = h.revoked
            && self.known_good.last().is_some_and(|k| k.generation == g)
        {
            self.known_good.pop();
        }
        if h.leaves_unknown() {
            (self.runs_known_good, self.pending_reboot) = (None, None);
            return;
        }
        match h.outcome {
            OutcomeKind::KnownGood => {
                self.runs_known_good = Some(true);
                self.pending_reboot = Some(false);
            }
            OutcomeKind::AlreadyCurrent if mark.is_some() => self.runs_known_good = Some(true),
            OutcomeKind::Reached => match goal {
                Goal::Test => self.runs_known_good = Some(false),
                Goal::Switch => {
                    (self.runs_known_good, self.pending_reboot) = (Some(false), Some(false))
                }
                Goal::Boot => self.pending_reboot = Some(true),
                _ => {}
            },
            OutcomeKind::DeferredPendingReboot => self.pending_reboot = Some(true),
            OutcomeKind::NotPersisted => {
                (self.runs_known_good, self.pending_reboot) = (Some(false), Some(true))
            }
            // Back on its known-good, verified.
            OutcomeKind::RolledBack => self.runs_known_good = Some(true),
            // Not back on its known-good, as far as anyone knows; the
            // switch and the rollback may each have moved the boot default.
            OutcomeKind::RollbackFailed => {
                (self.runs_known_good, self.pending_reboot) = (Some(false), None)
            }
            _ => {}
        }
    }
}

/// The last run of a host.
struct Last {
    run_id: String,
    wave: String,
    outcome: LastOutcome,
    /// It did not end well for the host (as exit code 1).
    failed: bool,
    finished: Option<i64>,
    seconds: f64,
}

impl Last {
    fn ended(run_id: &str, finished: Option<i64>, h: Light) -> Last {
        Last {
            run_id: run_id.to_owned(),
            failed: crate::deploy::end::pending_fails(
                h.outcome,
                h.pending_reboot_allowed,
                h.soak_left.is_some(),
            ),
            outcome: LastOutcome::Ended(h.outcome),
            wave: h.wave,
            finished,
            seconds: h.seconds,
        }
    }

    /// In a run killed before it ended: failed (the alert on a failed
    /// host fires for a half-done rollout), never finished, its wave as
    /// the host's earlier run said (the killed run's report has none).
    fn interrupted(run_id: &str, before: Option<Last>) -> Last {
        Last {
            run_id: run_id.to_owned(),
            wave: before.map(|l| l.wave).unwrap_or_default(),
            outcome: LastOutcome::Interrupted,
            failed: true,
            finished: None,
            seconds: f64::NAN,
        }
    }
}

fn read_head(state_dir: &Path, run_id: &str) -> Option<Head> {
    let path = crate::state::run_report::path(state_dir, run_id);
    let file = std::fs::File::open(path).ok()?;
    serde_json::from_reader(std::io::BufReader::new(file)).ok()
}

/// Gate durations of every host of a timeline: one per gate, in the order
/// the gates first ran, the time of every span of it summed (a soak's
/// re-check is a second health-checks span, a copy passed while staging
/// and done again at activation a second copy span). One sample per
/// (host, gate): a series twice in the file is invalid exposition.
fn gates_of(t: &Timeline) -> HashMap<String, Vec<(&'static str, f64)>> {
    t.rows
        .iter()
        .map(|r| {
            let mut gates: Vec<(&'static str, f64)> = Vec::new();
            for s in &r.spans {
                let gate = match s.kind {
                    SpanKind::Gate(g) => g.as_str(),
                    SpanKind::Rollback => "rollback",
                    _ => continue,
                };
                match gates.iter_mut().find(|(g, _)| *g == gate) {
                    Some((_, secs)) => *secs += s.seconds(),
                    None => gates.push((gate, s.seconds())),
                }
            }
            (r.host.clone(), gates)
        })
        .collect()
}

/// The newest reports of `state_dir` and `current`, oldest first: a run
/// still going (its report unfinished, the controller lock held for it:
/// [`runs::Judge`], as `runs` tells running from interrupted) is left
/// out, its hosts' last word not said yet. Before, every unfinished report
/// was: a run killed after web1's switch, or mid-soak, left web1's series
/// as the run before had them (exit 0, known-good), and a later run not
/// selecting web1 carried them on: no alert fired for a half-done rollout.
fn reports(state_dir: &Path, current: &RunReport) -> Vec<(String, Report)> {
    let mut ids = runs::ids(state_dir).unwrap_or_default();
    if ids.len() > REPORTS_READ {
        ids.drain(..ids.len() - REPORTS_READ);
    }
    if !ids.contains(&current.run_id) {
        ids.push(current.run_id.clone());
        ids.sort();
    }
    let mut judge = runs::Judge::new(state_dir);
    let mut out = Vec::new();
    // Newest first, as the judge takes them.
    for id in ids.into_iter().rev() {
        // The run the file is written for, unfinished (`nixgate report` of
        // a killed run), is judged like any other from what it holds in
        // memory: before, it read as ended with no host, and the hosts it
        // left interrupted kept the run before's series.
        if id == current.run_id && current.finished.is_none() {
            let report = match judge.state(false, &id, &current.started) {
                RunState::Running => continue,
                RunState::Finished | RunState::Interrupted => Report::Interrupted {
                    goal: current.goal,
                    selected: current.selected.clone(),
                },
            };
            out.push((id, report));
            continue;
        }
        if id == current.run_id {
            let hosts: Vec<Light> = current.hosts.iter().map(light).collect();
            let (goal, finished) = (current.goal, current.finished.clone());
            out.push((
                id,
                Report::Ended {
                    goal,
                    finished,
                    hosts,
                },
            ));
            continue;
        }
        let Some(h) = read_head(state_dir, &id).filter(|h| h.run_id == id) else {
            continue;
        };
        let report = match judge.state(h.finished.is_some(), &id, &h.started) {
            RunState::Finished => Report::Ended {
                goal: h.goal,
                finished: h.finished,
                hosts: h.hosts,
            },
            RunState::Interrupted => Report::Interrupted {
                goal: h.goal,
                selected: h.selected,
            },
            RunState::Running => continue,
        };
        out.push((id, report));
    }
    out.reverse();
    out
}

/// The metrics at the end of `current` (its report and timeline), with
/// every host of the newest reports of `state_dir`.
pub fn collect(state_dir: &Path, current: &RunReport, t: &Timeline) -> (Run, Vec<Host>) {
    let mut states: BTreeMap<String, State> = BTreeMap::new();
    let mut last: HashMap<String, Last> = HashMap::new();
    // Oldest first: later runs overwrite.
    for (id, report) in reports(state_dir, current) {
        match report {
            Report::Ended {
                goal,
                finished,
                hosts,
            } => {
                let finished = finished.as_deref().and_then(parse_rfc3339);
                for h in hosts {
                    states.entry(h.host.clone()).or_default().apply(goal, &h);
                    last.insert(h.host.clone(), Last::ended(&id, finished, h));
                }
            }
            Report::Interrupted { goal, selected } => {
                for host in selected {
                    states.entry(host.clone()).or_default().interrupted(goal);
                    let before = last.remove(&host);
                    last.insert(host, Last::interrupted(&id, before));
                }
            }
        }
    }
    let mut gates = gate_durations(state_dir, current, t, &last);
    let hosts = states
        .into_iter()
        .filter_map(|(name, st)| {
            let l = last.remove(&name)?;
            Some(Host {
                gates: gates.remove(&name).unwrap_or_default(),
                host: name,
                wave: l.wave,
                outcome: l.outcome,
                last_run_failed: l.failed,
                last_run_at: l.finished,
                seconds: l.seconds,
                runs_known_good: st.runs_known_good,
                pending_reboot: st.pending_reboot,
                known_good: st.known_good.last().copied(),
            })
        })
        .collect();
    (run_facts(current, t), hosts)
}

/// Gate durations from each host's last run: this run's timeline, or the
/// events of the report it last ran in.
fn gate_durations(
    state_dir: &Path,
    current: &RunReport,
    t: &Timeline,
    last: &HashMap<String, Last>,
) -> HashMap<String, Vec<(&'static str, f64)>> {
    let mut out = gates_of(t);
    out.retain(|h, _| last.get(h).is_some_and(|l| l.run_id == current.run_id));
    let mut older: Vec<&str> = last
        .values()
        .map(|l| l.run_id.as_str())
        .filter(|id| *id != current.run_id)
        .collect();
    older.sort_unstable();
    older.dedup();
    for id in older {
        let mut c = timeline::Collector::new();
        let Ok(read) = runs::read(state_dir, id, &mut |s| c.event(s)) else {
            continue;
        };
        for (h, g) in gates_of(&c.finish(&read.report)) {
            if last.get(&h).is_some_and(|l| l.run_id == id) {
                out.insert(h, g);
            }
        }
    }
    out
}

fn run_facts(r: &RunReport, t: &Timeline) -> Run {
    let mut outcomes = BTreeMap::new();
    for h in &r.hosts {
        *outcomes.entry(h.outcome()).or_default() += 1;
    }
    let started = parse_rfc3339(&r.started);
    let finished = r.finished.as_deref().and_then(parse_rfc3339);
    Run {
        run_id: r.run_id.clone(),
        command: r.command.clone(),
        goal: r.goal.as_str().to_owned(),
        started,
        finished,
        seconds: t.end_ms.saturating_sub(t.start_ms) as f64 / 1000.0,
        exit_code: r.exit_code,
        outcomes,
    }
}
