//! `nixgate rollback` and `nixgate status` against a real-systemd host with a
//! known-good history, and the controller lock's exit code 3.

mod support;

use nixgate::activation::{
    ActivationRequest, HostOutcome, HostSettings, Os, RunId, activate_host, pipeline::Unlocked,
};
use nixgate::gates::Goal;
use nixgate::nix::StorePath;
use serde_json::json;
use support::cli::{nixgate, text};
use support::fleet::{Fleet, FleetSpec};
use support::openssh::OpenSsh;
use tokio_util::sync::CancellationToken;

async fn mark_known_good(fleet: &Fleet, closure: &str, run: &str) {
    let mut settings = HostSettings::new(Os::Linux);
    settings.poll_interval = std::time::Duration::from_millis(300);
    let req = ActivationRequest {
        settings,
        candidate: StorePath::parse(closure).unwrap(),
        goal: Goal::Gated,
        run_id: RunId::parse(run).unwrap(),
        commit: None,
        earlier_gates: Vec::new(),
        known_good_generation: None,
        rolls_back: false,
        keys: Default::default(),
        planned_current: None,
    };
    let remote = OpenSsh::new(fleet, "sys1");
    let out = activate_host(
        &remote,
        &remote,
        &Unlocked,
        &req,
        &CancellationToken::new(),
        &|_| {},
    )
    .await;
    assert!(matches!(out, HostOutcome::KnownGood { .. }), "{out:?}");
}

/// `rollback sys1`, which must succeed: its plan for sys1.
fn rolled_back(fleet: &Fleet) -> serde_json::Value {
    let out = nixgate(fleet, &["--json", "--yes", "rollback", "sys1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let plan = lines.iter().find(|e| e["event"] == "plan_ready").unwrap();
    plan["waves"][0]["planned"][0].clone()
}

fn status(fleet: &Fleet) -> serde_json::Value {
    let out = nixgate(fleet, &["--json", "status", "sys1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
async fn rollback_goes_to_the_previous_known_good_and_status_shows_it() {
    let fleet = Fleet::start(FleetSpec {
        light: 0,
        systemd: 1,
        builder: true,
    })
    .unwrap();
    // What sys1 runs before nixgate ever marks it.
    let gen0 = fleet.in_host_ok("sys1", "readlink -e /run/current-system");
    let mut closures = Vec::new();
    for (i, version) in ["1.25.3", "1.26.0"].iter().enumerate() {
        fleet
            .commit_config(|v| v["defaults"]["packages"]["nginx"]["version"] = json!(version))
            .unwrap();
        let c = fleet.build_on_builder("sys1").unwrap();
        fleet.copy_closure("builder", "sys1", &c).unwrap();
        mark_known_good(&fleet, &c, &format!("seed-{i}")).await;
        closures.push(c);
    }
    let (a, b) = (&closures[0], &closures[1]);

    let st = status(&fleet);
    assert_eq!(st["current"], b.as_str());
    assert_eq!(st["known_good"], b.as_str());
    assert_eq!(st["known_good_generation"], 2);
    assert_eq!(st["pending_reboot"], false);
    assert_eq!(st["unvalidated"], false);

    // Back to the known-good before the current one, through every gate.
    let out = nixgate(&fleet, &["--json", "--yes", "rollback", "sys1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let summary = lines.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["hosts"][0]["outcome"], "known-good");
    assert_eq!(
        fleet.in_host_ok("sys1", "readlink -e /run/current-system"),
        *a
    );
    assert_eq!(
        fleet.in_host_ok("sys1", "readlink -e /nix/var/nix/profiles/system"),
        *a
    );
    let st = status(&fleet);
    assert_eq!(st["known_good"], a.as_str());
    assert_eq!(
        st["known_good_generation"], 1,
        "a rollback re-selects the generation it went back to; history is kept"
    );
    assert_eq!(st["last_run"]["outcome"], "known-good");
    assert_eq!(st["last_run"]["command"], "rollback");

    // A rollback sticks: the push of the unchanged HEAD (the nightly cron
    // run), whose candidate is `b` again, refuses sys1 and changes nothing;
    // `plan --allow-rolled-back` shows it ready.
    let out = nixgate(&fleet, &["--json", "--yes", "push", "sys1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let last: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    let host = &last["hosts"][0];
    assert_eq!(host["outcome"], "refused", "{last}");
    assert_eq!(host["refusal"]["cause"], "rolled_back", "{last}");
    assert_eq!(host["refusal"]["away"]["generation"], 1, "{last}");
    assert_eq!(
        fleet.in_host_ok("sys1", "readlink -e /run/current-system"),
        *a
    );
    let out = nixgate(&fleet, &["--json", "plan", "--allow-rolled-back", "sys1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(r#""verdict":"ready""#),
        "{}",
        text(&out.stdout)
    );

    // A second rollback goes further back, never forward to the closure the
    // first one left: to the system sys1 ran before nixgate's first mark
    // (its baseline), offered as never validated, taken through the gates.
    let planned = rolled_back(&fleet);
    assert_eq!(planned["candidate"]["closure"], gen0.as_str(), "{planned}");
    assert_eq!(planned["candidate"]["never_validated"], true, "{planned}");
    assert_eq!(
        fleet.in_host_ok("sys1", "readlink -e /run/current-system"),
        gen0
    );
    // From there, nothing is further back.
    let out = nixgate(&fleet, &["--json", "--yes", "rollback", "sys1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let last: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["hosts"][0]["outcome"], "refused", "{last}");
    assert_eq!(
        last["hosts"][0]["refusal"]["why"]["kind"], "nothing_earlier",
        "{last}"
    );

    // A named generation.
    let out = nixgate(&fleet, &["--yes", "rollback", "sys1", "--to", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        fleet.in_host_ok("sys1", "readlink -e /run/current-system"),
        *b
    );
    // A generation no selected host has is a usage error (issue 23).
    let out = nixgate(&fleet, &["--yes", "rollback", "sys1", "--to", "9"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no known-good generation 9"),
        "{}",
        text(&out.stderr)
    );

    // A mark that never finished (the host went down between setting the
    // known-good profile and writing its record): the profile is on a
    // closure with no record. It is no target, and sys1 stands where it
    // runs (b, generation 2): back is a, never the unrecorded closure.
    fleet
        .commit_config(|v| v["defaults"]["packages"]["nginx"]["version"] = json!("1.27.0"))
        .unwrap();
    let c = fleet.build_on_builder("sys1").unwrap();
    fleet.copy_closure("builder", "sys1", &c).unwrap();
    fleet.in_host_ok(
        "sys1",
        &format!("nix-env -p /nix/var/nix/profiles/nixgate-known-good --set {c} >/dev/null"),
    );
    assert_eq!(status(&fleet)["known_good_unrecorded"], true);
    let planned = rolled_back(&fleet);
    assert_eq!(planned["candidate"]["closure"], a.as_str(), "{planned}");
    assert_eq!(planned["candidate"]["generation"], 1, "{planned}");
    assert_eq!(
        fleet.in_host_ok("sys1", "readlink -e /run/current-system"),
        *a
    );

    // While another run holds the controller lock: exit 3, naming the holder.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(fleet.dir().join("state/lock"))
        .unwrap();
    lock.lock().unwrap();
    let out = nixgate(&fleet, &["--yes", "rollback", "sys1"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("another nixgate run holds the lock"),
        "{}",
        text(&out.stderr)
    );
}

/// A rollback whose target changes systemd is deferred to the next boot:
/// the host still runs what it is rolled back from, so the run exits 1,
/// unless it was run with `--allow-pending-reboot`.
#[test]
#[ignore = "needs root (sshd, namespaces): run scripts/test"]
fn a_rollback_deferred_to_a_reboot_fails_unless_allowed() {
    let fleet = Fleet::start(FleetSpec {
        light: 1,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    fleet
        .commit_config(|v| v["defaults"]["packages"]["nginx"]["version"] = json!("1.25.3"))
        .unwrap();
    let out = nixgate(&fleet, &["--json", "--yes", "push", "light1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let good = fleet.in_host_ok("light1", "readlink -e /run/current-system");
    // Switched by hand, past nixgate: a new systemd, never validated.
    fleet
        .commit_config(|v| v["defaults"]["systemdVersion"] = json!("256.1"))
        .unwrap();
    let by_hand = fleet.build_on_builder("light1").unwrap();
    fleet.copy_closure("builder", "light1", &by_hand).unwrap();
    fleet.in_host_ok(
        "light1",
        &format!(
            "nix-env -p /nix/var/nix/profiles/system --set {by_hand} && \
             {by_hand}/bin/switch-to-configuration switch >/dev/null"
        ),
    );
    for allowed in [false, true] {
        let mut args = vec!["--json", "--yes", "rollback", "light1"];
        if allowed {
            args.push("--allow-pending-reboot");
        }
        let out = nixgate(&fleet, &args);
        let last: serde_json::Value =
            serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
        let host = &last["hosts"][0];
        assert_eq!(host["outcome"], "pending-reboot", "{last}");
        assert_eq!(host["closure"], good.as_str(), "{last}");
        assert_eq!(host["pending_reboot_allowed"], allowed, "{last}");
        let code = if allowed { 0 } else { 1 };
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
        assert_eq!(
            fleet.in_host_ok("light1", "readlink -e /run/current-system"),
            by_hand,
            "live, the host runs what it is rolled back from until it reboots"
        );
        assert_eq!(
            fleet.in_host_ok("light1", "readlink -e /nix/var/nix/profiles/system"),
            good,
            "the target is the boot default"
        );
    }
}
