//! Step 4: the detached switch.
//!
//! The switch must survive an SSH drop and the controller's death, so it never
//! runs in the SSH session. Linux: `systemd-run` starts a transient unit
//! `nixgate-switch-<run id>[-<purpose>]` (own cgroup; `--collect` so it leaves
//! no failed unit behind; no `--wait`: nixgate polls). Darwin: `nohup` +
//! `setsid` (or perl's `POSIX::setsid` where macOS lacks `setsid(1)`).
//!
//! Exit status: with `--collect` a finished unit is garbage-collected and
//! `systemctl show` then reports `LoadState=not-found`, `Result=success` even
//! for a failed run. So the unit runs a fixed wrapper script that writes
//! `started` and then `exited <code>` to `<job dir>/<unit>.status` and the
//! switch's output to `<job dir>/<unit>.log` (shell builtins only: the unit's
//! PATH has no coreutils on NixOS). The status survives the unit; polls read
//! the unit state first and the status file second, so "unit gone and no
//! `exited` line" really means the job died without finishing.
//!
//! Before firing, [`check_switch_lock`] looks for a switch still holding
//! `/run/nixos/switch-to-configuration.lock` (an orphan from an earlier
//! interrupted deploy, deploy-rs#390) and reports it instead of firing blind.

use anyhow::Context;

use super::settings::{HostPaths, Os, RunId};
use crate::gates::SwitchAction;
use crate::nix::StorePath;
use crate::remote::{Command, Exit, Remote};

/// Why a detached job is run; decides the unit name suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPurpose {
    /// The candidate's own activation.
    Candidate,
    /// The separate `boot` run that persists the candidate.
    Persist,
    /// Re-activating a known-good (or the pre-switch) system.
    Rollback,
}

/// One detached run of a closure's activation on a host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SwitchJob {
    /// The systemd unit name (without `.service`); also the file stem.
    pub unit: String,
    pub os: Os,
    pub action: SwitchAction,
    pub closure: StorePath,
    pub job_dir: String,
    pub status_file: String,
    pub log_file: String,
    /// Darwin: the detached process's pid.
    pub pid_file: String,
}

impl SwitchJob {
    pub fn new(
        run_id: &RunId,
        purpose: JobPurpose,
        action: SwitchAction,
        closure: &StorePath,
        os: Os,
        paths: &HostPaths,
    ) -> Self {
        let unit = match purpose {
            JobPurpose::Candidate => format!("nixgate-switch-{run_id}"),
            JobPurpose::Persist => format!("nixgate-switch-{run_id}-persist"),
            JobPurpose::Rollback => format!("nixgate-switch-{run_id}-rollback"),
        };
        let dir = paths.job_dir.trim_end_matches('/').to_owned();
        SwitchJob {
            status_file: format!("{dir}/{unit}.status"),
            log_file: format!("{dir}/{unit}.log"),
            pid_file: format!("{dir}/{unit}.pid"),
            job_dir: dir,
            unit,
            os,
            action,
            closure: closure.clone(),
        }
    }

    /// The same job under the fresh unit name of a later `attempt` (a
    /// retry after the host refused to start the unit).
    pub fn renamed(&self, attempt: u32) -> SwitchJob {
        let base = self
            .unit
            .rsplit_once("-try")
            .map_or(self.unit.as_str(), |(b, _)| b);
        let unit = format!("{base}-try{attempt}");
        let dir = &self.job_dir;
        SwitchJob {
            status_file: format!("{dir}/{unit}.status"),
            log_file: format!("{dir}/{unit}.log"),
            pid_file: format!("{dir}/{unit}.pid"),
            unit,
            ..self.clone()
        }
    }

    /// The program the job runs, with its arguments.
    pub fn program(&self) -> Vec<String> {
        match self.os {
            Os::Linux => vec![
                format!("{}/bin/switch-to-configuration", self.closure),
                self.action.as_str().to_owned(),
            ],
            Os::Darwin => vec![format!("{}/activate", self.closure)],
        }
    }
}

/// Runs inside the detached job: `$1` status file, `$2` log file, the rest is
/// the program. Builtins only.
pub const JOB_WRAPPER: &str = "status=$1; log=$2; shift 2
echo started > \"$status\"
\"$@\" > \"$log\" 2>&1
code=$?
echo \"exited $code\" > \"$status\"
exit \"$code\"";

/// Over SSH, before `systemd-run`: fresh job files, then exec the rest.
pub(crate) const FIRE_LINUX: &str = "dir=$1; status=$2; log=$3; shift 3
mkdir -p \"$dir\" && rm -f \"$status\" \"$log\" || exit 125
exec \"$@\"";

/// Over SSH on Darwin: start the wrapper in its own session, record its pid.
const FIRE_DARWIN: &str = "dir=$1; status=$2; log=$3; pidfile=$4; wrapper=$5; shift 5
mkdir -p \"$dir\" && rm -f \"$status\" \"$log\" \"$pidfile\" || exit 125
if command -v setsid >/dev/null 2>&1; then
  nohup setsid /bin/sh -c \"$wrapper\" nixgate-job \"$status\" \"$log\" \"$@\" </dev/null >/dev/null 2>&1 &
else
  nohup /usr/bin/perl -MPOSIX -e 'POSIX::setsid(); exec @ARGV or die' /bin/sh -c \"$wrapper\" nixgate-job \"$status\" \"$log\" \"$@\" </dev/null >/dev/null 2>&1 &
fi
echo $! > \"$pidfile\"";

/// The command that fires `job`.
pub fn fire_command(job: &SwitchJob, sudo: bool, install_bootloader: bool) -> Command {
    match job.os {
        Os::Linux => {
            // A one-line description: systemd-run's default is the command
            // line, and the wrapper's newlines would corrupt the transient
            // unit's file, read back at the switch's own daemon-reload.
            let mut cmd = Command::script(FIRE_LINUX)
                .args([&job.job_dir, &job.status_file, &job.log_file])
                .arg("systemd-run")
                .arg(format!("--unit={}", job.unit))
                .arg(format!(
                    "--description=nixgate {} of {}",
                    job.action,
                    job.closure.name()
                ))
                .args(["--collect", "--no-ask-password", "--service-type=exec"]);
            if install_bootloader && job.action.writes_boot_default() {
                cmd = cmd.arg("--setenv=NIXOS_INSTALL_BOOTLOADER=1");
            }
            cmd.args(["--", "/bin/sh", "-c", JOB_WRAPPER, "nixgate-job"])
                .args([&job.status_file, &job.log_file])
                .args(job.program())
                .sudo(sudo)
        }
        Os::Darwin => Command::script(FIRE_DARWIN)
            .args([&job.job_dir, &job.status_file, &job.log_file, &job.pid_file])
            .arg(JOB_WRAPPER)
            .args(job.program())
            .sudo(sudo),
    }
}

/// How firing went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FireOutcome {
    Started,
    /// A unit of that name already exists: an earlier attempt of ours fired.
    AlreadyRunning,
    /// The connection dropped: it may or may not have started.
    Unconfirmed {
        error: String,
    },
    /// The host refused to start it.
    Refused {
        exit: Exit,
        tail: Vec<String>,
    },
}

/// Fire `job` once. Never retries by itself: see `detached::run_detached`.
pub async fn fire<R: Remote>(
    remote: &R,
    job: &SwitchJob,
    sudo: bool,
    install_bootloader: bool,
) -> FireOutcome {
    match remote
        .exec(&fire_command(job, sudo, install_bootloader))
        .await
    {
        Err(e) => FireOutcome::Unconfirmed {
            error: format!("{e:#}"),
        },
        Ok(out) if out.exit == Exit::ConnectionLost => FireOutcome::Unconfirmed {
            error: out.exit.to_string(),
        },
        Ok(out) if out.success() => FireOutcome::Started,
        Ok(out) if out.stderr_str().contains("already exists") => FireOutcome::AlreadyRunning,
        Ok(out) => FireOutcome::Refused {
            exit: out.exit.clone(),
            tail: out.tail(10),
        },
    }
}

/// Is `switch-to-configuration`'s lock held right now?
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LockState {
    Free,
    /// Held; `holders` lists switch units still loaded (`unit state sub`).
    Held {
        holders: Vec<String>,
    },
    /// `flock` is not available: the check could not be made.
    Unchecked,
}

pub(crate) const LOCK_CHECK: &str = "lock=$1
command -v flock >/dev/null 2>&1 || { echo NixgateLock=unchecked; exit 0; }
if [ ! -e \"$lock\" ] || flock --nonblock --shared \"$lock\" true; then echo NixgateLock=free; else echo NixgateLock=held; fi
systemctl list-units --all --plain --no-legend --no-pager 'nixgate-switch-*' 'nixos-rebuild-switch-to-configuration*' 2>/dev/null |
while read -r unit load active sub rest; do echo \"NixgateHolder=$unit $active $sub\"; done
exit 0";

/// The lock check command (Linux).
pub fn lock_check_command(paths: &HostPaths, sudo: bool) -> Command {
    Command::script(LOCK_CHECK)
        .arg(&paths.switch_lock)
        .sudo(sudo)
}

pub fn parse_lock_check(stdout: &str) -> anyhow::Result<LockState> {
    let mut state = None;
    let mut holders = Vec::new();
    for line in stdout.lines() {
        if let Some(v) = line.strip_prefix("NixgateLock=") {
            state = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("NixgateHolder=") {
            holders.push(v.trim().to_owned());
        }
    }
    match state.as_deref() {
        Some("free") => Ok(LockState::Free),
        Some("held") => Ok(LockState::Held { holders }),
        Some("unchecked") => Ok(LockState::Unchecked),
        _ => anyhow::bail!("unexpected answer from the switch lock check: {stdout:?}"),
    }
}

/// Look for a switch holding the lock before firing (Linux; Darwin has no lock).
pub async fn check_switch_lock<R: Remote>(
    remote: &R,
    os: Os,
    paths: &HostPaths,
    sudo: bool,
) -> anyhow::Result<LockState> {
    if os == Os::Darwin {
        return Ok(LockState::Free);
    }
    let out = remote
        .exec(&lock_check_command(paths, sudo))
        .await
        .with_context(|| format!("checking the switch lock on {}", remote.name()))?
        .check("checking the switch lock")?;
    parse_lock_check(&out.stdout_str())
}

/// Stop the unit; one that is already gone (finished, collected, never
/// started) is stopped: only a unit still active after the stop fails.
pub(crate) const STOP_LINUX: &str = "systemctl stop \"$1\" 2>/dev/null
if systemctl is-active --quiet \"$1\"; then echo \"$1 is still active\" >&2; exit 1; fi
exit 0";

const STOP_DARWIN: &str =
    "pid=$(cat \"$1\" 2>/dev/null) && [ -n \"$pid\" ] && kill -TERM -- \"-$pid\"; exit 0";

/// The command stopping a hung job.
pub fn stop_command(job: &SwitchJob, sudo: bool) -> Command {
    match job.os {
        Os::Linux => Command::script(STOP_LINUX)
            .arg(format!("{}.service", job.unit))
            .sudo(sudo),
        Os::Darwin => Command::script(STOP_DARWIN).arg(&job.pid_file).sudo(sudo),
    }
}

/// Stop a hung job (used before rolling back after a timeout: the hung
/// switch holds the lock a rollback needs).
pub async fn stop_job<R: Remote>(remote: &R, job: &SwitchJob, sudo: bool) -> anyhow::Result<()> {
    remote
        .exec(&stop_command(job, sudo))
        .await
        .with_context(|| format!("stopping {} on {}", job.unit, remote.name()))?
        .check(&format!("stopping {}", job.unit))?;
    Ok(())
}

pub(crate) const LOG_TAIL: &str = "if [ -e \"$1\" ]; then tail -n 50 \"$1\"
elif command -v journalctl >/dev/null 2>&1; then journalctl -u \"$2\" -n 50 --no-pager -o cat
fi 2>/dev/null; exit 0";

/// The last lines the job wrote (its log file; the journal if the file is gone).
pub fn log_tail_command(job: &SwitchJob) -> Command {
    Command::script(LOG_TAIL).arg(&job.log_file).arg(&job.unit)
}

/// The job's last output lines; empty if they cannot be read.
pub async fn log_tail<R: Remote>(remote: &R, job: &SwitchJob) -> Vec<String> {
    match remote.exec(&log_tail_command(job)).await {
        Ok(out) if out.success() => out
            .stdout_str()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[path = "switch_tests.rs"]
mod tests;
