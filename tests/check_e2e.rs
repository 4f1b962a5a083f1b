//! `nixgate check` against a real fleet: every host answers with its Nix
//! version and current system; a changed host key, an unknown host and a
//! stopped host are each refused for that host alone, with the reason.

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::cli::{nixgate, text};
use support::fleet::{Fleet, FleetSpec};

fn probes(out: &Output) -> Vec<serde_json::Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .filter(|v| v["event"] == "checked")
        .collect()
}

fn probe<'a>(all: &'a [serde_json::Value], host: &str) -> &'a serde_json::Value {
    all.iter()
        .find(|p| p["host"] == host)
        .unwrap_or_else(|| panic!("no probe for {host}"))
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn check_reports_every_host_and_refuses_bad_keys_alone() {
    let fleet = Fleet::start(FleetSpec {
        light: 3,
        systemd: 0,
        builder: true,
    })
    .unwrap();

    let out = nixgate(&fleet, &["--json", "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = probes(&out);
    assert_eq!(all.len(), 4, "builder + 3 hosts");
    for h in ["light1", "light2", "light3"] {
        let p = probe(&all, h);
        assert_eq!(p["ok"], true, "{p}");
        assert_eq!(p["nix_version"], "2.8.0");
        assert_eq!(p["host_key"]["kind"], "known");
        assert_eq!(
            p["current_system"],
            fleet.in_host_ok(h, "readlink -e /run/current-system")
        );
        assert!(p["free_nix_bytes"].as_u64().unwrap() > 0);
    }

    // light1's entry replaced by another key; light2's removed; light3 stopped.
    let kh = fleet.known_hosts();
    let text_kh = std::fs::read_to_string(&kh).unwrap();
    let l1 = fleet.host("light1").address;
    let l2 = fleet.host("light2").address;
    let other = fleet.dir().join("other_key");
    assert!(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&other)
            .status()
            .unwrap()
            .success()
    );
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_key: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    let mut lines = Vec::new();
    for line in text_kh.lines() {
        let host = line.split_whitespace().next().unwrap_or("");
        if host == l1 {
            lines.push(format!("{l1} {} {}", other_key[0], other_key[1]));
        } else if host != l2 {
            lines.push(line.to_owned());
        }
    }
    std::fs::write(&kh, lines.join("\n") + "\n").unwrap();
    let pid = std::fs::read_to_string(fleet.dir().join("hosts/light3/pid")).unwrap();
    assert!(
        Command::new("kill")
            .arg(pid.trim())
            .status()
            .unwrap()
            .success()
    );

    let started = Instant::now();
    let out = nixgate(&fleet, &["check"]);
    let took = started.elapsed();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        took < Duration::from_secs(5 + 3),
        "took {took:?} with connect_timeout 5s"
    );
    let recorded = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(other.with_extension("pub"))
        .output()
        .unwrap();
    let recorded_fp = text(&recorded.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(err.contains("light1: HOST KEY CHANGED"), "{err}");
    assert!(
        err.contains(&recorded_fp),
        "the recorded (expected) fingerprint {recorded_fp} in:\n{err}"
    );
    let real = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(fleet.dir().join("hosts/light1/ssh_host_ed25519_key.pub"))
        .output()
        .unwrap();
    let real_fp = text(&real.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(
        err.contains(&real_fp),
        "the offered (real) fingerprint {real_fp} in:\n{err}"
    );
    assert!(err.contains("light2: host key of"), "{err}");
    assert!(err.contains("is not known"), "{err}");
    assert!(
        err.contains(&format!("{l2} ssh-ed25519 ")),
        "the line to add: {err}"
    );
    assert!(err.contains("light3: cannot reach"), "{err}");
    let stdout = text(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("builder ") && l.contains(" yes ")),
        "{stdout}"
    );

    // --accept-new learns light2 (not light1: a changed key is never learned).
    let out = nixgate(
        &fleet,
        &["--json", "--accept-new", "check", "light2", "light1"],
    );
    let all = probes(&out);
    assert_eq!(probe(&all, "light2")["ok"], true);
    assert_eq!(probe(&all, "light2")["host_key"]["kind"], "learned_new");
    assert_eq!(probe(&all, "light1")["ok"], false);
    let out = nixgate(&fleet, &["--json", "check", "light2"]);
    assert_eq!(probe(&probes(&out), "light2")["host_key"]["kind"], "known");
}
