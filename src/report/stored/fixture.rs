//! A run as a test would find it stored: three waves, every kind of end
//! (known-good, rolled back after a failed health check, deferred to the
//! next boot, refused by the diff gate, not started) and hostile text where
//! a host or a configuration could put it (`<script>` in a host name and in
//! a flake input's name). `hosts` widens the middle wave for size tests.

use std::time::Duration;

use crate::activation::detached::{RebootReason, SwitchEvidence};
use crate::activation::dry_activate::DryActivateReport;
use crate::activation::health::{Attempt, HealthReport};
use crate::activation::known_good::{GateRecord, KnownGoodMark, KnownGoodRecord};
use crate::activation::reactivate::RollbackMode;
use crate::activation::{
    ActivationEvent, FailureReason, GateEvidence, HostOutcome, RollbackOutcome, RunId,
};
use crate::diff::flake_lock::InputChange;
use crate::diff::packages::{Change, PackageChange, PackageDiff, SizeDelta};
use crate::diff::{HostDiff, Structural};
use crate::gates::{Gate, Goal, SwitchAction};
use crate::inventory::model::MaxFailures;
use crate::inventory::select::Group;
use crate::nix::StorePath;
use crate::plan::{Candidate, PlannedHost, PlannedWave, Refusal, Verdict};
use crate::remote::Exit;
use crate::report::stored::Stamped;
use crate::report::{CommandName, Event, HostEnd, HostSummary};
use crate::runner::{NotStarted, RunnerEvent};
use crate::state::run_report::RunReport;

pub const RUN_ID: &str = "20261122T203000Z-3f9a";
/// 2026-11-22T20:30:00Z.
pub const T0: u64 = 1_795_379_400_000;
pub const HOSTILE: &str = "<script>alert(1)</script>";

pub fn sp(c: char, name: &str) -> StorePath {
    StorePath::parse(&format!("/nix/store/{}-{name}", c.to_string().repeat(32))).unwrap()
}

pub struct Run {
    pub report: RunReport,
    pub events: Vec<Stamped>,
}

struct Builder {
    events: Vec<Stamped>,
}

impl Builder {
    fn at(&mut self, secs: f64, event: Event) {
        self.events.push(Stamped {
            at_ms: Some(T0 + (secs * 1000.0) as u64),
            event,
        });
    }
    fn gate(&mut self, host: &str, gate: Gate, from: f64, to: f64, evidence: GateEvidence) {
        let host = host.to_owned();
        self.at(
            from,
            Event::GateStarted {
                host: host.clone(),
                gate,
            },
        );
        self.at(
            to,
            Event::GatePassed {
                host,
                gate,
                evidence,
            },
        );
    }
}

fn switch(action: SwitchAction, secs: u64) -> SwitchEvidence {
    SwitchEvidence {
        unit: "nixgate-switch-r1".into(),
        action,
        closure: sp('b', "nixos-system-web"),
        elapsed: Duration::from_secs(secs),
        polls: 3,
    }
}

pub fn mark(host: &str) -> KnownGoodMark {
    KnownGoodMark {
        generation: 7,
        record_path: "/var/lib/nixgate/known-good/7.json".into(),
        record: KnownGoodRecord {
            version: 1,
            host: host.into(),
            generation: 7,
            replaced: Some(6),
            created: None,
            lineage: None,
            soak_pending: false,
            marked_on_host: None,
            rolled_back_from: None,
            closure: sp('b', "nixos-system-web"),
            marked_at: "2026-11-22T20:30:11Z".into(),
            commit: Some("3f2a9c1e0b7d".into()),
            run_id: RunId::parse(RUN_ID).unwrap(),
            gates: vec![GateRecord::new(
                Gate::HealthChecks,
                &serde_json::json!([{"command": "true", "attempts": [{"kind": "passed"}]}]),
            )],
        },
    }
}

pub fn diff(flake_input: &str) -> HostDiff {
    HostDiff {
        current: Some(sp('a', "nixos-system-web")),
        candidate: sp('b', "nixos-system-web"),
        packages: Some(PackageDiff {
            changes: vec![
                PackageChange {
                    name: "nginx".into(),
                    change: Change::Upgraded {
                        from: "1.24.0".into(),
                        to: "1.25.3".into(),
                    },
                    selected: true,
                },
                PackageChange {
                    name: "jq".into(),
                    change: Change::Added {
                        versions: vec!["1.7.1".into()],
                    },
                    selected: true,
                },
                PackageChange {
                    name: "curl".into(),
                    change: Change::Removed {
                        versions: vec!["8.5.0".into()],
                    },
                    selected: false,
                },
                PackageChange {
                    name: "openssl".into(),
                    change: Change::Rebuilt {
                        version: Some("3.0.13".into()),
                        old: vec![sp('c', "openssl-3.0.13")],
                        new: vec![sp('d', "openssl-3.0.13")],
                    },
                    selected: false,
                },
            ],
            size: SizeDelta {
                paths_added: 3,
                paths_removed: 2,
                bytes_added: 4 << 20,
                bytes_removed: 1 << 20,
                old_total: 300 << 20,
                new_total: 303 << 20,
            },
        }),
        structural: Structural::Explained {
            old_drv: sp('g', "nixos-system-web.drv"),
            new_drv: sp('f', "nixos-system-web.drv"),
            causes: vec![crate::diff::structural::Cause::Env {
                key: "configureFlags".into(),
                old: Some("--with-http_ssl_module".into()),
                new: Some(format!("--with-http_v2_module {HOSTILE}")),
            }],
        },
        drift: vec![],
        flake_inputs: Some(vec![InputChange::Added {
            name: flake_input.into(),
            rev: Some("0123456789abcdef".into()),
        }]),
        flake_inputs_unknown: None,
        unvalidated: false,
        rolled_back: None,
        candidate_closure: None,
    }
}

fn group(name: &str, hosts: &[String]) -> Group {
    Group {
        name: name.into(),
        hosts: hosts.to_vec(),
        max_parallel: 10,
        max_failures: MaxFailures::Count(0),
        soak: Duration::ZERO,
        adhoc: false,
    }
}

fn planned(hosts: &[String], refused: &str) -> Vec<PlannedHost> {
    hosts
        .iter()
        .map(|h| PlannedHost {
            host: h.clone(),
            verdict: if h == refused {
                Verdict::Refused {
                    refusal: Refusal::Drift {
                        packages: vec!["curl".into()],
                    },
                }
            } else {
                Verdict::Ready {
                    candidate: Candidate {
                        closure: sp('b', "nixos-system-web"),
                        earlier_gates: vec![],
                        generation: None,
                        never_validated: false,
                        commit: None,
                    },
                    running: Some(sp('a', "nixos-system-web")),
                }
            },
        })
        .collect()
}

/// The hosts: `web1` (canary, known-good); in `main`: `web2` (rolled back),
/// `web3` (pending reboot), [`HOSTILE`] (known-good), `db1` (refused) and
/// `extra` more known-good `node<i>`; `web4` in `last` (not started).
pub fn run(extra: usize) -> Run {
    let canary = vec!["web1".to_owned()];
    let mut main: Vec<String> = ["web2", "web3", HOSTILE, "db1"].map(String::from).into();
    main.extend((0..extra).map(|i| format!("node{i}")));
    let last = vec!["web4".to_owned()];
    let all: Vec<String> = canary.iter().chain(&main).chain(&last).cloned().collect();
    let mut b = Builder { events: vec![] };
    b.at(
        0.0,
        Event::RunStarted {
            run_id: RUN_ID.into(),
            command: CommandName::Push,
            goal: Goal::Gated,
            commit: Some("3f2a9c1e0b7d44".into()),
            dirty: false,
            hosts: all.clone(),
            at: "2026-11-22T20:30:00Z".into(),
        },
    );
    b.at(0.1, Event::BuildStarted { hosts: all.clone() });
    for (i, h) in all.iter().enumerate() {
        b.at(
            1.0 + i as f64 * 0.001,
            Event::HostBuilt {
                host: h.clone(),
                toplevel: sp('b', "nixos-system-web"),
                drv: sp('f', "nixos-system-web.drv"),
            },
        );
    }
    b.at(
        1.5,
        Event::BuildFinished {
            built: all.len(),
            failed: 0,
            seconds: 1.4,
        },
    );
    for h in &all {
        let input = if h == "web2" { HOSTILE } else { "nixpkgs" };
        b.at(
            2.0,
            Event::Diff {
                host: h.clone(),
                diff: diff(input),
            },
        );
    }
    let waves = vec![
        PlannedWave {
            group: group("canary", &canary),
            planned: planned(&canary, ""),
        },
        PlannedWave {
            group: group("main", &main),
            planned: planned(&main, "db1"),
        },
        PlannedWave {
            group: group("last", &last),
            planned: planned(&last, ""),
        },
    ];
    b.at(
        2.5,
        Event::PlanReady {
            goal: Goal::Gated,
            waves,
            cancelled: None,
        },
    );
    let mut hosts = Vec::new();
    // canary
    b.at(3.0, runner_wave_started("canary", &canary));
    known_good(&mut b, "web1", 3.0, &mut hosts, "canary");
    b.at(
        9.0,
        Event::Runner(RunnerEvent::SoakStarted {
            wave: "canary".into(),
            seconds: 5,
        }),
    );
    b.at(
        14.0,
        Event::Runner(RunnerEvent::SoakChecked {
            wave: "canary".into(),
            host: "web1".into(),
            healthy: true,
        }),
    );
    b.at(
        14.0,
        Event::Runner(RunnerEvent::WaveFinished {
            wave: "canary".into(),
            failures: 0,
            allowed: 0,
            stops_run: false,
        }),
    );
    // main
    b.at(14.5, runner_wave_started("main", &main));
    let refused = summary(
        "db1",
        "main",
        HostEnd::Refused {
            refusal: Refusal::Drift {
                packages: vec!["curl".into()],
            },
        },
    );
    b.at(14.5, Event::HostFinished(refused.clone()));
    hosts.push(refused);
    rolled_back(&mut b, &mut hosts);
    deferred(&mut b, &mut hosts);
    known_good(&mut b, HOSTILE, 14.6, &mut hosts, "main");
    for i in 0..extra {
        known_good(&mut b, &format!("node{i}"), 14.6, &mut hosts, "main");
    }
    b.at(
        25.0,
        Event::Runner(RunnerEvent::WaveFinished {
            wave: "main".into(),
            failures: 3,
            allowed: 0,
            stops_run: true,
        }),
    );
    let why = NotStarted::EarlierWaveFailed {
        wave: "main".into(),
    };
    b.at(
        25.0,
        Event::Runner(RunnerEvent::HostNotStarted {
            host: "web4".into(),
            wave: "last".into(),
            why: why.clone(),
        }),
    );
    let not_started = summary("web4", "last", HostEnd::NotStarted { why });
    b.at(25.0, Event::HostFinished(not_started.clone()));
    hosts.push(not_started);
    b.at(
        25.1,
        Event::ReportWritten {
            path: format!("/var/lib/nixgate/runs/{RUN_ID}.json").into(),
        },
    );
    Run {
        report: RunReport {
            run_id: RUN_ID.into(),
            command: "push".into(),
            goal: Goal::Gated,
            commit: Some("3f2a9c1e0b7d44".into()),
            dirty: false,
            user: Some("ops@controller".into()),
            started: "2026-11-22T20:30:00Z".into(),
            finished: Some("2026-11-22T20:30:25Z".into()),
            exit_code: Some(1),
            ending: Some(crate::report::Ending::Completed),
            selected: all,
            hosts,
        },
        events: b.events,
    }
}

fn runner_wave_started(wave: &str, hosts: &[String]) -> Event {
    Event::Runner(RunnerEvent::WaveStarted {
        wave: wave.into(),
        hosts: hosts.to_vec(),
        max_parallel: 10,
    })
}

fn summary(host: &str, wave: &str, end: HostEnd) -> HostSummary {
    HostSummary {
        host: host.into(),
        wave: wave.into(),
        closure: Some(sp('b', "nixos-system-web")),
        end,
        seconds: 6.0,
        pending_reboot_allowed: false,
        soak_left: None,
    }
}

fn copy_and_dry(b: &mut Builder, h: &str, t: f64) {
    b.gate(
        h,
        Gate::Copy,
        t,
        t + 1.0,
        GateEvidence::Copy(crate::nix::copy::CopyOutcome::Copied {
            paths: 12,
            bytes: 3 << 20,
            fanout: None,
        }),
    );
    b.gate(
        h,
        Gate::DryActivate,
        t + 1.0,
        t + 2.0,
        GateEvidence::DryActivate(DryActivateReport {
            would_stop: vec![],
            would_not_stop: vec![],
            would_reload: vec![],
            would_restart: vec!["nginx.service".into()],
            would_start: vec![],
            would_restart_systemd: false,
            would_stop_swap: vec![],
        }),
    );
}

fn known_good(b: &mut Builder, h: &str, t: f64, hosts: &mut Vec<HostSummary>, wave: &str) {
    copy_and_dry(b, h, t);
    b.gate(
        h,
        Gate::LiveActivate,
        t + 2.0,
        t + 3.0,
        GateEvidence::LiveActivate(switch(SwitchAction::Test, 1)),
    );
    b.gate(
        h,
        Gate::HealthChecks,
        t + 3.0,
        t + 4.0,
        GateEvidence::HealthChecks {
            reports: vec![HealthReport {
                command: "curl -sf localhost".into(),
                attempts: vec![Attempt::Passed],
            }],
        },
    );
    b.gate(
        h,
        Gate::Persist,
        t + 4.0,
        t + 5.0,
        GateEvidence::Persist {
            profile: "/nix/var/nix/profiles/system".into(),
            closure: sp('b', "nixos-system-web"),
            boot: Some(switch(SwitchAction::Boot, 1)),
        },
    );
    b.gate(
        h,
        Gate::MarkKnownGood,
        t + 5.0,
        t + 5.5,
        GateEvidence::MarkKnownGood(mark(h)),
    );
    let s = summary(
        h,
        wave,
        HostEnd::activation(HostOutcome::KnownGood { mark: mark(h) }),
    );
    b.at(t + 5.5, Event::HostFinished(s.clone()));
    hosts.push(s);
}

fn rolled_back(b: &mut Builder, hosts: &mut Vec<HostSummary>) {
    let h = "web2";
    copy_and_dry(b, h, 14.6);
    b.gate(
        h,
        Gate::LiveActivate,
        16.6,
        17.6,
        GateEvidence::LiveActivate(switch(SwitchAction::Test, 1)),
    );
    b.at(
        17.6,
        Event::GateStarted {
            host: h.into(),
            gate: Gate::HealthChecks,
        },
    );
    let reason = FailureReason::HealthChecks {
        reports: vec![HealthReport {
            command: "curl -sf localhost".into(),
            attempts: vec![Attempt::Failed {
                exit: Exit::Code { code: 7 },
                tail: vec![format!("curl: (7) {HOSTILE}")],
            }],
        }],
    };
    b.at(
        20.0,
        Event::GateFailed {
            host: h.into(),
            gate: Gate::HealthChecks,
            reason: reason.clone(),
        },
    );
    let to = sp('a', "nixos-system-web");
    b.at(
        20.0,
        Event::Activation {
            host: h.into(),
            activation: ActivationEvent::RollbackStarted {
                to: to.clone(),
                mode: RollbackMode::Live,
            },
        },
    );
    b.at(
        22.0,
        Event::Activation {
            host: h.into(),
            activation: ActivationEvent::RollbackFinished {
                outcome: RollbackOutcome::RolledBack {
                    to: to.clone(),
                    mode: RollbackMode::Live,
                    evidence: Some(switch(SwitchAction::Test, 2)),
                },
            },
        },
    );
    let s = summary(
        h,
        "main",
        HostEnd::activation(HostOutcome::RolledBack {
            gate: Gate::HealthChecks,
            reason,
            to,
        }),
    );
    b.at(22.0, Event::HostFinished(s.clone()));
    hosts.push(s);
}

fn deferred(b: &mut Builder, hosts: &mut Vec<HostSummary>) {
    let h = "web3";
    copy_and_dry(b, h, 14.6);
    let reason = RebootReason::Components {
        changes: vec![crate::activation::inhibitors::ComponentChange {
            component: crate::activation::inhibitors::Component::Systemd,
            current: "255.4".into(),
            candidate: "256.1".into(),
        }],
    };
    b.at(
        16.6,
        Event::GateStarted {
            host: h.into(),
            gate: Gate::LiveActivate,
        },
    );
    b.at(
        16.8,
        Event::Activation {
            host: h.into(),
            activation: ActivationEvent::Deferred {
                reason: reason.clone(),
            },
        },
    );
    b.gate(
        h,
        Gate::Persist,
        16.8,
        18.0,
        GateEvidence::Persist {
            profile: "/nix/var/nix/profiles/system".into(),
            closure: sp('b', "nixos-system-web"),
            boot: Some(switch(SwitchAction::Boot, 1)),
        },
    );
    let s = summary(
        h,
        "main",
        HostEnd::activation(HostOutcome::DeferredPendingReboot { reason }),
    );
    b.at(18.0, Event::HostFinished(s.clone()));
    hosts.push(s);
}
