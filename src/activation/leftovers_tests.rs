//! Settling what an earlier run left: against the fake host, paused time.

use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::activation::fake_host::{FakeHost, Job, SYSTEM, describe};
use crate::nix::StorePath;

const OLD: &str = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.05";
const MID: &str = "/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-nixos-system-web1-24.11";

fn sp(s: &str) -> StorePath {
    StorePath::parse(s).unwrap()
}

fn settings() -> HostSettings {
    let mut s = HostSettings::new(Os::Linux);
    s.activation_timeout = Duration::from_secs(60);
    s
}

/// A host an earlier run `r0` was switching to MID when its controller
/// died: its switch still running for `polls` more looks, its revert
/// (back to OLD) armed.
fn left_by_a_killed_run(polls: u32) -> FakeHost {
    let host = FakeHost::new(&sp(OLD));
    let mut st = host.state();
    st.current = sp(MID);
    st.jobs.insert(
        "nixgate-switch-r0".into(),
        Job {
            closure: sp(MID),
            action: "test".into(),
            status: "started".into(),
            running: true,
            polls_left: polls,
            log: Vec::new(),
        },
    );
    st.lock_held = true;
    let args = [
        "/var/lib/nixgate/deadman",
        "r0",
        OLD,
        MID,
        SYSTEM,
        "",
        "nixgate-switch-r0",
        "nixgate-confirm-r0",
    ];
    st.timers.insert(
        "nixgate-confirm-r0".into(),
        (1, args.iter().map(|s| s.to_string()).collect()),
    );
    drop(st);
    host
}

async fn settle_on(host: &FakeHost, run: &str) -> (anyhow::Result<()>, Vec<Step>, Vec<String>) {
    let remote = host.remote();
    let steps = Mutex::new(Vec::new());
    let r = settle(&remote, &settings(), &RunId::parse(run).unwrap(), &|e| {
        if let ActivationEvent::Step { step } = e {
            steps.lock().unwrap().push(step)
        }
    })
    .await;
    let cmds = remote.commands().iter().map(describe).collect();
    (r, steps.into_inner().unwrap(), cmds)
}

#[tokio::test(start_paused = true)]
async fn an_earlier_switch_is_waited_for_then_its_armed_revert_runs_now() {
    let host = left_by_a_killed_run(3);
    let (r, steps, cmds) = settle_on(&host, "r1").await;
    r.unwrap();
    assert_eq!(
        steps,
        [
            Step::AwaitEarlierRun {
                units: vec!["nixgate-switch-r0.service".into()]
            },
            Step::RunEarlierRevert {
                unit: "nixgate-confirm-r0".into()
            }
        ]
    );
    assert!(
        cmds.contains(&"run-revert nixgate-confirm-r0".to_string()),
        "{cmds:?}"
    );
    let st = host.state();
    // Back where r0 promised: what ran before it, its revert recorded, no
    // timer left to take this run's deploy back later.
    assert_eq!(st.current, sp(OLD));
    assert!(st.timers.is_empty());
    assert!(
        st.revert_records
            .contains_key("/var/lib/nixgate/deadman/r0.json")
    );
}

#[tokio::test(start_paused = true)]
async fn this_runs_own_units_and_a_quiet_host_are_left_alone() {
    let host = FakeHost::new(&sp(OLD));
    let (r, steps, cmds) = settle_on(&host, "r1").await;
    r.unwrap();
    assert!(steps.is_empty());
    assert_eq!(cmds, ["list-nixgate-units "]);
    let found = parse(
        "NixgateUnit=nixgate-switch-r1-persist.service active running\n\
         NixgateUnit=nixgate-confirm-r1.timer active waiting\n\
         NixgateUnit=nixgate-switch-r10.service active running\n\
         NixgateUnit=nixgate-switch-r0.service inactive dead\n\
         NixgateUnit=nixgate-confirm-r0.timer active waiting\n",
        &RunId::parse("r1").unwrap(),
    );
    assert_eq!(found.running, ["nixgate-switch-r10.service"]);
    assert_eq!(found.armed, ["nixgate-confirm-r0"]);
}

#[tokio::test(start_paused = true)]
async fn an_earlier_switch_running_past_the_budget_fails_with_what_to_do() {
    let host = left_by_a_killed_run(u32::MAX);
    let started = tokio::time::Instant::now();
    let (r, _, _) = settle_on(&host, "r1").await;
    let e = format!("{:#}", r.unwrap_err());
    assert!(
        e.contains("nixgate-switch-r0.service") && e.contains("systemctl stop"),
        "{e}"
    );
    assert!(started.elapsed() <= Duration::from_secs(61));
    // Nothing was reverted under a switch still running.
    assert_eq!(host.state().timers.len(), 1);
}
