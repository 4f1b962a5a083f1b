//! Keys and pre-checks against a real fleet: keys written with their owner,
//! mode and content, in the order of the gates, and their content nowhere
//! in what nixgate wrote (state directory, run report, `--json`, stderr)
//! nor in `ps` while it ran; a key whose command fails refuses its host
//! untouched; a failing pre-check refuses its host with its output;
//! `upload-keys` writes them again after they were lost.

mod support;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::cli::{check_json_lines, nixgate, nixgate_cmd, text};
use support::fleet::{Fleet, FleetSpec};

const TEXT_SECRET: &str = "text-secret-6f1d0c";
const FILE_SECRET: &str = "file-secret-93ab27";
const CMD_SECRET: &str = "command-secret-c4e815";
const POST_SECRET: &str = "post-secret-1a2b3c";

fn json_lines(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn refusal<'a>(lines: &'a [Value], host: &str) -> &'a Value {
    let plan = lines
        .iter()
        .find(|l| l["event"] == "plan_ready")
        .expect("a plan_ready event");
    plan["waves"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["planned"].as_array().unwrap().iter())
        .find(|p| p["host"] == host)
        .unwrap_or_else(|| panic!("{host} not in the plan {plan}"))
}

fn sha256(s: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Every file at or under `path` that contains one of `secrets`.
fn files_containing(path: &Path, secrets: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            found.extend(files_containing(&e.path(), secrets));
        }
    } else if let Ok(body) = std::fs::read(path) {
        let body = String::from_utf8_lossy(&body);
        for s in secrets {
            if body.contains(s) {
                found.push(format!("{} holds {s}", path.display()));
            }
        }
    }
    found
}

/// Run nixgate while sampling `ps` every 20 ms; the output, and every
/// process line that showed a secret.
fn run_watching_ps(fleet: &Fleet, args: &[&str], secrets: &[&str]) -> (Output, Vec<String>) {
    let child = nixgate_cmd(fleet, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let watcher = {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut samples = 0;
            while rx.try_recv().is_err() {
                let ps = std::process::Command::new("ps")
                    .args(["-eo", "pid,args"])
                    .output()
                    .unwrap();
                samples += 1;
                for line in text(&ps.stdout).lines() {
                    if secrets.iter().any(|s| line.contains(s.as_str())) {
                        seen.push(line.to_owned());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (seen, samples)
        })
    };
    let out = child.wait_with_output().unwrap();
    tx.send(()).unwrap();
    let (seen, samples) = watcher.join().unwrap();
    // At least one sample taken while it ran (the loop samples before it
    // looks for the end); a push gives dozens, upload-keys a few.
    assert!(samples >= 1, "ps was never sampled");
    eprintln!("ps sampled {samples} times while nixgate ran");
    check_json_lines(&text(&out.stdout));
    (out, seen)
}

fn stat(fleet: &Fleet, host: &str, path: &str) -> String {
    fleet.in_host_ok(host, &format!("stat -c '%U %G %a' {path}"))
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn keys_are_written_in_gate_order_and_never_shown() {
    let fleet = Fleet::start(FleetSpec {
        light: 3,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    let secrets_dir = fleet.dir().join("controller-secrets");
    std::fs::create_dir_all(&secrets_dir).unwrap();
    let file_key = secrets_dir.join("file.key");
    let cmd_key = secrets_dir.join("cmd.key");
    std::fs::write(&file_key, FILE_SECRET).unwrap();
    std::fs::write(&cmd_key, CMD_SECRET).unwrap();
    let before: Vec<String> = ["light1", "light2", "light3"]
        .iter()
        .map(|h| fleet.in_host_ok(h, "readlink -e /run/current-system"))
        .collect();

    // light1: four keys from three sources, one written after the switch;
    // a pre-check that passes. light2: a key whose command fails.
    // light3: a pre-check that fails.
    let inv = fleet.inventory_path();
    let mut src = std::fs::read_to_string(&inv).unwrap();
    src.push_str(&format!(
        r#"
[[hosts.light1.keys]]
name = "text.key"
text = "{TEXT_SECRET}"

[[hosts.light1.keys]]
name = "file.key"
file = "{file}"
user = "nobody"
group = "nogroup"
permissions = "0440"

[[hosts.light1.keys]]
name = "cmd.key"
command = ["cat", "{cmd}"]
dest_dir = "/run/keys/app"
permissions = "0640"

[[hosts.light1.keys]]
name = "post.key"
text = "{POST_SECRET}"
upload_at = "post-activation"
"#,
        file = file_key.display(),
        cmd = cmd_key.display()
    ));
    src = src
        .replace(
            "[hosts.light1]\n",
            "[hosts.light1]\npre_checks = [\"test -d /nix/store\"]\n",
        )
        .replace(
            "[hosts.light2]\n",
            "[hosts.light2]\nkeys = [{ name = \"db.key\", command = [\"sh\", \"-c\", \"echo vault sealed >&2; exit 3\"] }]\n",
        )
        .replace(
            "[hosts.light3]\n",
            "[hosts.light3]\npre_checks = [\"true\", { command = \"echo disk almost full >&2; exit 1\", timeout = \"10s\" }]\n",
        );
    std::fs::write(&inv, &src).unwrap();
    fleet
        .commit_config(|v| v["defaults"]["generation"] = json!(1))
        .unwrap();

    let secrets = [TEXT_SECRET, FILE_SECRET, CMD_SECRET, POST_SECRET];
    let (out, in_ps) = run_watching_ps(&fleet, &["--json", "push", "--yes"], &secrets);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "light2, light3 refused: {stderr}"
    );
    assert!(in_ps.is_empty(), "secrets in ps: {in_ps:#?}");
    let lines = json_lines(&out);

    // light1: the new system, every key with its owner, mode and content.
    let now = fleet.in_host_ok("light1", "readlink -e /run/current-system");
    assert_ne!(now, before[0], "light1 was deployed");
    for (path, owner, content) in [
        ("/run/keys/text.key", "root root 600", TEXT_SECRET),
        ("/run/keys/file.key", "nobody nogroup 440", FILE_SECRET),
        ("/run/keys/app/cmd.key", "root root 640", CMD_SECRET),
        ("/run/keys/post.key", "root root 600", POST_SECRET),
    ] {
        assert_eq!(stat(&fleet, "light1", path), owner, "{path}");
        assert_eq!(fleet.in_host_ok("light1", &format!("cat {path}")), content);
    }
    assert_eq!(
        fleet.in_host_ok(
            "light1",
            "ls -A /run/keys /run/keys/app | grep -c nixgate-key || true"
        ),
        "0",
        "no temporary file left"
    );
    // In the order of the gates: pre-activation keys before dry-activate,
    // the post-activation key after the live switch was confirmed.
    let pos = |pred: &dyn Fn(&Value) -> bool| {
        lines
            .iter()
            .position(|l| l["host"] == "light1" && pred(l))
            .unwrap_or_else(|| panic!("event missing in {stdout}"))
    };
    let keys_event = |stage: &'static str| {
        move |l: &Value| {
            l["activation"]["event"] == "keys_uploaded" && l["activation"]["stage"] == stage
        }
    };
    let pre = pos(&keys_event("pre-activation"));
    let post = pos(&keys_event("post-activation"));
    let dry = pos(&|l| l["event"] == "gate_started" && l["gate"] == "dry-activate");
    let live_passed = pos(&|l| l["event"] == "gate_passed" && l["gate"] == "live-activate");
    let fired = pos(&|l| l["activation"]["step"]["kind"] == "fire_switch");
    assert!(
        pre < dry && dry < fired && fired < post && post < live_passed,
        "{stdout}"
    );
    let receipts = &lines[pre]["activation"]["keys"];
    assert_eq!(
        receipts[0],
        json!({ "name": "text.key", "dest": "/run/keys/text.key", "sha256": sha256(TEXT_SECRET) })
    );
    assert_eq!(receipts[2]["dest"], "/run/keys/app/cmd.key");
    assert_eq!(receipts[2]["sha256"], sha256(CMD_SECRET));
    assert_eq!(
        lines[post]["activation"]["keys"][0]["sha256"],
        sha256(POST_SECRET)
    );

    // light2: refused for its key command, untouched.
    let l2 = refusal(&lines, "light2");
    assert_eq!(l2["verdict"], "refused", "{l2}");
    assert_eq!(l2["refusal"]["cause"], "key_source");
    assert_eq!(l2["refusal"]["error"]["kind"], "command_failed");
    assert_eq!(l2["refusal"]["error"]["code"], 3);
    assert_eq!(l2["refusal"]["error"]["stderr"], json!(["vault sealed"]));
    assert_eq!(
        fleet.in_host_ok("light2", "readlink -e /run/current-system"),
        before[1]
    );
    assert_eq!(
        fleet.in_host_ok("light2", "test -e /run/keys && echo present || echo absent"),
        "absent"
    );

    // light3: refused by its second pre-check, with the check's output.
    let l3 = refusal(&lines, "light3");
    assert_eq!(l3["refusal"]["cause"], "pre_checks", "{l3}");
    let reports = l3["refusal"]["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(
        reports[1]["attempts"][0]["tail"],
        json!(["disk almost full"])
    );
    assert_eq!(
        fleet.in_host_ok("light3", "readlink -e /run/current-system"),
        before[2]
    );

    // Human output names the refusals and their reasons.
    let human = nixgate(
        &fleet,
        &["push", "--yes", "--host", "light2", "--host", "light3"],
    );
    let err = text(&human.stderr);
    assert_eq!(human.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`sh` failed (exit code 3): vault sealed"),
        "{err}"
    );
    assert!(err.contains("disk almost full"), "{err}");

    // After a "reboot" emptied /run/keys, and a rotated file key:
    // upload-keys writes them all again, without deploying.
    fleet.in_host_ok("light1", "rm -rf /run/keys");
    const ROTATED: &str = "file-secret-rotated-77aa";
    std::fs::write(&file_key, ROTATED).unwrap();
    let all_secrets = [TEXT_SECRET, FILE_SECRET, CMD_SECRET, POST_SECRET, ROTATED];
    let (out, in_ps) = run_watching_ps(&fleet, &["--json", "upload-keys", "light1"], &all_secrets);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(in_ps.is_empty(), "secrets in ps: {in_ps:#?}");
    assert_eq!(
        fleet.in_host_ok("light1", "cat /run/keys/file.key"),
        ROTATED
    );
    assert_eq!(
        stat(&fleet, "light1", "/run/keys/file.key"),
        "nobody nogroup 440"
    );
    assert_eq!(
        fleet.in_host_ok("light1", "cat /run/keys/post.key"),
        POST_SECRET
    );
    assert_eq!(
        fleet.in_host_ok("light1", "readlink -e /run/current-system"),
        now,
        "upload-keys deploys nothing"
    );
    let up = json_lines(&out);
    let uploaded = up
        .iter()
        .find(|l| l["event"] == "keys_uploaded")
        .expect("keys_uploaded");
    assert_eq!(uploaded["keys"].as_array().unwrap().len(), 4);
    assert_eq!(uploaded["keys"][1]["sha256"], sha256(ROTATED));
    let upload_stdout = text(&out.stdout) + &text(&out.stderr);
    // light2's key command fails: nothing written, exit 1.
    let out2 = nixgate(&fleet, &["--json", "upload-keys", "light2"]);
    assert_eq!(out2.status.code(), Some(1));
    let failed = json_lines(&out2)
        .into_iter()
        .find(|l| l["event"] == "keys_failed")
        .expect("keys_failed");
    assert_eq!(failed["reason"]["kind"], "source", "{failed}");

    // No secret in anything nixgate wrote: stdout, stderr, the state
    // directory (run reports, event spools), nor in the hosts' sshd logs.
    for (what, body) in [
        ("push --json stdout", stdout.as_str()),
        ("push stderr", stderr.as_str()),
        ("upload-keys output", upload_stdout.as_str()),
    ] {
        for s in all_secrets {
            assert!(!body.contains(s), "{what} holds {s}");
        }
    }
    let leaks = files_containing(&fleet.dir().join("state"), &all_secrets);
    assert!(leaks.is_empty(), "{leaks:#?}");
    assert!(
        std::fs::read_dir(fleet.dir().join("state/runs"))
            .unwrap()
            .count()
            >= 2,
        "run reports were written (and searched)"
    );
    for h in ["light1", "light2", "light3"] {
        let leaks = files_containing(
            &fleet.dir().join("hosts").join(h).join("sshd.log"),
            &all_secrets,
        );
        assert!(leaks.is_empty(), "{leaks:#?}");
    }
}
