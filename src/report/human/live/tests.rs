use std::time::Duration;

use super::*;
use crate::deploy::{HostEnd, HostSummary};
use crate::inventory::MaxFailures;
use crate::inventory::select::Group;
use crate::plan::{PlanStage, PlannedHost, PlannedWave, Verdict};
use crate::runner::NotStarted;

fn plan(waves: &[(&str, &[&str])]) -> Event {
    Event::PlanReady {
        goal: crate::gates::Goal::Gated,
        waves: waves
            .iter()
            .map(|(name, hosts)| PlannedWave {
                group: Group {
                    name: (*name).into(),
                    hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
                    max_parallel: 10,
                    max_failures: MaxFailures::Count(0),
                    soak: Duration::ZERO,
                    adhoc: false,
                },
                planned: hosts
                    .iter()
                    .map(|h| PlannedHost {
                        host: (*h).into(),
                        verdict: Verdict::Interrupted {
                            stage: PlanStage::Lock,
                        },
                    })
                    .collect(),
            })
            .collect(),
        cancelled: None,
    }
}

fn started(wave: &str, hosts: &[&str]) -> Event {
    Event::Runner(RunnerEvent::WaveStarted {
        wave: wave.into(),
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        max_parallel: 10,
    })
}

fn gate(host: &str, gate: Gate) -> Event {
    Event::GateStarted {
        host: host.into(),
        gate,
    }
}

fn finished(host: &str, end: HostEnd, seconds: f64) -> Event {
    Event::HostFinished(HostSummary {
        host: host.into(),
        wave: "w".into(),
        closure: None,
        end,
        seconds,
        pending_reboot_allowed: false,
        soak_left: None,
    })
}

fn not_started() -> HostEnd {
    HostEnd::NotStarted {
        why: NotStarted::Cancelled,
    }
}

#[test]
fn each_host_shows_its_gate_and_how_long_ticking_and_collapses_when_done() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut l = Live::new();
    l.apply(
        &plan(&[("canary", &["light1"]), ("main", &["light2", "sys2"])]),
        at(0),
    );
    assert!(l.render(at(0), 80, 24).is_empty(), "hidden at the prompt");
    l.apply(&started("canary", &["light1"]), at(1));
    l.apply(&gate("light1", Gate::Copy), at(1));
    l.apply(
        &Event::CopyProgress {
            host: "light1".into(),
            bytes: 19_251,
            paths: 3,
            total_paths: 5,
            idle_secs: 0,
        },
        at(2),
    );
    let screen = l.render(at(3), 80, 24).join("\n");
    assert!(screen.contains("wave canary: 1 host(s)"), "{screen}");
    assert!(
        screen.contains("light1  copy 2s, 3/5 paths, 18.8 KiB"),
        "{screen}"
    );
    assert!(screen.contains("wave main: 2 host(s) waiting"), "{screen}");
    // The next gate replaces the copy line; its clock starts again and ticks.
    l.apply(&gate("light1", Gate::LiveActivate), at(4));
    for _ in 0..2 {
        l.apply(
            &Event::Activation {
                host: "light1".into(),
                activation: ActivationEvent::Polling {
                    unit: "u".into(),
                    elapsed: Duration::from_secs(1),
                    job: crate::activation::verify_poll::JobState::Running,
                    current: None,
                },
            },
            at(5),
        );
    }
    let screen = l.render(at(8), 80, 24).join("\n");
    assert!(
        screen.contains("light1  live-activate 4s, poll 2"),
        "{screen}"
    );
    assert!(!screen.contains("copy"), "nothing stale: {screen}");
    let later = l.render(at(9), 80, 24).join("\n");
    assert!(later.contains("live-activate 5s"), "{later}");
    // Done: collapsed to its outcome; the finished wave to its counts.
    l.apply(&finished("light1", not_started(), 0.0), at(9));
    l.apply(
        &Event::Runner(RunnerEvent::WaveFinished {
            wave: "canary".into(),
            failures: 0,
            allowed: 0,
            stops_run: false,
        }),
        at(9),
    );
    // The finished wave's line is in the scrollback, not in the view.
    let screen = l.render(at(9), 80, 24);
    assert_eq!(screen, ["wave main: 2 host(s) waiting"], "{screen:?}");
}

/// A host the copy waits on, taking nothing, says so on its line (the
/// batch's other hosts wait for it); once it moves, the words go.
#[test]
fn a_host_taking_nothing_says_so_on_its_copy_line() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut l = Live::new();
    l.apply(&plan(&[("main", &["light1", "light2"])]), at(0));
    l.apply(&started("main", &["light1", "light2"]), at(1));
    let progress = |host: &str, paths, idle_secs| Event::CopyProgress {
        host: host.into(),
        bytes: 1 << 20,
        paths,
        total_paths: 40,
        idle_secs,
    };
    for h in ["light1", "light2"] {
        l.apply(&gate(h, Gate::Copy), at(1));
        l.apply(&progress(h, 12, 0), at(2));
    }
    l.apply(&progress("light2", 12, 30), at(32));
    let screen = l.render(at(33), 100, 24).join("\n");
    assert!(
        screen.contains("light2  copy 32s, 12/40 paths, 1.0 MiB, taking nothing for 30s"),
        "{screen}"
    );
    assert!(
        screen.contains("light1  copy 32s, 12/40 paths, 1.0 MiB\n"),
        "{screen}"
    );
    l.apply(&progress("light2", 13, 0), at(34));
    let screen = l.render(at(34), 100, 24).join("\n");
    assert!(!screen.contains("taking nothing"), "{screen}");
}

#[test]
fn after_ctrl_c_waiting_hosts_say_not_starting() {
    let t0 = Instant::now();
    let mut l = Live::new();
    l.apply(&plan(&[("canary", &["a"]), ("main", &["b", "c"])]), t0);
    l.apply(&started("canary", &["a"]), t0);
    l.apply(&gate("a", Gate::LiveActivate), t0);
    l.apply(&gate("b", Gate::Copy), t0);
    l.apply(
        &Event::CancelRequested {
            level: CancelLevel::StopStarting,
        },
        t0,
    );
    let screen = l.render(t0 + Duration::from_secs(2), 80, 24).join("\n");
    assert!(screen.contains("a  live-activate 2s"), "{screen}");
    assert!(screen.contains("b  copy 2s"), "{screen}");
    assert!(screen.contains("c  not starting"), "{screen}");
    assert!(!screen.contains("waiting"), "{screen}");
}

#[test]
fn a_fleet_taller_than_the_terminal_is_counted_per_gate_with_the_slowest_named() {
    let t0 = Instant::now();
    let hosts: Vec<String> = (0..60).map(|i| format!("web{i:02}")).collect();
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut l = Live::new();
    l.apply(&plan(&[("main", &names)]), t0);
    l.apply(&started("main", &names), t0);
    for (i, h) in names.iter().enumerate() {
        let at = t0 + Duration::from_secs(i as u64 % 7);
        match i % 3 {
            0 => l.apply(&gate(h, Gate::Copy), at),
            1 => l.apply(&gate(h, Gate::LiveActivate), at),
            _ => l.apply(&finished(h, not_started(), 1.0), at),
        }
    }
    let screen = l.render(t0 + Duration::from_secs(10), 80, 24);
    assert!(screen.len() <= 24, "{screen:#?}");
    let text = screen.join("\n");
    assert!(
        text.contains("  copy             20  slowest web00 10s"),
        "{text}"
    );
    // web07 started its gate first (i % 7 == 0).
    assert!(
        text.contains("  live-activate    20  slowest web07 10s"),
        "{text}"
    );
    assert!(
        text.contains("  not-started      20\n") || text.ends_with("  not-started      20"),
        "{text}"
    );
    assert!(screen.iter().all(|l| l.chars().count() < 80));
    insta::assert_snapshot!(text);
}

#[test]
fn planning_shows_the_builder_and_the_diff() {
    let t0 = Instant::now();
    let mut l = Live::new();
    l.apply(
        &Event::BuildStarted {
            hosts: vec!["a".into()],
        },
        t0,
    );
    l.apply(
        &Event::BuildProgress {
            built: 3,
            to_build: 7,
            running: 2,
            failed: 0,
        },
        t0 + Duration::from_secs(1),
    );
    let screen = l.render(t0 + Duration::from_secs(3), 80, 24);
    assert!(
        screen[0].ends_with("building on the builder: 3/7 derivations, 2 running 3s"),
        "{screen:?}"
    );
}

/// A wave finishes after its soak: while it soaks and re-checks, its
/// hosts stay in view with the soak's line; its end takes them away.
#[test]
fn a_soaking_wave_keeps_its_hosts_in_view_until_it_finishes() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut l = Live::new();
    l.apply(
        &plan(&[("canary", &["light1"]), ("main", &["light2"])]),
        at(0),
    );
    l.apply(&started("canary", &["light1"]), at(1));
    l.apply(&gate("light1", Gate::LiveActivate), at(1));
    l.apply(&finished("light1", not_started(), 3.0), at(4));
    l.apply(
        &Event::Runner(RunnerEvent::SoakStarted {
            wave: "canary".into(),
            seconds: 60,
        }),
        at(4),
    );
    let screen = l.render(at(14), 80, 24).join("\n");
    assert!(screen.contains("wave canary: 1 host(s)"), "{screen}");
    assert!(screen.contains("light1  not started"), "{screen}");
    assert!(
        screen.contains("wave canary: soaking, health re-check in 50s"),
        "{screen}"
    );
    let screen = l.render(at(70), 80, 24).join("\n");
    assert!(
        screen.contains("wave canary: re-checking health"),
        "{screen}"
    );
    l.apply(
        &Event::Runner(RunnerEvent::WaveFinished {
            wave: "canary".into(),
            failures: 0,
            allowed: 0,
            stops_run: false,
        }),
        at(71),
    );
    let screen = l.render(at(71), 80, 24);
    assert_eq!(screen, ["wave main: 1 host(s) waiting"], "{screen:?}");
}

/// A Ctrl-C during a soak's wait cuts it short: the wave re-checks its
/// hosts at once, and says so.
#[test]
fn a_ctrl_c_during_a_soak_shows_the_recheck() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut l = Live::new();
    l.apply(&plan(&[("canary", &["light1"])]), at(0));
    l.apply(&started("canary", &["light1"]), at(1));
    l.apply(&finished("light1", not_started(), 3.0), at(4));
    l.apply(
        &Event::Runner(RunnerEvent::SoakStarted {
            wave: "canary".into(),
            seconds: 60,
        }),
        at(4),
    );
    l.apply(
        &Event::CancelRequested {
            level: CancelLevel::StopStarting,
        },
        at(10),
    );
    let screen = l.render(at(10), 80, 24).join("\n");
    assert!(
        screen.contains("wave canary: re-checking health"),
        "{screen}"
    );
}
