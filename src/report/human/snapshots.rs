//! Snapshot tests of what a person reads (as cargo-nextest tests its
//! displayer): the live view frame by frame through a push with a failing
//! host and a Ctrl-C, and the end of that push (the hosts' table, the
//! failures explained, the run report, the last line) at 80 columns. The
//! expected screens are the files in `snapshots/`; a change to any word or
//! column shows up there, whole, in review.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::live::Live;
use super::*;
use crate::activation::detached::SwitchFailure;
use crate::activation::known_good::{KnownGoodMark, KnownGoodRecord};
use crate::activation::reactivate::RollbackMode;
use crate::activation::{FailureReason, HostOutcome, RunId};
use crate::deploy::HostEnd;
use crate::gates::{Gate, Goal};
use crate::inventory::MaxFailures;
use crate::inventory::select::Group;
use crate::nix::StorePath;
use crate::plan::{Candidate, PlannedHost, PlannedWave, Refusal, Verdict};
use crate::report::event::Ending;
use crate::runner::NotStarted;

const COMMIT: &str = "1dcb4d5ce8bf0a1e2f3a4b5c6d7e8f9a0b1c2d3e";
const OLD_COMMIT: &str = "58bad04aa1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6";

fn sp(hash: char, name: &str) -> StorePath {
    StorePath::parse(&format!(
        "/nix/store/{}-{name}",
        hash.to_string().repeat(32)
    ))
    .unwrap()
}

fn system(hash: char, host: &str) -> StorePath {
    sp(hash, &format!("nixos-system-{host}-24.05.20240315.1e4b7a5"))
}

/// A wave of the plan; hosts named `light3` are refused (unreachable).
fn wave(name: &str, hosts: &[&str]) -> PlannedWave {
    PlannedWave {
        group: Group {
            name: name.into(),
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
                verdict: if *h != "light3" {
                    Verdict::Ready {
                        candidate: Candidate {
                            closure: system('c', h),
                            earlier_gates: Vec::new(),
                            generation: None,
                            commit: None,
                            never_validated: false,
                        },
                        running: Some(system('a', h)),
                    }
                } else {
                    Verdict::Refused {
                        refusal: unreachable(h),
                    }
                },
            })
            .collect(),
    }
}

fn unreachable(host: &str) -> Refusal {
    Refusal::Unreachable {
        error: format!("{host}: cannot reach 127.220.0.4:22: connection refused"),
    }
}

fn wave_started(name: &str, hosts: &[&str]) -> Event {
    Event::Runner(RunnerEvent::WaveStarted {
        wave: name.into(),
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

fn known_good(host: &str) -> HostEnd {
    HostEnd::activation(HostOutcome::KnownGood {
        mark: KnownGoodMark {
            generation: 3,
            record_path: "/nix/var/nixgate/known-good/3.json".into(),
            record: KnownGoodRecord {
                version: 1,
                host: host.into(),
                generation: 3,
                replaced: Some(2),
                created: None,
                lineage: None,
                soak_pending: false,
                marked_on_host: None,
                rolled_back_from: None,
                closure: system('c', host),
                marked_at: "2026-12-02T09:31:20Z".into(),
                commit: Some(COMMIT.into()),
                run_id: RunId::parse("20261202T093108Z-a7c5").unwrap(),
                gates: Vec::new(),
            },
        },
    })
}

fn rolled_back(host: &str) -> HostEnd {
    HostEnd::activation(HostOutcome::RolledBack {
        gate: Gate::LiveActivate,
        reason: FailureReason::Switch(SwitchFailure::Exited {
            code: 4,
            seen: Some(system('c', host)),
            log_tail: vec![
                "activating the configuration...".into(),
                "warning: the following units failed: nixgate-test-broken.service".into(),
                "".into(),
                "× nixgate-test-broken.service - nixgate test broken unit".into(),
                "     Active: failed (Result: exit-code)".into(),
            ],
        }),
        to: system('a', host),
    })
}

fn summary(host: &str, wave: &str, end: HostEnd, seconds: f64) -> HostSummary {
    let closure = match &end {
        HostEnd::Refused { .. } => None,
        _ => Some(system('c', host)),
    };
    HostSummary {
        host: host.into(),
        wave: wave.into(),
        closure,
        end,
        seconds,
        pending_reboot_allowed: false,
        soak_left: None,
    }
}

fn cancelled() -> HostEnd {
    HostEnd::NotStarted {
        why: NotStarted::Cancelled,
    }
}

/// The push the snapshots follow: canary `light1`; main `light2`, `sys2`,
/// `light3` (unreachable, refused); rest `web1`. `light2`'s switch fails a
/// unit and is rolled back; Ctrl-C while `sys2` copies.
fn events() -> Vec<(u64, Event)> {
    let at = |s: u64| s * 1000;
    let history = Event::History {
        host: "light2".into(),
        generations: vec![crate::inspect::history::Generation {
            generation: 1,
            closure: Some(system('a', "light2")),
            commit: Some(OLD_COMMIT.into()),
            marked_at: Some("2026-12-01T08:00:00Z".into()),
            run_id: None,
            present: true,
            current: true,
        }],
    };
    let finished =
        |h: &str, w: &str, end: HostEnd, s: f64| Event::HostFinished(summary(h, w, end, s));
    vec![
        (
            0,
            Event::RunStarted {
                run_id: "20261202T093108Z-a7c5".into(),
                command: CommandName::Push,
                goal: Goal::Gated,
                commit: Some(COMMIT.into()),
                dirty: false,
                hosts: ["light1", "light2", "sys2", "light3", "web1"]
                    .map(String::from)
                    .to_vec(),
                at: "2026-12-02T09:31:08Z".into(),
            },
        ),
        (
            at(1),
            Event::BuildStarted {
                hosts: vec!["light1".into()],
            },
        ),
        (
            at(2),
            Event::BuildProgress {
                built: 3,
                to_build: 7,
                running: 2,
                failed: 0,
            },
        ),
        (
            at(5),
            Event::PlanReady {
                goal: Goal::Gated,
                waves: vec![
                    wave("canary", &["light1"]),
                    wave("main", &["light2", "sys2", "light3"]),
                    wave("rest", &["web1"]),
                ],
                cancelled: None,
            },
        ),
        (at(8), wave_started("canary", &["light1"])),
        (at(8), gate("light1", Gate::Copy)),
        (
            at(9),
            Event::CopyProgress {
                host: "light1".into(),
                bytes: 19_251,
                paths: 3,
                total_paths: 5,
                idle_secs: 0,
            },
        ),
        (at(10), gate("light1", Gate::LiveActivate)),
        (
            at(15),
            finished("light1", "canary", known_good("light1"), 7.2),
        ),
        (
            at(15),
            Event::Runner(RunnerEvent::WaveFinished {
                wave: "canary".into(),
                failures: 0,
                allowed: 0,
                stops_run: false,
            }),
        ),
        (at(16), wave_started("main", &["light2", "sys2", "light3"])),
        (at(16), gate("light2", Gate::LiveActivate)),
        (at(16), gate("sys2", Gate::Copy)),
        (
            at(18),
            Event::GateFailed {
                host: "light2".into(),
                gate: Gate::LiveActivate,
                reason: FailureReason::Switch(SwitchFailure::Exited {
                    code: 4,
                    seen: None,
                    log_tail: Vec::new(),
                }),
            },
        ),
        (
            at(18),
            Event::Activation {
                host: "light2".into(),
                activation: crate::activation::ActivationEvent::RollbackStarted {
                    to: system('a', "light2"),
                    mode: RollbackMode::Live,
                },
            },
        ),
        (
            at(20),
            Event::CancelRequested {
                level: crate::runner::cancel::CancelLevel::StopStarting,
            },
        ),
        (
            at(21),
            finished("light2", "main", rolled_back("light2"), 5.1),
        ),
        (at(23), finished("sys2", "main", known_good("sys2"), 7.0)),
        (
            at(23),
            finished(
                "light3",
                "main",
                HostEnd::Refused {
                    refusal: unreachable("light3"),
                },
                0.0,
            ),
        ),
        (at(23), finished("web1", "rest", cancelled(), 0.0)),
        (at(24), history),
    ]
}

/// The live view at each of these moments (seconds after the run started).
const FRAMES: &[u64] = &[0, 3, 6, 9, 12, 17, 19, 20, 22];

#[test]
fn the_live_view_frame_by_frame() {
    let t0 = Instant::now();
    let mut live = Live::new();
    let mut film = String::new();
    let mut events = events().into_iter().peekable();
    for &s in FRAMES {
        let now = t0 + Duration::from_secs(s);
        while let Some((ms, ev)) = events.next_if(|(ms, _)| *ms <= s * 1000) {
            live.apply(&ev, t0 + Duration::from_millis(ms));
        }
        let _ = writeln!(film, "--- {s}s");
        for line in live.render(now, 80, 24) {
            let _ = writeln!(film, "{line}");
        }
    }
    insta::assert_snapshot!(film);
}

#[test]
fn the_end_of_a_push_with_a_failing_host_and_a_ctrl_c() {
    let mut human = Human::plain(Some(CommandName::Push), Level::Normal, false);
    human.report = Some("/root/.local/state/nixgate/runs/20261202T093108Z-a7c5.json".into());
    // The lines said as the run goes (the live view aside), then the end.
    let mut screen = String::new();
    let mut hosts = Vec::new();
    for (_, ev) in events() {
        if let Event::HostFinished(s) = &ev {
            hosts.push(s.clone());
        }
        if human.collected.take(&ev) {
            continue;
        }
        human.count(&ev);
        if shown_at(&ev, true).is_some_and(|l| l <= Level::Normal)
            && let Some(text) = human.text(&ev)
        {
            screen.push_str(&wrapped(&text, 80));
        }
    }
    screen.push_str(&human.summary_block(&hosts, Some(80)));
    let failed = hosts.iter().filter(|h| h.fails_run()).count();
    let last = Event::Summary {
        command: CommandName::Push,
        run_id: Some("20261202T093108Z-a7c5".into()),
        ending: Ending::Completed,
        exit_code: 1,
        ok: hosts.len() - failed,
        failed,
        hosts: hosts.clone(),
    };
    screen.push_str(&wrapped(&human.text(&last).unwrap_or_default(), 80));
    for l in screen.lines() {
        assert!(l.chars().count() <= 80, "wider than the terminal: {l}");
    }
    insta::assert_snapshot!(screen);
}

/// `check` at 160 and 120 columns: the current system as `hash8-name`,
/// cut towards its hash, never wrapped. (Under ~100 the other columns alone are
/// wider: not fitted yet.)
#[test]
fn the_check_table_fits_the_terminal() {
    let probe = |host: &str, n: u8| crate::inspect::Probe {
        host: host.into(),
        builder: false,
        address: format!("127.220.0.{n}:22"),
        ok: true,
        auth: Some("public key ~/.ssh/id_ed25519".into()),
        host_key: None,
        nix_version: Some("2.8.0".into()),
        current_system: Some(system('a', host)),
        free_nix_bytes: Some(81_604_378_624),
        sudo: None,
        error: None,
    };
    let probes = [probe("light1", 2), probe("sys2", 5)];
    let mut screens = String::new();
    for width in [160, 120] {
        let table = tables::check_table(&probes).fit(Some(width)).to_string();
        for l in table.lines() {
            assert!(l.chars().count() <= width, "wider than {width}: {l}");
        }
        let _ = writeln!(screens, "--- {width} columns\n{table}");
    }
    insta::assert_snapshot!(screens);
}

/// Without the live view, a host the copy waits on while it takes nothing
/// is a line (each time it is said); with it, the host's own line says so; a
/// copy that moves is never a line.
#[test]
fn a_host_taking_nothing_is_a_line_without_the_live_view() {
    let progress = |idle_secs| Event::CopyProgress {
        host: "light2".into(),
        bytes: 1 << 20,
        paths: 12,
        total_paths: 40,
        idle_secs,
    };
    assert_eq!(shown_at(&progress(20), false), Some(Level::Normal));
    assert_eq!(shown_at(&progress(20), true), None);
    assert_eq!(
        describe(&progress(20)).as_deref(),
        Some("light2: copy: taking nothing for 20 s (copy_stall_timeout fails it)")
    );
    assert_eq!(shown_at(&progress(0), false), None);
}

/// A host never started is one line (its `host_not_started`, with why),
/// not two: its `host_finished` that follows says nothing more.
#[test]
fn a_host_never_started_is_one_line() {
    let why = NotStarted::EarlierWaveFailed {
        wave: "main".into(),
    };
    let not_started = Event::Runner(crate::runner::RunnerEvent::HostNotStarted {
        host: "web1".into(),
        wave: "rest".into(),
        why: why.clone(),
    });
    let finished = Event::HostFinished(summary("web1", "rest", HostEnd::NotStarted { why }, 0.0));
    assert_eq!(shown_at(&not_started, false), Some(Level::Verbose));
    assert_eq!(shown_at(&finished, false), None);
}

/// A release says how its branch moved: a re-validated commit leaves it
/// where it was (it said "moved" whatever happened).
#[test]
fn a_release_says_how_its_branch_moved() {
    use crate::release::BranchUpdate;
    let released = |update| Event::Released {
        host: "web1".into(),
        tag: "release/web1/20261202T101530Z-3f2a9c1e0d4b".into(),
        branch: "release/web1".into(),
        update: Some(update),
    };
    let said = |update| describe(&released(update)).unwrap();
    let tag = "web1: released as release/web1/20261202T101530Z-3f2a9c1e0d4b";
    assert_eq!(
        said(BranchUpdate::Unchanged),
        format!("{tag} (release/web1 already there)")
    );
    assert_eq!(
        said(BranchUpdate::Created),
        format!("{tag} (release/web1 created)")
    );
    let from = "9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e".to_owned();
    assert_eq!(
        said(BranchUpdate::FastForward { from: from.clone() }),
        format!("{tag} (release/web1 moved)")
    );
    assert_eq!(
        said(BranchUpdate::Forced { from }),
        format!("{tag} (release/web1 forced, from 9d8e7f6a5b4c)")
    );
}

/// A host whose switch log ends with a terminal title escape and a bare
/// carriage return: the summary block (the NOTES column, "its log ends:")
/// and any block or live line carry neither (before: written as the host
/// sent them, retitling the operator's terminal, overwriting a line).
#[test]
fn control_characters_from_a_host_never_reach_the_terminal() {
    let end = HostEnd::activation(HostOutcome::RolledBack {
        gate: Gate::LiveActivate,
        reason: FailureReason::Switch(SwitchFailure::Exited {
            code: 4,
            seen: None,
            log_tail: vec!["\x1b]0;x\x07owned".into(), "half\rline".into()],
        }),
        to: system('a', "web1"),
    });
    let hosts = vec![summary("web1", "canary", end, 3.0)];
    let mut human = Human::plain(Some(CommandName::Push), Level::Normal, false);
    let block = human.summary_block(&hosts, Some(80));
    assert!(
        block.contains("owned") && block.contains("half line"),
        "{block}"
    );
    for c in ['\x1b', '\x07', '\r'] {
        assert!(!block.contains(c), "{c:?} in {block:?}");
    }
    let text = "plan\n  web1: \x1b]0;x\x07 pre-check said\r\nno\n";
    assert_eq!(
        for_terminal(text),
        "plan\n  web1:  ]0;x  pre-check said \nno\n"
    );
}
