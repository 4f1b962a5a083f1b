//! Reporter tests: every event is a flat JSON object tagged `event` that a
//! strict parser accepts (no duplicate keys, whatever is nested), and the
//! human words for the ends people meet.

use super::*;
use crate::activation::detached::{RebootReason, RefusedFire, SwitchFailure};
use crate::activation::health::{Attempt, HealthReport};
use crate::activation::reactivate::{RollbackError, RollbackMode};
use crate::activation::{FailureReason, GateEvidence, HostOutcome, RollbackOutcome};
use crate::gates::Gate;
use crate::nix::StorePath;
use crate::plan::Refusal;
use crate::remote::Exit;
use crate::runner::{NotStarted, RunnerEvent};

fn sp(c: char) -> StorePath {
    StorePath::parse(&format!(
        "/nix/store/{}-nixos-system-x",
        c.to_string().repeat(32)
    ))
    .unwrap()
}

fn summary(end: HostEnd) -> HostSummary {
    HostSummary {
        host: "web1".into(),
        wave: "canary".into(),
        closure: Some(sp('b')),
        end,
        seconds: 1.5,
        pending_reboot_allowed: false,
        soak_left: None,
    }
}

fn ends() -> Vec<HostEnd> {
    let switch = FailureReason::Switch(SwitchFailure::FireRefused {
        attempts: vec![RefusedFire {
            unit: "nixgate-switch-r1-persist".into(),
            exit: Exit::Code { code: 1 },
            tail: vec!["Job for nixgate-switch-r1-persist.service failed".into()],
        }],
    });
    vec![
        HostEnd::activation(HostOutcome::RollbackFailed {
            gate: Gate::Persist,
            reason: switch.clone(),
            to: sp('a'),
            rollback_error: RollbackError::Switch(SwitchFailure::Exited {
                code: 4,
                seen: Some(sp('a')),
                log_tail: vec![],
            }),
        }),
        HostEnd::activation(HostOutcome::RolledBack {
            gate: Gate::LiveActivate,
            reason: FailureReason::NeedsReboot(RebootReason::SwitchInhibitors { log_tail: vec![] }),
            to: sp('a'),
        }),
        HostEnd::Refused {
            refusal: Refusal::Drift {
                packages: vec!["openssl".into()],
            },
        },
        HostEnd::Refused {
            refusal: Refusal::NoCurrentSystem {
                link: "/run/current-system".into(),
            },
        },
        HostEnd::NotStarted {
            why: NotStarted::EarlierWaveFailed {
                wave: "canary".into(),
            },
        },
        HostEnd::SoakFailed {
            checks: vec![HealthReport {
                command: "true".into(),
                attempts: vec![Attempt::Failed {
                    exit: Exit::Code { code: 3 },
                    tail: vec![],
                }],
            }],
            revoked: Some(2),
            rollback: Some(RollbackOutcome::Failed {
                to: sp('a'),
                mode: RollbackMode::Persistent,
                error: RollbackError::NeedsReboot(RebootReason::SwitchInhibitors {
                    log_tail: vec![],
                }),
            }),
            kept: None,
            locked_out: None,
        },
    ]
}

fn sample() -> Vec<Event> {
    let mut v = vec![
        Event::Runner(RunnerEvent::WaveStarted {
            wave: "canary".into(),
            hosts: vec!["web1".into()],
            max_parallel: 1,
        }),
        Event::GatePassed {
            host: "web1".into(),
            gate: Gate::Copy,
            evidence: GateEvidence::Copy(crate::nix::copy::CopyOutcome::AlreadyPresent),
        },
        Event::GateFailed {
            host: "web1".into(),
            gate: Gate::Persist,
            reason: FailureReason::Switch(SwitchFailure::FireUnconfirmed {
                error: "connection lost".into(),
            }),
        },
    ];
    let hosts: Vec<HostSummary> = ends().into_iter().map(summary).collect();
    v.extend(hosts.iter().cloned().map(Event::HostFinished));
    v.push(Event::Summary {
        command: CommandName::Push,
        run_id: Some("r1".into()),
        ending: Ending::Completed,
        exit_code: 1,
        ok: 0,
        failed: hosts.len(),
        hosts,
    });
    v
}

#[test]
fn json_events_are_tagged_flat_objects_that_strict_parsers_accept() {
    for ev in sample() {
        let text = serde_json::to_string(&ev).unwrap();
        json::check_strict(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["event"], ev.name(), "{v}");
        assert!(event::EVENT_NAMES.contains(&ev.name()));
    }
    let v = serde_json::to_value(&sample()[0]).unwrap();
    assert_eq!(v["event"], "wave_started");
    assert_eq!(v["wave"], "canary");
    let v = serde_json::to_value(&sample()[3]).unwrap();
    assert_eq!(v["event"], "host_finished");
    assert_eq!(v["outcome"], "rollback-failed");
    assert_eq!(v["end"], "activation");
    assert_eq!(v["activation"]["reason"]["kind"], "switch");
    assert_eq!(v["activation"]["reason"]["detail"]["kind"], "fire_refused");
}

#[test]
fn every_end_has_words_and_a_kind() {
    for end in ends() {
        let words = human::words::end(&end, &human::labels::Labels::default())
            .expect("words for every failing end");
        assert!(!words.is_empty());
        assert!(!words.contains("Some("), "no debug output: {words}");
        assert!(end.kind().fails_run(), "{end:?}");
    }
    let table = human::tables::summary_table(
        &[summary(HostEnd::activation(HostOutcome::Activated {
            goal: crate::gates::Goal::Switch,
        }))],
        &human::labels::Labels::default(),
    );
    assert!(
        table.to_string().contains("web1  canary  reached"),
        "{table}"
    );
}

#[test]
fn json_lines_with_paths_that_are_not_utf8_are_whole_lines_strict_parsers_accept() {
    use std::os::unix::ffi::OsStrExt;
    let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"/\xff.toml"));
    let events = [
        Event::ReportWritten { path: path.clone() },
        Event::InventoryOk {
            file: path.clone(),
            hosts: 1,
            selected: 1,
            builder: "builder".into(),
            waves: vec![],
            warnings: vec![],
        },
        Event::InventoryError(crate::inspect::InventoryProblem {
            file: path.clone(),
            line: Some(1),
            column: None,
            message: "bad".into(),
            help: None,
        }),
        Event::Checked(crate::inspect::Probe {
            host: "web1".into(),
            host_key: Some(crate::ssh::HostKeyStatus::LearnedNew { file: path.clone() }),
            ..Default::default()
        }),
    ];
    for ev in &events {
        let mut out = Vec::new();
        write_json_line(&mut out, ev).unwrap();
        let text = String::from_utf8(out).expect("UTF-8");
        let line = text
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("one line: {text:?}"));
        assert!(!line.contains('\n'), "{text:?}");
        json::check_strict(line).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(
            line.contains(r#""/\ufffd.toml""#) || line.contains("/\u{fffd}.toml"),
            "{line}"
        );
    }
}

/// A stdout that fails part-way through a line (a full disk): nothing is
/// written after it, so no line is appended to the fragment it left.
#[test]
fn no_json_line_after_a_write_that_failed() {
    /// Takes `room` bytes, then fails every write.
    struct Full {
        got: Vec<u8>,
        room: usize,
    }
    impl std::io::Write for Full {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::other("no space left on device"));
            }
            let n = b.len().min(self.room);
            self.got.extend_from_slice(&b[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let broken = std::sync::atomic::AtomicBool::new(false);
    let mut out = Full {
        got: Vec::new(),
        room: 20,
    };
    json_line_to(&mut out, &broken, &serde_json::json!({"event": "first"}));
    json_line_to(
        &mut out,
        &broken,
        &serde_json::json!({"event": "second", "long": "x".repeat(40)}),
    );
    out.room = 1000;
    json_line_to(&mut out, &broken, &serde_json::json!({"event": "third"}));
    let text = String::from_utf8(out.got).unwrap();
    assert_eq!(text, "{\"event\":\"first\"}\n{\"");
}
