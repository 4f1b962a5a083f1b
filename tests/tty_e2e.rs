//! What a person sees in a terminal, from a real pseudo-terminal (rexpect)
//! read through a terminal emulator (vt100), on a local fleet: the prompt,
//! each host's line in the live view showing the gate it is in while it is
//! in it, a failing host explained (its failed unit, its log, where it was
//! rolled back to, the next command), Ctrl-C leaving the waiting hosts `not
//! starting` and nothing stale on the screen, and `rollback` showing where
//! each host goes before it asks. The terminal echoes what is typed, `^C`
//! included, as a terminal does.

mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rexpect::process::PtyProcess;
use serde_json::json;
use support::cli::{nixgate, text};
use support::fleet::{Fleet, FleetSpec};

const COLS: u16 = 80;
/// Tall enough that nothing scrolls off: the whole session stays on the
/// screen, so a stale line would still be there at the end.
const ROWS: u16 = 200;

/// nixgate in a terminal.
struct Term {
    process: PtyProcess,
    input: std::fs::File,
    screen: Arc<Mutex<vt100::Parser>>,
    /// Every byte nixgate wrote, for a failure to show.
    raw: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Term {
    fn spawn(fleet: &Fleet, args: &[&str]) -> Term {
        let nixgate = env!("CARGO_BIN_EXE_nixgate");
        let mut cmd = Command::new("sh");
        // rexpect turns echo off; a terminal has it on.
        cmd.arg("-c")
            .arg(format!(
                "stty echo cols {COLS} rows {ROWS}; exec \"$0\" \"$@\""
            ))
            .arg(nixgate)
            .arg("-i")
            .arg(fleet.inventory_path())
            .arg("--state-dir")
            .arg(fleet.dir().join("state"))
            .args(args)
            .env("HOME", fleet.dir())
            .env("TERM", "xterm-256color")
            .env_remove("SSH_AUTH_SOCK");
        let process = PtyProcess::new(cmd).expect("a pty");
        let mut output = process.get_file_handle().unwrap();
        let input = process.get_file_handle().unwrap();
        let size = |n: u16| std::num::NonZeroU16::new(n).unwrap();
        let parser = vt100::Parser::new(size(ROWS), size(COLS), 0);
        let screen = Arc::new(Mutex::new(parser));
        let s = screen.clone();
        let raw = Arc::new(Mutex::new(Vec::new()));
        let r = raw.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO when the child is gone and the pty closed.
            while let Ok(n) = output.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().process(&buf[..n]);
                r.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Term {
            process,
            input,
            screen,
            raw,
            reader: Some(reader),
        }
    }

    /// The screen row by row, as a person sees it. (vt100's `contents`
    /// joins a row the terminal wrapped with the next; indicatif pads each
    /// line of the view to the right margin and lets the terminal wrap, so
    /// the whole view would read as one line.)
    fn contents(&self) -> String {
        let p = self.screen.lock().unwrap();
        p.screen().rows(0, COLS).collect::<Vec<_>>().join("\n")
    }

    /// The text as written: a line longer than the terminal is one line here.
    fn logical(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    /// The screen once `cond` holds of it (panics with it after `secs`).
    fn wait_for(&self, what: &str, secs: u64, cond: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.contents();
            if cond(&s) {
                eprintln!("--- screen: {what}\n{}\n---", trimmed(&s));
                return s;
            }
            if Instant::now() >= end {
                let path = concat!(env!("CARGO_MANIFEST_DIR"), "/target/tmp/tty_e2e.raw");
                let _ = std::fs::write(path, &*self.raw.lock().unwrap());
                panic!("waited for {what} (every byte in {path}); screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.input.write_all(bytes).unwrap();
        self.input.flush().unwrap();
    }

    /// Wait for nixgate to exit: its code and the final screen.
    fn finish(self) -> (i32, String) {
        let (code, rows, _) = self.finish_logical();
        (code, rows)
    }

    /// [`Term::finish`], with the text as written too ([`Term::logical`]).
    fn finish_logical(mut self) -> (i32, String, String) {
        let status = self.process.wait().expect("nixgate exits");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let code = match status {
            rexpect::process::WaitStatus::Exited(_, c) => c,
            other => panic!("nixgate ended by {other:?}"),
        };
        let s = self.contents();
        eprintln!("--- final screen (exit {code})\n{}\n---", trimmed(&s));
        (code, s, self.logical())
    }
}

fn trimmed(s: &str) -> String {
    s.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_owned()
}

/// A line of the live view: never left on the screen once nixgate ends.
fn is_live_line(l: &str) -> bool {
    let spinner = l
        .trim_start()
        .chars()
        .next()
        .is_some_and(|c| ('\u{2800}'..='\u{28ff}').contains(&c));
    spinner
        || l.ends_with("host(s)")
        || l.contains("not started yet")
        || l.contains("not starting")
        || l.contains("waiting for its wave")
}

fn no_live_lines_left(screen: &str) {
    let stale: Vec<&str> = screen.lines().filter(|l| is_live_line(l)).collect();
    assert!(stale.is_empty(), "stale live lines {stale:?} in:\n{screen}");
}

#[test]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
fn a_push_with_a_failing_host_and_a_ctrl_c_as_a_person_sees_it() {
    let fleet = Fleet::start(FleetSpec {
        light: 3,
        systemd: 0,
        builder: true,
    })
    .unwrap();

    // Generation 1 on light1 and light2: somewhere to roll back to.
    fleet
        .commit_config(|v| v["defaults"]["packages"]["hello"]["version"] = json!("2.12.2"))
        .unwrap();
    let out = nixgate(&fleet, &["push", "--yes", "light1", "light2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // light2's switch fails a unit (exit 4); the prompt asks first.
    fleet
        .commit_config(|v| {
            v["defaults"]["packages"]["hello"]["version"] = json!("2.12.3");
            v["hosts"]["light2"] = json!({ "misbehaviour": "exit4" });
        })
        .unwrap();
    let mut t = Term::spawn(&fleet, &["push", "light1", "light2"]);
    let s = t.wait_for("the prompt", 120, |s| s.contains("[y/N]"));
    assert!(
        s.contains("Deploy (goal gated) to 2 host(s)? selected: light1, light2"),
        "{s}"
    );
    assert!(s.contains("hello 2.12.2 -> 2.12.3"), "the plan first: {s}");
    no_live_lines_left(&s);
    t.send(b"y\r");
    let live = regex_line(
        &t,
        "a host in a gate, with its time",
        r"^  \S light[12]  [a-z-]+ \d+s",
    );
    assert!(live.contains("wave selected: 2 host(s)"), "{live}");
    let (code, s, written) = t.finish_logical();
    assert_eq!(code, 1, "{s}");
    no_live_lines_left(&s);
    assert!(
        s.lines()
            .any(|l| l.starts_with("light2 ") && l.contains(" rolled-back ")),
        "the summary table: {s}"
    );
    for want in [
        "light2: rolled-back",
        "live-activate failed: the switch exited 4:",
        "nixgate-test-broken.service failed",
        "  its log ends:",
        "      warning: the following units failed: nixgate-test-broken.service",
        "nixgate rolled it back to generation 1 (commit",
        "next: `journalctl -u nixgate-test-broken.service` on light2",
        "run report: ",
        "done: 1 known-good, 1 rolled-back, exit 1",
    ] {
        assert!(s.contains(want), "{want:?} not in:\n{s}");
    }
    assert!(
        !s.contains("Live") && !s.contains("Some("),
        "no enum names: {s}"
    );
    // After the answer (the plan's diff may name whole store paths): no
    // line the terminal had to wrap.
    let (_, after) = written.split_once("[y/N] y").expect("the answer echoed");
    for l in after.lines() {
        assert!(
            l.chars().count() <= COLS as usize,
            "wider than the terminal: {l}"
        );
    }

    // Ctrl-C while the canary switches: the main wave never starts.
    fleet
        .commit_config(|v| {
            v["defaults"]["packages"]["hello"]["version"] = json!("2.12.4");
            v["hosts"]["light1"] = json!({ "misbehaviour": "slow" });
            v["hosts"]["light2"] = json!({});
        })
        .unwrap();
    let mut t = Term::spawn(&fleet, &["push", "--yes"]);
    let s = regex_line(
        &t,
        "the canary in its switch",
        r"^  \S light1  live-activate \d+s",
    );
    assert!(s.contains("wave main: 2 host(s)"), "{s}");
    t.send(b"\x03");
    let s = t.wait_for("after Ctrl-C", 30, |s| {
        s.lines().filter(|l| l.contains("not starting")).count() == 2
    });
    assert!(s.contains("Ctrl-C: starting nothing new"), "{s}");
    assert!(
        s.lines()
            .any(|l| l.starts_with("  ") && l.contains("light1  live-activate")),
        "the canary goes on: {s}"
    );
    // One header for the canary's wave: the first was not left behind.
    assert_eq!(s.matches("wave canary: 1 host(s)").count(), 1, "{s}");
    let (code, s) = t.finish();
    assert_eq!(code, 1, "{s}");
    no_live_lines_left(&s);
    assert!(
        s.contains("done: 1 known-good, 2 not-started (cancelled), exit 1"),
        "{s}"
    );

    // rollback: from and to, the package diff, then the prompt; Ctrl-C there
    // ends it at once, nothing changed (exit 4).
    let mut t = Term::spawn(&fleet, &["rollback", "light1"]);
    let s = t.wait_for("the rollback's prompt", 60, |s| s.contains("[y/N]"));
    // `light1: generation 3 (commit, hash) -> generation 2 (...)`, the
    // target on a line of its own when both do not fit in 80 columns.
    let (_, from_to) = s
        .split_once("\nlight1: generation 3 (commit")
        .unwrap_or_else(|| panic!("no from -> to line in:\n{s}"));
    let to = from_to.lines().take(2).collect::<Vec<_>>().join("\n");
    assert!(to.contains("-> generation 2 (commit"), "{to}");
    assert_eq!(s.matches("light1:").count(), 1, "the host named once: {s}");
    assert!(s.contains("hello 2.12.4 -> 2.12.3"), "{s}");
    assert!(s.contains("Roll back 1 host(s)? selected: light1"), "{s}");
    t.send(b"\x03");
    let (code, s) = t.finish();
    assert_eq!(code, 4, "{s}");
    assert!(s.contains("done: declined: nothing changed, exit 4"), "{s}");
    assert!(
        trimmed(&s).contains("[y/N] ^C\nCtrl-C: starting nothing\n"),
        "what follows the prompt on a line of its own: {s}"
    );

    // A generation no selected host has: a usage error, no host marked failed.
    let out = nixgate(&fleet, &["rollback", "--yes", "--to", "9", "light1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("light1: refused: no known-good generation 9 (it has: 1, 2, 3)"),
        "{}",
        text(&out.stderr)
    );
    let out = nixgate(&fleet, &["status", "light1"]);
    assert!(
        text(&out.stdout).contains("push known-good"),
        "{}",
        text(&out.stdout)
    );
}

/// Wait until a line of the screen matches `pattern`.
fn regex_line(t: &Term, what: &str, pattern: &str) -> String {
    let re = rexpect::reader::Regex::new(pattern).unwrap();
    t.wait_for(what, 120, |s| s.lines().any(|l| re.is_match(l)))
}
