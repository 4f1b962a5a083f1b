//! Pipeline tests against the stateful fake host, under paused time.

use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::activation::CutOff;
use crate::activation::detached::SwitchFailure;
use crate::activation::events::Phase;
use crate::activation::fake_host::{Behaviour, FakeHost, KNOWN_GOOD, SYSTEM, describe};
use crate::activation::health::HealthCheck;
use crate::activation::inhibitors::Component;
use crate::activation::privilege::SudoCheck;
use crate::activation::reactivate::RollbackError;
use crate::activation::settings::STEP_LIMIT;
use crate::remote::scripted::ScriptedRemote;

const OLD: &str = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.05";
const NEW: &str = "/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-nixos-system-web1-24.11";
const ODD: &str = "/nix/store/wsapfasykqjyaw5h4glxcsgprzxp7bjd-nixos-system-web1-other";

fn sp(s: &str) -> StorePath {
    StorePath::parse(s).unwrap()
}

fn request(goal: Goal) -> ActivationRequest {
    let mut settings = HostSettings::new(Os::Linux);
    settings.sudo = true;
    settings.activation_timeout = Duration::from_secs(60);
    settings.health_checks = vec![HealthCheck {
        command: "systemctl is-active nginx".into(),
        timeout: Duration::from_secs(10),
        retries: 0,
    }];
    ActivationRequest {
        settings,
        candidate: sp(NEW),
        goal,
        run_id: RunId::parse("r1").unwrap(),
        commit: Some("3f2a9c1".into()),
        earlier_gates: Vec::new(),
        known_good_generation: None,
        rolls_back: false,
        keys: Default::default(),
        planned_current: None,
    }
}

struct Ran {
    outcome: HostOutcome,
    events: Vec<ActivationEvent>,
    cmds: Vec<String>,
}

async fn run(host: &FakeHost, req: &ActivationRequest) -> Ran {
    run_with(host, req, &CancellationToken::new()).await
}

async fn run_with(host: &FakeHost, req: &ActivationRequest, cancel: &CancellationToken) -> Ran {
    run_holding(host, req, cancel, &Unlocked).await
}

async fn run_holding(
    host: &FakeHost,
    req: &ActivationRequest,
    cancel: &CancellationToken,
    hold: &dyn HostHold,
) -> Ran {
    let remote = host.remote();
    let events = Mutex::new(Vec::new());
    let outcome = activate_host(&remote, host, hold, req, cancel, &|e| {
        events.lock().unwrap().push(e)
    })
    .await;
    Ran {
        outcome,
        events: events.into_inner().unwrap(),
        cmds: remote.commands().iter().map(describe).collect(),
    }
}

fn count(cmds: &[String], prefix: &str) -> usize {
    cmds.iter().filter(|c| c.starts_with(prefix)).count()
}

/// The commands that arm a revert: an arm of its own, or a fire that arms.
fn arms(cmds: &[String]) -> Vec<&String> {
    cmds.iter()
        .filter(|c| c.contains("arm-revert") && !c.contains("disarm-revert"))
        .collect()
}

#[test]
fn the_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let host = FakeHost::new(&sp(OLD));
    let remote = host.remote();
    let req = request(Goal::Gated);
    let cancel = CancellationToken::new();
    let emit = |_e: ActivationEvent| {};
    let fut = activate_host(&remote, &host, &Unlocked, &req, &cancel, &emit);
    assert_send(&fut);
}

#[tokio::test(start_paused = true)]
async fn good_candidate_is_known_good_with_the_exact_sequence() {
    let host = FakeHost::new(&sp(OLD));
    let ran = run(&host, &request(Goal::Gated)).await;
    let HostOutcome::KnownGood { mark } = &ran.outcome else {
        panic!("{:?}", ran.outcome)
    };
    assert_eq!(mark.generation, 2);
    let want = [
        "sudo -n -- true".to_string(),
        format!("nix-store --realise {NEW}"),
        // An earlier run's units (none here): one round trip.
        format!("list-nixgate-units /run/nixgate {NEW}"),
        // The known-good read only when its generation has its record.
        format!("readlink-f /run/current-system {SYSTEM} {KNOWN_GOOD} /var/lib/nixgate/known-good"),
        format!("sudo -n -- {NEW}/bin/switch-to-configuration dry-activate"),
        // The critical components and the failed units: one command.
        format!("sudo compare-components /run/current-system {NEW}"),
        // The lock check, the fire and the first poll: one command (the
        // fake's job runs for two polls); the last poll reads the profile.
        format!("sudo fire --unit=nixgate-switch-r1 {NEW}/bin/switch-to-configuration test"),
        format!(
            "poll nixgate-switch-r1.service /run/nixgate/nixgate-switch-r1.status /run/current-system 20 {SYSTEM}"
        ),
        "timeout --kill-after=5 10 sh -c 'systemctl is-active nginx'".into(),
        // The profile is set by the fire, once the lock is free.
        format!(
            "sudo fire --unit=nixgate-switch-r1-persist {NEW}/bin/switch-to-configuration boot (set {SYSTEM} first)"
        ),
        format!(
            "poll nixgate-switch-r1-persist.service /run/nixgate/nixgate-switch-r1-persist.status /run/current-system 20 {SYSTEM}"
        ),
        // Profile, record (and a first mark's baseline): one command.
        format!("sudo mark-known-good {KNOWN_GOOD} {NEW} "),
    ];
    assert_eq!(ran.cmds, want);
    let st = host.state();
    assert_eq!(st.current, sp(NEW));
    assert_eq!(st.boot_default, sp(NEW));
    assert_eq!(st.profiles[KNOWN_GOOD], vec![sp(OLD), sp(NEW)]);
    let record: known_good::KnownGoodRecord = serde_json::from_str(&st.records["2"]).unwrap();
    assert_eq!(record.closure, sp(NEW));
    assert_eq!(record.commit.as_deref(), Some("3f2a9c1"));
    assert_eq!(
        record.gates.iter().map(|g| g.gate).collect::<Vec<_>>(),
        vec![
            Gate::DryActivate,
            Gate::LiveActivate,
            Gate::HealthChecks,
            Gate::Persist
        ]
    );
    let passed: Vec<Gate> = ran
        .events
        .iter()
        .filter_map(|e| match e {
            ActivationEvent::GatePassed { gate, .. } => Some(*gate),
            _ => None,
        })
        .collect();
    assert_eq!(passed, Goal::Gated.host_gates());
}

#[tokio::test(start_paused = true)]
async fn exit_4_rolls_back_live_and_leaves_the_boot_default() {
    let host = candidate_that(Behaviour {
        exit: 4,
        ..Default::default()
    });
    let ran = run(&host, &request(Goal::Gated)).await;
    match &ran.outcome {
        HostOutcome::RolledBack { gate, reason, to } => {
            assert_eq!(*gate, Gate::LiveActivate);
            assert_eq!(to, &sp(OLD));
            let FailureReason::Switch(SwitchFailure::Exited {
                code,
                seen,
                log_tail,
            }) = reason
            else {
                panic!("{reason:?}")
            };
            assert_eq!((*code, seen.clone()), (4, Some(sp(NEW))));
            assert!(
                log_tail.iter().any(|l| l.contains("units failed")),
                "{log_tail:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!ran.outcome.is_success());
    assert_eq!(
        count(&ran.cmds, &format!("sudo -n -- nix-env -p {SYSTEM}")),
        0
    );
    assert_eq!(
        count(
            &ran.cmds,
            &format!(
                "sudo fire --unit=nixgate-switch-r1-rollback {OLD}/bin/switch-to-configuration test"
            )
        ),
        1
    );
    assert!(
        !ran.cmds
            .iter()
            .any(|c| c.ends_with(" boot") || c.ends_with(" switch"))
    );
    // The unit the candidate broke is reset before the old system's switch,
    // which would otherwise exit 4 for it too.
    let reset = "sudo -n -- systemctl reset-failed -- nginx.service";
    let fire_rollback = format!("sudo fire --unit=nixgate-switch-r1-rollback {OLD}");
    let pos = |p: &str| ran.cmds.iter().position(|c| c.starts_with(p));
    assert!(
        pos(reset) < pos(&fire_rollback) && pos(reset).is_some(),
        "{:#?}",
        ran.cmds
    );
    let st = host.state();
    assert_eq!(st.current, sp(OLD));
    assert_eq!(st.boot_default, sp(OLD));
    assert_eq!(st.profiles[SYSTEM], vec![sp(OLD)]);
    assert!(st.failed_units.is_empty());
}

#[tokio::test]
async fn units_failing_before_the_deploy_are_left_alone_and_do_not_fail_the_rollback() {
    let host = FakeHost::new(&sp(OLD));
    host.state().failed_units.insert("backup.service".into());
    host.behave(
        &sp(NEW),
        Behaviour {
            exit: 4,
            ..Default::default()
        },
    );
    let ran = run(&host, &request(Goal::Gated)).await;
    assert_eq!(
        count(
            &ran.cmds,
            "sudo -n -- systemctl reset-failed -- nginx.service"
        ),
        1,
        "only what this deploy broke is reset: {:#?}",
        ran.cmds
    );
    assert_back_with_backup_still_failing(&host, &ran);
}

/// The rollback's exit 4 is accepted only for units failing before the
/// deploy: a unit crash-looping after it (stuck in `auto-restart` after a
/// non-zero exit, not `failed`, yet counted by the switch's own exit 4) is
/// one the rollback did not bring back, not "back where the host was".
#[tokio::test]
async fn a_rollback_leaving_a_unit_crash_looping_is_not_rolled_back() {
    let host = FakeHost::new(&sp(OLD));
    host.state().failed_units.insert("backup.service".into());
    let failing = Behaviour {
        exit: 4,
        ..Default::default()
    };
    host.behave(&sp(NEW), failing);
    let looping = Behaviour {
        crash_loops: true,
        ..Default::default()
    };
    host.behave(&sp(OLD), looping);
    let ran = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(&ran.outcome, HostOutcome::RollbackFailed { .. }),
        "{:?}",
        ran.outcome
    );
    assert!(host.state().restarting_units.contains("app.service"));
}

/// A good candidate on a host where a unit has been failing since before
/// the deploy: `switch-to-configuration` starts it again with its target,
/// it fails again, and the switch exits 4. Not passed (the same exit 4
/// could hide a failed reload): rolled back, the rollback's own exit 4
/// accepted, and the warning names the unit that was failing before.
#[tokio::test]
async fn a_switch_exiting_4_for_a_unit_failing_before_is_rolled_back_and_says_why() {
    let host = FakeHost::new(&sp(OLD));
    host.state().failed_units.insert("backup.service".into());
    let ran = run(&host, &request(Goal::Gated)).await;
    assert_back_with_backup_still_failing(&host, &ran);
}

/// Rolled back to OLD, the rollback's exit 4 for `backup.service` (failing
/// before the deploy) accepted with a warning naming it, left failing.
fn assert_back_with_backup_still_failing(host: &FakeHost, ran: &Ran) {
    assert!(
        matches!(&ran.outcome, HostOutcome::RolledBack { to, .. } if *to == sp(OLD)),
        "{:?}",
        ran.outcome
    );
    assert!(ran.events.iter().any(|e| matches!(
        e,
        ActivationEvent::Warning {
            warning: Warning::UnitsFailedBeforeDeploy { units }
        } if units == &["backup.service".to_string()]
    )));
    let st = host.state();
    assert_eq!(st.current, sp(OLD));
    assert!(st.failed_units.contains("backup.service"));
}

#[tokio::test(start_paused = true)]
async fn hang_times_out_is_stopped_and_rolled_back() {
    let host = candidate_that(Behaviour {
        hang: true,
        ..Default::default()
    });
    let started = tokio::time::Instant::now();
    let ran = run(&host, &request(Goal::Gated)).await;
    match &ran.outcome {
        HostOutcome::RolledBack {
            reason: FailureReason::Switch(SwitchFailure::Timeout { elapsed, .. }),
            to,
            ..
        } => {
            // One budget from firing: the last wait is cut to end at the
            // 60 s deadline, and the poll there decides.
            assert_eq!(*elapsed, Duration::from_secs(60));
            assert_eq!(to, &sp(OLD));
        }
        other => panic!("{other:?}"),
    }
    // The whole activation, the rollback included (its own switch settles
    // within a few polls), stays within the budget plus a poll interval
    // and the rollback's own polls.
    assert!(
        started.elapsed() < Duration::from_secs(60 + 2 + 2),
        "{:?}",
        started.elapsed()
    );
    let stop = ran
        .cmds
        .iter()
        .position(|c| c == "sudo stop-unit nixgate-switch-r1.service");
    let fire = ran
        .cmds
        .iter()
        .position(|c| c.contains("nixgate-switch-r1-rollback"));
    assert!(stop.unwrap() < fire.unwrap(), "{:#?}", ran.cmds);
}

/// The rollback's own switch hangs too (the candidate failed its health
/// check; the old system's switch never ends): it is stopped at its
/// deadline, as the candidate's is, and the host ends `rollback-failed`
/// with nothing of nixgate's left running on it (before: the rollback's
/// unit ran on, holding the switch lock). The stop's first answer lost, it
/// is asked again, with the activation budget from the stop on (the
/// rollback's own had run out at its switch's deadline: one try, and
/// `switch_not_stopped` with the unit running).
#[tokio::test(start_paused = true)]
async fn a_rollback_whose_own_switch_hangs_is_stopped() {
    let stop = "sudo stop-unit nixgate-switch-r1-rollback.service";
    for lose_once in [false, true] {
        let host = FakeHost::new(&sp(OLD));
        host.state().unhealthy_after = Some(0);
        let b = Behaviour {
            hang: true,
            ..Default::default()
        };
        host.behave(&sp(OLD), b);
        if lose_once {
            host.state().lose.push((stop.to_owned(), false));
        }
        let ran = run(&host, &request(Goal::Gated)).await;
        match &ran.outcome {
            HostOutcome::RollbackFailed {
                gate: Gate::HealthChecks,
                rollback_error: RollbackError::Switch(SwitchFailure::Timeout { .. }),
                ..
            } => {}
            other => panic!("{lose_once}: {other:?}: {:#?}", ran.cmds),
        }
        let asked = 1 + usize::from(lose_once);
        assert_eq!(count(&ran.cmds, stop), asked, "{:#?}", ran.cmds);
        let st = host.state();
        assert!(st.jobs.values().all(|j| !j.running), "{:?}", st.jobs);
        assert!(!st.lock_held);
    }
}

#[tokio::test(start_paused = true)]
async fn flip_to_unexpected_rolls_back() {
    let host = candidate_that(Behaviour {
        flip_to: Some(sp(ODD)),
        ..Default::default()
    });
    let ran = run(&host, &request(Goal::Switch)).await;
    match &ran.outcome {
        HostOutcome::RolledBack {
            reason: FailureReason::Switch(SwitchFailure::FlippedToUnexpected { seen, .. }),
            to,
            ..
        } => {
            assert_eq!(seen, &sp(ODD));
            assert_eq!(to, &sp(OLD));
        }
        other => panic!("{other:?}"),
    }
    // `switch` had changed the boot default: the rollback restores it.
    assert!(ran.cmds.contains(&format!(
        "sudo fire --unit=nixgate-switch-r1-rollback {OLD}/bin/switch-to-configuration switch"
    )));
    let st = host.state();
    assert_eq!(
        (st.current.clone(), st.boot_default.clone()),
        (sp(OLD), sp(OLD))
    );
}

#[tokio::test(start_paused = true)]
async fn re_pointed_profile_is_corrected() {
    let host = candidate_that(Behaviour {
        repoint_profile_to: Some(sp(ODD)),
        ..Default::default()
    });
    let ran = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(ran.outcome, HostOutcome::KnownGood { .. }),
        "{:?}",
        ran.outcome
    );
    let warnings: Vec<&Warning> = ran
        .events
        .iter()
        .filter_map(|e| match e {
            ActivationEvent::Warning { warning } => Some(warning),
            _ => None,
        })
        .collect();
    assert_eq!(
        warnings[0],
        &Warning::Profile {
            profile: SYSTEM.into(),
            check: profile::ProfileCheck::Corrected {
                found: Some(sp(ODD)),
                restored: sp(OLD)
            }
        }
    );
    assert_eq!(host.state().profile(SYSTEM), Some(&sp(NEW)));
}

#[tokio::test(start_paused = true)]
async fn systemd_change_defers_to_boot() {
    let host = FakeHost::new(&sp(OLD));
    host.behave(&sp(NEW), Behaviour::systemd_change());
    let ran = run(&host, &request(Goal::Gated)).await;
    match &ran.outcome {
        HostOutcome::DeferredPendingReboot {
            reason: RebootReason::Components { changes },
        } => {
            assert_eq!(
                changes.iter().map(|c| c.component).collect::<Vec<_>>(),
                vec![Component::Systemd, Component::SystemdBinary]
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(ran.outcome.is_success());
    assert!(!ran.cmds.iter().any(|c| c.ends_with(" test")), "never live");
    assert!(ran.cmds.contains(&format!(
        "sudo fire --unit=nixgate-switch-r1-persist {NEW}/bin/switch-to-configuration boot (set {SYSTEM} first)"
    )));
    let st = host.state();
    assert_eq!(
        (st.current.clone(), st.boot_default.clone()),
        (sp(OLD), sp(NEW))
    );
}

/// A change that reboots the host, then marks it. The reboot empties
/// `/run/keys`, so every key is written again after it, the
/// post-activation ones for the first time (before: none after the
/// reboot, and the host was certified without its keys).
#[tokio::test(start_paused = true)]
async fn systemd_change_with_reboot_allowed_reboots_and_marks() {
    let host = FakeHost::new(&sp(OLD));
    host.behave(&sp(NEW), Behaviour::systemd_change());
    let mut req = keyed(Goal::Gated);
    req.settings.allow_reboot = true;
    let ran = run(&host, &req).await;
    assert!(
        matches!(ran.outcome, HostOutcome::KnownGood { .. }),
        "{:?}",
        ran.outcome
    );
    let c = &ran.cmds;
    assert!(c.contains(&"sudo -n -- systemd-run --unit=nixgate-reboot-r1 --on-active=3 --collect --no-ask-password systemctl reboot".to_string()));
    assert!(c.contains(&"readlink-f /run/booted-system /run/current-system".to_string()));
    assert_eq!(host.state().booted, sp(NEW));
    let reboot = at(c, "sudo -n -- systemd-run --unit=nixgate-reboot-r1");
    let writes = |key: &str| {
        c.iter()
            .enumerate()
            .filter(|(_, x)| x.starts_with(&format!("sudo write-key /run/keys {key}")))
            .map(|(i, _)| i > reboot)
            .collect::<Vec<_>>()
    };
    assert_eq!(writes("pre.key"), [false, true], "{c:#?}");
    assert_eq!(writes("post.key"), [true], "{c:#?}");
    assert!(at(c, "timeout --kill-after=5") > reboot);
}

#[tokio::test(start_paused = true)]
async fn native_inhibitor_message_defers_to_boot() {
    // Switch goal: the 25.11 refusal comes from the fired switch itself.
    let host = FakeHost::new(&sp(OLD));
    host.inhibited(&sp(NEW));
    let ran = run(&host, &request(Goal::Switch)).await;
    assert!(
        matches!(
            ran.outcome,
            HostOutcome::DeferredPendingReboot {
                reason: RebootReason::SwitchInhibitors { .. }
            }
        ),
        "{:?}",
        ran.outcome
    );
    assert!(ran.cmds.contains(&format!(
        "sudo fire --unit=nixgate-switch-r1-persist {NEW}/bin/switch-to-configuration boot"
    )));
    assert_eq!(
        count(&ran.cmds, "sudo fire --unit=nixgate-switch-r1-rollback"),
        0,
        "no rollback"
    );
    assert_eq!(host.state().boot_default, sp(NEW));
    assert_eq!(host.state().current, sp(OLD));

    // Gated goal: dry-activate already reports it; nothing is fired live.
    let host = FakeHost::new(&sp(OLD));
    host.inhibited(&sp(NEW));
    let ran = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(ran.outcome, HostOutcome::DeferredPendingReboot { .. }),
        "{:?}",
        ran.outcome
    );
    assert!(!ran.cmds.iter().any(|c| c.ends_with(" test")));
}

#[tokio::test(start_paused = true)]
async fn an_incompatible_init_defers_to_boot_for_every_live_goal() {
    // Both switch-to-configurations check the init interface before the
    // dry-activate branch: the gated goal heard exit 100 at dry-activate
    // and failed the host, where `--goal switch` deferred it to boot.
    for goal in [Goal::Switch, Goal::Gated] {
        let host = FakeHost::new(&sp(OLD));
        host.init_incompatible(&sp(NEW));
        let ran = run(&host, &request(goal)).await;
        assert!(
            matches!(
                ran.outcome,
                HostOutcome::DeferredPendingReboot {
                    reason: RebootReason::InitInterfaceChanged { .. }
                }
            ),
            "{goal}: {:?}",
            ran.outcome
        );
        assert_eq!(host.state().boot_default, sp(NEW), "{goal}");
        assert_eq!(host.state().current, sp(OLD), "{goal}");
        assert_eq!(
            count(&ran.cmds, "sudo fire --unit=nixgate-switch-r1-rollback"),
            0,
            "{goal}: no rollback"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn connection_lost_mid_poll_still_known_good() {
    let host = FakeHost::new(&sp(OLD));
    host.state().drop_polls = vec![1, 2];
    let ran = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(ran.outcome, HostOutcome::KnownGood { .. }),
        "{:?}",
        ran.outcome
    );
    let lost = ran
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                ActivationEvent::ConnectionLost {
                    phase: Phase::Poll,
                    ..
                }
            )
        })
        .count();
    assert_eq!(lost, 2);
}

#[tokio::test(start_paused = true)]
async fn already_current_is_verified_and_marked_not_switched() {
    let host = FakeHost::new(&sp(NEW));
    let ran = run(&host, &request(Goal::Gated)).await;
    match &ran.outcome {
        HostOutcome::AlreadyCurrent { mark: Some(m), .. } => assert_eq!(m.record.closure, sp(NEW)),
        other => panic!("{other:?}"),
    }
    assert_eq!(count(&ran.cmds, "sudo fire"), 0);
    assert_eq!(count(&ran.cmds, "timeout "), 1, "health checked");
    assert_eq!(host.state().sessions, 2, "proven over a new connection");
}

/// A host left running NEW by an earlier run `r0` whose controller was
/// killed before it read its switch's result: `switch-to-configuration
/// test` exited `exit` (its job's record), no revert armed (magic rollback
/// off).
fn left_on_new_by_a_killed_run(exit: u32) -> FakeHost {
    let host = FakeHost::new(&sp(OLD));
    let job = crate::activation::fake_host::Job {
        status: format!("exited {exit}"),
        running: false,
        ..crate::activation::fake_host::Job::running_test(&sp(NEW))
    };
    let mut st = host.state();
    st.current = sp(NEW);
    st.jobs.insert("nixgate-switch-r0".into(), job);
    drop(st);
    host
}

/// The host already runs NEW, but nixgate's last switch to it (an earlier
/// run's, whose controller was killed before it read the result) exited 4:
/// not certified as it is (before: `already-current`, marked known-good
/// without a switch), but switched again through the live gates. Its
/// units starting this time, it is known-good; failing again, rolled back
/// to the last known-good (OLD), as the earlier run would have done.
#[tokio::test(start_paused = true)]
async fn already_current_after_a_failed_switch_of_it_is_switched_again() {
    for fails_again in [false, true] {
        let host = left_on_new_by_a_killed_run(4);
        if fails_again {
            let b = Behaviour {
                exit: 4,
                ..Default::default()
            };
            host.behave(&sp(NEW), b);
        }
        let ran = run(&host, &request(Goal::Gated)).await;
        let again = ran.events.iter().any(|e| {
            matches!(e, ActivationEvent::Step { step: Step::SwitchAgain { unit, exit: Some(4) } }
                if unit == "nixgate-switch-r0")
        });
        assert!(again, "fails again {fails_again}: {:#?}", ran.events);
        let fire =
            format!("sudo fire --unit=nixgate-switch-r1 {NEW}/bin/switch-to-configuration test");
        assert_eq!(count(&ran.cmds, &fire), 1, "{:#?}", ran.cmds);
        match (&ran.outcome, fails_again) {
            (HostOutcome::KnownGood { mark }, false) => assert_eq!(mark.record.closure, sp(NEW)),
            (
                HostOutcome::RolledBack {
                    gate: Gate::LiveActivate,
                    to,
                    ..
                },
                true,
            ) => {
                assert_eq!(to, &sp(OLD));
                assert_eq!(host.state().current, sp(OLD));
            }
            (other, _) => panic!("fails again {fails_again}: {other:?}"),
        }
    }
}

/// Switched again and failing again on a host with no known-good but the
/// candidate (it is the known-good, or the host has none yet): nothing to
/// go back to, the host needs a person. Before, the candidate that had
/// just failed was re-activated and reported a verified rollback to it
/// (its units failing again passed as failing before).
#[tokio::test(start_paused = true)]
async fn switched_again_and_failing_with_no_other_known_good_has_no_rollback() {
    let host = left_on_new_by_a_killed_run(4);
    host.behave(
        &sp(NEW),
        Behaviour {
            exit: 4,
            ..Default::default()
        },
    );
    host.state().set_profile(KNOWN_GOOD, &sp(NEW));
    let ran = run(&host, &request(Goal::Gated)).await;
    match &ran.outcome {
        HostOutcome::RollbackFailed {
            gate: Gate::LiveActivate,
            to,
            rollback_error: RollbackError::NoTarget,
            ..
        } => assert_eq!(to, &sp(NEW)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        count(&ran.cmds, "sudo fire --unit=nixgate-switch-r1-rollback"),
        0
    );
}

/// The same host whose last switch to NEW went well, or whose run asks no
/// live switch (`--goal boot`): already current, not switched again.
#[tokio::test(start_paused = true)]
async fn already_current_after_a_good_switch_of_it_is_not_switched_again() {
    for (exit, goal) in [(0, Goal::Gated), (4, Goal::Boot)] {
        let host = left_on_new_by_a_killed_run(exit);
        let ran = run(&host, &request(goal)).await;
        assert!(
            matches!(ran.outcome, HostOutcome::AlreadyCurrent { .. }),
            "{goal:?}: {:?}",
            ran.outcome
        );
        let live = format!("sudo fire --unit=nixgate-switch-r1 {NEW}");
        assert_eq!(count(&ran.cmds, &live), 0, "{goal:?}: {:#?}", ran.cmds);
    }
}

/// A host already running the candidate whose boot default this run
/// moved (it was OLD: an earlier `--goal test`) and whose mark then fails:
/// not certified, and the boot default goes back to OLD, boot only (it
/// runs NEW as before). Before: failed with the candidate left the boot
/// default, never proven by a mark.
#[tokio::test(start_paused = true)]
async fn already_current_whose_mark_fails_gets_its_boot_default_back() {
    let host = FakeHost::new(&sp(OLD));
    host.state().current = sp(NEW);
    host.state()
        .break_once
        .push(format!("sudo mark-known-good {KNOWN_GOOD} {NEW} "));
    let ran = run(&host, &request(Goal::Gated)).await;
    match &ran.outcome {
        HostOutcome::RolledBack {
            gate: Gate::MarkKnownGood,
            to,
            ..
        } => assert_eq!(*to, sp(OLD)),
        other => panic!("{other:?}: {:#?}", ran.cmds),
    }
    let st = host.state();
    assert_eq!(st.boot_default, sp(OLD));
    assert_eq!(st.profile(SYSTEM), Some(&sp(OLD)));
    assert_eq!(st.current, sp(NEW));
}

/// The same for a rollback's target (a known-good generation, re-selected
/// by the mark): a failed mark leaves the boot default on the proven
/// target, not on the system the rollback was moving away from.
#[tokio::test(start_paused = true)]
async fn a_rollback_target_whose_mark_fails_keeps_its_boot_default() {
    let host = FakeHost::new(&sp(OLD));
    {
        let mut st = host.state();
        st.current = sp(NEW);
        st.set_profile(KNOWN_GOOD, &sp(NEW));
    }
    host.state()
        .break_once
        .push(format!("sudo mark-known-good {KNOWN_GOOD} {NEW} 2"));
    let mut req = request(Goal::Gated);
    req.known_good_generation = Some(2);
    req.rolls_back = true;
    let ran = run(&host, &req).await;
    match &ran.outcome {
        HostOutcome::NotMarked {
            reason: FailureReason::MarkKnownGood { .. },
            ..
        } => {}
        other => panic!("{other:?}: {:#?}", ran.cmds),
    }
    let st = host.state();
    assert_eq!(st.boot_default, sp(NEW));
    assert_eq!(st.current, sp(NEW));
}

/// A rollback that switched the host (NEW, marked known-good, back to
/// generation 1, OLD) and passed every gate but its mark: it stays on OLD,
/// live and boot, `not_marked` (before: "rolled back" to the known-good,
/// NEW, the very system the operator was rolling away from).
#[tokio::test(start_paused = true)]
async fn a_rollback_whose_mark_fails_stays_on_its_target() {
    let host = FakeHost::new(&sp(OLD));
    let pushed = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(pushed.outcome, HostOutcome::KnownGood { .. }),
        "{:?}",
        pushed.outcome
    );
    host.state()
        .break_once
        .push(format!("sudo mark-known-good {KNOWN_GOOD} {OLD} 1"));
    let mut req = request(Goal::Gated);
    req.candidate = sp(OLD);
    req.known_good_generation = Some(1);
    req.rolls_back = true;
    let ran = run(&host, &req).await;
    match &ran.outcome {
        HostOutcome::NotMarked {
            reason: FailureReason::MarkKnownGood { .. },
            generation: Some(1),
        } => {}
        other => panic!("{other:?}: {:#?}", ran.cmds),
    }
    assert!(ran.events.iter().any(|e| matches!(
        e,
        ActivationEvent::GateFailed {
            gate: Gate::MarkKnownGood,
            ..
        }
    )));
    let st = host.state();
    assert_eq!((&st.current, &st.boot_default), (&sp(OLD), &sp(OLD)));
    assert_eq!(st.profile(SYSTEM), Some(&sp(OLD)));
}

/// A rollback (NEW, marked known-good, back to generation 1, OLD) marks
/// the system it took the host away from; a push's mark names none.
#[tokio::test(start_paused = true)]
async fn a_rollback_marks_the_system_it_left() {
    let host = FakeHost::new(&sp(OLD));
    let pushed = run(&host, &request(Goal::Gated)).await;
    let HostOutcome::KnownGood { mark } = &pushed.outcome else {
        panic!("{:?}", pushed.outcome);
    };
    assert_eq!(mark.record.rolled_back_from, None);
    let mut req = request(Goal::Gated);
    req.candidate = sp(OLD);
    req.known_good_generation = Some(1);
    req.rolls_back = true;
    let ran = run(&host, &req).await;
    let HostOutcome::KnownGood { mark } = &ran.outcome else {
        panic!("{:?}: {:#?}", ran.outcome, ran.cmds);
    };
    assert_eq!(mark.record.rolled_back_from, Some(sp(NEW)));
    assert!(host.state().records["1"].contains(&format!("\"rolled_back_from\":\"{NEW}\"")));
}

/// The candidate is the host's known-good closure (gen 1, NEW), the host
/// runs something else (OLD, a `--goal test` of it, unproven) and the
/// candidate fails its health checks: the rollback goes to what the host
/// ran, not "back" to the candidate that just failed (it was reported
/// rolled back while it ran NEW).
#[tokio::test(start_paused = true)]
async fn a_failed_known_good_candidate_is_never_the_rollback_target() {
    let host = FakeHost::new(&sp(NEW));
    {
        let mut st = host.state();
        st.current = sp(OLD);
        st.unhealthy_after = Some(0);
    }
    let ran = run(&host, &request(Goal::Gated)).await;
    match &ran.outcome {
        HostOutcome::RolledBack {
            gate: Gate::HealthChecks,
            to,
            ..
        } => assert_eq!(*to, sp(OLD)),
        other => panic!("{other:?}"),
    }
    assert_eq!(host.state().current, sp(OLD));
}

/// The same candidate passing every gate, its mark failing: that says
/// nothing against it, and the host stays on its known-good closure (not
/// sent back to the unproven system it left).
#[tokio::test(start_paused = true)]
async fn a_known_good_candidate_whose_mark_fails_stays() {
    let host = FakeHost::new(&sp(NEW));
    host.state().current = sp(OLD);
    host.state()
        .break_once
        .push(format!("sudo mark-known-good {KNOWN_GOOD} {NEW} "));
    let ran = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(
            ran.outcome,
            HostOutcome::RolledBack {
                gate: Gate::MarkKnownGood,
                ..
            }
        ),
        "{:?}",
        ran.outcome
    );
    assert_eq!(host.state().current, sp(NEW));
}

/// A host that already runs the candidate, which no new connection
/// reaches (an earlier switch, aborted, or one outside nixgate, locked
/// SSH out after this run's session was opened): not certified, not
/// persisted, nothing switched (it was marked known-good over the old
/// session, which sshd keeps).
#[tokio::test(start_paused = true)]
async fn already_current_without_new_connections_is_not_certified() {
    let host = FakeHost::new(&sp(OLD));
    {
        let mut st = host.state();
        st.current = sp(NEW);
        st.sshd_up = false;
    }
    let ran = run(&host, &request(Goal::Gated)).await;
    match &ran.outcome {
        HostOutcome::Failed {
            gate: Gate::LiveActivate,
            reason: FailureReason::Remote { step, .. },
        } => assert_eq!(*step, "confirm over a new connection"),
        other => panic!("{other:?}"),
    }
    let st = host.state();
    assert_eq!(st.profile(KNOWN_GOOD), Some(&sp(OLD)), "not marked");
    assert_eq!(st.boot_default, sp(OLD), "not persisted");
    assert_eq!(st.current, sp(NEW));
    assert!(
        !ran.cmds.iter().any(|c| c.contains(" fire ")),
        "{:#?}",
        ran.cmds
    );
}

#[tokio::test(start_paused = true)]
async fn failed_rollback_is_rollback_failed() {
    let host = candidate_that(Behaviour {
        exit: 4,
        ..Default::default()
    });
    host.behave(
        &sp(OLD),
        Behaviour {
            exit: 1,
            ..Default::default()
        },
    );
    let ran = run(&host, &request(Goal::Gated)).await;
    match &ran.outcome {
        HostOutcome::RollbackFailed {
            to,
            rollback_error: RollbackError::Switch(SwitchFailure::Exited { code, .. }),
            ..
        } => {
            assert_eq!((to, *code), (&sp(OLD), 1));
        }
        other => panic!("{other:?}"),
    }
    assert!(!ran.outcome.is_success());
    assert!(ran.outcome.needs_attention());
}

#[tokio::test(start_paused = true)]
async fn rollback_targets_the_last_known_good() {
    // Running ODD (changed by hand); the last known-good is OLD.
    let host = FakeHost::new(&sp(OLD));
    host.state().current = sp(ODD);
    host.behave(
        &sp(NEW),
        Behaviour {
            exit: 4,
            ..Default::default()
        },
    );
    let ran = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(&ran.outcome, HostOutcome::RolledBack { to, .. } if to == &sp(OLD)),
        "{:?}",
        ran.outcome
    );
}

/// The known-good profile on a generation whose mark never finished (the
/// host went down between `nix-env --set` and the record: no record), on
/// the very candidate that failed then: a failed deploy goes back to what
/// the host ran, never there (before: "rolled back" onto it, reported
/// back on its known-good).
#[tokio::test(start_paused = true)]
async fn a_known_good_without_its_record_is_never_a_rollback_target() {
    let host = FakeHost::new(&sp(OLD));
    host.state().set_profile(KNOWN_GOOD, &sp(ODD));
    host.behave(
        &sp(NEW),
        Behaviour {
            exit: 4,
            ..Default::default()
        },
    );
    let ran = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(&ran.outcome, HostOutcome::RolledBack { to, .. } if to == &sp(OLD)),
        "{:?}",
        ran.outcome
    );
    assert_eq!(host.state().current, sp(OLD));
}

/// The known-good (ODD) differs from the system the host runs (OLD: a
/// systemd update deferred to boot, never marked, then booted) in its
/// systemd: a failed candidate is rolled back to OLD, what the host ran,
/// not switched live onto ODD's older systemd (NixOS 25.11's inhibitors
/// refuse that switch: `rollback-failed`, the candidate left live).
#[tokio::test(start_paused = true)]
async fn a_known_good_that_needs_a_reboot_is_not_the_live_rollback_target() {
    let host = FakeHost::new(&sp(ODD));
    host.behave(&sp(ODD), Behaviour::systemd_change());
    let mut req = request(Goal::Gated);
    req.candidate = sp(ODD);
    let marked = run(&host, &req).await;
    assert!(
        matches!(
            marked.outcome,
            HostOutcome::AlreadyCurrent { mark: Some(_), .. }
        ),
        "{:?}",
        marked.outcome
    );
    {
        let mut st = host.state();
        st.set_profile(SYSTEM, &sp(OLD));
        (st.current, st.booted, st.boot_default) = (sp(OLD), sp(OLD), sp(OLD));
    }
    host.behave(
        &sp(NEW),
        Behaviour {
            healthy: false,
            ..Default::default()
        },
    );
    let ran = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(&ran.outcome, HostOutcome::RolledBack { to, .. } if *to == sp(OLD)),
        "{:?}",
        ran.outcome
    );
    assert!(ran.events.iter().any(|e| matches!(
        e,
        ActivationEvent::Warning {
            warning: Warning::KnownGoodNeedsReboot { known_good, .. }
        } if *known_good == sp(ODD)
    )));
    assert_eq!(host.state().current, sp(OLD));
}

#[tokio::test(start_paused = true)]
async fn failing_health_check_rolls_back() {
    let host = candidate_that(Behaviour {
        healthy: false,
        ..Default::default()
    });
    let ran = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(
            ran.outcome,
            HostOutcome::RolledBack {
                gate: Gate::HealthChecks,
                ..
            }
        ),
        "{:?}",
        ran.outcome
    );
    assert_eq!(host.state().current, sp(OLD));
}

#[tokio::test(start_paused = true)]
async fn orphaned_lock_is_reported_not_fired_into() {
    let host = FakeHost::new(&sp(OLD));
    host.state().lock_held = true;
    let ran = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(
            ran.outcome,
            HostOutcome::Failed {
                gate: Gate::LiveActivate,
                reason: FailureReason::Switch(SwitchFailure::LockHeld { .. })
            }
        ),
        "{:?}",
        ran.outcome
    );
    // The fire's own lock check stopped it: one command, no job started.
    assert_eq!(count(&ran.cmds, "sudo fire"), 1);
    assert!(host.state().jobs.is_empty());
    assert!(!ran.cmds.iter().any(|c| c.starts_with("poll ")));
}

#[tokio::test(start_paused = true)]
async fn sudo_password_required_fails_before_anything() {
    let host = FakeHost::new(&sp(OLD));
    host.state().sudo_password_required = true;
    let ran = run(&host, &request(Goal::Gated)).await;
    assert_eq!(
        ran.outcome,
        HostOutcome::Failed {
            gate: Gate::DryActivate,
            reason: FailureReason::Sudo(SudoCheck::PasswordRequired)
        }
    );
    assert_eq!(ran.cmds, vec!["sudo -n -- true"]);
}

#[tokio::test(start_paused = true)]
async fn cancelled_before_start_touches_nothing() {
    let host = FakeHost::new(&sp(OLD));
    let cancel = CancellationToken::new();
    cancel.cancel();
    let ran = run_with(&host, &request(Goal::Gated), &cancel).await;
    assert_eq!(
        ran.outcome,
        HostOutcome::Cancelled {
            before: Gate::DryActivate
        }
    );
    assert!(ran.cmds.is_empty());
}

#[tokio::test(start_paused = true)]
async fn test_goal_activates_without_persisting() {
    let host = FakeHost::new(&sp(OLD));
    let ran = run(&host, &request(Goal::Test)).await;
    assert_eq!(ran.outcome, HostOutcome::Activated { goal: Goal::Test });
    let st = host.state();
    assert_eq!(
        (st.current.clone(), st.boot_default.clone()),
        (sp(NEW), sp(OLD))
    );
    assert_eq!(st.profiles[KNOWN_GOOD], vec![sp(OLD)]);
}

#[tokio::test(start_paused = true)]
async fn a_refused_switch_unit_is_fired_again_under_a_fresh_name() {
    let host = FakeHost::new(&sp(OLD));
    host.state().refuse_fires = vec!["test", "boot"];
    let ran = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(ran.outcome, HostOutcome::KnownGood { .. }),
        "{:?}",
        ran.outcome
    );
    let fires: Vec<&String> = ran.cmds.iter().filter(|c| c.contains(" fire ")).collect();
    assert_eq!(fires.len(), 4, "{fires:#?}");
    assert!(
        fires[1].contains("--unit=nixgate-switch-r1-try2 "),
        "{fires:#?}"
    );
    assert!(
        fires[3].contains("--unit=nixgate-switch-r1-persist-try2 "),
        "{fires:#?}"
    );
    assert!(ran.events.iter().any(|e| matches!(
        e,
        ActivationEvent::Warning {
            warning: crate::activation::events::Warning::FireRefused { attempt: 1, .. }
        }
    )));
    assert_eq!(host.state().boot_default, sp(NEW));
}

/// A host on OLD that refuses every live start (3) with a D-Bus timeout:
/// whether one runs later cannot be told.
fn refusing_live_starts_on_timeouts() -> FakeHost {
    let host = FakeHost::new(&sp(OLD));
    {
        let mut st = host.state();
        st.refuse_fires = vec!["test"; 3];
        st.refusals_time_out = true;
    }
    host
}

/// Every live start refused on D-Bus timeouts, the last attempt's unit
/// not found: whether it will run cannot be told (PID 1 may not have
/// taken it up yet), so rolled back, and every attempt is stopped first
/// (a start still queued would switch the host to the candidate after
/// the rollback, with no revert armed). A look lost once is asked again.
#[tokio::test(start_paused = true)]
async fn an_unconfirmed_refused_start_is_stopped_before_the_rollback() {
    let host = refusing_live_starts_on_timeouts();
    {
        let mut st = host.state();
        let unit = "nixgate-switch-r1-try3";
        let look = format!(
            "poll {unit}.service /run/nixgate/{unit}.status /run/current-system 0 {SYSTEM}"
        );
        st.lose = vec![(look, false)];
    }
    let ran = run(&host, &request(Goal::Gated)).await;
    match &ran.outcome {
        HostOutcome::RolledBack {
            reason: FailureReason::Switch(SwitchFailure::RefusedUnconfirmed { .. }),
            to,
            ..
        } => assert_eq!(*to, sp(OLD)),
        other => panic!("{other:?}"),
    }
    let every = "stop-unit nixgate-switch-r1.service nixgate-switch-r1-try2.service \
                 nixgate-switch-r1-try3.service";
    let stop = ran.cmds.iter().position(|c| c.contains(every));
    let rollback = ran
        .cmds
        .iter()
        .rposition(|c| c.contains(" fire ") && c.contains(OLD));
    assert!(
        matches!((stop, rollback), (Some(s), Some(r)) if s < r),
        "{:#?}",
        ran.cmds
    );
    assert_eq!(host.state().current, sp(OLD));
}

/// The same, with a revert armed (magic rollback) and the attempts not
/// stopped (PID 1 too busy to answer): the revert is not disarmed (a
/// queued start could switch the host with nothing armed); the host's own
/// revert, which stops the attempts first, takes it back.
#[tokio::test(start_paused = true)]
async fn an_unconfirmed_start_not_stopped_is_left_to_the_revert() {
    let host = refusing_live_starts_on_timeouts();
    host.state().stops_fail = true;
    let mut req = request(Goal::Gated);
    req.settings.confirm_timeout = Some(Duration::from_secs(30));
    let ran = run(&host, &req).await;
    assert!(
        !ran.cmds.iter().any(|c| c.contains("disarm-revert")),
        "{:#?}",
        ran.cmds
    );
    match &ran.outcome {
        HostOutcome::RevertedByHost {
            cause: CutOff::StartNotStopped { .. },
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(host.state().current, sp(OLD));
}

/// A hung switch that moved the link and cannot be stopped is left to the
/// revert, and the revert fails: the controller rolls back itself, and
/// first stops the switch again (a switch still running would hold the
/// lock, or finish on the candidate after the rollback, with nothing
/// armed). It cannot be stopped here either: nothing is switched, and
/// the host needs a human.
#[tokio::test(start_paused = true)]
async fn an_unstopped_switch_is_stopped_again_before_the_controllers_rollback() {
    let host = FakeHost::new(&sp(OLD));
    let b = Behaviour {
        hang: true,
        hangs_switched: true,
        ..Default::default()
    };
    host.behave(&sp(NEW), b);
    {
        let mut st = host.state();
        st.stops_fail = true;
        st.revert_fails = true;
    }
    let mut req = request(Goal::Gated);
    req.settings.confirm_timeout = Some(Duration::from_secs(30));
    let ran = run(&host, &req).await;
    match &ran.outcome {
        HostOutcome::RollbackFailed {
            rollback_error:
                crate::activation::reactivate::RollbackError::StopHungSwitch { unit, .. },
            ..
        } => assert_eq!(unit, "nixgate-switch-r1"),
        other => panic!("{other:?}"),
    }
    // The second stop went over the new connection that found the revert
    // failed (the fake's revert stops the job, so the switch no longer
    // runs by then: the controller does not know it); nothing rolled back.
    let st = host.state();
    let stops = st
        .ran
        .iter()
        .filter(|c| c.contains("stop-unit nixgate-switch-r1.service"));
    assert_eq!(stops.count(), 2, "{:#?}", st.ran);
    assert!(
        !st.jobs.contains_key("nixgate-switch-r1-rollback"),
        "{:?}",
        st.jobs
    );
    assert_eq!(st.current, sp(NEW));
}

/// With a revert armed, a switch that may still run is stopped before the
/// revert is disarmed, once (it was disarmed first, and a stop that then
/// failed left a hung switch running with nothing armed; a start never
/// confirmed was stopped twice): hung, or every start refused on D-Bus
/// timeouts.
#[tokio::test(start_paused = true)]
async fn an_armed_switch_that_may_run_is_stopped_once_before_the_disarm() {
    for hung in [true, false] {
        let host = if hung {
            let host = FakeHost::new(&sp(OLD));
            let b = Behaviour {
                hang: true,
                ..Default::default()
            };
            host.behave(&sp(NEW), b);
            host
        } else {
            refusing_live_starts_on_timeouts()
        };
        let mut req = request(Goal::Gated);
        req.settings.confirm_timeout = Some(Duration::from_secs(30));
        let ran = run(&host, &req).await;
        assert!(
            matches!(ran.outcome, HostOutcome::RolledBack { .. }),
            "{hung}: {:?}",
            ran.outcome
        );
        let at = |what: &str| ran.cmds.iter().position(|c| c.contains(what));
        let (stop, disarm) = (at("stop-unit nixgate-switch-r1"), at("disarm-revert"));
        assert!(
            matches!((stop, disarm), (Some(s), Some(d)) if s < d),
            "{hung}: {:#?}",
            ran.cmds
        );
        assert_eq!(
            count(&ran.cmds, "sudo stop-unit"),
            1,
            "{hung}: {:#?}",
            ran.cmds
        );
        assert_eq!(host.state().current, sp(OLD), "{hung}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_persist_that_cannot_start_leaves_a_live_proven_host_live() {
    // Refused as a failed job, or on D-Bus timeouts (whether the last runs
    // cannot be told: every attempt is stopped, the host not rolled back).
    for timed_out in [false, true] {
        let host = FakeHost::new(&sp(OLD));
        host.state().refuse_fires = vec!["boot"; 3];
        host.state().refusals_time_out = timed_out;
        let ran = run(&host, &request(Goal::Gated)).await;
        match &ran.outcome {
            HostOutcome::NotPersisted {
                reason:
                    SwitchFailure::FireRefused { attempts }
                    | SwitchFailure::RefusedUnconfirmed { attempts, .. },
            } => assert_eq!(attempts.len(), 3),
            other => panic!("{other:?}"),
        }
        let stopped = ran
            .cmds
            .iter()
            .any(|c| c.contains("stop-unit nixgate-switch-r1-persist.service"));
        assert_eq!(stopped, timed_out, "{:#?}", ran.cmds);
        assert_left_live(&host, &ran);
    }
}

/// Both switch-to-configurations: the one that says so fails with the
/// boot loader named; the Perl one's bare exit 1 stays an exit.
#[tokio::test(start_paused = true)]
async fn a_boot_loader_that_cannot_be_installed_leaves_a_live_proven_host_live() {
    for silent in [false, true] {
        let host = FakeHost::new(&sp(OLD));
        let broken = Behaviour {
            boot_exit: 1,
            boot_loader_silent: silent,
            ..Default::default()
        };
        host.behave(&sp(NEW), broken);
        let ran = run(&host, &request(Goal::Gated)).await;
        let log_tail = match &ran.outcome {
            HostOutcome::NotPersisted {
                reason: SwitchFailure::BootLoader { code: 1, log_tail },
            } if !silent => log_tail,
            HostOutcome::NotPersisted {
                reason:
                    SwitchFailure::Exited {
                        code: 1, log_tail, ..
                    },
            } if silent => log_tail,
            other => panic!("silent {silent}: {other:?}"),
        };
        assert!(
            log_tail.iter().any(|l| l.contains("No space left")),
            "{log_tail:?}"
        );
        assert_left_live(&host, &ran);
    }
}

/// A full ESP under `--goal switch`: `switch-to-configuration-ng` stops
/// before activating anything, saying the boot loader failed. The host
/// runs what it ran; its profile is put back, and it fails clean, named.
/// Before, it was rolled back with the old system's `switch`, whose
/// install failed the same way: `rollback-failed` on a host that never
/// left its system. With a dead-man revert armed, it is disarmed.
#[tokio::test(start_paused = true)]
async fn a_switch_whose_boot_loader_cannot_be_installed_fails_clean() {
    for req in [request(Goal::Switch), armed(Goal::Switch)] {
        let host = FakeHost::new(&sp(OLD));
        let broken = Behaviour {
            boot_exit: 1,
            ..Default::default()
        };
        // The boot loader is the host's: every system's install fails.
        host.behave(&sp(NEW), broken.clone());
        host.behave(&sp(OLD), broken);
        let ran = run(&host, &req).await;
        match &ran.outcome {
            HostOutcome::Failed {
                gate: Gate::LiveActivate,
                reason: FailureReason::Switch(SwitchFailure::BootLoader { code: 1, .. }),
            } => {}
            other => panic!("{other:?}: {:#?}", ran.cmds),
        }
        assert_unchanged_clean(&host, &ran);
    }
}

/// The same under `--goal boot`: failed clean, not rolled back boot only
/// (whose own `boot` failed the same way: `rollback-failed`).
#[tokio::test(start_paused = true)]
async fn a_boot_whose_boot_loader_cannot_be_installed_fails_clean() {
    let host = FakeHost::new(&sp(OLD));
    let broken = Behaviour {
        boot_exit: 1,
        ..Default::default()
    };
    host.behave(&sp(NEW), broken.clone());
    host.behave(&sp(OLD), broken);
    let ran = run(&host, &request(Goal::Boot)).await;
    match &ran.outcome {
        HostOutcome::Failed {
            gate: Gate::Persist,
            reason: FailureReason::Switch(SwitchFailure::BootLoader { code: 1, .. }),
        } => {}
        other => panic!("{other:?}: {:#?}", ran.cmds),
    }
    assert_unchanged_clean(&host, &ran);
}

/// Running, booting and pointing at what it did before, nothing rolled
/// back and no revert left armed.
fn assert_unchanged_clean(host: &FakeHost, ran: &Ran) {
    let st = host.state();
    assert_eq!(st.current, sp(OLD));
    assert_eq!(st.boot_default, sp(OLD));
    assert_eq!(st.profile(SYSTEM), Some(&sp(OLD)), "the profile put back");
    assert!(
        !ran.cmds.iter().any(|c| c.contains("-rollback")),
        "not rolled back: {:#?}",
        ran.cmds
    );
    assert!(st.timers.is_empty(), "{:#?}", ran.cmds);
}

/// The same on a host already running the candidate (re-pushed after a
/// run that left it not persisted, its boot loader still broken), its
/// profile and boot default older: proven again over a new connection and
/// by its health checks, then not persisted, its profile put back. Before,
/// it was rolled back boot only, and that rollback's `boot` failed the
/// same way: `rollback-failed`.
#[tokio::test(start_paused = true)]
async fn a_boot_loader_that_cannot_be_installed_leaves_an_already_current_host_live() {
    for silent in [false, true] {
        let host = FakeHost::new(&sp(OLD));
        host.state().current = sp(NEW);
        let broken = Behaviour {
            boot_exit: 1,
            boot_loader_silent: silent,
            ..Default::default()
        };
        // The boot loader is the host's: every system's `boot` fails.
        host.behave(&sp(NEW), broken.clone());
        host.behave(&sp(OLD), broken);
        let ran = run(&host, &request(Goal::Gated)).await;
        match &ran.outcome {
            HostOutcome::NotPersisted {
                reason: SwitchFailure::BootLoader { code: 1, .. },
            } if !silent => {}
            HostOutcome::NotPersisted {
                reason: SwitchFailure::Exited { code: 1, .. },
            } if silent => {}
            other => panic!("silent {silent}: {other:?}: {:#?}", ran.cmds),
        }
        assert_left_live(&host, &ran);
    }
}

/// Live on the candidate it proved, its boot entries and profile where
/// they were, not rolled back.
fn assert_left_live(host: &FakeHost, ran: &Ran) {
    let st = host.state();
    assert_eq!(st.current, sp(NEW), "still live on what it proved");
    assert_eq!(st.boot_default, sp(OLD), "the boot entries never moved");
    assert_eq!(
        st.profile(SYSTEM),
        Some(&sp(OLD)),
        "the profile agrees with the boot entries again"
    );
    assert!(
        !ran.cmds.iter().any(|c| c.contains("-rollback")),
        "not rolled back: {:#?}",
        ran.cmds
    );
}

/// The fault matrix's "health checks x host rebooted", when the reboot came
/// just after the checks passed: the persist cannot start, and the host no
/// longer runs the candidate. Not "not persisted" (live on the candidate):
/// rolled back, boot default included, verified.
#[tokio::test(start_paused = true)]
async fn a_persist_that_cannot_start_on_a_host_rebooted_since_rolls_back() {
    let host = FakeHost::new(&sp(OLD));
    host.state().refuse_fires = vec!["boot"; 3];
    host.state().reboot_after_health_check = true;
    let ran = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(ran.outcome, HostOutcome::RolledBack { .. }),
        "{:?}",
        ran.outcome
    );
    let st = host.state();
    assert_eq!(st.current, sp(OLD));
    assert_eq!(st.boot_default, sp(OLD));
    assert_eq!(st.profile(SYSTEM), Some(&sp(OLD)));
}

#[tokio::test(start_paused = true)]
async fn a_rollback_whose_unit_is_refused_once_is_fired_again() {
    let host = candidate_that(Behaviour {
        exit: 4,
        // Running past the fire's poll and the next: the 2 s wait
        // after it lets the watcher below see the job.
        polls_to_finish: 3,
        ..Default::default()
    });
    // The candidate's own `test` starts; the rollback's first `test` is refused.
    host.state().refuse_fires = vec![];
    let h = host.clone();
    let ran = {
        let remote = host.remote();
        let events = Mutex::new(Vec::new());
        let req = request(Goal::Gated);
        // Refuse the next `test` fire once the candidate's has started.
        let watcher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut st = h.state();
                if st.jobs.contains_key("nixgate-switch-r1") {
                    st.refuse_fires.push("test");
                    return;
                }
            }
        });
        let outcome = activate_host(
            &remote,
            &host,
            &Unlocked,
            &req,
            &CancellationToken::new(),
            &|e| events.lock().unwrap().push(e),
        )
        .await;
        watcher.abort();
        Ran {
            outcome,
            events: events.into_inner().unwrap(),
            cmds: remote.commands().iter().map(describe).collect(),
        }
    };
    assert!(
        matches!(ran.outcome, HostOutcome::RolledBack { .. }),
        "{:?}",
        ran.outcome
    );
    assert!(
        ran.cmds
            .iter()
            .any(|c| c.contains("--unit=nixgate-switch-r1-rollback-try2 ")),
        "{:#?}",
        ran.cmds
    );
    assert_eq!(host.state().current, sp(OLD));
}

/// A host on OLD whose candidate NEW behaves as `b` says.
fn candidate_that(b: Behaviour) -> FakeHost {
    let host = FakeHost::new(&sp(OLD));
    host.behave(&sp(NEW), b);
    host
}

/// A host on OLD whose candidate NEW refuses new SSH connections once
/// live (established sessions go on).
fn cutting_ssh() -> FakeHost {
    candidate_that(Behaviour {
        cuts_ssh: true,
        ..Default::default()
    })
}

/// Magic rollback on: the host reverts 30 s after an unconfirmed switch.
fn armed(goal: Goal) -> ActivationRequest {
    let mut req = request(goal);
    req.settings.confirm_timeout = Some(Duration::from_secs(30));
    req
}

/// A live start refused once (its second attempt, `-try2`, ran) on a host
/// that then locks SSH out: the shortened re-arm's revert stops the job's
/// first name and every `-tryN` of it. Before, it got the attempt's name
/// and stopped `-try2`, `-try2-try2`, `-try2-try3`: the first start,
/// refused yet maybe queued, was left to run after the revert.
#[tokio::test(start_paused = true)]
async fn a_re_armed_revert_stops_every_attempt_of_a_re_fired_switch() {
    let host = cutting_ssh();
    host.state().refuse_fires = vec!["test"];
    let ran = run(&host, &armed(Goal::Gated)).await;
    assert!(
        matches!(ran.outcome, HostOutcome::RevertedByHost { .. }),
        "{:?}",
        ran.outcome
    );
    let st = host.state();
    let args = st.rearmed_with.as_ref().expect("re-armed");
    assert_eq!(args[6], "nixgate-switch-r1", "{args:?}");
    assert_eq!(args[8], "/run/nixgate", "{args:?}");
}

/// Magic rollback off, a candidate that refuses new SSH connections (the
/// run's own session goes on): nothing is armed, but the proof is the same.
/// Not confirmed within the window, the controller rolls the host back over
/// its own session. Before: known-good, its boot default moved to a system
/// that locks SSH out, a release tagged.
#[tokio::test(start_paused = true)]
async fn magic_rollback_off_still_proves_a_new_connection() {
    for goal in [Goal::Gated, Goal::Switch] {
        let host = cutting_ssh();
        let started = tokio::time::Instant::now();
        let ran = run(&host, &request(goal)).await;
        match &ran.outcome {
            HostOutcome::RolledBack {
                gate: Gate::LiveActivate,
                to,
                ..
            } => assert_eq!(to, &sp(OLD)),
            other => panic!("{goal:?}: {other:?}"),
        }
        // The 60 s window, not more: nothing waits for a revert.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(70), "{goal:?}: {took:?}");
        let st = host.state();
        assert_eq!(st.current, sp(OLD), "{goal:?}");
        assert_eq!(st.boot_default, sp(OLD), "{goal:?}");
        assert!(st.timers.is_empty(), "{goal:?}: nothing was armed");
        assert!(
            !st.ran.iter().any(|c| c.starts_with("sudo mark-known-good")),
            "{goal:?}: {:#?}",
            st.ran
        );
    }
}

/// Magic rollback off, a good candidate: one new connection confirms it.
#[tokio::test(start_paused = true)]
async fn magic_rollback_off_confirms_a_good_host_at_once() {
    let host = FakeHost::new(&sp(OLD));
    let started = tokio::time::Instant::now();
    let ran = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(ran.outcome, HostOutcome::KnownGood { .. }),
        "{:?}",
        ran.outcome
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let st = host.state();
    assert!(st.sessions >= 2, "a second connection: {}", st.sessions);
    assert!(st.timers.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_confirmed_switch_disarms_and_leaves_no_timer() {
    let host = FakeHost::new(&sp(OLD));
    let ran = run(&host, &armed(Goal::Gated)).await;
    assert!(
        matches!(ran.outcome, HostOutcome::KnownGood { .. }),
        "{:?}",
        ran.outcome
    );
    let arms = arms(&ran.cmds);
    // Armed by the fire itself, for the budget plus the window, and
    // disarmed over a new connection at the first try: never shortened
    // (that is for a host whose first new connection does not confirm),
    // never disarmed over the run's own session.
    assert_eq!(
        arms,
        [&format!(
            "sudo fire --unit=nixgate-switch-r1 {NEW}/bin/switch-to-configuration test \
             (arm-revert nixgate-confirm-r1 90 first)"
        )],
        "{:#?}",
        ran.cmds
    );
    assert!(
        ran.events
            .iter()
            .any(|e| matches!(e, ActivationEvent::Confirmed { .. }))
    );
    let st = host.state();
    assert!(st.timers.is_empty(), "{:?}", st.timers);
    assert!(st.revert_records.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_candidate_that_cuts_ssh_is_reverted_by_the_host() {
    let host = cutting_ssh();
    let started = tokio::time::Instant::now();
    let ran = run(&host, &armed(Goal::Gated)).await;
    match &ran.outcome {
        HostOutcome::RevertedByHost {
            cause: CutOff::NoNewConnection { .. },
            to,
            record: Some(record),
        } => {
            assert_eq!(to, &sp(OLD));
            assert_eq!(record.to, OLD);
            assert_eq!(record.from, NEW);
        }
        other => panic!("{other:?}"),
    }
    // Reverted within the confirm window (30 s) plus a poll.
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(30 + 4), "{took:?}");
    let st = host.state();
    assert_eq!(st.current, sp(OLD));
    assert!(st.sshd_up, "the old system's sshd answers again");
    assert_eq!(st.boot_default, sp(OLD), "the boot default was never moved");
    assert!(st.timers.is_empty());
    // Nothing of the candidate was persisted or marked.
    assert!(!ran.cmds.iter().any(|c| c.contains("mark-known-good")));
}

/// A candidate whose sshd rejects the run's key (it dropped the user's
/// authorized key): a few logins, then the host's revert is waited for
/// (or, magic rollback off, the controller rolls back). Before, a new
/// login every 2 s until the revert was due (13 in a 30 s window, 30 in
/// the 60 s one): sshd's PerSourcePenalties and fail2ban block this
/// machine's address after a few, and the look after the revert, and the
/// next run, could not get in. The rollback from it (a lockout) is
/// proven by one new connection more (the old system took the key back:
/// accepted; see
/// `a_rollbacks_proof_counts_the_logins_the_confirm_had_rejected`).
#[tokio::test(start_paused = true)]
async fn a_candidate_rejecting_the_login_is_not_tried_over_and_over() {
    for req in [armed(Goal::Gated), request(Goal::Gated)] {
        let host = candidate_that(Behaviour {
            rejects_logins: true,
            ..Default::default()
        });
        let ran = run(&host, &req).await;
        let armed = req.settings.confirm_timeout.is_some();
        match &ran.outcome {
            HostOutcome::RevertedByHost {
                cause: CutOff::NoNewConnection { error, .. },
                to,
                ..
            } if armed => {
                assert!(error.contains("authentication as deploy failed"), "{error}");
                assert_eq!(to, &sp(OLD));
            }
            HostOutcome::RolledBack {
                gate: Gate::LiveActivate,
                to,
                ..
            } if !armed => assert_eq!(to, &sp(OLD)),
            other => panic!("armed {armed}: {other:?}"),
        }
        let st = host.state();
        assert_eq!(st.current, sp(OLD));
        assert!(
            st.logins_rejected <= crate::activation::reach::MAX_REJECTED_LOGINS,
            "armed {armed}: {} logins rejected",
            st.logins_rejected
        );
    }
}

/// A good candidate whose key lookup restarts with the switch (sssd, an
/// `AuthorizedKeysCommand`): the run's key is rejected for 8 s, then let
/// in. Its 3 logins are 5 s apart, the third after the restart: confirmed.
/// Before, 2 s apart, all three were rejected within 4 s and the good host
/// was reverted (or, magic rollback off, rolled back).
#[tokio::test(start_paused = true)]
async fn a_key_lookup_restarting_with_the_switch_is_waited_out() {
    for req in [armed(Goal::Gated), request(Goal::Gated)] {
        let host = candidate_that(Behaviour {
            rejects_logins: true,
            ..Default::default()
        });
        let restarting = host.clone();
        let back = tokio::spawn(async move {
            while restarting.state().logins_rejected == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(8)).await;
            restarting.state().rejects_logins = false;
        });
        let ran = run(&host, &req).await;
        back.abort();
        let armed = req.settings.confirm_timeout.is_some();
        assert!(
            matches!(ran.outcome, HostOutcome::KnownGood { .. }),
            "armed {armed}: {:?}",
            ran.outcome
        );
        let st = host.state();
        assert_eq!(st.current, sp(NEW));
        assert_eq!(st.logins_rejected, 2, "armed {armed}");
    }
}

/// Cut off after its switch, a host someone else moved meanwhile (a
/// hand's `nixos-rebuild switch` while the controller could not get in,
/// or another run that took the host over: a controller suspended past
/// its lock's lease), before its revert came due or after it: nothing of
/// theirs is undone. Before, the revert switched the host back under
/// them, or the controller "rolled back" the host it no longer owned;
/// also when the other run deployed the same commit (the host back on
/// this run's candidate after its revert put everything back).
#[tokio::test(start_paused = true)]
async fn a_host_someone_else_moved_is_left_as_it_is() {
    const THIRD: &str = "/nix/store/3c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-25.05";
    for (to, before_revert) in [(THIRD, true), (THIRD, false), (NEW, false)] {
        let host = cutting_ssh();
        host.state().moved_by_other = Some((sp(to), before_revert));
        let ran = run(&host, &armed(Goal::Gated)).await;
        match &ran.outcome {
            HostOutcome::MovedByOther { now, record, .. } => {
                assert_eq!(now, &sp(to));
                let result = record.as_ref().map(|r| r.result.as_str());
                let expected = if before_revert { "host-moved" } else { "ok" };
                assert_eq!(result, Some(expected));
            }
            other => panic!("before the revert {before_revert}: {other:?}"),
        }
        assert!(
            !ran.cmds.iter().any(|c| c.contains("rollback")),
            "{:#?}",
            ran.cmds
        );
        let st = host.state();
        assert_eq!(st.current, sp(to));
        assert_eq!(st.boot_default, sp(to));
    }
}

/// New connections that get no answer (a firewall dropping them): the
/// first try gives up after 5 s, the revert is shortened to the window over
/// the run's own session, and the host takes itself back when that ends.
#[tokio::test(start_paused = true)]
async fn a_candidate_that_drops_new_connections_is_shortened_then_reverted() {
    let host = candidate_that(Behaviour {
        drops_new_connections: true,
        ..Default::default()
    });
    let started = tokio::time::Instant::now();
    let ran = run(&host, &armed(Goal::Gated)).await;
    assert!(
        matches!(
            &ran.outcome,
            HostOutcome::RevertedByHost {
                cause: CutOff::NoNewConnection { .. },
                record: Some(_),
                ..
            }
        ),
        "{:?}",
        ran.outcome
    );
    let arms = arms(&ran.cmds);
    assert_eq!(arms.len(), 2, "{arms:#?}");
    assert!(
        arms[1].starts_with("sudo arm-revert nixgate-confirm-r1 30 "),
        "{arms:#?}"
    );
    // The first try (5 s) and the window (30 s); then the look, whose
    // first handshake, sent as the revert began, waits out its timeout
    // (10 s) and the pause before the next (2 s); the switch's polls.
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(5 + 30), "{took:?}");
    assert!(took <= Duration::from_secs(5 + 30 + 10 + 2 + 4), "{took:?}");
    let st = host.state();
    assert_eq!(st.current, sp(OLD));
    assert!(st.timers.is_empty(), "{:?}", st.timers);
}

/// A short window (4 s) and a slow handshake (1.5 s, past the first try's
/// 1 s): the revert is shortened while the handshake goes on, and the
/// host is confirmed over it, within the window.
#[tokio::test(start_paused = true)]
async fn a_slow_handshake_in_a_short_window_is_confirmed_over_the_same_connection() {
    let host = FakeHost::new(&sp(OLD));
    host.state().handshake_takes = Duration::from_millis(1500);
    let mut req = armed(Goal::Gated);
    req.settings.confirm_timeout = Some(Duration::from_secs(4));
    let ran = run(&host, &req).await;
    assert!(
        matches!(ran.outcome, HostOutcome::KnownGood { .. }),
        "{:?}",
        ran.outcome
    );
    let arms = arms(&ran.cmds);
    assert_eq!(arms.len(), 2, "{arms:#?}");
    assert!(
        arms[1].starts_with("sudo arm-revert nixgate-confirm-r1 4 "),
        "{arms:#?}"
    );
    let st = host.state();
    assert!(st.timers.is_empty(), "{:?}", st.timers);
    assert!(st.revert_records.is_empty());
}

/// The host's revert runs and fails (its sshd back, the host left on the
/// candidate): its record says so, and the controller rolls back at once,
/// not after looking for as long as a switch may take (60 s more).
/// `cut`: the revert also cut the run's own session (new connections are
/// answered): the rollback goes over a new connection (before: the host
/// was called unreachable).
async fn a_failed_revert(cut: bool) {
    let host = cutting_ssh();
    host.state().revert_fails = true;
    host.state().revert_cuts_sessions = cut;
    let started = tokio::time::Instant::now();
    let ran = run(&host, &armed(Goal::Gated)).await;
    match &ran.outcome {
        HostOutcome::RolledBack {
            gate: Gate::LiveActivate,
            to,
            ..
        } => assert_eq!(to, &sp(OLD)),
        other => panic!("cut {cut}: {other:?}"),
    }
    // The 30 s window, the look, the rollback.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(50), "cut {cut}: {took:?}");
    // What the host's record said, for the reporters.
    assert!(
        ran.events.iter().any(|e| matches!(
            e,
            ActivationEvent::RevertFailed { record } if record.result == "test-exited-1"
        )),
        "{:#?}",
        ran.events
    );
    // Nothing of the revert runs with the rollback (before: stopped only
    // on the slower path), over whichever connection.
    let st = host.state();
    assert_revert_stopped_before_rollback(&st.ran);
    assert_eq!(st.current, sp(OLD));
    assert!(st.timers.is_empty());
}

/// A `switch` (its profile and boot default moved before the switch) that
/// cuts SSH, and a revert that puts the live system back but fails to put
/// the boot default back: not "reverted by the host" (the host would boot
/// the candidate again at its next reboot), the controller rolls it back,
/// boot default included. Before, the link alone was looked at.
#[tokio::test(start_paused = true)]
async fn a_revert_that_left_the_boot_default_is_not_reverted_by_the_host() {
    let host = cutting_ssh();
    host.state().revert_boot_fails = true;
    let ran = run(&host, &armed(Goal::Switch)).await;
    match &ran.outcome {
        HostOutcome::RolledBack {
            gate: Gate::LiveActivate,
            to,
            ..
        } => assert_eq!(to, &sp(OLD)),
        other => panic!("{other:?}"),
    }
    assert!(
        ran.events.iter().any(|e| matches!(
            e,
            ActivationEvent::RevertFailed { record } if record.result == "boot-failed"
        )),
        "{:#?}",
        ran.events
    );
    let st = host.state();
    assert_revert_stopped_before_rollback(&st.ran);
    assert_eq!(st.current, sp(OLD));
    assert_eq!(
        st.boot_default,
        sp(OLD),
        "the candidate is not booted again"
    );
}

/// The revert was stopped (idempotent) before the controller's rollback
/// was fired.
fn assert_revert_stopped_before_rollback(cmds: &[String]) {
    let stop = cmds
        .iter()
        .position(|c| c.starts_with("sudo stop-revert nixgate-confirm-r1 "));
    let rollback = cmds
        .iter()
        .position(|c| c.starts_with("sudo fire --unit=nixgate-switch-r1-rollback"));
    assert!(
        stop.is_some() && rollback.is_some() && stop < rollback,
        "{cmds:#?}"
    );
}

/// A gated push to a host whose candidate cuts SSH, and whose revert
/// takes `secs` (and, `unstoppable`, cannot be stopped part-way).
async fn cut_off_with_a_revert_taking(secs: u64, unstoppable: bool) -> (FakeHost, Ran) {
    let host = cutting_ssh();
    host.state().revert_takes = Duration::from_secs(secs);
    host.state().revert_unstoppable = unstoppable;
    let ran = run(&host, &armed(Goal::Gated)).await;
    (host, ran)
}

/// The host's revert takes longer than a switch may (70 s, past the 60 s
/// the controller looks for): it is under way (its mark made, read over
/// the run's own session while new connections are refused), so the
/// controller waits for it rather than switching the host itself at the
/// same time: reverted by the host, its record read.
#[tokio::test(start_paused = true)]
async fn a_slow_revert_under_way_is_waited_for() {
    let (host, ran) = cut_off_with_a_revert_taking(70, false).await;
    assert!(
        matches!(
            &ran.outcome,
            HostOutcome::RevertedByHost {
                record: Some(_),
                ..
            }
        ),
        "{:?}",
        ran.outcome
    );
    assert_eq!(
        count(&ran.cmds, "sudo fire --unit=nixgate-switch-r1-rollback"),
        0
    );
    assert_eq!(host.state().current, sp(OLD));
}

/// A revert still under way after twice as long as a switch may take
/// (200 s here, against 60): stopped, and the controller rolls the host
/// back itself, the only switch left.
#[tokio::test(start_paused = true)]
async fn a_revert_stuck_under_way_is_stopped_then_rolled_back() {
    let (host, ran) = cut_off_with_a_revert_taking(200, false).await;
    assert!(
        matches!(&ran.outcome, HostOutcome::RolledBack { to, .. } if *to == sp(OLD)),
        "{:?}",
        ran.outcome
    );
    assert_revert_stopped_before_rollback(&ran.cmds);
    let st = host.state();
    assert_eq!(st.current, sp(OLD));
    assert!(!st.reverting);
}

/// A revert stuck under way that cannot be stopped: the controller does
/// not switch the host while it runs; the host needs a human, and says
/// which unit.
#[tokio::test(start_paused = true)]
async fn a_revert_that_cannot_be_stopped_is_not_switched_over() {
    let (_, ran) = cut_off_with_a_revert_taking(400, true).await;
    match &ran.outcome {
        HostOutcome::RollbackFailed {
            rollback_error:
                crate::activation::reactivate::RollbackError::StopStuckRevert { unit, .. },
            ..
        } => assert_eq!(unit, "nixgate-confirm-r1.service"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        count(&ran.cmds, "sudo fire --unit=nixgate-switch-r1-rollback"),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_revert_is_known_at_once_and_rolled_back() {
    a_failed_revert(false).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_revert_that_cut_the_session_is_rolled_back_over_a_new_connection() {
    a_failed_revert(true).await;
}

/// A re-arm that finds the revert under way (exit 4: on a real host, one
/// that reached it after its first timer fired) leaves it to run, and the
/// controller looks at once: it waits neither for the first try's
/// handshake (8 s here) nor for a due time it no longer needs (the fake
/// runs the revert as the re-arm arrives, 5 s in, with the first timer
/// due at 90 s). Reverted by the host, the cause said, nothing armed.
#[tokio::test(start_paused = true)]
async fn a_re_arm_too_late_leaves_the_revert_to_run() {
    let host = FakeHost::new(&sp(OLD));
    host.state().handshake_takes = Duration::from_secs(8);
    host.state().revert_beats_rearm = true;
    let started = tokio::time::Instant::now();
    let ran = run(&host, &armed(Goal::Gated)).await;
    assert!(
        matches!(
            &ran.outcome,
            HostOutcome::RevertedByHost {
                cause: CutOff::RevertBegan,
                record: Some(_),
                ..
            }
        ),
        "{:?}",
        ran.outcome
    );
    let arms = arms(&ran.cmds);
    assert_eq!(arms.len(), 2, "{arms:#?}");
    // The switch's polls, the first try's 5 s, the look's handshake (8 s).
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5 + 8 + 4), "{took:?}");
    let st = host.state();
    assert_eq!(st.current, sp(OLD));
    assert!(st.timers.is_empty(), "{:?}", st.timers);
    assert_eq!(st.revert_records.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_switch_with_the_boot_default_moved_reverts_both() {
    let host = cutting_ssh();
    let ran = run(&host, &armed(Goal::Switch)).await;
    assert!(
        matches!(ran.outcome, HostOutcome::RevertedByHost { .. }),
        "{:?}",
        ran.outcome
    );
    let st = host.state();
    assert_eq!(st.current, sp(OLD));
    assert_eq!(st.profile(SYSTEM), Some(&sp(OLD)), "the profile is back");
    assert_eq!(st.boot_default, sp(OLD), "and so is the boot default");
}

#[tokio::test(start_paused = true)]
async fn a_host_never_reached_again_is_unknown_not_success() {
    let host = FakeHost::new(&sp(OLD));
    for c in [OLD, NEW] {
        host.behave(
            &sp(c),
            Behaviour {
                cuts_network: true,
                ..Default::default()
            },
        );
    }
    let ran = run(&host, &armed(Goal::Gated)).await;
    match &ran.outcome {
        HostOutcome::Unreachable {
            last_seen,
            revert_due: true,
            ..
        } => assert_eq!(last_seen, &sp(NEW)),
        other => panic!("{other:?}"),
    }
}

/// A candidate whose lockout outlives it: new connections stay refused
/// whatever the host goes back to (a firewall rule, an sshd setting the
/// old system does not put back); the run's own session goes on.
fn locking_out_for_good() -> FakeHost {
    let host = cutting_ssh();
    host.state().lockout_stays = true;
    host
}

/// A rollback from a lockout is proven over a new connection. A host back
/// on what it ran, as the run's own session reads it (sshd keeps it), that
/// still refuses new connections is neither rolled back (magic rollback
/// off: the controller's rollback) nor reverted by itself (on: its own
/// revert) as if healthy: `rollback-failed`, the host needs a person, the
/// new connection's error said. Before, both ended there, verified by the
/// links read over the run's session.
#[tokio::test(start_paused = true)]
async fn a_rollback_from_a_lockout_that_outlives_it_is_not_verified() {
    for req in [request(Goal::Gated), armed(Goal::Gated)] {
        let armed = req.settings.confirm_timeout.is_some();
        let host = locking_out_for_good();
        let ran = run(&host, &req).await;
        match &ran.outcome {
            HostOutcome::RollbackFailed {
                gate: Gate::LiveActivate,
                to,
                rollback_error: RollbackError::Unconfirmed(CutOff::NoNewConnection { error, .. }),
                ..
            } => {
                assert_eq!(to, &sp(OLD), "armed {armed}");
                assert!(error.contains("fake sshd down"), "armed {armed}: {error}");
            }
            other => panic!("armed {armed}: {other:?}"),
        }
        assert!(ran.outcome.needs_attention(), "armed {armed}");
        assert_eq!(host.state().current, sp(OLD), "armed {armed}: links back");
    }
}

/// New connections at a host's `confirm_address` (refused: its candidate,
/// which moved SSH there, locked it out) and at its own address (`host`).
struct MovedSsh(FakeHost);

type Connecting<'a> = Pin<Box<dyn Future<Output = anyhow::Result<ScriptedRemote>> + Send + 'a>>;

impl Reconnect<ScriptedRemote> for MovedSsh {
    fn fresh(&self) -> Connecting<'_> {
        Box::pin(async { anyhow::bail!("connection refused (the candidate's new address)") })
    }

    fn fresh_as_before(&self) -> Connecting<'_> {
        self.0.fresh()
    }
}

/// A deploy that moves SSH (`confirm_address`) and locks it out: the
/// rollback's proof goes to the host's own address, where the system it
/// went back to answers, not to the candidate's (refused for ever: every
/// such rollback would read as still locked out).
#[tokio::test(start_paused = true)]
async fn a_rollback_from_a_lockout_is_proven_at_the_hosts_own_address() {
    for req in [request(Goal::Gated), armed(Goal::Gated)] {
        let armed = req.settings.confirm_timeout.is_some();
        let host = cutting_ssh();
        let moved = MovedSsh(host.clone());
        let remote = host.remote();
        let cancel = CancellationToken::new();
        let outcome = activate_host(&remote, &moved, &Unlocked, &req, &cancel, &|_| {}).await;
        match &outcome {
            HostOutcome::RevertedByHost { to, .. } if armed => assert_eq!(to, &sp(OLD)),
            HostOutcome::RolledBack { to, .. } if !armed => assert_eq!(to, &sp(OLD)),
            other => panic!("armed {armed}: {other:?}"),
        }
    }
}

/// New connections the host rejects at login whatever it runs (the run's
/// key gone for good, the system it went back to included), counted.
struct RejectsEveryLogin(std::sync::atomic::AtomicU32);

impl Reconnect<ScriptedRemote> for RejectsEveryLogin {
    fn fresh(&self) -> Connecting<'_> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async {
            Err(anyhow::Error::new(crate::ssh::ConnectError::AuthFailed {
                target: "web1".into(),
                user: "deploy".into(),
                tried: vec!["agent key ed25519 (SHA256:x): rejected".into()],
            }))
        })
    }
}

/// A host that rejects every login: the confirm spends the run's
/// [`crate::activation::reach::MAX_REJECTED_LOGINS`], and the rollback's
/// proof (it is from a lockout) tries once more: rejected, unconfirmed,
/// the host needs a person. Before, the proof counted from 0 and tried 3
/// more: 6 rejected logins within minutes, over fail2ban's default 5, and
/// the controller was banned from the very host that needed a person.
#[tokio::test(start_paused = true)]
async fn a_rollbacks_proof_counts_the_logins_the_confirm_had_rejected() {
    for req in [request(Goal::Gated), armed(Goal::Gated)] {
        let armed = req.settings.confirm_timeout.is_some();
        let host = candidate_that(Behaviour::default());
        let rejecting = RejectsEveryLogin(Default::default());
        let remote = host.remote();
        let cancel = CancellationToken::new();
        let outcome = activate_host(&remote, &rejecting, &Unlocked, &req, &cancel, &|_| {}).await;
        let tried = rejecting.0.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            tried,
            crate::activation::reach::MAX_REJECTED_LOGINS + 1,
            "armed {armed}: {tried} logins rejected"
        );
        match &outcome {
            HostOutcome::RollbackFailed {
                to,
                rollback_error: RollbackError::Unconfirmed(CutOff::NoNewConnection { error, .. }),
                ..
            } => {
                assert_eq!(to, &sp(OLD), "armed {armed}");
                assert!(error.contains("authentication"), "armed {armed}: {error}");
            }
            other => panic!("armed {armed}: {other:?}"),
        }
        assert_eq!(host.state().current, sp(OLD), "armed {armed}: links back");
    }
}

/// A rollback from anything but a lockout opens no new connection: the
/// proof is for lockouts alone.
#[tokio::test(start_paused = true)]
async fn a_rollback_from_a_failed_switch_opens_no_new_connection() {
    let host = candidate_that(Behaviour {
        exit: 4,
        ..Default::default()
    });
    let ran = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(ran.outcome, HostOutcome::RolledBack { .. }),
        "{:?}",
        ran.outcome
    );
    assert_eq!(host.state().sessions, 1, "the run's own session alone");
}

#[tokio::test(start_paused = true)]
async fn a_failing_switch_on_a_reachable_host_is_disarmed_and_rolled_back() {
    let host = candidate_that(Behaviour {
        exit: 4,
        ..Default::default()
    });
    let ran = run(&host, &armed(Goal::Gated)).await;
    assert!(
        matches!(ran.outcome, HostOutcome::RolledBack { .. }),
        "{:?}",
        ran.outcome
    );
    let st = host.state();
    assert!(st.timers.is_empty(), "disarmed before rolling back");
    assert!(
        st.revert_records.is_empty(),
        "the controller rolled back, not the timer"
    );
    assert_eq!(st.current, sp(OLD));
}

#[tokio::test(start_paused = true)]
async fn a_host_off_the_network_during_its_switch_takes_itself_back() {
    let host = candidate_that(Behaviour {
        cuts_network: true,
        ..Default::default()
    });
    let ran = run(&host, &armed(Goal::Gated)).await;
    match &ran.outcome {
        // The switch's last poll is lost with the network: the controller
        // waits out the host's revert, then finds it back.
        HostOutcome::RevertedByHost { cause, to, .. } => {
            assert_eq!(to, &sp(OLD));
            assert!(
                matches!(
                    cause,
                    CutOff::LostDuringSwitch { .. } | CutOff::NoNewConnection { .. }
                ),
                "{cause:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !host.state().offline,
        "back on a system that is on the network"
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_that_never_answers_fails_at_its_limit_saying_why() {
    let started = tokio::time::Instant::now();
    let hung = super::bounded(
        "nix-env --set",
        STEP_LIMIT,
        std::future::pending::<anyhow::Result<()>>(),
    );
    let err = hung.await.unwrap_err().to_string();
    assert_eq!(started.elapsed(), STEP_LIMIT);
    assert!(
        err.contains("nix-env --set: no answer within 120s"),
        "{err}"
    );
}

fn keyed(goal: Goal) -> ActivationRequest {
    use crate::keys::{KeySource, KeySpec, ResolvedKey, Secret, UploadAt};
    let key = |name: &str, at: UploadAt, content: &[u8]| {
        let spec = KeySpec {
            name: name.into(),
            source: KeySource::Text {
                text: Secret::new(content.to_vec()),
            },
            dest_dir: "/run/keys".into(),
            user: "root".into(),
            group: None,
            permissions: "0600".into(),
            upload_at: at,
        };
        ResolvedKey::new(spec, Secret::new(content.to_vec()))
    };
    let mut req = request(goal);
    req.keys = std::sync::Arc::new(vec![
        key("pre.key", UploadAt::PreActivation, b"PRE-SECRET"),
        key("post.key", UploadAt::PostActivation, b"POST-SECRET"),
    ]);
    req
}

fn at(cmds: &[String], prefix: &str) -> usize {
    cmds.iter()
        .position(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {cmds:#?}"))
}

#[tokio::test(start_paused = true)]
async fn keys_are_written_in_the_order_of_the_gates() {
    let host = FakeHost::new(&sp(OLD));
    let ran = run(&host, &keyed(Goal::Gated)).await;
    assert!(
        matches!(ran.outcome, HostOutcome::KnownGood { .. }),
        "{:?}",
        ran.outcome
    );
    let c = &ran.cmds;
    let pre = at(c, "sudo write-key /run/keys pre.key root 0600");
    let dry = at(
        c,
        &format!("sudo -n -- {NEW}/bin/switch-to-configuration dry-activate"),
    );
    let fire = at(c, "sudo fire --unit=nixgate-switch-r1 ");
    let post = at(c, "sudo write-key /run/keys post.key");
    let health = at(c, "timeout --kill-after=5");
    assert!(
        pre < dry && dry < fire && fire < post && post < health,
        "{c:#?}"
    );
    assert!(c.iter().all(|x| !x.contains("SECRET")), "{c:#?}");
    {
        let st = host.state();
        assert_eq!(st.keys["/run/keys/pre.key"], b"PRE-SECRET");
        assert_eq!(st.keys["/run/keys/post.key"], b"POST-SECRET");
    }
    let uploaded: Vec<_> = ran
        .events
        .iter()
        .filter_map(|e| match e {
            ActivationEvent::KeysUploaded { stage, keys } => Some((*stage, keys.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(uploaded.len(), 2);
    assert_eq!(uploaded[0].1[0].dest, "/run/keys/pre.key");
    // dry-activate and copy change nothing: no keys.
    for goal in [Goal::DryActivate, Goal::Copy] {
        let host = FakeHost::new(&sp(OLD));
        let ran = run(&host, &keyed(goal)).await;
        assert_eq!(count(&ran.cmds, "sudo write-key"), 0, "{goal:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_that_cannot_be_written_fails_clean_before_and_rolls_back_after() {
    let host = FakeHost::new(&sp(OLD));
    host.state().failing_key = Some("pre.key".into());
    let ran = run(&host, &keyed(Goal::Gated)).await;
    let HostOutcome::Failed { gate, reason } = &ran.outcome else {
        panic!("{:?}", ran.outcome)
    };
    assert_eq!(*gate, Gate::DryActivate);
    assert!(matches!(reason, FailureReason::Keys { error, .. } if error.key == "pre.key"));
    assert_eq!(
        count(
            &ran.cmds,
            &format!("sudo -n -- {NEW}/bin/switch-to-configuration")
        ),
        0
    );
    assert_eq!(host.state().current, sp(OLD));

    let host = FakeHost::new(&sp(OLD));
    host.state().failing_key = Some("post.key".into());
    let ran = run(&host, &keyed(Goal::Gated)).await;
    let HostOutcome::RolledBack { gate, reason, to } = &ran.outcome else {
        panic!("{:?}", ran.outcome)
    };
    assert_eq!((*gate, to), (Gate::LiveActivate, &sp(OLD)));
    assert!(matches!(reason, FailureReason::Keys { error, .. } if error.key == "post.key"));
    assert_eq!(host.state().current, sp(OLD));
}

/// The host's revert fired just before the disarm arrived over the new
/// connection (which had read the candidate): the disarm says it is too
/// late, and the run is no confirmation. It waits for the revert and
/// looks, never marking the candidate (the disarm exited 0 here before,
/// and the run went on to mark a host that was switching away).
#[tokio::test(start_paused = true)]
async fn a_revert_that_beat_the_disarm_is_no_confirmation() {
    let host = FakeHost::new(&sp(OLD));
    host.state().revert_beats_disarm = true;
    let ran = run(&host, &armed(Goal::Gated)).await;
    match &ran.outcome {
        HostOutcome::RevertedByHost {
            cause: CutOff::RevertBegan,
            to,
            record: Some(record),
        } => {
            assert_eq!(to, &sp(OLD));
            assert_eq!(record.from, NEW);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !ran.events
            .iter()
            .any(|e| matches!(e, ActivationEvent::Confirmed { .. }))
    );
    assert!(!ran.cmds.iter().any(|c| c.contains("mark-known-good")));
    assert_eq!(host.state().current, sp(OLD));
}

/// The host runs another system than the plan read (an auto-upgrade
/// switched it while the prompt waited): nothing is done, and the failure
/// says what changed (the diff shown, and a soak's take-back, were against
/// the other system).
#[tokio::test(start_paused = true)]
async fn a_host_changed_since_the_plan_is_left_alone() {
    let host = FakeHost::new(&sp(OLD));
    let mut req = request(Goal::Gated);
    req.planned_current = Some(sp(NEW));
    let ran = run(&host, &req).await;
    match &ran.outcome {
        HostOutcome::Failed {
            reason: FailureReason::ChangedSincePlan { planned, now },
            ..
        } => assert_eq!((planned, now), (&sp(NEW), &sp(OLD))),
        other => panic!("{other:?}"),
    }
    assert!(
        !ran.cmds
            .iter()
            .any(|c| c.contains(" fire ") || c.contains("nix-env")),
        "{:#?}",
        ran.cmds
    );
    // What the plan read: it goes on as ever.
    req.planned_current = Some(sp(OLD));
    let ran = run(&host, &req).await;
    assert!(
        matches!(ran.outcome, HostOutcome::KnownGood { .. }),
        "{:?}",
        ran.outcome
    );
}

/// A switch the host refused every time (nothing changed), whose revert
/// cannot be disarmed: the host fails as it did, and the run says the
/// revert is still armed and what it will do (it said nothing: a change
/// made by hand after "nothing changed" was undone when it fired).
#[tokio::test(start_paused = true)]
async fn a_refused_switch_whose_revert_stays_armed_says_so() {
    let host = FakeHost::new(&sp(OLD));
    host.state().refuse_fires = vec!["switch"; 3];
    host.state().break_once.push(
        "sudo disarm-revert nixgate-confirm-r1 /run/nixgate/nixgate-confirm-r1.sh \
         /var/lib/nixgate/deadman/r1.json /var/lib/nixgate/deadman/.r1.started 1"
            .into(),
    );
    let ran = run(&host, &armed(Goal::Switch)).await;
    assert!(
        matches!(
            &ran.outcome,
            HostOutcome::Failed {
                reason: FailureReason::Switch(SwitchFailure::FireRefused { .. }),
                ..
            }
        ),
        "{:?}",
        ran.outcome
    );
    assert!(
        ran.events.iter().any(|e| matches!(
            e,
            ActivationEvent::Warning {
                warning: crate::activation::events::Warning::RevertStillArmed { unit }
            } if unit == "nixgate-confirm-r1"
        )),
        "{:#?}",
        ran.events
    );
}

/// A change the switch defers to a reboot, whose revert cannot be
/// disarmed: persisting the boot default would be undone when the revert
/// fires, so nothing is persisted and the host fails, its profile back
/// where it was (it was reported pending-reboot before).
#[tokio::test(start_paused = true)]
async fn a_deferral_whose_revert_stays_armed_is_not_persisted() {
    let host = FakeHost::new(&sp(OLD));
    host.inhibited(&sp(NEW));
    host.state().break_once.push(
        "sudo disarm-revert nixgate-confirm-r1 /run/nixgate/nixgate-confirm-r1.sh \
         /var/lib/nixgate/deadman/r1.json /var/lib/nixgate/deadman/.r1.started 1"
            .into(),
    );
    let ran = run(&host, &armed(Goal::Switch)).await;
    match &ran.outcome {
        HostOutcome::Failed {
            reason: FailureReason::Remote { step, error },
            ..
        } => {
            assert_eq!(step.to_string(), "disarm the dead-man revert");
            assert!(error.contains("not persisted"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        count(&ran.cmds, "sudo fire --unit=nixgate-switch-r1-persist"),
        0
    );
    let st = host.state();
    assert_eq!(st.boot_default, sp(OLD));
    assert_eq!(st.profile(SYSTEM), Some(&sp(OLD)));
}

/// The host stopped the first timer for the re-arm, then refused the new
/// one: no revert is armed. A candidate that cuts new connections is then
/// rolled back by the controller once the confirm window is over, not
/// after waiting for a revert that never comes (and a host never reached
/// again is not said to have one due).
#[tokio::test(start_paused = true)]
async fn a_refused_re_arm_leaves_no_revert_to_wait_for() {
    let host = cutting_ssh();
    host.state().refuse_rearm = true;
    let started = tokio::time::Instant::now();
    let ran = run(&host, &armed(Goal::Gated)).await;
    assert!(
        matches!(ran.outcome, HostOutcome::RolledBack { .. }),
        "{:?}",
        ran.outcome
    );
    // The 30 s window and the rollback, not the first timer's 90 s.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "{took:?}");
    let st = host.state();
    assert_eq!(st.current, sp(OLD));
    assert!(st.timers.is_empty() && st.revert_records.is_empty());
}

/// The fire cannot arm the revert (Linux): nothing fires, the profile is
/// left alone, nothing is left armed, and the gate fails clean with why.
#[tokio::test(start_paused = true)]
async fn a_revert_the_fire_cannot_arm_switches_nothing() {
    let host = FakeHost::new(&sp(OLD));
    host.state().arm_fails = true;
    let ran = run(&host, &armed(Goal::Switch)).await;
    match &ran.outcome {
        HostOutcome::Failed {
            gate: Gate::LiveActivate,
            reason: FailureReason::Remote { step, error },
        } => {
            assert_eq!(*step, "arm the dead-man revert");
            assert!(error.contains("nixgate-confirm-r1"), "{error}");
            assert!(error.contains("Connection timed out"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    let st = host.state();
    assert!(st.jobs.is_empty(), "nothing fired: {:?}", st.jobs);
    assert!(st.timers.is_empty());
    assert_eq!(st.profile(SYSTEM), Some(&sp(OLD)));
    assert_eq!(st.current, sp(OLD));
}

/// `switch` on Linux: the live fire arms the dead-man, then points the
/// profile at the candidate itself (the revert puts the profile back too:
/// `a_switch_with_the_boot_default_moved_reverts_both`), once the lock is
/// free: no `nix-env` and no arm of their own.
#[tokio::test(start_paused = true)]
async fn a_switch_sets_the_profile_in_its_fire_after_arming() {
    let host = FakeHost::new(&sp(OLD));
    let ran = run(&host, &armed(Goal::Switch)).await;
    assert_eq!(ran.outcome, HostOutcome::Activated { goal: Goal::Switch });
    assert_eq!(count(&ran.cmds, "sudo -n -- nix-env"), 0, "{:#?}", ran.cmds);
    let fire = format!(
        "sudo fire --unit=nixgate-switch-r1 {NEW}/bin/switch-to-configuration switch \
         (arm-revert nixgate-confirm-r1 90 first) (set {SYSTEM} first)"
    );
    assert_eq!(count(&ran.cmds, &fire), 1, "{:#?}", ran.cmds);
    assert_eq!(arms(&ran.cmds).len(), 1, "{:#?}", ran.cmds);
    let st = host.state();
    assert_eq!(st.profile(SYSTEM), Some(&sp(NEW)));
    assert_eq!(
        (st.current.clone(), st.boot_default.clone()),
        (sp(NEW), sp(NEW))
    );
}

/// The fire's `nix-env --set` fails: nothing fires. Before the live switch
/// (`switch`) the host fails clean, its revert disarmed; at persist (gated,
/// live already) it is rolled back, as a failed `nix-env` of its own was.
#[tokio::test(start_paused = true)]
async fn a_profile_the_fire_cannot_set_fires_nothing() {
    let host = FakeHost::new(&sp(OLD));
    host.state().profile_set_fails = true;
    let ran = run(&host, &armed(Goal::Switch)).await;
    let HostOutcome::Failed { gate, reason } = &ran.outcome else {
        panic!("{:?}", ran.outcome)
    };
    assert_eq!(*gate, Gate::LiveActivate);
    let FailureReason::ProfileSet { error } = reason else {
        panic!("{reason:?}")
    };
    assert!(error.contains("No space left on device"), "{error}");
    {
        let st = host.state();
        assert!(st.jobs.is_empty(), "nothing fired: {:?}", st.jobs);
        assert!(st.timers.is_empty(), "disarmed: {:?}", st.timers);
        assert_eq!(st.profile(SYSTEM), Some(&sp(OLD)));
        assert_eq!(st.current, sp(OLD));
    }

    let host = FakeHost::new(&sp(OLD));
    host.state().profile_set_fails = true;
    let ran = run(&host, &request(Goal::Gated)).await;
    let HostOutcome::RolledBack { gate, reason, to } = &ran.outcome else {
        panic!("{:?}", ran.outcome)
    };
    assert_eq!((*gate, to), (Gate::Persist, &sp(OLD)));
    assert!(
        matches!(reason, FailureReason::ProfileSet { .. }),
        "{reason:?}"
    );
    let st = host.state();
    assert!(
        !st.jobs.contains_key("nixgate-switch-r1-persist"),
        "{:?}",
        st.jobs
    );
    assert_eq!(
        (st.current.clone(), st.boot_default.clone()),
        (sp(OLD), sp(OLD))
    );
}

/// A change deferred to the boot default whose `boot` finds the lock held
/// moves nothing: the fire checks the lock before it sets the profile (a
/// profile set first, then put back, added two generations before).
#[tokio::test(start_paused = true)]
async fn a_held_lock_at_persist_leaves_the_profile_alone() {
    let host = FakeHost::new(&sp(OLD));
    host.behave(&sp(NEW), Behaviour::systemd_change());
    host.state().lock_held = true;
    let ran = run(&host, &request(Goal::Gated)).await;
    assert!(
        matches!(
            ran.outcome,
            HostOutcome::Failed {
                gate: Gate::Persist,
                reason: FailureReason::Switch(SwitchFailure::LockHeld { .. })
            }
        ),
        "{:?}",
        ran.outcome
    );
    let st = host.state();
    assert_eq!(st.profiles[SYSTEM], vec![sp(OLD)], "no generation added");
    assert_eq!(st.boot_default, sp(OLD));
}

/// The first fire set the profile, then the host refused its job; another
/// switch took the lock before the second fire: the profile, moved by the
/// first, is put back (judged by the last fire alone, it stayed on the
/// candidate).
#[tokio::test(start_paused = true)]
async fn a_profile_an_earlier_fire_set_is_put_back() {
    let host = FakeHost::new(&sp(OLD));
    {
        let mut st = host.state();
        st.refuse_fires = vec!["switch"];
        st.lock_taken_after_refusal = true;
    }
    let ran = run(&host, &request(Goal::Switch)).await;
    assert!(
        matches!(
            ran.outcome,
            HostOutcome::Failed {
                gate: Gate::LiveActivate,
                reason: FailureReason::Switch(SwitchFailure::LockHeld { .. })
            }
        ),
        "{:?}",
        ran.outcome
    );
    let st = host.state();
    assert_eq!(st.profile(SYSTEM), Some(&sp(OLD)), "{:?}", st.profiles);
    assert!(st.jobs.is_empty());
}

/// The run's host lock as these tests lose it: held until `lose_when`
/// first says so of the host (asked before each step that changes it),
/// when `meanwhile` happens to the host (another run took it over while
/// this controller was suspended past the lease); taken again unless
/// another run holds it then (`lock_taken_by`).
struct LosingLock<'a> {
    host: &'a FakeHost,
    lose_when: fn(&crate::activation::fake_host::State) -> bool,
    meanwhile: fn(&mut crate::activation::fake_host::State),
    /// How many commands the host had run when the lock was lost.
    lost_at: Mutex<Option<usize>>,
    retaken: std::sync::atomic::AtomicBool,
}

impl<'a> LosingLock<'a> {
    fn new(
        host: &'a FakeHost,
        lose_when: fn(&crate::activation::fake_host::State) -> bool,
        meanwhile: fn(&mut crate::activation::fake_host::State),
    ) -> Self {
        LosingLock {
            host,
            lose_when,
            meanwhile,
            lost_at: Mutex::new(None),
            retaken: Default::default(),
        }
    }

    /// The commands the host ran after the lock was lost.
    fn ran_after(&self) -> Vec<String> {
        let at = self.lost_at.lock().unwrap().expect("the lock was lost");
        self.host.state().ran[at..].to_vec()
    }
}

impl HostHold for LosingLock<'_> {
    fn held(&self) -> bool {
        use std::sync::atomic::Ordering;
        let mut lost_at = self.lost_at.lock().unwrap();
        if lost_at.is_some() {
            return self.retaken.load(Ordering::SeqCst);
        }
        let mut st = self.host.state();
        if !(self.lose_when)(&st) {
            return true;
        }
        (self.meanwhile)(&mut st);
        *lost_at = Some(st.ran.len());
        false
    }

    fn take_again(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), NotTaken>> + Send + '_>>
    {
        Box::pin(async {
            let holder = self.host.state().lock_taken_by.clone();
            if holder.is_some() {
                return Err(NotTaken {
                    holder,
                    error: None,
                });
            }
            self.retaken
                .store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })
    }
}

/// The one read of a lock taken again (the links the run started from).
fn links_read() -> String {
    format!("readlink-f /run/current-system {SYSTEM} {KNOWN_GOOD} /var/lib/nixgate/known-good")
}

/// Another run ("cron") took the host over: it ran this run's leftovers
/// and deployed ODD, live and as the boot default (marked or not, it
/// holds the lock still: `holding`).
fn cron_deployed_odd(st: &mut crate::activation::fake_host::State, holding: bool) {
    st.current = sp(ODD);
    st.boot_default = sp(ODD);
    st.set_profile(SYSTEM, &sp(ODD));
    if holding {
        st.lock_taken_by = Some("run r2 pid 7 on cron".into());
    }
}

/// A gated push whose controller was suspended past its lock's lease
/// after the switch (before the confirm's end, or after the health
/// checks: before the persist), or before it (during the dry
/// activation), and another run took the host over and holds it: nothing
/// more is done to the host, only what it runs is read (before: the run
/// went on over its reconnected session, persisted its candidate as the
/// boot default under the other run's system and marked it known-good).
/// Lost before the switch, the host fails with nothing changed.
#[tokio::test(start_paused = true)]
async fn a_lock_another_run_took_meanwhile_leaves_the_host_to_it() {
    type When = fn(&crate::activation::fake_host::State) -> bool;
    let after_switch: When = |st| st.current == sp(NEW);
    let after_checks: When = |st| st.health_checks > 0;
    let during_dry: When = |st| st.ran.iter().any(|c| c.ends_with("dry-activate"));
    for (case, when) in [
        ("after the switch", after_switch),
        ("after the checks", after_checks),
        ("before the switch", during_dry),
    ] {
        let host = FakeHost::new(&sp(OLD));
        let hold = LosingLock::new(&host, when, |st| cron_deployed_odd(st, true));
        let ran = run_holding(
            &host,
            &request(Goal::Gated),
            &CancellationToken::new(),
            &hold,
        )
        .await;
        let holder = Some("run r2 pid 7 on cron".to_owned());
        if case == "before the switch" {
            let reason = FailureReason::LockLost {
                holder,
                error: None,
            };
            assert_eq!(
                ran.outcome,
                HostOutcome::Failed {
                    gate: Gate::LiveActivate,
                    reason
                },
                "{case}"
            );
            assert_eq!(hold.ran_after(), Vec::<String>::new(), "{case}");
        } else {
            assert_eq!(
                ran.outcome,
                HostOutcome::MovedByOther {
                    cause: CutOff::LockLost {
                        holder,
                        error: None
                    },
                    now: sp(ODD),
                    record: None,
                },
                "{case}"
            );
            assert_eq!(hold.ran_after(), [links_read()], "{case}");
        }
        let st = host.state();
        assert_eq!(
            (&st.current, &st.boot_default),
            (&sp(ODD), &sp(ODD)),
            "{case}"
        );
        assert_eq!(st.profile(SYSTEM), Some(&sp(ODD)), "{case}");
        assert_eq!(st.profiles[KNOWN_GOOD], [sp(OLD)], "{case}: not marked");
    }
}

/// The lock lost, free again when the run comes back, and the host moved
/// meanwhile (another run came and went: deployed ODD; or only moved the
/// boot default: `--goal boot`): taken again, the host is read once and
/// left as it is, no persist, no mark, and a failing health check rolls
/// nothing back (before: rolled the other run's system back).
#[tokio::test(start_paused = true)]
async fn a_lock_taken_again_on_a_host_moved_meanwhile_changes_nothing_more() {
    type Then = fn(&mut crate::activation::fake_host::State);
    let deployed: Then = |st| cron_deployed_odd(st, false);
    let boot_only: Then = |st| st.set_profile(SYSTEM, &sp(ODD));
    for (case, then, healthy, now) in [
        ("deployed", deployed, true, ODD),
        ("boot only", boot_only, true, NEW),
        ("deployed, unhealthy", deployed, false, ODD),
    ] {
        let host = candidate_that(Behaviour {
            healthy,
            ..Default::default()
        });
        let hold = LosingLock::new(&host, |st| st.health_checks > 0, then);
        let ran = run_holding(
            &host,
            &request(Goal::Gated),
            &CancellationToken::new(),
            &hold,
        )
        .await;
        let HostOutcome::MovedByOther {
            cause:
                CutOff::LockLost {
                    holder: None,
                    error: None,
                },
            now: found,
            record: None,
        } = &ran.outcome
        else {
            panic!("{case}: {:?}", ran.outcome);
        };
        assert_eq!(found, &sp(now), "{case}");
        assert_eq!(hold.ran_after(), [links_read()], "{case}");
        let st = host.state();
        assert_eq!(st.current, sp(now), "{case}");
        assert_eq!(st.profile(SYSTEM), Some(&sp(ODD)), "{case}");
        assert_eq!(st.profiles[KNOWN_GOOD], [sp(OLD)], "{case}: not marked");
    }
}

/// The lock lost with the connection as the host rebooted (onto its boot
/// default: the gated goal had not persisted the candidate), taken again:
/// the host is back where this run found it, not moved by anyone else.
/// Rolled back (verified there), not `moved-by-other`: the fault matrix's
/// "health checks x host rebooted" read it as needing a person.
#[tokio::test(start_paused = true)]
async fn a_host_that_rebooted_onto_what_it_ran_is_rolled_back_not_moved() {
    let host = FakeHost::new(&sp(OLD));
    let rebooted: fn(&mut crate::activation::fake_host::State) = |st| {
        st.current = st.boot_default.clone();
    };
    let hold = LosingLock::new(&host, |st| st.health_checks > 0, rebooted);
    let ran = run_holding(
        &host,
        &request(Goal::Gated),
        &CancellationToken::new(),
        &hold,
    )
    .await;
    assert!(
        matches!(&ran.outcome, HostOutcome::RolledBack { to, .. } if *to == sp(OLD)),
        "{:?}",
        ran.outcome
    );
    let st = host.state();
    assert_eq!(st.current, sp(OLD));
    assert_eq!(st.profiles[KNOWN_GOOD], [sp(OLD)], "not marked");
}

/// The lock lost after the switch and taken again with the host as the
/// run left it: the run goes on to known-good, its commands those of a
/// run that kept its lock, with one read more (the links) where it was
/// taken again.
#[tokio::test(start_paused = true)]
async fn a_lock_taken_again_on_a_host_as_left_goes_on_with_one_read_more() {
    let kept = FakeHost::new(&sp(OLD));
    let ran = run(&kept, &request(Goal::Gated)).await;
    assert!(matches!(ran.outcome, HostOutcome::KnownGood { .. }));
    let kept = kept.state().ran.clone();
    let host = FakeHost::new(&sp(OLD));
    let hold = LosingLock::new(&host, |st| st.current == sp(NEW), |_| {});
    let ran = run_holding(
        &host,
        &request(Goal::Gated),
        &CancellationToken::new(),
        &hold,
    )
    .await;
    let HostOutcome::KnownGood { mark } = &ran.outcome else {
        panic!("{:?}", ran.outcome);
    };
    assert_eq!(mark.generation, 2);
    assert!(ran.events.contains(&ActivationEvent::Step {
        step: Step::TakeLockAgain
    }));
    let at = hold.lost_at.lock().unwrap().unwrap();
    let mut want = kept;
    want.insert(at, links_read());
    assert_eq!(host.state().ran, want);
}

/// `--reboot` (push or rollback): a systemd change deferred, persisted,
/// the host rebooted into it and verified there, then its health checks
/// fail. Back to what it ran means back across the same systemd change:
/// by a reboot too (the profile and boot default put back, rebooted,
/// verified booted there). Before, the old system was switched live on
/// the candidate's systemd and kernel: NixOS 25.11's inhibitors refuse
/// that (`rollback-failed`, the profile already moved back while the
/// boot entries still booted the candidate), older NixOS ran it on them,
/// which nixgate refuses forward, reported `rolled-back`.
#[tokio::test(start_paused = true)]
async fn a_host_rebooted_into_its_candidate_and_unhealthy_is_rebooted_back() {
    let host = unhealthy_systemd_change();
    let mut req = request(Goal::Gated);
    req.settings.allow_reboot = true;
    let ran = run(&host, &req).await;
    match &ran.outcome {
        HostOutcome::RolledBack {
            gate: Gate::HealthChecks,
            to,
            ..
        } => assert_eq!(to, &sp(OLD)),
        other => panic!("{other:?}: {:#?}", ran.cmds),
    }
    let st = host.state();
    assert_eq!((&st.booted, &st.current), (&sp(OLD), &sp(OLD)));
    assert_eq!(st.boot_default, sp(OLD));
    assert_eq!(st.profile(SYSTEM), Some(&sp(OLD)));
    let reboots = crate::activation::fake_host::reboots(&ran.cmds);
    assert_eq!(reboots, 2, "{:#?}", ran.cmds);
    let live_switch_back = ran
        .cmds
        .iter()
        .any(|c| c.contains(&format!("{OLD}/bin/switch-to-configuration switch")));
    assert!(!live_switch_back, "{:#?}", ran.cmds);
}

/// The same rebooted into (a systemd change, `--reboot`): the known-good
/// candidate whose mark fails stays, what runs switched again in place,
/// not rebooted away nor the old system switched live on its systemd.
#[tokio::test(start_paused = true)]
async fn a_known_good_candidate_rebooted_into_whose_mark_fails_stays() {
    let host = FakeHost::new(&sp(NEW));
    host.state().current = sp(OLD);
    host.state().booted = sp(OLD);
    host.behave(&sp(NEW), Behaviour::systemd_change());
    host.state()
        .break_once
        .push(format!("sudo mark-known-good {KNOWN_GOOD} {NEW} "));
    let mut req = request(Goal::Gated);
    req.settings.allow_reboot = true;
    let ran = run(&host, &req).await;
    match &ran.outcome {
        HostOutcome::RolledBack {
            gate: Gate::MarkKnownGood,
            to,
            ..
        } => assert_eq!(to, &sp(NEW)),
        other => panic!("{other:?}: {:#?}", ran.cmds),
    }
    let st = host.state();
    assert_eq!((&st.booted, &st.current), (&sp(NEW), &sp(NEW)));
    let reboots = crate::activation::fake_host::reboots(&ran.cmds);
    assert_eq!(reboots, 1, "{:#?}", ran.cmds);
}

/// A host on OLD whose candidate NEW changes systemd (a reboot proves it)
/// and is unhealthy.
fn unhealthy_systemd_change() -> FakeHost {
    let host = FakeHost::new(&sp(OLD));
    host.behave(
        &sp(NEW),
        Behaviour {
            healthy: false,
            ..Behaviour::systemd_change()
        },
    );
    host
}

/// The same rolled back by a reboot, with keys: the reboot back emptied
/// `/run/keys` (a tmpfs), and the run's keys of both stages are written
/// again on the system it came up on (before: none, reported rolled back
/// with the known-good system running without its keys).
#[tokio::test(start_paused = true)]
async fn a_rollback_by_reboot_writes_the_keys_again() {
    let host = unhealthy_systemd_change();
    let mut req = keyed(Goal::Gated);
    req.settings.allow_reboot = true;
    let ran = run(&host, &req).await;
    assert!(
        matches!(&ran.outcome, HostOutcome::RolledBack { to, .. } if *to == sp(OLD)),
        "{:?}",
        ran.outcome
    );
    assert_eq!(crate::activation::fake_host::reboots(&ran.cmds), 2);
    let st = host.state();
    assert_eq!(st.booted, sp(OLD));
    assert_eq!(st.keys["/run/keys/pre.key"], b"PRE-SECRET");
    assert_eq!(st.keys["/run/keys/post.key"], b"POST-SECRET");
    let finished = (ran.events.iter())
        .position(|e| matches!(e, ActivationEvent::RollbackFinished { .. }))
        .unwrap();
    let rewritten = ran.events[..finished]
        .iter()
        .rev()
        .take_while(|e| !matches!(e, ActivationEvent::RollbackStarted { .. }))
        .filter(|e| matches!(e, ActivationEvent::KeysUploaded { .. }))
        .count();
    assert_eq!(rewritten, 2, "{:#?}", ran.events);
}

/// Three keys, the second cannot be written: the first replaced the
/// host's. Its receipt is reported (a `KeysUploaded` event, the error's
/// `written`) and the failure does not say nothing changed (before: the
/// receipt was dropped with the error, and the host was reported failed
/// before it changed).
#[tokio::test(start_paused = true)]
async fn a_key_failing_after_others_were_written_reports_them() {
    use crate::keys::{ResolvedKey, Secret, UploadAt};
    let mut req = keyed(Goal::Gated);
    let pre = req.keys[0].spec.clone();
    let key = |name: &str| {
        let spec = crate::keys::KeySpec {
            name: name.into(),
            upload_at: UploadAt::PreActivation,
            ..pre.clone()
        };
        ResolvedKey::new(spec, Secret::new(name.as_bytes().to_vec()))
    };
    req.keys = std::sync::Arc::new(vec![key("a.key"), key("b.key"), key("c.key")]);
    let host = FakeHost::new(&sp(OLD));
    host.state().failing_key = Some("b.key".into());
    let ran = run(&host, &req).await;
    let HostOutcome::Failed { reason, .. } = &ran.outcome else {
        panic!("{:?}", ran.outcome)
    };
    let written: Vec<&str> = (reason.keys_written().iter())
        .map(|k| k.name.as_str())
        .collect();
    assert_eq!(written, ["a.key"]);
    assert_eq!(host.state().keys["/run/keys/a.key"], b"a.key");
    let uploaded: Vec<_> = (ran.events.iter())
        .filter_map(|e| match e {
            ActivationEvent::KeysUploaded { keys, .. } => Some(keys.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(uploaded.len(), 1, "{:#?}", ran.events);
    assert_eq!(uploaded[0][0].dest, "/run/keys/a.key");
    let said = crate::report::human::words::unchanged_but_keys(reason, "nothing changed");
    assert!(
        said.contains("a.key") && !said.starts_with("nothing"),
        "{said}"
    );
}
