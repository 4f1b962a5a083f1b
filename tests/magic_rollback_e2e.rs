//! Magic rollback on real-systemd hosts (nspawn containers, Debian's sshd and
//! systemd): a configuration that cuts the controller off is taken back by
//! the host itself (with magic rollback off, by the controller, never
//! certified); a good push leaves no nixgate timer behind; a push that
//! moves sshd is confirmed where sshd went; a controller killed right after
//! firing a good switch leaves a host that reverts on its own, and `status`
//! says so.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cli::{nixgate, nixgate_cmd, text};
use support::fleet::{Fleet, FleetSpec};

const HOSTS: [&str; 5] = ["sys1", "sys2", "sys3", "sys4", "sys5"];

/// The links a revert must restore.
fn links(fleet: &Fleet, host: &str) -> String {
    fleet.in_host_ok(
        host,
        "readlink -f /run/current-system; readlink -f /nix/var/nix/profiles/system; readlink -f /boot/nixgate-test/default",
    )
}

fn nixgate_units(fleet: &Fleet, host: &str) -> String {
    fleet.in_host_ok(
        host,
        "systemctl list-units --all --plain --no-legend --no-pager 'nixgate-confirm-*' | cat",
    )
}

fn summary(out: &std::process::Output) -> Value {
    let last = text(&out.stdout)
        .lines()
        .last()
        .map(str::to_owned)
        .unwrap_or_default();
    serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last}\n{}", text(&out.stderr)))
}

fn outcome(s: &Value, host: &str) -> String {
    s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .unwrap_or_else(|| panic!("{host} not in {s}"))["outcome"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The fleet's inventory with a short confirm window and activation budget,
/// sys5 confirmed on port 2222, and waves canary = [sys2, sys3], main = [sys4].
fn inventory(fleet: &Fleet) {
    let path = fleet.inventory_path();
    let src = std::fs::read_to_string(&path).unwrap();
    let mut src = src[..src.find("[[waves]]").unwrap_or(src.len())].to_owned();
    src = src.replacen("[defaults]\n", "[defaults]\nconfirm_timeout = \"10s\"\n", 1);
    src = src.replacen(
        "activation_timeout = \"60s\"",
        "activation_timeout = \"20s\"",
        1,
    );
    src = src.replacen("[hosts.sys5]\n", "[hosts.sys5]\nconfirm_port = 2222\n", 1);
    src.push_str(
        "\n[[waves]]\nname = \"canary\"\nhosts = [\"sys2\", \"sys3\"]\nmax_parallel = 2\nmax_failures = 0\n\
         \n[[waves]]\nname = \"main\"\nhosts = [\"sys4\"]\nmax_failures = 0\n",
    );
    std::fs::write(&path, src).unwrap();
    // sys5's sshd answers on 2222 after its deploy: the same key there.
    let kh = fleet.known_hosts();
    let known = std::fs::read_to_string(&kh).unwrap();
    let addr = fleet.host("sys5").address;
    let line = known
        .lines()
        .find(|l| l.split_whitespace().next() == Some(addr.as_str()))
        .expect("sys5 in known_hosts")
        .to_owned();
    let moved = line.replacen(&addr, &format!("[{addr}]:2222"), 1);
    std::fs::write(&kh, format!("{known}{moved}\n")).unwrap();
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn hosts_cut_off_by_their_candidate_take_themselves_back() {
    let fleet = Fleet::start(FleetSpec {
        light: 0,
        systemd: HOSTS.len(),
        builder: true,
    })
    .unwrap();
    inventory(&fleet);
    let before: Vec<String> = HOSTS.iter().map(|h| links(&fleet, h)).collect();
    fleet
        .commit_config(|v| {
            v["defaults"]["generation"] = json!(2);
            v["hosts"]["sys2"] = json!({ "misbehaviour": "stop-sshd" });
            v["hosts"]["sys3"] = json!({ "misbehaviour": "deny-ssh" });
            v["hosts"]["sys5"] = json!({ "misbehaviour": "move-ssh" });
        })
        .unwrap();

    // A good push: known-good, and no nixgate timer or unit is left.
    let out = nixgate(&fleet, &["--json", "--yes", "push", "sys1"]);
    let s = summary(&out);
    assert_eq!(
        outcome(&s, "sys1"),
        "known-good",
        "{s}\n{}",
        text(&out.stderr)
    );
    assert_eq!(nixgate_units(&fleet, "sys1"), "", "nothing left armed");
    assert_eq!(
        fleet.in_host_ok(
            "sys1",
            "find /run/nixgate -name 'nixgate-confirm-*' 2>/dev/null | cat"
        ),
        "",
        "the disarm removes the revert script and its arming number"
    );
    assert_eq!(
        fleet.in_host_ok("sys1", "ls /var/lib/nixgate/deadman 2>/dev/null | wc -l"),
        "0"
    );

    // The canary cuts new SSH connections (one stops sshd, one refuses new
    // logins): both take themselves back within the 10 s window; main
    // never starts.
    let started = Instant::now();
    let out = nixgate(
        &fleet,
        &[
            "--json", "--yes", "push", "--wave", "canary", "--wave", "main",
        ],
    );
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let s = summary(&out);
    for (i, h) in [(1, "sys2"), (2, "sys3")] {
        assert_eq!(outcome(&s, h), "reverted-by-host", "{s}");
        assert_eq!(
            links(&fleet, h),
            before[i],
            "{h}: running, profile, boot default"
        );
        assert_eq!(nixgate_units(&fleet, h), "", "{h}: the revert left nothing");
        let rec = fleet.in_host_ok(h, "cat /var/lib/nixgate/deadman/*.json");
        assert!(rec.contains("\"result\":\"ok\""), "{h}: {rec}");
    }
    assert_eq!(outcome(&s, "sys4"), "not-started", "{s}");
    assert_eq!(links(&fleet, "sys4"), before[3]);
    // The switches, the 10 s window and the reverts, not a long timeout.
    assert!(took < Duration::from_secs(60), "{took:?}");
    // sshd answers new connections again on both.
    for h in ["sys2", "sys3"] {
        let ok = fleet.ssh(h, "echo reachable");
        assert_eq!(
            text(&ok.stdout).trim(),
            "reachable",
            "{h}: {}",
            text(&ok.stderr)
        );
    }

    // Magic rollback off: nothing is armed, but a host that no new
    // connection reaches is not certified; the controller rolls it back
    // over its own session within the 10 s window (before: known-good,
    // its boot default moved to a system that locks SSH out).
    let started = Instant::now();
    let out = nixgate(
        &fleet,
        &["--json", "--yes", "push", "--no-magic-rollback", "sys3"],
    );
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let s = summary(&out);
    assert_eq!(outcome(&s, "sys3"), "rolled-back", "{s}");
    assert_eq!(
        links(&fleet, "sys3"),
        before[2],
        "running, profile, boot default"
    );
    assert_eq!(nixgate_units(&fleet, "sys3"), "", "nothing was armed");
    assert!(took < Duration::from_secs(60), "{took:?}");
    let ok = fleet.ssh("sys3", "echo reachable");
    assert_eq!(text(&ok.stdout).trim(), "reachable", "{}", text(&ok.stderr));

    // A deploy that moves sshd to port 2222 is confirmed there.
    let out = nixgate(&fleet, &["--json", "--yes", "push", "sys5"]);
    let s = summary(&out);
    assert_eq!(
        outcome(&s, "sys5"),
        "known-good",
        "{s}\n{}",
        text(&out.stderr)
    );
    assert_eq!(nixgate_units(&fleet, "sys5"), "");

    lockout_after_the_confirmation(&fleet, &before[3]);
}

/// A lockout that comes after the live switch was confirmed over a new
/// connection: sys4's health check (standing in for a timer of the
/// candidate's that restarts sshd into a bad configuration) denies new
/// logins, then passes over the run's own session, which sshd keeps. The
/// canary wave's soak tries a new connection, none gets in: sys4 is taken
/// back over the run's session, its mark revoked, and main never starts
/// (before: certified known-good, released, and the run went on).
fn lockout_after_the_confirmation(fleet: &Fleet, sys4_before: &str) {
    let path = fleet.inventory_path();
    let src = std::fs::read_to_string(&path).unwrap();
    let mut src = src[..src.find("[[waves]]").unwrap()].to_owned();
    let deny = "test -e /run/nixgate-test-denied || { touch /run/nixgate-test-denied; \
                echo 'DenyUsers *' >/etc/ssh/sshd_config.d/zz-nixgate-test-deny.conf; \
                systemctl reload ssh.service; }";
    src = src.replacen(
        "[hosts.sys4]\n",
        &format!("[hosts.sys4]\nhealth_checks = [{{ command = \"{deny}\", timeout = \"10s\" }}]\n"),
        1,
    );
    src.push_str(
        "\n[[waves]]\nname = \"canary\"\nhosts = [\"sys4\"]\nmax_failures = 0\nsoak = \"2s\"\n\
         \n[[waves]]\nname = \"main\"\nhosts = [\"sys1\"]\nmax_failures = 0\n",
    );
    std::fs::write(&path, src).unwrap();
    let out = nixgate(
        fleet,
        &[
            "--json", "--yes", "push", "--wave", "canary", "--wave", "main",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let s = summary(&out);
    assert_eq!(outcome(&s, "sys4"), "rolled-back", "{s}");
    assert_eq!(outcome(&s, "sys1"), "not-started", "{s}");
    let sys4 = s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "sys4")
        .unwrap();
    assert_eq!(sys4["end"], "soak_failed", "{sys4}");
    assert!(sys4["locked_out"].is_string(), "{sys4}");
    assert!(sys4["revoked"].is_u64(), "{sys4}");
    assert_eq!(
        links(fleet, "sys4"),
        sys4_before,
        "running, profile, boot default"
    );
    // The take-back's switch put sshd's configuration back.
    let ok = fleet.ssh("sys4", "echo reachable");
    assert_eq!(text(&ok.stdout).trim(), "reachable", "{}", text(&ok.stderr));
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn a_controller_killed_after_firing_leaves_a_host_that_reverts_and_says_so() {
    let fleet = Fleet::start(FleetSpec {
        light: 0,
        systemd: 1,
        builder: true,
    })
    .unwrap();
    let path = fleet.inventory_path();
    let src = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("[defaults]\n", "[defaults]\nconfirm_timeout = \"10s\"\n", 1)
        .replacen(
            "activation_timeout = \"60s\"",
            "activation_timeout = \"20s\"",
            1,
        );
    std::fs::write(&path, src).unwrap();
    let before = links(&fleet, "sys1");
    fleet
        .commit_config(|v| {
            v["defaults"]["generation"] = json!(2);
            v["defaults"]["misbehaviour"] = json!("slow");
            v["defaults"]["slowSeconds"] = json!(3);
        })
        .unwrap();
    let mut child = nixgate_cmd(&fleet, &["--json", "--yes", "push", "sys1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the controller (SIGKILL) once the switch runs.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let units = fleet.in_host_ok(
            "sys1",
            "systemctl list-units --plain --no-legend --no-pager 'nixgate-switch-*' | cat",
        );
        if units.contains("running") {
            break;
        }
        assert!(Instant::now() < deadline, "the switch never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let _ = child.wait();
    // The switch finishes on its own; with no confirmation the host reverts
    // when its window ends (20 s budget + 10 s, from arming) and writes its
    // record.
    let deadline = Instant::now() + Duration::from_secs(90);
    let record = "cat /var/lib/nixgate/deadman/*.json 2>/dev/null || true";
    while fleet.in_host_ok("sys1", record).is_empty() {
        assert!(
            Instant::now() < deadline,
            "sys1 never reverted: {}",
            links(&fleet, "sys1")
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        links(&fleet, "sys1"),
        before,
        "running, profile, boot default"
    );
    // The revert's last step stops its timer; systemd then unloads both
    // units (asynchronously, right after the service exits).
    let gone = Instant::now() + Duration::from_secs(10);
    while !nixgate_units(&fleet, "sys1").is_empty() {
        assert!(
            Instant::now() < gone,
            "left behind: {}",
            nixgate_units(&fleet, "sys1")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // status names the revert, and the killed run as interrupted.
    let out = nixgate(&fleet, &["--json", "status", "sys1"]);
    let st: Value = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "status")
        .expect("a status event");
    assert_eq!(st["reverted"]["result"], "ok", "{st}");
    assert_eq!(st["current"], before.lines().next().unwrap(), "{st}");
    assert_eq!(st["last_run"]["interrupted"], true, "{st}");
    let out = nixgate(&fleet, &["status", "sys1"]);
    let table = text(&out.stdout);
    assert!(table.contains("reverted-by-host"), "{table}");
    assert!(
        text(&out.stderr).contains("took itself back"),
        "{}",
        text(&out.stderr)
    );
}
