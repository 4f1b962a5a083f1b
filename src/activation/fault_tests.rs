//! Faults the fault matrix (tests/fault_matrix_e2e.rs) found, against the
//! stateful fake host under paused time: a connection lost while marking
//! known-good, a host down while it is rolled back.

use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::fake_host::{Behaviour, FakeHost, KNOWN_GOOD, SYSTEM};
use super::*;
use crate::gates::Goal;
use crate::nix::StorePath;

const OLD: &str = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.05";
const NEW: &str = "/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-nixos-system-web1-24.11";

fn sp(s: &str) -> StorePath {
    StorePath::parse(s).unwrap()
}

fn request() -> ActivationRequest {
    request_within(Duration::from_secs(60))
}

fn request_within(budget: Duration) -> ActivationRequest {
    let mut settings = HostSettings::new(Os::Linux);
    settings.activation_timeout = budget;
    ActivationRequest {
        settings,
        candidate: sp(NEW),
        goal: Goal::Gated,
        run_id: RunId::parse("r1").unwrap(),
        commit: None,
        earlier_gates: Vec::new(),
        known_good_generation: None,
        rolls_back: false,
        keys: Default::default(),
        planned_current: None,
    }
}

async fn run(host: &FakeHost) -> HostOutcome {
    run_within(host, Duration::from_secs(60)).await
}

async fn run_within(host: &FakeHost, budget: Duration) -> HostOutcome {
    let events = Mutex::new(Vec::new());
    activate_host(
        &host.remote(),
        host,
        &crate::activation::pipeline::Unlocked,
        &request_within(budget),
        &CancellationToken::new(),
        &|e| events.lock().unwrap().push(e),
    )
    .await
}

fn set_known_good() -> String {
    format!("mark-known-good {KNOWN_GOOD} {NEW} ")
}

/// Seen on the fault matrix (SSH dropped, host rebooted, while marking):
/// the mark's `nix-env --set` ran, its answer was lost; the deploy rolled a
/// host back that had passed every gate, and the known-good profile kept
/// pointing at the candidate it rolled back from.
#[tokio::test(start_paused = true)]
async fn a_mark_whose_answer_was_lost_is_tried_again_and_made_once() {
    let host = FakeHost::new(&sp(OLD));
    host.state().lose = vec![(set_known_good(), true), (set_known_good(), false)];
    let outcome = run(&host).await;
    let HostOutcome::KnownGood { mark } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(mark.generation, 2);
    let st = host.state();
    assert_eq!(
        st.profiles[KNOWN_GOOD],
        [sp(OLD), sp(NEW)],
        "one generation"
    );
    assert!(st.records.contains_key("2"));
    assert_eq!(st.current, sp(NEW));
}

/// With the default budget (300 s) too: the mark's step was cut at 255 s,
/// before its undo, and the known-good profile stayed on the candidate the
/// run rolled back from.
#[tokio::test(start_paused = true)]
async fn a_mark_that_never_answers_is_undone_before_the_rollback() {
    for budget in [60, 300] {
        a_mark_that_never_answers_is_undone_within(Duration::from_secs(budget)).await;
    }
}

async fn a_mark_that_never_answers_is_undone_within(budget: Duration) {
    let host = FakeHost::new(&sp(OLD));
    // It ran, then the host kept losing it for longer than the budget;
    // the undo gets through.
    host.state().lose = std::iter::once((set_known_good(), true))
        .chain(std::iter::repeat_n((set_known_good(), false), 40))
        .collect();
    let outcome = run_within(&host, budget).await;
    let HostOutcome::RolledBack { gate, to, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!((*gate, to), (crate::gates::Gate::MarkKnownGood, &sp(OLD)));
    let st = host.state();
    // The known-good profile is back on generation 1, and the generation
    // the lost mark made is gone, its record kept aside as undone: no
    // known-good the deploy gave up on.
    assert_eq!(st.current_generation(KNOWN_GOOD), 1);
    assert_eq!(st.profile(KNOWN_GOOD), Some(&sp(OLD)));
    assert!(st.deleted.contains(&(KNOWN_GOOD.to_owned(), 2)));
    assert_eq!(st.records.keys().collect::<Vec<_>>(), ["1", "2.undone"]);
    assert_eq!(st.current, sp(OLD));
    assert_eq!(st.profile(SYSTEM), Some(&sp(OLD)));
}

/// Seen on the fault matrix (host rebooted during the poll, the health
/// checks, persist): the rollback's first read of /run/current-system
/// failed while the host was down, and the host ended `rollback-failed`;
/// it was back five seconds later.
#[tokio::test(start_paused = true)]
async fn a_rollback_waits_for_a_host_that_is_down_for_a_while() {
    let host = FakeHost::new(&sp(OLD));
    host.behave(
        &sp(NEW),
        Behaviour {
            exit: 4,
            ..Behaviour::default()
        },
    );
    let read = "readlink-f /run/current-system".to_string();
    host.state().lose = vec![
        (read.clone(), false),
        (read.clone(), false),
        (read.clone(), false),
    ];
    // Going down, then up: its /nix gone under the session for a moment.
    host.state().break_once = vec![read.clone(), read];
    let outcome = run(&host).await;
    let HostOutcome::RolledBack { to, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(to, &sp(OLD));
    assert_eq!(host.state().current, sp(OLD));
}

/// Seen on the fault matrix (controller SIGKILL at fire and at poll): the
/// next run deployed while the killed run's switch still held the lock
/// (`lock_held`), or marked its candidate known-good and then the killed
/// run's dead-man revert fired and took the host back. The next run now
/// waits for the earlier switch, runs its revert first, then deploys.
#[tokio::test(start_paused = true)]
async fn a_killed_runs_switch_and_revert_are_settled_before_the_deploy() {
    const MID: &str = "/nix/store/1d1x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.08";
    let host = FakeHost::new(&sp(OLD));
    {
        let mut st = host.state();
        st.current = sp(MID);
        st.jobs.insert(
            "nixgate-switch-r0".into(),
            super::fake_host::Job::running_test(&sp(MID)),
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
    }
    let outcome = run(&host).await;
    let HostOutcome::KnownGood { mark } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(mark.generation, 2);
    let st = host.state();
    assert_eq!(st.current, sp(NEW));
    assert!(st.timers.is_empty(), "no revert left to take it back");
    assert!(
        st.revert_records
            .contains_key("/var/lib/nixgate/deadman/r0.json")
    );
}

/// A switch NixOS's inhibitors refused (a change that needs a reboot),
/// whose log's first read lost its connection: the log is asked again, and
/// the change is deferred to the boot default, not failed and rolled back
/// for want of the one line that tells.
#[tokio::test(start_paused = true)]
async fn a_lost_log_read_still_defers_an_inhibited_switch() {
    let host = FakeHost::new(&sp(OLD));
    host.inhibited(&sp(NEW));
    let log = "log-tail /run/nixgate/nixgate-switch-r1.log nixgate-switch-r1".to_owned();
    host.state().lose = vec![(log, false)];
    let mut req = request();
    req.goal = Goal::Switch;
    let outcome = activate_host(
        &host.remote(),
        &host,
        &crate::activation::pipeline::Unlocked,
        &req,
        &CancellationToken::new(),
        &|_| {},
    )
    .await;
    assert!(
        matches!(outcome, HostOutcome::DeferredPendingReboot { .. }),
        "{outcome:?}"
    );
    assert!(host.state().lose.is_empty(), "the lost read happened");
    assert_eq!(host.state().boot_default, sp(NEW));
}
