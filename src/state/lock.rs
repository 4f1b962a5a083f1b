//! The controller lock: one nixgate run per state directory at a time.
//!
//! An OS file lock (`flock`) on `<state>/lock`, so a dead holder can never
//! leave a stale lock behind: the kernel drops it with the process. The file
//! also records who holds it (pid, start time, command) for the message a
//! second run prints before exiting 3, and for `runs` and `status`, which
//! ask whether it is held now ([`standing`]) to tell a run still going from
//! one that was killed.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::clock::Utc;

/// Who holds the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub started: String,
    pub command: String,
    /// The run holding it (absent in locks written before it was kept):
    /// what tells the run going from one killed in the same second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// Another run holds the lock.
#[derive(Debug, thiserror::Error)]
#[error(
    "another nixgate run holds the lock {path}: pid {pid}, started {started} ({command}); wait for it to finish, or stop it with Ctrl-C",
    pid = holder.as_ref().map_or_else(|| "unknown".to_string(), |h| h.pid.to_string()),
    started = holder.as_ref().map_or("at an unknown time", |h| h.started.as_str()),
    command = holder.as_ref().map_or("unknown command", |h| h.command.as_str())
)]
pub struct LockHeld {
    pub path: PathBuf,
    pub holder: Option<Holder>,
}

/// Held for as long as this value lives.
#[derive(Debug)]
pub struct ControllerLock {
    _file: File,
    path: PathBuf,
}

impl ControllerLock {
    /// Take the lock without waiting. `Err` is either [`LockHeld`] (exit 3)
    /// or an I/O problem with the state directory.
    pub fn acquire(
        state_dir: &Path,
        command: &str,
        run_id: &str,
    ) -> anyhow::Result<ControllerLock> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
        let path = state_dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        match try_lock_past_checks(&file) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = serde_json::from_str(&text).ok();
                return Err(LockHeld { path, holder }.into());
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        let holder = Holder {
            pid: std::process::id(),
            started: Utc::now().rfc3339(),
            command: command.to_owned(),
            run_id: Some(run_id.to_owned()),
        };
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(serde_json::to_string(&holder)?.as_bytes())?;
        file.flush()?;
        Ok(ControllerLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How long a run waits for a lock held by a [`standing`] check (`runs`,
/// `status` hold it shared for microseconds): a cron push starting in that
/// instant must not be refused as locked. A run holds it for its whole
/// length, so a real holder is still there after this.
const CHECKS_PASS_WITHIN: std::time::Duration = std::time::Duration::from_millis(200);

/// Take `file`'s lock exclusively, trying again while it is held, for up
/// to [`CHECKS_PASS_WITHIN`].
fn try_lock_past_checks(file: &File) -> Result<(), TryLockError> {
    let until = std::time::Instant::now() + CHECKS_PASS_WITHIN;
    loop {
        match file.try_lock() {
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// The controller lock as it stands right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Nobody holds it (or there is no lock file): no run is going.
    Free,
    /// A live process holds it; who, when its file says (`None` in the
    /// instant between taking the lock and writing the holder).
    Held(Option<Holder>),
}

/// Whether a run holds the lock of `state_dir` now: a non-blocking shared
/// `flock`, let go at once when it is had. The kernel's lock is the truth;
/// the recorded pid is not (no `/proc` on macOS, and a reused pid made a
/// killed run look alive). A holder is never disturbed: its lock only
/// refuses ours (a run starting in the instant ours is had waits for it:
/// [`CHECKS_PASS_WITHIN`]). Only reads: neither the file nor its directory is created
/// (`runs` and `status` must not make a state directory). A lock file that
/// cannot be opened or locked is taken for free, with a warning: the
/// reports then say interrupted, as they did for an unknown holder.
pub fn standing(state_dir: &Path) -> Standing {
    let path = state_dir.join("lock");
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Standing::Free,
        Err(e) => {
            tracing::warn!("opening the lock file {}: {e}", path.display());
            return Standing::Free;
        }
    };
    match file.try_lock_shared() {
        // Ours for an instant, let go as `file` closes on return (a run
        // starting in that very instant waits for it: see
        // `CHECKS_PASS_WITHIN`).
        Ok(()) => Standing::Free,
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Standing::Held(serde_json::from_str(&text).ok())
        }
        Err(TryLockError::Error(e)) => {
            tracing::warn!("testing the lock {}: {e}", path.display());
            Standing::Free
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run starting while `status` tests the lock (a shared lock held
    /// for an instant) takes it once the test lets go, not refused as
    /// locked (exit 3) as a cron push was.
    #[test]
    fn a_standing_check_in_progress_does_not_refuse_a_run() {
        let dir = tempfile::tempdir().unwrap();
        drop(ControllerLock::acquire(dir.path(), "nixgate push", "r1").unwrap());
        let checking = File::open(dir.path().join("lock")).unwrap();
        checking.try_lock_shared().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            drop(checking);
        });
        let lock = ControllerLock::acquire(dir.path(), "nixgate push", "r1");
        release.join().unwrap();
        assert!(lock.is_ok(), "{lock:?}");
    }

    #[test]
    fn second_acquire_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = ControllerLock::acquire(dir.path(), "nixgate push", "r1").unwrap();
        let err = ControllerLock::acquire(dir.path(), "nixgate push --wave x", "r1").unwrap_err();
        let held = err.downcast_ref::<LockHeld>().expect("LockHeld");
        assert_eq!(held.holder.as_ref().unwrap().pid, std::process::id());
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("(nixgate push)"), "{msg}");
        drop(first);
        // Released with its holder: a dead run never leaves a stale lock.
        ControllerLock::acquire(dir.path(), "again", "r1").unwrap();
    }

    /// Held is what the kernel says, not the recorded pid (alive here, and
    /// still the lock is free); testing never takes the lock from its
    /// holder nor keeps it, and creates nothing.
    #[test]
    fn standing_is_the_kernel_lock_not_the_recorded_pid() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert_eq!(standing(&state), Standing::Free);
        assert!(!state.exists(), "testing the lock created the state dir");
        let held = ControllerLock::acquire(&state, "nixgate push", "r1").unwrap();
        let Standing::Held(Some(holder)) = standing(&state) else {
            panic!("held: {:?}", standing(&state));
        };
        assert_eq!(holder.command, "nixgate push");
        drop(held);
        // A killed run's file names a live pid (ours): the lock is free.
        assert_eq!(standing(&state), Standing::Free);
        // Testing let go: a run can take it.
        ControllerLock::acquire(&state, "again", "r1").unwrap();
    }
}
