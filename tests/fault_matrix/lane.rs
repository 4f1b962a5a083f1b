//! One lane of the matrix: one host, worked on by its own nixgate runs,
//! from its own configuration repository, inventory and state directory,
//! so lanes run side by side on one fleet without sharing a controller
//! lock, a commit or a release branch. Only the builder is shared.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::knobs;
use crate::support::fleet::Fleet;

pub struct Lane<'f> {
    pub fleet: &'f Fleet,
    pub host: String,
    pub dir: PathBuf,
    inventory: PathBuf,
    repo: PathBuf,
    state: PathBuf,
    bin: PathBuf,
    generation: u64,
}

fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=matrix",
            "-c",
            "user.email=matrix@nixgate.test",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        repo.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl<'f> Lane<'f> {
    /// A lane for `host`: a clone of the fleet's configuration (with a bare
    /// `origin` for releases), an inventory building from it with the
    /// matrix's health check, and the controller's `git` knob.
    pub fn new(fleet: &'f Fleet, host: &str) -> Lane<'f> {
        let dir = fleet.dir().join("lanes").join(host);
        std::fs::create_dir_all(&dir).unwrap();
        let repo = dir.join("config");
        let origin = dir.join("origin.git");
        let src = fleet.config_repo();
        git(&dir, &["clone", "-q", &src.display().to_string(), "config"]);
        git(&dir, &["init", "-q", "--bare", "origin.git"]);
        git(
            &repo,
            &["remote", "set-url", "origin", &origin.display().to_string()],
        );
        let inventory = dir.join("inventory.toml");
        let text = std::fs::read_to_string(fleet.inventory_path()).unwrap();
        let check = format!(
            "health_checks = [{{ command = {}, timeout = \"30s\", retries = 0 }}]\n",
            toml_string(knobs::HEALTH_CHECK)
        );
        let text = text
            .replace(
                &format!("source = \"{}\"", src.display()),
                &format!("source = \"{}\"", repo.display()),
            )
            .replacen("[defaults]\n", &format!("[defaults]\n{check}"), 1)
            + "\n[release]\nremote = \"origin\"\n";
        std::fs::write(&inventory, text).unwrap();
        let bin = knobs::controller_git(&dir);
        Lane {
            fleet,
            host: host.to_owned(),
            state: dir.join("state"),
            dir,
            inventory,
            repo,
            bin,
            generation: 0,
        }
    }

    /// A new candidate for the lane's host: its `generation` goes up, and
    /// `edit` changes what else it wants of the host's settings.
    pub fn next_candidate(&mut self, edit: impl FnOnce(&mut Value)) {
        self.generation += 1;
        let file = self.repo.join("hosts.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        v["hosts"][&self.host]["generation"] = Value::from(self.generation);
        edit(&mut v["hosts"][&self.host]);
        std::fs::write(&file, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
        git(
            &self.repo,
            &[
                "commit",
                "-qam",
                &format!("{} generation {}", self.host, self.generation),
            ],
        );
    }

    fn command(&self, args: &[&str]) -> Command {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("setsid");
        c.arg(env!("CARGO_BIN_EXE_nixgate"))
            .arg("-i")
            .arg(&self.inventory)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--json")
            .args(args)
            .env("HOME", self.fleet.dir())
            .env("PATH", path)
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// `nixgate --json push --yes HOST`, running.
    pub fn push(&self) -> Running {
        Running::spawn(self.command(&["push", "--yes", &self.host]))
    }

    /// `nixgate --json status HOST`: its status event.
    pub fn status(&self) -> Value {
        let done =
            Running::spawn(self.command(&["status", &self.host])).finish(Duration::from_secs(60));
        done.events
            .into_iter()
            .find(|e| e["event"] == "status")
            .unwrap_or_else(|| panic!("no status event: {}", done.stderr))
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A nixgate run whose JSON events are read as they come.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
    pub events: Vec<Value>,
}

/// A finished run.
pub struct Finished {
    pub events: Vec<Value>,
    pub stderr: String,
    pub status: ExitStatus,
    /// Killed by the test: it ran past its limit.
    pub hung: bool,
}

impl Finished {
    pub fn summary(&self) -> Option<&Value> {
        self.events.iter().rev().find(|e| e["event"] == "summary")
    }

    /// The host's outcome in the summary.
    pub fn outcome(&self) -> Option<String> {
        let s = self.summary()?;
        s["hosts"].as_array()?.first()?["outcome"]
            .as_str()
            .map(str::to_owned)
    }
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd.spawn().expect("nixgate starts");
        let stdout = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Running {
            child,
            lines: rx,
            stderr,
            events: Vec::new(),
        }
    }

    fn take(&mut self, line: String) {
        nixgate::report::json::check_strict(&line)
            .unwrap_or_else(|e| panic!("not strict JSON ({e}): {line}"));
        self.events.push(serde_json::from_str(&line).unwrap());
    }

    /// Read what has come so far; true while the run goes on.
    pub fn drain(&mut self) -> bool {
        loop {
            match self.lines.try_recv() {
                Ok(line) => self.take(line),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// SIGKILL, now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Wait for the end (killing it at `limit`: a hung run fails the cell).
    pub fn finish(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let mut hung = false;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => self.take(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= deadline && !hung => {
                    hung = true;
                    self.child.kill().ok();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        let status = self.child.wait().unwrap();
        Finished {
            events: self.events,
            stderr: self.stderr.join().unwrap_or_default(),
            status,
            hung,
        }
    }
}
