//! The canary's promise on a real fleet (issue 16's "Checked by"): with
//! waves `canary = [light1]` then `main = [light2, light3]`, a canary the
//! plan refuses (its configuration does not build; it drifts from
//! `--expect`) stops the run before main is touched; a clean push goes
//! through every wave; a canary unhealthy after its soak ends rolled back,
//! untagged; Ctrl-C during a build leaves no build running on the builder.
//! One fleet for all of it: each case starts from where the last one left
//! the hosts.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cli::{check_json_lines, nixgate, nixgate_cmd, text};
use support::fleet::{Fleet, FleetSpec};

const MAIN: [&str; 2] = ["light2", "light3"];

fn summary(out: &Output) -> Value {
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let s: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", text(&out.stderr)));
    assert_eq!(s["event"], "summary", "{s}");
    s
}

fn host<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == name)
        .unwrap_or_else(|| panic!("{name} not in {s}"))
}

fn current(fleet: &Fleet, h: &str) -> String {
    fleet.in_host_ok(h, "readlink -e /run/current-system")
}

fn tags(fleet: &Fleet) -> Vec<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(fleet.config_repo())
        .args(["tag", "--list", "release/*"])
        .output()
        .unwrap();
    text(&out.stdout).lines().map(str::to_owned).collect()
}

/// main never started because the canary wave failed, and nothing on its
/// hosts moved.
fn main_untouched(fleet: &Fleet, s: &Value, before: &[String]) {
    for (h, b) in MAIN.iter().zip(before) {
        let end = host(s, h);
        assert_eq!(end["outcome"], "not-started", "{end}");
        assert_eq!(end["why"]["reason"], "earlier_wave_failed", "{end}");
        assert_eq!(end["why"]["wave"], "canary", "{end}");
        assert_eq!(&current(fleet, h), b, "{h} was touched");
    }
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn a_refused_canary_stops_the_run_and_a_clean_push_goes_through_every_wave() {
    let fleet = Fleet::start(FleetSpec {
        light: 3,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    let main_before: Vec<String> = MAIN.iter().map(|h| current(&fleet, h)).collect();
    let canary_before = current(&fleet, "light1");

    // 1. The canary's configuration does not build; main's would.
    fleet
        .commit_config(|v| {
            v["defaults"]["packages"]["hello"]["version"] = json!("2.12.2");
            v["hosts"]["light1"] = json!({ "brokenBuild": true });
        })
        .unwrap();
    let out = nixgate(&fleet, &["--json", "push", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let s = summary(&out);
    let canary = host(&s, "light1");
    assert_eq!(canary["outcome"], "refused", "{canary}");
    assert_eq!(canary["refusal"]["cause"], "build", "{canary}");
    assert_eq!(current(&fleet, "light1"), canary_before);
    main_untouched(&fleet, &s, &main_before);

    // 2. Only the canary drifts from what `--expect` allows.
    fleet
        .commit_config(|v| {
            v["hosts"]["light1"] = json!({ "packages": { "curl": { "flags": "--with-openssl" } } });
        })
        .unwrap();
    let out = nixgate(&fleet, &["--json", "push", "--yes", "--expect", "hello"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let s = summary(&out);
    let canary = host(&s, "light1");
    assert_eq!(canary["outcome"], "refused", "{canary}");
    assert_eq!(canary["refusal"]["cause"], "drift", "{canary}");
    assert_eq!(canary["refusal"]["packages"], json!(["curl"]), "{canary}");
    assert_eq!(current(&fleet, "light1"), canary_before);
    main_untouched(&fleet, &s, &main_before);
    // The human table says why main did not start.
    let out = nixgate(&fleet, &["push", "--yes", "--expect", "hello"]);
    let words = text(&out.stdout) + &text(&out.stderr);
    assert!(words.contains("canary"), "{words}");

    // 3. A clean push goes through every wave, canary first, built as a
    //    flake, with light3 before light2 in the inventory (so in the
    //    build): the builder's Nix 2.8 answers `nix build --json` of
    //    several hosts in its own order (sorted by name), and paired by
    //    position light3 was given light2's system.
    let c3 = fleet
        .commit_config(|v| v["hosts"]["light1"] = json!({}))
        .unwrap();
    let path = fleet.inventory_path();
    let inv = std::fs::read_to_string(&path).unwrap();
    let (before, light2) = inv.split_once("\n[hosts.light2]\n").unwrap();
    let (light2, after) = light2.split_once("\n[hosts.light3]\n").unwrap();
    let (light3, after) = after.split_once("\n\n").unwrap();
    let inv = format!("{before}\n[hosts.light3]\n{light3}\n\n[hosts.light2]\n{light2}\n{after}");
    assert!(inv.contains("flake = false\n"), "{inv}");
    std::fs::write(&path, inv.replace("flake = false\n", "flake = true\n")).unwrap();
    let out = nixgate(&fleet, &["--json", "push", "--yes", "--expect", "hello"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let s = summary(&out);
    for h in ["light1", "light2", "light3"] {
        let end = host(&s, h);
        assert_eq!(end["outcome"], "known-good", "{end}");
        assert_eq!(
            current(&fleet, h),
            fleet.build_on_builder(h).unwrap(),
            "{h} runs its build"
        );
    }
    let started: Vec<(String, String)> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "wave_started")
        .map(|e| (e["wave"].as_str().unwrap_or("").to_owned(), e.to_string()))
        .collect();
    assert_eq!(
        started.iter().map(|w| w.0.as_str()).collect::<Vec<_>>(),
        ["canary", "main"],
        "{started:?}"
    );
    let released = tags(&fleet);
    for h in ["light1", "light2", "light3"] {
        assert!(
            released
                .iter()
                .any(|t| t.starts_with(&format!("release/{h}/")) && t.ends_with(&c3[..12])),
            "{h} released at {c3}: {released:?}"
        );
    }
    let good = current(&fleet, "light1");

    // 4. The canary passes its health check when it goes live and fails it
    //    after its wave's soak: taken back, its mark revoked, no tag; main
    //    never starts.
    soak_with_a_check_that_passes_once(&fleet);
    fleet.in_host_ok("light1", "rm -f /run/nixgate-test-healthy-once");
    let c4 = fleet
        .commit_config(|v| v["defaults"]["generation"] = json!(4))
        .unwrap();
    let main_before: Vec<String> = MAIN.iter().map(|h| current(&fleet, h)).collect();
    let out = nixgate(&fleet, &["--json", "push", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let s = summary(&out);
    let canary = host(&s, "light1");
    assert_eq!(canary["outcome"], "rolled-back", "{canary}");
    assert_eq!(canary["end"], "soak_failed", "{canary}");
    assert_eq!(current(&fleet, "light1"), good, "back on the known-good");
    assert_eq!(
        fleet.in_host_ok(
            "light1",
            "readlink -e /nix/var/nix/profiles/nixgate-known-good"
        ),
        good,
        "the revoked mark no longer names the known-good"
    );
    main_untouched(&fleet, &s, &main_before);
    let released = tags(&fleet);
    assert!(
        !released.iter().any(|t| t.ends_with(&c4[..12])),
        "nothing is released at {c4}: {released:?}"
    );
}

/// Waves canary (soak 3 s, light1 healthy only the first time it is asked)
/// and main.
fn soak_with_a_check_that_passes_once(fleet: &Fleet) {
    let path = fleet.inventory_path();
    let src = std::fs::read_to_string(&path).unwrap();
    let mut src = src[..src.find("[[waves]]").unwrap()].to_owned();
    src = src.replacen(
        "[hosts.light1]\n",
        "[hosts.light1]\nhealth_checks = [{ command = \"test ! -e /run/nixgate-test-healthy-once && touch /run/nixgate-test-healthy-once\", timeout = \"5s\", retries = 0 }]\n",
        1,
    );
    src.push_str(
        "\n[[waves]]\nname = \"canary\"\nhosts = [\"light1\"]\nmax_failures = 0\nsoak = \"3s\"\n\
         \n[[waves]]\nname = \"main\"\nhosts = [\"light2\", \"light3\"]\nmax_failures = 0\n",
    );
    std::fs::write(&path, src).unwrap();
}

/// Processes on the builder (and anywhere on this machine: light hosts
/// share its pid namespace) whose command line names the slow build.
fn slow_builds() -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-af", "testconfig-slow-build|sleep 3607"])
        .output()
        .unwrap();
    text(&out.stdout)
        .lines()
        .filter(|l| !l.contains("pgrep"))
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn ctrl_c_during_the_build_stops_nix_on_the_builder_and_activates_nothing() {
    let fleet = Fleet::start(FleetSpec {
        light: 2,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    let before: Vec<String> = ["light1", "light2"]
        .iter()
        .map(|h| current(&fleet, h))
        .collect();
    fleet
        .commit_config(|v| v["defaults"]["buildSeconds"] = json!(3607))
        .unwrap();
    let child = nixgate_cmd(&fleet, &["--json", "push", "--yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while slow_builds().is_empty() {
        assert!(Instant::now() < deadline, "the slow build never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let interrupted = Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let took = interrupted.elapsed();
    check_json_lines(&text(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(took < Duration::from_secs(15), "Ctrl-C took {took:?}");
    let s = summary(&out);
    for h in ["light1", "light2"] {
        let end = host(&s, h);
        assert_eq!(end["outcome"], "not-started", "{end}");
    }
    for (h, b) in ["light1", "light2"].iter().zip(&before) {
        assert_eq!(&current(&fleet, h), b, "{h} was touched");
    }
    // Nix on the builder was ended, not only its channel closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = slow_builds();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "builds still running 10 s after the run ended: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
