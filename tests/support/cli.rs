//! Running the nixgate binary against a test fleet: its inventory, a state
//! directory inside the fleet, no SSH agent or ~/.ssh/config from the
//! machine, and no controlling terminal (`setsid`: a test run from a
//! terminal must never stop at a prompt; a prompt is tested through a pty).

use std::process::{Command, Output, Stdio};

use super::fleet::Fleet;

pub fn nixgate_cmd(fleet: &Fleet, args: &[&str]) -> Command {
    nixgate_cmd_with(fleet, &fleet.inventory_path(), args)
}

/// [`nixgate_cmd`] with another inventory than the fleet's own.
pub fn nixgate_cmd_with(fleet: &Fleet, inventory: &std::path::Path, args: &[&str]) -> Command {
    // setsid(1) execs nixgate in the same process (the child is no group
    // leader), so the child's pid is nixgate's.
    // By its path: some tests run nixgate with a PATH of a few tools only.
    let setsid = ["/usr/bin/setsid", "/bin/setsid"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("setsid");
    let mut c = Command::new(setsid);
    c.arg(env!("CARGO_BIN_EXE_nixgate"))
        .arg("-i")
        .arg(inventory)
        .arg("--state-dir")
        .arg(fleet.dir().join("state"))
        .args(args)
        .env("HOME", fleet.dir())
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null());
    c
}

/// Run nixgate to its end. Everything it wrote as JSON is held to the
/// contract on the way: with `--json`, every stdout line is one event a
/// strict parser accepts (no duplicate keys) and names a documented event;
/// every run report in the state directory is strict JSON too.
pub fn nixgate(fleet: &Fleet, args: &[&str]) -> Output {
    let out = nixgate_cmd(fleet, args).output().expect("nixgate runs");
    if args.contains(&"--json") {
        check_json_lines(&text(&out.stdout));
    }
    check_run_reports(&fleet.dir().join("state").join("runs"));
    out
}

/// Every line of a `--json` stdout: strict JSON, one documented event.
pub fn check_json_lines(stdout: &str) {
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        if let Err(e) = nixgate::report::json::check_strict(line) {
            panic!("not strict JSON ({e}): {line}");
        }
        let v: serde_json::Value = serde_json::from_str(line).expect("checked above");
        let name = v["event"]
            .as_str()
            .unwrap_or_else(|| panic!("no event name: {line}"));
        assert!(
            nixgate::report::event::EVENT_NAMES.contains(&name),
            "undocumented event {name:?}: {line}"
        );
    }
}

/// Every run report written so far parses strictly.
fn check_run_reports(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let body = std::fs::read_to_string(&p).unwrap_or_default();
            if let Err(err) = nixgate::report::json::check_strict(&body) {
                panic!("run report {} is not strict JSON: {err}", p.display());
            }
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
