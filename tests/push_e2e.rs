//! `nixgate build` and `nixgate push` against a real fleet (sshd hosts with
//! their own Nix stores, a builder): gate 1, relay copy, waves, JSON output,
//! releases, cancellation.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use support::cli::{nixgate, nixgate_cmd, text};
use support::fleet::{Fleet, FleetSpec};

fn json_lines(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn summary(out: &Output) -> Value {
    let lines = json_lines(out);
    let last = lines.last().expect("some output").clone();
    assert_eq!(last["event"], "summary", "the last line is the summary");
    last
}

fn outcome_of(summary: &Value, host: &str) -> String {
    summary["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .unwrap_or_else(|| panic!("{host} not in {summary}"))["outcome"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn current(fleet: &Fleet, host: &str) -> String {
    fleet.in_host_ok(host, "readlink -e /run/current-system")
}

fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// `host` has `top` and every path of its closure, each as its
/// registration says (`nix-store --verify-path`).
fn assert_verified(fleet: &Fleet, host: &str, top: &str) {
    let verify = fleet.ssh(
        host,
        &format!("nix-store --verify-path $(nix-store -qR {top}) && echo verified"),
    );
    assert_eq!(
        text(&verify.stdout).trim(),
        "verified",
        "{host}: {}",
        text(&verify.stderr)
    );
}

/// Give `host` one more inventory line, and commit `generation` of the
/// configuration (every host's closure changes).
fn set_and_commit(fleet: &Fleet, host: &str, line: &str, generation: u64) {
    let path = fleet.inventory_path();
    let header = format!("[hosts.{host}]\n");
    let src =
        std::fs::read_to_string(&path)
            .unwrap()
            .replacen(&header, &format!("{header}{line}\n"), 1);
    std::fs::write(&path, src).unwrap();
    fleet
        .commit_config(|v| v["defaults"]["generation"] = json!(generation))
        .unwrap();
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn build_matches_nix_build_fails_alone_survives_gc_and_needs_no_local_nix() {
    let fleet = Fleet::start(FleetSpec {
        light: 2,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    // A controller without Nix: PATH holds only git, sh and tar.
    let bin = fleet.dir().join("controller-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["git", "sh", "tar"] {
        let real = text(
            &Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .stdout,
        );
        std::os::unix::fs::symlink(real.trim(), bin.join(tool)).unwrap();
    }
    assert!(
        !Command::new("sh")
            .arg("-c")
            .arg("command -v nix-store")
            .env("PATH", &bin)
            .status()
            .unwrap()
            .success()
    );

    let out = nixgate_cmd(&fleet, &["build", "--host", "light1", "--host", "light2"])
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    for h in ["light1", "light2"] {
        let expected = fleet.build_on_builder(h).unwrap();
        assert!(
            printed.lines().any(|l| l == format!("{h} {expected}")),
            "{h} {expected} not in:\n{printed}"
        );
    }

    // A GC on the builder keeps what nixgate built.
    let gc = fleet.ssh("builder", "nix-store --gc >/dev/null 2>&1; echo done");
    assert!(gc.status.success());
    for line in printed.lines() {
        let path = line.split_whitespace().nth(1).unwrap();
        let valid = fleet.ssh(
            "builder",
            &format!("nix-store --check-validity {path} && echo valid"),
        );
        assert_eq!(text(&valid.stdout).trim(), "valid", "{path} lost to the GC");
    }

    // Progress comes from the builder's own derivation counts, live.
    fleet
        .commit_config(|v| v["defaults"]["packages"]["hello"]["version"] = json!("2.12.2"))
        .unwrap();
    let out = nixgate_cmd(&fleet, &["--json", "build"])
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let ticks: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e["event"] == "build_progress")
        .map(|e| {
            (
                e["built"].as_u64().unwrap(),
                e["to_build"].as_u64().unwrap(),
            )
        })
        .collect();
    let (built, to_build) = *ticks.last().expect("build progress events");
    // hello, its unit, system-path, etc and both toplevels at least.
    assert!(to_build >= 5 && built == to_build, "{ticks:?}");
    assert!(
        ticks.len() >= 3,
        "progress is live, not only a final count: {ticks:?}"
    );
    let fin = events
        .iter()
        .find(|e| e["event"] == "build_finished")
        .expect("build_finished");
    assert_eq!(
        (fin["built"].as_u64(), fin["failed"].as_u64()),
        (Some(2), Some(0))
    );

    // light2's expression throws: it fails alone, with its error.
    fleet
        .commit_config(|v| v["hosts"]["light2"] = json!({ "kernelVersion": { "broken": true } }))
        .unwrap();
    let out = nixgate_cmd(&fleet, &["build"])
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout)
            .lines()
            .any(|l| l.starts_with("light1 /nix/store/")),
        "{}",
        text(&out.stdout)
    );
    assert!(!text(&out.stdout).contains("light2"));
    let err = text(&out.stderr);
    assert!(
        err.contains("light2") && err.contains("cannot coerce"),
        "{err}"
    );
    // And what Nix printed last, under the host (the refusal's one line
    // said `nixgate build` shows it; it showed that line again).
    let tail = err
        .split_once("light2: Nix's last lines:\n")
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("{err}"));
    assert!(tail.starts_with("    "), "{err}");
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn copy_sends_only_missing_paths_and_waves_stop_on_a_failed_canary() {
    let fleet = Fleet::start(FleetSpec {
        light: 3,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    let before: Vec<String> = ["light1", "light2", "light3"]
        .iter()
        .map(|h| current(&fleet, h))
        .collect();
    fleet
        .commit_config(|v| v["defaults"]["packages"]["hello"]["version"] = json!("2.12.2"))
        .unwrap();

    // Goal copy: only what each host lacks is sent, nothing is activated.
    let out = nixgate(&fleet, &["--json", "push", "--yes", "--goal", "copy"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let lines = json_lines(&out);
    let copies: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "gate_passed" && l["gate"] == "copy")
        .collect();
    assert_eq!(copies.len(), 3);
    for c in &copies {
        let host = c["host"].as_str().unwrap();
        assert_eq!(c["evidence"]["detail"]["kind"], "copied", "{c}");
        let sent = c["evidence"]["detail"]["paths"].as_u64().unwrap();
        let toplevel = fleet.build_on_builder(host).unwrap();
        let total = text(
            &fleet
                .ssh("builder", &format!("nix-store -qR {toplevel} | wc -l"))
                .stdout,
        )
        .trim()
        .parse::<u64>()
        .unwrap();
        assert!(
            sent > 0 && sent < total / 2,
            "{host}: sent {sent} of {total} paths"
        );
        assert_verified(&fleet, host, &toplevel);
    }
    // Hosts staged together got the paths they all lacked from one export,
    // teed to each of them.
    let fanned: Vec<&&Value> = copies
        .iter()
        .filter(|c| c["evidence"]["detail"]["fanout"]["hosts"].as_u64() >= Some(2))
        .collect();
    assert!(fanned.len() >= 2, "no fan-out: {copies:?}");
    for c in &fanned {
        let shared = c["evidence"]["detail"]["fanout"]["paths"].as_u64().unwrap();
        let sent = c["evidence"]["detail"]["paths"].as_u64().unwrap();
        assert!(shared > 0 && shared <= sent, "{c}");
    }
    for (h, b) in ["light1", "light2", "light3"].iter().zip(&before) {
        assert_eq!(&current(&fleet, h), b, "goal copy activated {h}");
    }
    let out = nixgate(
        &fleet,
        &["--json", "push", "--yes", "--goal", "copy", "light1"],
    );
    let again = json_lines(&out);
    assert!(again.iter().any(
        |l| l["event"] == "gate_passed" && l["evidence"]["detail"]["kind"] == "already_present"
    ));

    // --wave canary touches only the canary.
    let out = nixgate(&fleet, &["--json", "push", "--yes", "--wave", "canary"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = summary(&out);
    assert_eq!(s["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(outcome_of(&s, "light1"), "known-good");
    assert_ne!(current(&fleet, "light1"), before[0]);
    assert_eq!(current(&fleet, "light2"), before[1]);

    // A canary that fails stops the run before the next wave: exit 1.
    fleet
        .commit_config(|v| {
            v["defaults"]["generation"] = json!(3);
            v["hosts"]["light1"] = json!({ "misbehaviour": "fail" });
        })
        .unwrap();
    let out = nixgate(&fleet, &["--json", "push", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    let s = summary(&out);
    assert!(
        ["failed", "rolled-back"].contains(&outcome_of(&s, "light1").as_str()),
        "{s}"
    );
    assert_eq!(outcome_of(&s, "light2"), "not-started");
    assert_eq!(outcome_of(&s, "light3"), "not-started");
    assert_eq!(current(&fleet, "light2"), before[1]);
    // Piped human output has no terminal control characters.
    let out = nixgate(&fleet, &["push", "--yes", "--wave", "main"]);
    assert!(!out.stderr.contains(&0x1b) && !out.stdout.contains(&0x1b));
    // Without --yes and no terminal, nothing is deployed.
    let out = nixgate(&fleet, &["push", "light2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("pass --yes"));

    a_stuck_import_fails_its_host_alone(&fleet);
    the_builder_copies_straight_to_a_host(&fleet);
}

/// Another Nix process on `host` holds the lock of `path` (a build or
/// substitution of it, a garbage collection) until [`release_path_lock`].
fn hold_path_lock(fleet: &Fleet, host: &str, path: &str) {
    let hold = fleet.ssh(
        host,
        &format!(
            "rm -f {LOCK_PID}; nohup flock {path}.lock sh -c 'echo $$ > {LOCK_PID}; exec sleep 600' \
             >/dev/null 2>&1 & for i in $(seq 100); do test -s {LOCK_PID} && exit 0; sleep 0.1; done; exit 1"
        ),
    );
    assert!(hold.status.success(), "{}", text(&hold.stderr));
}

const LOCK_PID: &str = "/nix/var/nixgate-test-lock.pid";

fn release_path_lock(fleet: &Fleet, host: &str) {
    let released = fleet.ssh(host, &format!("kill $(cat {LOCK_PID})"));
    assert!(released.status.success(), "{}", text(&released.stderr));
}

/// `copy = "builder"`: the builder's `nix-copy-closure` copies to the host
/// over its own SSH connection, the controller none of the closure; the
/// copy gate counts what the host lacked, and the host has all of it.
/// A host whose import stops fails at its `copy_stall_timeout`, as with the
/// relay, the builder's copy stopped; until then it is named, standing.
fn the_builder_copies_straight_to_a_host(fleet: &Fleet) {
    // The builder's ssh (its /root is its own) gets the fleet's key and
    // host keys, as a real builder would have its own.
    let ssh = fleet.dir().join("hosts/builder/root/.ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::copy(fleet.identity(), ssh.join("id_ed25519")).unwrap();
    std::fs::copy(fleet.known_hosts(), ssh.join("known_hosts")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let private = std::fs::Permissions::from_mode(0o600);
    std::fs::set_permissions(ssh.join("id_ed25519"), private).unwrap();
    let settings = "copy = \"builder\"\ncopy_stall_timeout = \"12s\"";
    set_and_commit(fleet, "light2", settings, 5);
    let top = fleet.build_on_builder("light2").unwrap();
    let lacks = fleet.ssh("light2", &format!("nix-store --check-validity {top}"));
    assert!(!lacks.status.success(), "light2 has {top} already");

    let out = nixgate(
        fleet,
        &["--json", "push", "--yes", "--goal", "copy", "light2"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines = json_lines(&out);
    let copy = lines
        .iter()
        .find(|l| l["event"] == "gate_passed" && l["gate"] == "copy")
        .expect("the copy gate passed");
    let detail = &copy["evidence"]["detail"];
    assert_eq!(detail["kind"], "copied", "{copy}");
    // The toplevel and what changed with the generation, their NAR bytes.
    let (paths, bytes) = (detail["paths"].as_u64(), detail["bytes"].as_u64());
    assert!(paths >= Some(2) && bytes > Some(1000), "{copy}");
    assert_verified(fleet, "light2", &top);

    // The next generation, its import stuck: stopped at light2's own limit.
    fleet
        .commit_config(|v| v["defaults"]["generation"] = json!(6))
        .unwrap();
    let top = fleet.build_on_builder("light2").unwrap();
    hold_path_lock(fleet, "light2", &top);
    let started = std::time::Instant::now();
    let out = nixgate(
        fleet,
        &["--json", "push", "--yes", "--goal", "copy", "light2"],
    );
    let took = started.elapsed();
    release_path_lock(fleet, "light2");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("light2 took no bytes from the builder for 12 s")
            && said.contains("copy_stall_timeout"),
        "{said}"
    );
    assert!(took < std::time::Duration::from_secs(60), "{took:?}");
    // Named every count (3 s: a quarter of its limit) while it stood, never
    // as standing longer than its limit.
    let idle: Vec<u64> = json_lines(&out)
        .iter()
        .filter(|l| l["event"] == "copy_progress" && l["host"] == "light2")
        .filter_map(|l| l.get("idle_secs").and_then(|i| i.as_u64()))
        .collect();
    assert!(
        !idle.is_empty() && idle.iter().all(|&i| i > 0 && i <= 12),
        "{idle:?} {said}"
    );
    // What the host had taken in before it stopped may still be added once
    // the lock is free (Nix checks its hash); either way the push converges.
    let out = nixgate(
        fleet,
        &["--json", "push", "--yes", "--goal", "copy", "light2"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_verified(fleet, "light2", &top);
}

/// Another Nix process on light3 holds the lock of a path its copy adds
/// (a build or substitution of that path, a garbage collection): its
/// `nix-store --serve --write` stops there. The copy fails after light3's
/// own `copy_stall_timeout`, saying what to look at, while light2, copied
/// in the same batch, gets everything; once the lock is let go, the same
/// push converges.
fn a_stuck_import_fails_its_host_alone(fleet: &Fleet) {
    set_and_commit(fleet, "light3", "copy_stall_timeout = \"12s\"", 4);
    let top = fleet.build_on_builder("light3").unwrap();
    hold_path_lock(fleet, "light3", &top);
    let started = std::time::Instant::now();
    let out = nixgate(
        fleet,
        &[
            "--json", "push", "--yes", "--goal", "copy", "light2", "light3",
        ],
    );
    let took = started.elapsed();
    release_path_lock(fleet, "light3");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let s = summary(&out);
    assert_eq!(outcome_of(&s, "light2"), "reached", "{s}");
    assert_eq!(outcome_of(&s, "light3"), "failed", "{s}");
    let said = text(&out.stdout);
    assert!(
        said.contains("light3 took no bytes and added no path for 12 s")
            && said.contains("copy_stall_timeout"),
        "{said}"
    );
    // While the batch waited on it, light3 (and it alone) was named idle.
    let idle: Vec<(String, u64)> = json_lines(&out)
        .iter()
        .filter(|l| l["event"] == "copy_progress" && l.get("idle_secs").is_some())
        .map(|l| {
            (
                l["host"].as_str().unwrap().to_owned(),
                l["idle_secs"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(idle, [("light3".to_owned(), 10)], "{said}");
    // Not the default 5 minutes: light3's own limit (and 5 s for its last words).
    assert!(took < std::time::Duration::from_secs(60), "{took:?}");
    assert_verified(fleet, "light2", &fleet.build_on_builder("light2").unwrap());

    let out = nixgate(
        fleet,
        &["--json", "push", "--yes", "--goal", "copy", "light3"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn releases_tag_the_validated_commit_and_push_release_redeploys_it() {
    let fleet = Fleet::start(FleetSpec {
        light: 2,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    let repo = fleet.config_repo();
    let c1 = fleet
        .commit_config(|v| v["defaults"]["packages"]["curl"]["version"] = json!("8.6.0"))
        .unwrap();
    let out = nixgate(&fleet, &["--json", "push", "--yes", "light1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let lines = json_lines(&out);
    let rel = lines
        .iter()
        .find(|l| l["event"] == "released")
        .expect("a release event");
    let tag1 = rel["tag"].as_str().unwrap().to_owned();
    assert!(
        tag1.starts_with("release/light1/") && tag1.ends_with(&c1[..12]),
        "{tag1}"
    );
    assert_eq!(git(&repo, &["cat-file", "-t", &tag1]), "tag", "annotated");
    assert_eq!(
        git(&repo, &["rev-parse", &format!("{tag1}^{{commit}}")]),
        c1
    );
    assert_eq!(git(&repo, &["rev-parse", "release/light1"]), c1);
    let closure1 = current(&fleet, "light1");
    assert!(
        git(&repo, &["cat-file", "-p", &tag1]).contains(&closure1),
        "the tag names the running closure"
    );

    // A newer commit releases again and fast-forwards the branch.
    let c2 = fleet
        .commit_config(|v| v["defaults"]["packages"]["curl"]["version"] = json!("8.7.1"))
        .unwrap();
    let out = nixgate(&fleet, &["push", "--yes", "light1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(git(&repo, &["rev-parse", "release/light1"]), c2);

    // Deploying an older commit is not released: branch unchanged, no tag; the deploy is still reported.
    git(
        &repo,
        &["-c", "advice.detachedHead=false", "checkout", "-q", &c1],
    );
    let tags_before = git(&repo, &["tag", "-l", "release/light1/*"]);
    let out = nixgate(&fleet, &["--json", "push", "--yes", "light1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines = json_lines(&out);
    assert!(
        lines.iter().any(|l| l["event"] == "not_released"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(outcome_of(&summary(&out), "light1"), "known-good");
    assert_eq!(git(&repo, &["rev-parse", "release/light1"]), c2);
    assert_eq!(git(&repo, &["tag", "-l", "release/light1/*"]), tags_before);

    // A failed host gets no tag.
    git(&repo, &["checkout", "-q", "-"]);
    let c3 = fleet
        .commit_config(|v| v["hosts"]["light2"] = json!({ "misbehaviour": "fail" }))
        .unwrap();
    let out = nixgate(&fleet, &["push", "--yes", "light2"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(git(&repo, &["tag", "-l", "release/light2/*"]), "");
    let _ = c3;

    // push --release of the first tag returns light1 to that exact closure.
    let out = nixgate(&fleet, &["--json", "push", "--yes", "--release", &tag1]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(current(&fleet, "light1"), closure1);

    let out = nixgate(&fleet, &["--json", "release", "list", "light1"]);
    let listed: Vec<Value> = json_lines(&out)
        .into_iter()
        .filter(|l| l["event"] == "release")
        .collect();
    assert!(listed.len() >= 2);
    assert_eq!(
        listed.last().unwrap()["release"]["tag"],
        tag1.as_str(),
        "newest first"
    );
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn first_ctrl_c_finishes_and_verifies_hosts_in_flight() {
    let fleet = Fleet::start(FleetSpec {
        light: 3,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    let before2 = current(&fleet, "light2");
    fleet
        .commit_config(|v| {
            v["defaults"]["misbehaviour"] = json!("slow");
            v["defaults"]["slowSeconds"] = json!(4);
        })
        .unwrap();
    let child = nixgate_cmd(&fleet, &["--json", "push", "--yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the canary's (slow) switch is running, then Ctrl-C once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let units = fleet.in_host(
            "light1",
            "ls /run/fake-systemd 2>/dev/null | grep -c nixgate-switch || true",
        );
        if text(&units.stdout).trim() != "0" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the canary never started switching"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a cancelled run did not end well: {}",
        text(&out.stderr)
    );
    let s = summary(&out);
    let canary = outcome_of(&s, "light1");
    // The in-flight host (its switch had fired) was finished and verified.
    assert_eq!(canary, "known-good", "{s}");
    assert_eq!(
        current(&fleet, "light1"),
        s["hosts"][0]["closure"].as_str().unwrap()
    );
    assert_eq!(outcome_of(&s, "light2"), "not-started");
    assert_eq!(current(&fleet, "light2"), before2);
    assert!(
        json_lines(&out)
            .iter()
            .any(|l| l["event"] == "cancel_requested")
    );
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn a_host_locked_by_another_controller_is_not_touched() {
    let fleet = Fleet::start(FleetSpec {
        light: 1,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    let before = current(&fleet, "light1");
    fleet
        .commit_config(|v| v["defaults"]["packages"]["hello"]["version"] = json!("2.12.2"))
        .unwrap();
    // Another controller holds light1's lock.
    let holder = fleet.ssh(
        "light1",
        "mkdir -p /run/nixgate && echo 'run other pid 1 on elsewhere' > /run/nixgate/host.lock.holder && (setsid flock /run/nixgate/host.lock sleep 30 >/dev/null 2>&1 &) ; echo held",
    );
    assert_eq!(text(&holder.stdout).trim(), "held");
    let out = nixgate(&fleet, &["--json", "push", "--yes", "light1"]);
    assert_eq!(out.status.code(), Some(1));
    let s = summary(&out);
    assert_eq!(outcome_of(&s, "light1"), "refused");
    let refusal = &s["hosts"][0]["refusal"];
    assert_eq!(refusal["cause"], "locked", "{s}");
    assert_eq!(refusal["holder"], "run other pid 1 on elsewhere", "{s}");
    assert_eq!(current(&fleet, "light1"), before);
}
