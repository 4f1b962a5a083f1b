//! `nixgate exec` and selection patterns on a real fleet of light hosts:
//! output per host with stdout and stderr kept apart, an unreachable host
//! reported without holding up the others (exit 1), globs, `--on` lists
//! with `@tag`, a pattern matching nothing (exit 2, closest names), and
//! commands hung up on the host by `--timeout` and by Ctrl-C; and the
//! `[notify]` hook of a push getting its summary. One fleet for all (its
//! start is most of the time).

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::cli::{nixgate, nixgate_cmd, text};
use support::fleet::{Fleet, FleetSpec};

fn events(stdout: &[u8], name: &str) -> Vec<serde_json::Value> {
    text(stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .filter(|v| v["event"] == name)
        .collect()
}

/// Add `[notify] command = argv` to the inventory.
fn set_notify(fleet: &Fleet, argv: &[&str]) {
    let path = fleet.inventory_path();
    let mut inv = std::fs::read_to_string(&path).unwrap();
    if let Some(at) = inv.find("\n[notify]") {
        inv.truncate(at);
    }
    let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    inv.push_str(&format!("\n[notify]\ncommand = [{}]\n", argv.join(", ")));
    std::fs::write(&path, inv).unwrap();
}

/// Give `hosts` the tag `tag` instead of their own (`light`); the fleet has
/// no builder (exec needs none), so the inventory names one nobody listens
/// on.
fn retag(fleet: &Fleet, hosts: &[&str], tag: &str) {
    let path = fleet.inventory_path();
    let mut inv = std::fs::read_to_string(&path).unwrap();
    inv.push_str(&format!(
        "\n[builder]\naddress = \"127.0.0.1\"\nport = 9\nsource = \"{}\"\nflake = false\n",
        fleet.config_repo().display()
    ));
    for h in hosts {
        let at = inv.find(&format!("[hosts.{h}]\n")).expect("host section");
        let tags = at + inv[at..].find("tags = [\"light\"]").expect("tags");
        inv.replace_range(
            tags..tags + "tags = [\"light\"]".len(),
            &format!("tags = [\"{tag}\"]"),
        );
    }
    std::fs::write(&path, inv).unwrap();
}

/// Processes on the machine (every light host shares its pid namespace)
/// whose command line contains `needle`.
fn running(needle: &str) -> Vec<String> {
    let out = std::process::Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .unwrap();
    text(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle) && !l.contains("nixgate") && !l.contains("ps -eo"))
        .map(str::to_owned)
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const SCRIPT: &str = "set -- $SSH_CONNECTION; echo \"at $3\"; echo \"warn $3\" >&2; sleep 1";

#[test]
#[ignore = "needs root (sshd, namespaces): run scripts/test"]
fn exec_selection_patterns_hang_ups_and_notify() {
    let fleet = Fleet::start(FleetSpec {
        light: 10,
        systemd: 0,
        builder: false,
    })
    .unwrap();
    retag(&fleet, &["light3", "light4"], "db");
    let pid = std::fs::read_to_string(fleet.dir().join("hosts/light10/pid")).unwrap();
    let killed = std::process::Command::new("kill")
        .arg(pid.trim())
        .status()
        .unwrap();
    assert!(killed.success());

    every_host_one_unreachable(&fleet);
    every_host_as_json(&fleet);
    grouped(&fleet);
    selection_patterns(&fleet);
    timeout_hangs_up(&fleet);
    ctrl_c_hangs_up(&fleet);
    stdout_closed(&fleet);
    notify_gets_the_summary(&fleet);
}

fn every_host_one_unreachable(fleet: &Fleet) {
    // Every host: light10 is unreachable, the nine others answer.
    let started = Instant::now();
    let out = nixgate(fleet, &["exec", "--", "sh", "-c", SCRIPT]);
    let took = started.elapsed();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    eprintln!("exec on 10 light hosts (one unreachable, each command 1 s): {took:?}");
    assert!(
        took < Duration::from_secs(6),
        "the hosts ran one by one? {took:?}"
    );
    for i in 1..=9 {
        let h = fleet.host(&format!("light{i}"));
        let name = format!("{:7}", h.name);
        assert!(
            stdout.contains(&format!("{name} | at {}\n", h.address)),
            "{}'s stdout line in:\n{stdout}",
            h.name
        );
        assert!(
            stderr.contains(&format!("{name} | warn {}\n", h.address)),
            "{}'s stderr line in:\n{stderr}",
            h.name
        );
        assert!(
            !stdout.contains(&format!("warn {}", h.address)),
            "stderr kept apart"
        );
        let row = stderr
            .lines()
            .find(|l| l.starts_with(&format!("{name}  ")) && l.contains(" s"))
            .unwrap_or_else(|| panic!("{}'s row in the table:\n{stderr}", h.name));
        assert!(row.contains("exit 0"), "{row}");
    }
    assert_eq!(
        stdout.lines().count(),
        9,
        "only the hosts' stdout: {stdout}"
    );
    let row = stderr
        .lines()
        .find(|l| l.starts_with("light10  ") && l.contains(" s"))
        .unwrap_or_else(|| panic!("light10's row:\n{stderr}"));
    assert!(row.contains("unreachable: "), "{row}");
}

fn every_host_as_json(fleet: &Fleet) {
    // The same as JSON: chunks per stream, one end per host.
    let out = nixgate(fleet, &["--json", "exec", "--", "sh", "-c", SCRIPT]);
    assert_eq!(out.status.code(), Some(1));
    let ends = events(&out.stdout, "exec_finished");
    assert_eq!(ends.len(), 10);
    for e in &ends {
        if e["host"] == "light10" {
            assert_eq!(e["end"]["kind"], "unreachable", "{e}");
        } else {
            assert_eq!(
                e["end"],
                serde_json::json!({"kind": "exited", "code": 0}),
                "{e}"
            );
        }
    }
    let chunks = events(&out.stdout, "exec_output");
    let light2 = fleet.host("light2").address;
    let of = |stream: &str| -> String {
        chunks
            .iter()
            .filter(|c| c["host"] == "light2" && c["stream"] == stream)
            .map(|c| c["text"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(of("stdout"), format!("at {light2}\n"));
    assert_eq!(of("stderr"), format!("warn {light2}\n"));
    let summary = events(&out.stdout, "summary");
    assert_eq!(summary[0]["ok"], 9);
    assert_eq!(summary[0]["failed"], 1);
}

/// `--group`: each host's output whole, under a header, when it ends.
fn grouped(fleet: &Fleet) {
    let out = nixgate(
        fleet,
        &[
            "exec",
            "--group",
            "--on",
            "light[12]",
            "--",
            "sh",
            "-c",
            SCRIPT,
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for h in ["light1", "light2"] {
        let address = fleet.host(h).address;
        assert!(stdout.contains(&format!("at {address}\n")), "{stdout}");
        assert!(!stdout.contains(" | "), "no prefixes: {stdout}");
        let header = format!("=== {h}: exit 0 (");
        let at = stderr
            .find(&header)
            .unwrap_or_else(|| panic!("{header} in {stderr}"));
        assert!(
            stderr[at..].contains(&format!("warn {address}\n")),
            "{stderr}"
        );
    }
}

fn selection_patterns(fleet: &Fleet) {
    // Globs, --on with @tag, and `hosts` showing the resolution.
    let on = ["--host", "light[12]", "--on", "light[5-6],@db"];
    let out = nixgate(fleet, &[&["--json", "hosts"], &on[..]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed: Vec<String> = events(&out.stdout, "host")
        .iter()
        .map(|h| h["host"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        listed,
        ["light1", "light2", "light3", "light4", "light5", "light6"]
    );
    let out = nixgate(
        fleet,
        &[&["--json", "exec"], &on[..], &["--", "true"]].concat(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut ran: Vec<String> = events(&out.stdout, "exec_finished")
        .iter()
        .map(|h| h["host"].as_str().unwrap().to_owned())
        .collect();
    ran.sort();
    assert_eq!(ran, listed);
    let out = nixgate(fleet, &["exec", "--on", "lihgt1*,@db", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("no host matches `lihgt1*` (closest: light1"),
        "{err}"
    );
    let out = nixgate(fleet, &["hosts", "--on", "@web"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no host has the tag `web`"));
}

fn timeout_hangs_up(fleet: &Fleet) {
    // --timeout hangs the command up on the host.
    let out = nixgate(
        fleet,
        &[
            "--json",
            "exec",
            "--timeout",
            "1s",
            "light1",
            "--",
            "sleep",
            "31.5",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let end = &events(&out.stdout, "exec_finished")[0];
    assert_eq!(end["end"]["kind"], "timed_out", "{end}");
    wait_for("the timed-out sleep to end", Duration::from_secs(5), || {
        running("sleep 31.5").is_empty()
    });
}

fn ctrl_c_hangs_up(fleet: &Fleet) {
    // Ctrl-C: the commands in flight are hung up, no new host starts.
    let child = nixgate_cmd(
        fleet,
        &[
            "--json",
            "exec",
            "--parallel",
            "2",
            "--on",
            "light[1-4]",
            "--",
            "sleep",
            "32.5",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for("two remote sleeps", Duration::from_secs(10), || {
        running("sleep 32.5").len() == 2
    });
    let sent = Instant::now();
    let int = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(int.success());
    let out = child.wait_with_output().unwrap();
    eprintln!("Ctrl-C to exit: {:?}", sent.elapsed());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    support::cli::check_json_lines(&text(&out.stdout));
    let ends = events(&out.stdout, "exec_finished");
    assert_eq!(ends.len(), 2, "{}", text(&out.stdout));
    for e in &ends {
        assert_eq!(e["end"]["kind"], "hung_up", "{e}");
    }
    assert_eq!(events(&out.stdout, "host_not_started").len(), 2);
    wait_for("the hung-up sleeps to end", Duration::from_secs(5), || {
        running("sleep 32.5").is_empty()
    });
}

/// A reader of stdout gone (`nixgate exec ... | head`): no panic, the
/// hosts' stderr and the summary still reach stderr, the exit code is the
/// commands'. (`print!` panicked in the reporter task at the first line,
/// and everything after it was lost.)
fn stdout_closed(fleet: &Fleet) {
    let mut child = nixgate_cmd(
        fleet,
        &["exec", "--on", "light[1-3]", "--", "sh", "-c", SCRIPT],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("3 host(s) exited 0"), "{stderr}");
    let light3 = fleet.host("light3").address;
    assert!(stderr.contains(&format!("warn {light3}")), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

fn notify_gets_the_summary(fleet: &Fleet) {
    // [notify] gets the run's summary on stdin after a push (here one whose
    // builder is down: light1 refused, exit 1); a failing notify command is
    // a warning, the exit code stays the run's.
    let got = fleet.dir().join("notified.json");
    set_notify(fleet, &["sh", "-c", &format!("cat > '{}'", got.display())]);
    let out = nixgate(fleet, &["--yes", "push", "light1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let body = std::fs::read_to_string(&got).expect("the notify command ran");
    nixgate::report::json::check_strict(body.trim()).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["command"], "push");
    assert_eq!(summary["exit_code"], 1);
    assert_eq!(summary["hosts"][0]["host"], "light1");
    assert_eq!(summary["hosts"][0]["refusal"]["cause"], "builder");
    let report = fleet
        .dir()
        .join("state/runs")
        .join(format!("{}.json", summary["run_id"].as_str().unwrap()));
    assert!(report.exists(), "the run report is written before notify");
    set_notify(
        fleet,
        &["sh", "-c", "cat >/dev/null; echo chat is down >&2; exit 7"],
    );
    let out = nixgate(fleet, &["--yes", "push", "light1"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("warning: the [notify] command failed: `sh` exit status: 7: chat is down"),
        "{err}"
    );
    notify_that_hangs(fleet);
}

/// A notify command that hangs (its timeout an hour): the controller lock
/// is free while it runs (another run exited 3), and SIGTERM ends it at
/// once, with the run's own exit code, its pipeline's processes killed
/// (a `systemctl stop` waited out the timeout).
fn notify_that_hangs(fleet: &Fleet) {
    let started = fleet.dir().join("notify-started");
    // The other run's notify (the same inventory) ends at once.
    let script = format!(
        "cat >/dev/null; [ ! -e '{0}' ] || exit 0; touch '{0}'; sleep 40.5 | cat",
        started.display()
    );
    set_notify(fleet, &["sh", "-c", &script]);
    let inv = fleet.inventory_path();
    let mut text_of = std::fs::read_to_string(&inv).unwrap();
    text_of.push_str("timeout = \"1h\"\n");
    std::fs::write(&inv, text_of).unwrap();
    let child = nixgate_cmd(fleet, &["--yes", "push", "light1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the notify command", Duration::from_secs(30), || {
        started.exists()
    });
    let other = nixgate(fleet, &["--yes", "push", "light2"]);
    assert_eq!(other.status.code(), Some(1), "{}", text(&other.stderr));
    let sent = Instant::now();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}: {err}",
        sent.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stopped by a signal"), "{err}");
    wait_for("the notify pipeline to end", Duration::from_secs(5), || {
        running("sleep 40.5").is_empty()
    });
    set_notify(fleet, &["true"]);
}
