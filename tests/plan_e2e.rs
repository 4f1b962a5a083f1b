//! Gate 2 on a real fleet: `nixgate plan` explains every change (versions,
//! additions, removals, same-version rebuilds with their cause), enforces
//! `--expect`, and changes nothing on any host; `push` refuses drift.

mod support;

use serde_json::{Value, json};
use support::cli::{nixgate, text};
use support::fleet::{Fleet, FleetSpec};

fn links(fleet: &Fleet, host: &str) -> String {
    fleet.in_host_ok(
        host,
        "readlink -e /run/current-system; readlink /nix/var/nix/profiles/system; readlink /nix/var/nix/profiles/nixgate-known-good || true",
    )
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn plan_explains_changes_and_enforces_expect() {
    let fleet = Fleet::start(FleetSpec {
        light: 2,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    let before: Vec<String> = ["light1", "light2"]
        .iter()
        .map(|h| links(&fleet, h))
        .collect();

    // Only nginx moves: --expect nginx passes.
    fleet
        .commit_config(|v| v["defaults"]["packages"]["nginx"]["version"] = json!("1.25.3"))
        .unwrap();
    let out = nixgate(&fleet, &["plan", "--expect", "nginx"]);
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{s}\n{}", text(&out.stderr));
    assert!(
        s.contains("light1, light2:"),
        "identical diffs are grouped: {s}"
    );
    assert!(s.contains("nginx 1.24.0 -> 1.25.3"), "{s}");
    assert!(!s.contains("unexpected"), "{s}");
    // The builder has what the hosts run (it built it): their closures come
    // from the builder's one query, the hosts are not asked for theirs.
    let out = support::cli::nixgate_cmd(&fleet, &["plan", "--expect", "nginx"])
        .env("NIXGATE_LOG", "nixgate=debug")
        .output()
        .unwrap();
    let log = text(&out.stderr);
    assert!(!log.contains('\u{1b}'), "no colour codes in a piped log");
    // One record per command, over several lines for a script.
    let mut records: Vec<String> = Vec::new();
    for line in log.lines() {
        match records.last_mut() {
            Some(r) if !line.starts_with("20") => r.push_str(line),
            _ => records.push(line.to_owned()),
        }
    }
    let dumps: Vec<&String> = records.iter().filter(|l| l.contains("--dump-db")).collect();
    assert!(!dumps.is_empty(), "the closure query is logged: {log}");
    assert!(
        dumps.iter().all(|l| l.contains("host=builder")),
        "only the builder dumps closures: {dumps:?}"
    );

    // openssl's flags change too, a package is added and one removed.
    fleet
        .commit_config(|v| {
            v["defaults"]["packages"]["openssl"]["flags"] = json!("shared");
            v["defaults"]["extraPackages"] = json!(["jq"]);
            let sys = v["defaults"]["systemPackages"].as_array_mut().unwrap();
            sys.retain(|p| p != "curl");
        })
        .unwrap();
    let out = nixgate(&fleet, &["plan", "--expect", "nginx,jq"]);
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "drift fails the plan: {s}");
    assert!(s.contains("nginx 1.24.0 -> 1.25.3"), "{s}");
    assert!(s.contains("+ jq 1.0"), "{s}");
    assert!(s.contains("- curl 8.5.0"), "{s}");
    assert!(s.contains("~ openssl 3.0.13 rebuilt"), "{s}");
    assert!(
        s.contains(r#"env configureFlags: "shared no-ssl3" -> "shared""#),
        "the cause is named: {s}"
    );
    assert!(s.contains("unexpected: ~ openssl 3.0.13 rebuilt"), "{s}");
    assert!(
        !s.contains("unexpected: ~ systemd"),
        "rebuilt only because openssl changed: not drift itself: {s}"
    );

    // JSON: one diff event per host, with the structured diff.
    let out = nixgate(
        &fleet,
        &["--json", "plan", "--expect", "nginx,jq", "light1"],
    );
    let events: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let diff = events
        .iter()
        .find(|e| e["event"] == "diff")
        .expect("a diff event");
    assert_eq!(diff["host"], "light1");
    // Never deployed by nixgate: the plan says the diff is against what
    // the host runs, not against a known-good.
    assert_eq!(diff["diff"]["unvalidated"], true, "{diff}");
    let changes = diff["diff"]["packages"]["changes"].as_array().unwrap();
    assert!(changes.iter().any(|c| c["name"] == "nginx"
        && c["change"]["kind"] == "upgraded"
        && c["change"]["to"] == "1.25.3"));
    assert!(
        changes
            .iter()
            .any(|c| c["name"] == "openssl" && c["change"]["kind"] == "rebuilt")
    );
    let drift: Vec<&str> = diff["diff"]["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["package"].as_str().unwrap())
        .collect();
    assert_eq!(
        drift,
        ["curl", "openssl"],
        "curl's removal was not expected either"
    );

    // Nothing changed on any host.
    for (h, b) in ["light1", "light2"].iter().zip(&before) {
        assert_eq!(&links(&fleet, h), b, "plan touched {h}");
    }

    // push with the same expectation refuses the drifting hosts before anything changes.
    let out = nixgate(&fleet, &["--json", "push", "--yes", "--expect", "nginx,jq"]);
    assert_eq!(out.status.code(), Some(1));
    let last: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    for h in last["hosts"].as_array().unwrap() {
        assert_eq!(h["outcome"], "refused", "{h}");
        assert_eq!(h["refusal"]["cause"], "drift", "{h}");
        assert_eq!(h["refusal"]["packages"], json!(["curl", "openssl"]), "{h}");
    }
    for (h, b) in ["light1", "light2"].iter().zip(&before) {
        assert_eq!(&links(&fleet, h), b, "a refused push touched {h}");
    }
    // With the whole change expected, it goes through (deferred to the next
    // boot, which the run is told to accept).
    let out = nixgate(
        &fleet,
        &[
            "--json",
            "push",
            "--yes",
            "--allow-pending-reboot",
            "--expect",
            "nginx,jq,openssl,curl",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let last: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    for h in last["hosts"].as_array().unwrap() {
        // openssl is under systemd: the new system waits for the next boot.
        assert_eq!(h["outcome"], "pending-reboot", "{h}");
    }
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn plan_names_flake_input_changes_since_the_known_good() {
    let fleet = Fleet::start(FleetSpec {
        light: 1,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    fleet
        .commit_config(|v| v["defaults"]["packages"]["nginx"]["version"] = json!("1.25.3"))
        .unwrap();
    let out = nixgate(&fleet, &["--json", "push", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let last: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["hosts"][0]["outcome"], "known-good", "{last}");

    // The pushed commit is the host's known-good; a flake.lock appearing
    // next to a version bump shows up as an input change in the plan.
    std::fs::write(
        fleet.config_repo().join("flake.lock"),
        r#"{"nodes":{"root":{"inputs":{"nixpkgs":"nixpkgs"}},"nixpkgs":{"locked":{"rev":"0123456789abcdef0123456789abcdef01234567","narHash":"sha256-x","lastModified":1}}},"root":"root","version":7}"#,
    )
    .unwrap();
    fleet
        .commit_config(|v| v["defaults"]["packages"]["hello"]["version"] = json!("2.12.2"))
        .unwrap();
    let out = nixgate(&fleet, &["plan", "light1"]);
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{s}\n{}", text(&out.stderr));
    assert!(s.contains("flake input + nixpkgs 0123456789ab"), "{s}");
    assert!(s.contains("hello 2.12.1 -> 2.12.2"), "{s}");
    // The JSON diff carries the same change as data.
    let out = nixgate(&fleet, &["--json", "plan", "light1"]);
    let diff: Value = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "diff")
        .expect("a diff event");
    assert_eq!(diff["diff"]["flake_inputs"][0]["kind"], "added", "{diff}");
    assert_eq!(diff["diff"]["flake_inputs"][0]["name"], "nixpkgs", "{diff}");
    // It runs its known-good: nothing to flag.
    assert!(diff["diff"].get("unvalidated").is_none(), "{diff}");

    // The builder loses every derivation (roots removed, GC): the running
    // system's is recovered by re-evaluating the commit it was deployed from.
    let gc = fleet.ssh(
        "builder",
        "rm -rf /nix/var/nix/gcroots/nixgate && nix-store --gc >/dev/null 2>&1 && echo collected",
    );
    assert_eq!(text(&gc.stdout).trim(), "collected", "{}", text(&gc.stderr));
    let out = nixgate(&fleet, &["plan", "light1"]);
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{s}\n{}", text(&out.stderr));
    assert!(!s.contains("gone from the builder"), "{s}");
    // Explained from it: hello's version bump, a changed input.
    assert!(s.contains("env version: \"2.12.1\" -> \"2.12.2\""), "{s}");
    // The recovered derivation is rooted for the next diff.
    let current = fleet.in_host_ok("light1", "readlink -e /run/current-system");
    let hash = &current.trim()["/nix/store/".len()..][..32];
    let root = fleet.ssh(
        "builder",
        &format!("readlink /nix/var/nix/gcroots/nixgate/light1/by-hash/{hash}.drv"),
    );
    assert!(
        text(&root.stdout).trim().ends_with(".drv"),
        "{}",
        text(&root.stderr)
    );
}
