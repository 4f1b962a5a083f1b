//! What the live view shows, as a model the events update and a pure
//! function of it and the clock draws: each wave being run with one line per
//! host (the gate it is in and for how long, ticking; finished hosts
//! collapsed to their outcome), waves done as one line of counts, waves to
//! come as one line. After Ctrl-C, hosts that were waiting say `not
//! starting`. A fleet taller than the terminal is drawn per wave as how many
//! hosts sit in each gate, with the slowest named.
//!
//! Kept apart from the terminal ([`super::tty`]) so what a person sees at a
//! given moment is a unit test.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::activation::ActivationEvent;
use crate::deploy::OutcomeKind;
use crate::gates::Gate;
use crate::report::event::Event;
use crate::runner::RunnerEvent;
use crate::runner::cancel::CancelLevel;

const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// What a host is doing, as far as the events tell.
#[derive(Debug, Clone, PartialEq)]
enum Doing {
    Waiting,
    /// In a gate since `since`.
    Gate {
        gate: Gate,
        since: Instant,
        polls: u32,
        copied: Option<Copied>,
    },
    /// A gate passed; the next has not started yet.
    After {
        gate: Gate,
        since: Instant,
    },
    /// A gate failed; what follows (a rollback) has not started yet.
    Failed {
        gate: Gate,
        since: Instant,
    },
    RollingBack {
        since: Instant,
    },
    /// Cut off after the switch: waiting for the host's own revert.
    AwaitingRevert {
        since: Instant,
    },
    Done {
        outcome: OutcomeKind,
        seconds: f64,
    },
}

/// A copy's last progress: paths added of how many, bytes sent, and how
/// long the host has taken nothing while the copy waits on it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Copied {
    paths: u64,
    total: u64,
    bytes: u64,
    idle_secs: u64,
}

impl Doing {
    fn since(&self) -> Option<Instant> {
        match self {
            Doing::Gate { since, .. }
            | Doing::After { since, .. }
            | Doing::Failed { since, .. }
            | Doing::RollingBack { since }
            | Doing::AwaitingRevert { since } => Some(*since),
            Doing::Waiting | Doing::Done { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaveState {
    Waiting,
    Running,
    Finished,
}

#[derive(Debug, Clone)]
struct WaveLive {
    name: String,
    hosts: Vec<String>,
    state: WaveState,
    /// Soaking since, for this many seconds.
    soak: Option<(Instant, u64)>,
}

/// What planning is doing.
#[derive(Debug, Clone, PartialEq)]
enum Planning {
    Starting,
    Build {
        built: u64,
        to_build: u64,
        running: u64,
    },
    Diff {
        done: usize,
    },
}

/// The live view's model.
#[derive(Debug, Clone)]
pub struct Live {
    planning: Option<(Planning, Instant)>,
    /// Off while the plan is shown and the prompt waits.
    shown: bool,
    waves: Vec<WaveLive>,
    hosts: HashMap<String, Doing>,
    /// Ctrl-C: nothing new starts.
    cancelling: bool,
}

impl Default for Live {
    fn default() -> Self {
        Live::new()
    }
}

fn secs(since: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(since).as_secs()
}

/// `s` cut to `width` characters.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        s.chars().take(width).collect()
    }
}

impl Live {
    pub fn new() -> Live {
        Live {
            planning: None,
            shown: true,
            waves: Vec::new(),
            hosts: HashMap::new(),
            cancelling: false,
        }
    }

    /// Does the view have anything to draw?
    pub fn is_empty(&self) -> bool {
        !self.shown || (self.planning.is_none() && self.waves.is_empty())
    }

    fn set(&mut self, host: &str, doing: Doing) {
        // A finished host stays finished (a late progress tick changes nothing).
        let slot = self.hosts.entry(host.to_owned()).or_insert(Doing::Waiting);
        if !matches!(slot, Doing::Done { .. }) || matches!(doing, Doing::Done { .. }) {
            *slot = doing;
        }
    }

    fn wave_mut(&mut self, name: &str) -> Option<&mut WaveLive> {
        self.waves.iter_mut().find(|w| w.name == name)
    }

    /// Update the model with one event that happened at `now`.
    pub fn apply(&mut self, ev: &Event, now: Instant) {
        match ev {
            Event::RunStarted { .. } => self.planning = Some((Planning::Starting, now)),
            Event::BuildStarted { .. } => {
                let p = Planning::Build {
                    built: 0,
                    to_build: 0,
                    running: 0,
                };
                self.planning = Some((p, now));
            }
            Event::BuildProgress {
                built,
                to_build,
                running,
                ..
            } => {
                let since = self.planning.as_ref().map_or(now, |(_, s)| *s);
                let p = Planning::Build {
                    built: *built,
                    to_build: *to_build,
                    running: *running,
                };
                self.planning = Some((p, since));
            }
            Event::BuildFinished { .. } => self.planning = Some((Planning::Diff { done: 0 }, now)),
            Event::Diff { .. } => {
                if let Some((Planning::Diff { done }, _)) = &mut self.planning {
                    *done += 1;
                }
            }
            Event::PlanReady { waves, .. } => {
                self.planning = None;
                self.shown = false;
                // A host refused by the plan never starts: it says so now.
                for h in waves.iter().flat_map(|w| &w.planned) {
                    if let crate::plan::Verdict::Refused { .. } = h.verdict {
                        let refused = Doing::Done {
                            outcome: OutcomeKind::Refused,
                            seconds: 0.0,
                        };
                        self.set(&h.host, refused);
                    }
                }
                self.waves = waves
                    .iter()
                    .map(|w| WaveLive {
                        name: w.group.name.clone(),
                        hosts: w.planned.iter().map(|h| h.host.clone()).collect(),
                        state: WaveState::Waiting,
                        soak: None,
                    })
                    .collect();
            }
            Event::CancelRequested { level } if *level >= CancelLevel::StopStarting => {
                self.cancelling = true;
            }
            Event::GateStarted { host, gate } => self.set(
                host,
                Doing::Gate {
                    gate: *gate,
                    since: now,
                    polls: 0,
                    copied: None,
                },
            ),
            Event::GatePassed { host, gate, .. } => self.set(
                host,
                Doing::After {
                    gate: *gate,
                    since: now,
                },
            ),
            Event::GateFailed { host, gate, .. } => self.set(
                host,
                Doing::Failed {
                    gate: *gate,
                    since: now,
                },
            ),
            Event::CopyProgress {
                host,
                bytes,
                paths,
                total_paths,
                idle_secs,
            } => {
                let copied = Some(Copied {
                    paths: *paths,
                    total: *total_paths,
                    bytes: *bytes,
                    idle_secs: *idle_secs,
                });
                match self.hosts.get_mut(host) {
                    Some(Doing::Gate {
                        gate: Gate::Copy,
                        copied: c,
                        ..
                    }) => *c = copied,
                    _ => self.set(
                        host,
                        Doing::Gate {
                            gate: Gate::Copy,
                            since: now,
                            polls: 0,
                            copied,
                        },
                    ),
                }
            }
            Event::Activation { host, activation } => self.activation(host, activation, now),
            Event::HostFinished(s) => self.set(
                &s.host,
                Doing::Done {
                    outcome: s.outcome(),
                    seconds: s.seconds,
                },
            ),
            Event::Runner(r) => self.runner(r, now),
            _ => {}
        }
    }

    fn activation(&mut self, host: &str, ev: &ActivationEvent, now: Instant) {
        match ev {
            ActivationEvent::Polling { .. } => {
                if let Some(Doing::Gate { polls, .. }) = self.hosts.get_mut(host) {
                    *polls += 1;
                }
            }
            ActivationEvent::RollbackStarted { .. } => {
                self.set(host, Doing::RollingBack { since: now })
            }
            ActivationEvent::AwaitingRevert { .. } => {
                self.set(host, Doing::AwaitingRevert { since: now })
            }
            _ => {}
        }
    }

    fn runner(&mut self, r: &RunnerEvent, now: Instant) {
        match r {
            RunnerEvent::WaveStarted { wave, hosts, .. } => {
                self.shown = true;
                self.planning = None;
                match self.wave_mut(wave) {
                    Some(w) => w.state = WaveState::Running,
                    None => self.waves.push(WaveLive {
                        name: wave.clone(),
                        hosts: hosts.clone(),
                        state: WaveState::Running,
                        soak: None,
                    }),
                }
            }
            RunnerEvent::WaveFinished { wave, .. } => {
                if let Some(w) = self.wave_mut(wave) {
                    w.state = WaveState::Finished;
                }
            }
            RunnerEvent::SoakStarted { wave, seconds } => {
                if let Some(w) = self.wave_mut(wave) {
                    w.soak = Some((now, *seconds));
                }
            }
            RunnerEvent::HostNotStarted { host, .. } => self.set(
                host,
                Doing::Done {
                    outcome: OutcomeKind::NotStarted,
                    seconds: 0.0,
                },
            ),
            RunnerEvent::SoakChecked { .. } => {}
        }
    }

    fn doing(&self, host: &str) -> &Doing {
        self.hosts.get(host).unwrap_or(&Doing::Waiting)
    }

    /// The view at `now`, in at most `width` columns, aiming for at most
    /// `height` lines.
    pub fn render(&self, now: Instant, width: usize, height: usize) -> Vec<String> {
        if !self.shown {
            return Vec::new();
        }
        let mut lines = Vec::new();
        if let Some((p, since)) = &self.planning {
            lines.push(planning_line(p, secs(*since, now), spin(*since, now)));
        }
        let detailed = self.waves_lines(now, false);
        let waves = if lines.len() + detailed.len() > height.max(4) {
            self.waves_lines(now, true)
        } else {
            detailed
        };
        lines.extend(waves);
        let width = width.saturating_sub(1).max(20);
        lines.iter().map(|l| fit(l, width)).collect()
    }

    fn waves_lines(&self, now: Instant, grouped: bool) -> Vec<String> {
        let name_w = self
            .hosts
            .keys()
            .chain(self.waves.iter().flat_map(|w| &w.hosts))
            .map(|h| h.chars().count())
            .max()
            .unwrap_or(0);
        let mut lines = Vec::new();
        for w in &self.waves {
            let refused = |h: &String| {
                matches!(
                    self.doing(h),
                    Doing::Done {
                        outcome: OutcomeKind::Refused,
                        ..
                    }
                )
            };
            let active = w
                .hosts
                .iter()
                .any(|h| !matches!(self.doing(h), Doing::Waiting) && !refused(h));
            match w.state {
                // Its line is in the scrollback.
                WaveState::Finished => {}
                WaveState::Waiting if !active => {
                    let mut line = format!(
                        "wave {}: {} host(s) {}",
                        w.name,
                        w.hosts.len(),
                        if self.cancelling {
                            "not starting"
                        } else {
                            "waiting"
                        }
                    );
                    let n = w.hosts.iter().filter(|h| refused(h)).count();
                    if n > 0 {
                        line.push_str(&format!(" ({n} refused by the plan)"));
                    }
                    lines.push(line);
                }
                _ => {
                    let mut head = format!("wave {}: {} host(s)", w.name, w.hosts.len());
                    if w.state == WaveState::Waiting {
                        head.push_str(", not started yet");
                    }
                    lines.push(head);
                    if grouped {
                        lines.extend(self.grouped(w, now));
                    } else {
                        for h in &w.hosts {
                            let (s, what) = self.host_words(h, w.state, now);
                            lines.push(format!("  {s} {h:<name_w$}  {what}"));
                        }
                    }
                    // A wave finishes after its soak: its hosts stay in view.
                    lines.extend(self.soak_line(w, now));
                }
            }
        }
        lines
    }

    /// A soaking wave's wait, then its health re-checks (until the wave
    /// finishes).
    fn soak_line(&self, w: &WaveLive, now: Instant) -> Option<String> {
        let (since, total) = w.soak?;
        // A Ctrl-C cuts the wait short: the hosts are re-checked at once.
        let left = total.saturating_sub(secs(since, now));
        let what = if left > 0 && !self.cancelling {
            format!("soaking, health re-check in {left}s")
        } else {
            "re-checking health".into()
        };
        Some(format!("{} wave {}: {what}", spin(since, now), w.name))
    }

    /// A spinner glyph (active hosts) and what the host is doing.
    fn host_words(&self, host: &str, wave: WaveState, now: Instant) -> (char, String) {
        let d = self.doing(host);
        if wave == WaveState::Waiting
            && let Doing::After {
                gate: Gate::Copy, ..
            } = d
        {
            let what = if self.cancelling {
                "copied; not starting"
            } else {
                "copied, waiting for its wave"
            };
            return (' ', what.into());
        }
        let s = d.since().map_or(' ', |since| spin(since, now));
        let what = match d {
            Doing::Waiting if self.cancelling => "not starting".into(),
            Doing::Waiting => "waiting".into(),
            Doing::Gate {
                gate,
                since,
                polls,
                copied,
            } => {
                let mut m = format!("{gate} {}s", secs(*since, now));
                if *polls > 0 {
                    m.push_str(&format!(", poll {polls}"));
                }
                if let Some(c) = copied {
                    let (p, t) = (c.paths, c.total);
                    m.push_str(&format!(
                        ", {p}/{t} paths, {}",
                        super::words::bytes(c.bytes)
                    ));
                    if c.idle_secs > 0 {
                        m.push_str(&format!(", taking nothing for {}s", c.idle_secs));
                    }
                }
                m
            }
            Doing::After { gate, since } => {
                format!("{gate} passed {}s ago", secs(*since, now))
            }
            Doing::Failed { gate, since } => {
                format!("{gate} FAILED {}s ago", secs(*since, now))
            }
            Doing::RollingBack { since } => format!("rolling back {}s", secs(*since, now)),
            Doing::AwaitingRevert { since } => {
                format!("cut off; waiting for its own revert {}s", secs(*since, now))
            }
            Doing::Done {
                outcome: OutcomeKind::NotStarted,
                ..
            } => "not started".into(),
            Doing::Done {
                outcome: OutcomeKind::Refused,
                ..
            } => "refused by the plan".into(),
            Doing::Done { outcome, seconds } => format!("{outcome} in {seconds:.1}s"),
        };
        (s, what)
    }

    /// A wave too tall for the terminal: how many hosts are in each gate
    /// (the slowest named), have ended each way, or wait.
    fn grouped(&self, w: &WaveLive, now: Instant) -> Vec<String> {
        // key: (order, label) -> (count, slowest host and since)
        let mut groups: BTreeMap<(u8, String), Group<'_>> = BTreeMap::new();
        for h in &w.hosts {
            let d = self.doing(h);
            let key = match d {
                Doing::Gate { gate, .. } => (0, gate.to_string()),
                Doing::After { gate, .. } => (0, format!("after {gate}")),
                Doing::Failed { gate, .. } => (0, format!("{gate} FAILED")),
                Doing::RollingBack { .. } => (1, "rolling back".into()),
                Doing::AwaitingRevert { .. } => (1, "waiting for its own revert".into()),
                Doing::Done { outcome, .. } => (2, outcome.to_string()),
                Doing::Waiting if self.cancelling => (3, "not starting".into()),
                Doing::Waiting => (3, "waiting".into()),
            };
            let g = groups.entry(key).or_default();
            g.0 += 1;
            if let Some(since) = d.since()
                && g.1.is_none_or(|(s, _)| since < s)
            {
                g.1 = Some((since, h.as_str()));
            }
        }
        let label_w = groups.keys().map(|(_, l)| l.len()).max().unwrap_or(0);
        groups
            .iter()
            .map(|((_, label), (n, slowest))| {
                let mut l = format!("  {label:<label_w$} {n:>5}");
                if let Some((since, h)) = slowest {
                    l.push_str(&format!("  slowest {h} {}s", secs(*since, now)));
                }
                l
            })
            .collect()
    }
}

/// Hosts in one gate (or end) of a wave: how many, and the one there
/// longest with since when.
type Group<'a> = (usize, Option<(Instant, &'a str)>);

fn spin(since: Instant, now: Instant) -> char {
    let tick = now.saturating_duration_since(since).as_millis() / 100;
    SPINNER[(tick % SPINNER.len() as u128) as usize]
}

fn planning_line(p: &Planning, secs: u64, spin: char) -> String {
    let what = match p {
        Planning::Starting => "planning".to_owned(),
        Planning::Build {
            built,
            to_build,
            running,
        } => {
            let mut m = format!("building on the builder: {built}/{to_build} derivations");
            if *running > 0 {
                m.push_str(&format!(", {running} running"));
            }
            m
        }
        Planning::Diff { done } => format!("explaining the change: {done} host(s) diffed"),
    };
    format!("{spin} {what} {secs}s")
}

#[cfg(test)]
mod tests;
