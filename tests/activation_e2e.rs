//! The activation pipeline against real-systemd hosts (systemd-nspawn
//! containers booting Debian's systemd): real `systemd-run`, `systemctl`,
//! `journalctl`, real Nix stores, the NixOS-shaped test configuration with
//! misbehaving switch scripts.

mod support;

use std::time::{Duration, Instant};

use nixgate::activation::detached::SwitchFailure;
use nixgate::activation::{
    ActivationRequest, FailureReason, HostOutcome, HostSettings, Os, RunId, activate_host,
    pipeline::Unlocked,
};
use nixgate::gates::{Gate, Goal};
use nixgate::nix::StorePath;
use serde_json::json;
use support::fleet::{Fleet, FleetSpec};
use support::openssh::OpenSsh;
use tokio_util::sync::CancellationToken;

const HOSTS: [&str; 6] = ["sys1", "sys2", "sys3", "sys4", "sys5", "sys6"];

fn settings() -> HostSettings {
    let mut s = HostSettings::new(Os::Linux);
    s.activation_timeout = Duration::from_secs(20);
    s.poll_interval = Duration::from_millis(300);
    s
}

async fn deploy(fleet: &Fleet, host: &str, closure: &str, run: &str) -> (HostOutcome, Duration) {
    deploy_to(fleet, host, closure, run, Goal::Gated).await
}

async fn deploy_to(
    fleet: &Fleet,
    host: &str,
    closure: &str,
    run: &str,
    goal: Goal,
) -> (HostOutcome, Duration) {
    let remote = OpenSsh::new(fleet, host);
    let req = ActivationRequest {
        settings: settings(),
        candidate: StorePath::parse(closure).unwrap(),
        goal,
        run_id: RunId::parse(run).unwrap(),
        commit: None,
        earlier_gates: Vec::new(),
        known_good_generation: None,
        rolls_back: false,
        keys: Default::default(),
        planned_current: None,
    };
    let started = Instant::now();
    let out = activate_host(
        &remote,
        &remote,
        &Unlocked,
        &req,
        &CancellationToken::new(),
        &|_| {},
    )
    .await;
    (out, started.elapsed())
}

fn build_and_copy(fleet: &Fleet, host: &str) -> String {
    let path = fleet.build_on_builder(host).unwrap();
    fleet.copy_closure("builder", host, &path).unwrap();
    path
}

fn link(fleet: &Fleet, host: &str, path: &str) -> String {
    fleet.in_host_ok(host, &format!("readlink -f {path} || true"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
async fn gates_on_real_systemd_hosts() {
    let fleet = Fleet::start(FleetSpec {
        light: 0,
        systemd: HOSTS.len(),
        builder: true,
    })
    .unwrap();
    let gen0: Vec<String> = HOSTS
        .iter()
        .map(|h| link(&fleet, h, "/run/current-system"))
        .collect();

    // Step 1: a good candidate everywhere (nginx bumped) ends known-good.
    fleet
        .commit_config(|v| v["defaults"]["packages"]["nginx"]["version"] = json!("1.25.3"))
        .unwrap();
    let good: Vec<String> = HOSTS.iter().map(|h| build_and_copy(&fleet, h)).collect();
    let runs = HOSTS
        .iter()
        .zip(&good)
        .map(|(h, c)| deploy(&fleet, h, c, "run-good"));
    for ((host, closure), (out, _)) in HOSTS.iter().zip(&good).zip(futures_join(runs).await) {
        assert!(
            matches!(out, HostOutcome::KnownGood { .. }),
            "{host}: {out:?}"
        );
        assert_eq!(
            &link(&fleet, host, "/run/current-system"),
            closure,
            "{host} current"
        );
        assert_eq!(
            &link(&fleet, host, "/nix/var/nix/profiles/system"),
            closure,
            "{host} profile"
        );
        assert_eq!(
            &link(&fleet, host, "/nix/var/nix/profiles/nixgate-known-good"),
            closure,
            "{host} known-good"
        );
        assert_eq!(
            &link(&fleet, host, "/boot/nixgate-test/default"),
            closure,
            "{host} boot default"
        );
        // the real unit restarted with the new nginx-based system is active
        assert_eq!(
            fleet.in_host_ok(host, "systemctl is-active nixgate-test-hello.service"),
            "active"
        );
    }
    for (g0, g1) in gen0.iter().zip(&good) {
        assert_ne!(g0, g1);
    }

    // Step 2: each host gets a misbehaving candidate.
    fleet
        .commit_config(|v| {
            v["defaults"]["generation"] = json!(2);
            v["hosts"]["sys2"] = json!({ "misbehaviour": "exit4" });
            v["hosts"]["sys3"] = json!({ "misbehaviour": "hang" });
            v["hosts"]["sys4"] = json!({ "misbehaviour": "flip" });
            v["hosts"]["sys5"] = json!({ "misbehaviour": "repoint-profile" });
            v["hosts"]["sys6"] = json!({ "systemdVersion": "256.1" });
            v["hosts"]["sys1"] = json!({ "misbehaviour": "slow", "slowSeconds": 8 });
        })
        .unwrap();
    let bad: Vec<String> = HOSTS.iter().map(|h| build_and_copy(&fleet, h)).collect();

    // sys1: a slow switch whose SSH access dies in the middle still ends known-good.
    let sshd_bounce = async {
        // Once the detached switch runs, take sshd away for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        let running =
            "systemctl list-units --no-legend 'nixgate-switch-*' | grep -c running || true";
        while fleet.in_host_ok("sys1", running) == "0" {
            assert!(Instant::now() < deadline, "sys1's switch never started");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        fleet.in_host_ok(
            "sys1",
            "systemctl stop ssh.service; pkill -x sshd || true; echo stopped",
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        fleet.in_host_ok("sys1", "systemctl start ssh.service && echo started");
    };
    let runs = HOSTS
        .iter()
        .zip(&bad)
        .map(|(h, c)| deploy(&fleet, h, c, "run-bad"));
    let (results, ()) = tokio::join!(futures_join(runs), sshd_bounce);

    let (sys1, _) = &results[0];
    assert!(
        matches!(sys1, HostOutcome::KnownGood { .. }),
        "sys1 (slow, ssh bounced): {sys1:?}"
    );
    assert_eq!(link(&fleet, "sys1", "/run/current-system"), bad[0]);

    let (sys2, _) = &results[1];
    match sys2 {
        HostOutcome::RolledBack {
            gate: Gate::LiveActivate,
            reason: FailureReason::Switch(SwitchFailure::Exited { code: 4, .. }),
            to,
        } => {
            assert_eq!(to.as_str(), good[1]);
        }
        other => panic!("sys2 (exit 4): {other:?}"),
    }
    assert_eq!(
        link(&fleet, "sys2", "/run/current-system"),
        good[1],
        "sys2 runs its known-good"
    );
    assert_eq!(
        link(&fleet, "sys2", "/boot/nixgate-test/default"),
        good[1],
        "sys2 boot entry unchanged"
    );

    let (sys3, took) = &results[2];
    match sys3 {
        HostOutcome::RolledBack {
            reason: FailureReason::Switch(SwitchFailure::Timeout { .. }),
            ..
        } => {}
        other => panic!("sys3 (hang): {other:?}"),
    }
    assert!(*took < Duration::from_secs(20 + 25), "hang took {took:?}");
    assert_eq!(link(&fleet, "sys3", "/run/current-system"), good[2]);

    let (sys4, _) = &results[3];
    match sys4 {
        HostOutcome::RolledBack {
            reason: FailureReason::Switch(SwitchFailure::FlippedToUnexpected { .. }),
            ..
        } => {}
        other => panic!("sys4 (flip): {other:?}"),
    }
    assert_eq!(link(&fleet, "sys4", "/run/current-system"), good[3]);

    let (sys5, _) = &results[4];
    assert!(
        matches!(sys5, HostOutcome::KnownGood { .. }),
        "sys5 (re-pointed profile): {sys5:?}"
    );
    assert_eq!(
        link(&fleet, "sys5", "/nix/var/nix/profiles/system"),
        bad[4],
        "profile self-corrected"
    );

    let (sys6, _) = &results[5];
    assert!(
        matches!(sys6, HostOutcome::DeferredPendingReboot { .. }),
        "sys6 (new systemd): {sys6:?}"
    );
    assert_eq!(
        link(&fleet, "sys6", "/run/current-system"),
        good[5],
        "old system still runs"
    );
    assert_eq!(
        link(&fleet, "sys6", "/boot/nixgate-test/default"),
        bad[5],
        "new system is the boot default"
    );

    // Step 3: sys2's boot partition is full; `--goal switch` of a good
    // candidate stops at the boot loader's install, before activating
    // anything: failed clean, named, its profile put back. Not rolled back
    // (the old system's `switch` fails the same way: `rollback-failed`).
    fleet
        .commit_config(|v| {
            v["defaults"]["generation"] = json!(3);
            v["hosts"]["sys2"] = json!({});
        })
        .unwrap();
    let next = build_and_copy(&fleet, "sys2");
    let full =
        "mkdir -p /nix/var/nixgate-test && touch /nix/var/nixgate-test/boot-full && echo full";
    assert_eq!(fleet.in_host_ok("sys2", full), "full");
    let (out, _) = deploy_to(&fleet, "sys2", &next, "run-boot-full", Goal::Switch).await;
    fleet.in_host_ok("sys2", "rm /nix/var/nixgate-test/boot-full; echo freed");
    match &out {
        HostOutcome::Failed {
            gate: Gate::LiveActivate,
            reason: FailureReason::Switch(SwitchFailure::BootLoader { code: 1, log_tail }),
        } => assert!(
            log_tail.iter().any(|l| l.contains("No space left")),
            "{log_tail:?}"
        ),
        other => panic!("sys2 (boot partition full): {other:?}"),
    }
    for path in [
        "/run/current-system",
        "/nix/var/nix/profiles/system",
        "/boot/nixgate-test/default",
    ] {
        assert_eq!(link(&fleet, "sys2", path), good[1], "sys2 {path}");
    }
}

/// Run futures concurrently, results in order.
async fn futures_join<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    futures_util::future::join_all(futs).await
}
