//! Step 5: poll a fired switch until it is proven, or time runs out.
//!
//! Each poll is ONE command that returns the job's state (Linux: `systemctl
//! show` of the unit; Darwin: whether the pid lives), the job's status file
//! and `readlink -f /run/current-system`, read in that order (see
//! [`super::switch`] for why the order matters). A poll that loses the
//! connection, or cannot start, is retried with backoff until the deadline:
//! the `Remote` reconnects on demand and the detached job does not care.
//!
//! The outcome is decided when the job has finished (or at the deadline), so a
//! host is never left mid-switch unverified: exit 0 and the link at the
//! expected closure is [`VerifyOutcome::Settled`]; the link at neither the
//! expected nor the previous closure is [`VerifyOutcome::FlippedToUnexpected`];
//! a non-zero exit is [`VerifyOutcome::Exited`] even when the link flipped
//! (NixOS exits 4 after switching when units failed).

use std::collections::BTreeMap;
use std::time::Duration;

use super::switch::SwitchJob;
use crate::nix::StorePath;
use crate::remote::{Command, Exit, Remote};

/// The state of the detached job as one poll saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobState {
    /// Still running (unit active, or pid alive).
    Running,
    /// Finished with this exit code.
    Exited { code: u32 },
    /// No process any more and no exit status: killed, or never started.
    Gone { started: bool },
}

/// What the Linux unit looked like (for evidence and diagnostics).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnitState {
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub result: String,
    pub exec_main_code: String,
    pub exec_main_status: String,
}

/// One poll.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PollSnapshot {
    pub job: JobState,
    pub unit: Option<UnitState>,
    /// Where `/run/current-system` pointed; `None` if unreadable.
    pub current: Option<StorePath>,
}

pub(crate) const POLL_LINUX: &str = "unit=$1; status=$2; current=$3
systemctl show \"$unit\" --property=LoadState,ActiveState,SubState,Result,ExecMainCode,ExecMainStatus 2>/dev/null || echo NixgateSystemctl=failed
if [ -e \"$status\" ]; then echo \"NixgateStatus=$(cat \"$status\")\"; else echo NixgateStatus=absent; fi
echo \"NixgateCurrent=$(readlink -f \"$current\")\"";

const POLL_DARWIN: &str = "pidfile=$1; status=$2; current=$3
pid=$(cat \"$pidfile\" 2>/dev/null)
if [ -n \"$pid\" ] && ps -p \"$pid\" >/dev/null 2>&1; then echo NixgateAlive=yes; else echo NixgateAlive=no; fi
if [ -e \"$status\" ]; then echo \"NixgateStatus=$(cat \"$status\")\"; else echo NixgateStatus=absent; fi
echo \"NixgateCurrent=$(readlink -f \"$current\")\"";

/// The single command of one poll.
pub fn poll_command(job: &SwitchJob, current_system: &str) -> Command {
    match job.os {
        super::settings::Os::Linux => Command::script(POLL_LINUX)
            .arg(format!("{}.service", job.unit))
            .arg(&job.status_file)
            .arg(current_system),
        super::settings::Os::Darwin => Command::script(POLL_DARWIN)
            .arg(&job.pid_file)
            .arg(&job.status_file)
            .arg(current_system),
    }
}

fn unit_alive(active_state: &str) -> bool {
    matches!(
        active_state,
        "active" | "activating" | "deactivating" | "reloading" | "refreshing"
    )
}

/// Parse one poll's output. The job's own status file decides first: a
/// poll whose `systemctl show` failed (D-Bus busy, no `systemctl` on the
/// path) still ends the wait when the status says `exited N`; without it,
/// a job whose unit state cannot be read counts as still running (the
/// activation budget bounds the wait). That is not a lost connection.
pub fn parse_poll(stdout: &str) -> anyhow::Result<PollSnapshot> {
    let kv: BTreeMap<&str, &str> = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let status = kv
        .get("NixgateStatus")
        .ok_or_else(|| anyhow::anyhow!("poll answer has no status line: {stdout:?}"))?;
    let exited = status
        .strip_prefix("exited ")
        .and_then(|c| c.trim().parse::<u32>().ok());
    let started = *status != "absent";
    let get = |k: &str| kv.get(k).map(|v| v.to_string()).unwrap_or_default();
    let (alive, unit) = if let Some(alive) = kv.get("NixgateAlive") {
        (Some(*alive == "yes"), None)
    } else {
        let unit = UnitState {
            load_state: get("LoadState"),
            active_state: get("ActiveState"),
            sub_state: get("SubState"),
            result: get("Result"),
            exec_main_code: get("ExecMainCode"),
            exec_main_status: get("ExecMainStatus"),
        };
        if unit.active_state.is_empty() {
            (None, None)
        } else {
            (Some(unit_alive(&unit.active_state)), Some(unit))
        }
    };
    let job = match (exited, alive) {
        (Some(code), _) => JobState::Exited { code },
        (None, Some(true)) => JobState::Running,
        (None, Some(false)) => JobState::Gone { started },
        // The unit state is unknown and the job has not said it exited:
        // keep waiting (a job that never started is found by its status).
        (None, None) if started => JobState::Running,
        (None, None) => JobState::Gone { started },
    };
    let current = kv
        .get("NixgateCurrent")
        .filter(|v| !v.is_empty())
        .and_then(|v| StorePath::parse(v).ok());
    Ok(PollSnapshot { job, unit, current })
}

/// How a fired switch ended, as far as polling can tell.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VerifyOutcome {
    /// Exit 0 and `/run/current-system` is the expected closure.
    Settled { elapsed: Duration, polls: u32 },
    /// The job exited non-zero; `seen` is where the link pointed then.
    Exited {
        code: u32,
        seen: Option<StorePath>,
        unit: Option<UnitState>,
    },
    /// The link points at neither the expected nor the previous closure.
    FlippedToUnexpected { seen: StorePath, code: Option<u32> },
    /// Exit 0, yet the link is not the expected closure.
    NotFlipped { seen: Option<StorePath> },
    /// The job is gone without an exit status.
    Vanished {
        started: bool,
        unit: Option<UnitState>,
    },
    /// Still not finished at the deadline.
    Timeout {
        elapsed: Duration,
        seen: Option<StorePath>,
        last: Option<JobState>,
    },
}

/// Progress reports from the poll loop.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PollEvent {
    Polled {
        elapsed: Duration,
        snapshot: PollSnapshot,
    },
    ConnectionLost {
        elapsed: Duration,
        attempt: u32,
        retry_in: Duration,
        error: String,
    },
}

/// Backoff after a lost connection: 1 s, 2 s, 4 s ... capped at 15 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(4)).min(Duration::from_secs(15))
}

/// Run one poll; `Err` carries why it did not produce a snapshot.
pub async fn poll_once<R: Remote>(
    remote: &R,
    job: &SwitchJob,
    current_system: &str,
) -> Result<PollSnapshot, String> {
    match remote.exec(&poll_command(job, current_system)).await {
        Err(e) => Err(format!("{e:#}")),
        Ok(out) if out.exit == Exit::ConnectionLost => Err(out.exit.to_string()),
        Ok(out) if !out.success() => Err(format!("poll failed ({}): {:?}", out.exit, out.tail(3))),
        Ok(out) => parse_poll(&out.stdout_str()).map_err(|e| format!("{e:#}")),
    }
}

fn classify(
    snap: &PollSnapshot,
    code: u32,
    expected: &StorePath,
    previous: &StorePath,
    elapsed: Duration,
    polls: u32,
) -> VerifyOutcome {
    let seen = snap.current.clone();
    match &seen {
        Some(s) if s != expected && s != previous => VerifyOutcome::FlippedToUnexpected {
            seen: s.clone(),
            code: Some(code),
        },
        _ if code != 0 => VerifyOutcome::Exited {
            code,
            seen,
            unit: snap.unit.clone(),
        },
        Some(s) if s == expected => VerifyOutcome::Settled { elapsed, polls },
        _ => VerifyOutcome::NotFlipped { seen },
    }
}

/// The first poll's wait: many switches take well under a second.
pub const FIRST_POLL: Duration = Duration::from_millis(100);

/// The longest one poll command may take before it counts as lost (a
/// connection that hangs without dropping). Not tied to the poll interval:
/// a poll over a new SSH connection on a busy host takes seconds.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(15);

/// Step 5: poll `job` until it has finished, then judge it against
/// `expected` (what `/run/current-system` must be now) and `previous` (what
/// it was before the switch). The first poll comes after [`FIRST_POLL`], each
/// wait then doubles up to `interval`; no wait goes past `deadline` (the
/// activation budget, counted from firing), and at the deadline the outcome
/// is `Timeout`: the wait ends within the budget plus one poll (at most
/// [`POLL_TIMEOUT`]).
#[allow(clippy::too_many_arguments)]
pub async fn verify_poll<R: Remote>(
    remote: &R,
    job: &SwitchJob,
    current_system: &str,
    expected: &StorePath,
    previous: &StorePath,
    interval: Duration,
    deadline: tokio::time::Instant,
    on_event: &(dyn Fn(PollEvent) + Send + Sync),
) -> VerifyOutcome {
    let start = tokio::time::Instant::now();
    let mut polls = 0u32;
    let mut lost = 0u32;
    let mut last: Option<PollSnapshot> = None;
    let mut wait = FIRST_POLL.min(interval);
    loop {
        let now = tokio::time::Instant::now();
        tokio::time::sleep(wait.min(deadline.saturating_duration_since(now))).await;
        let elapsed = start.elapsed();
        let polled = tokio::time::timeout(POLL_TIMEOUT, poll_once(remote, job, current_system))
            .await
            .unwrap_or_else(|_| Err(format!("no answer to a poll within {POLL_TIMEOUT:?}")));
        match polled {
            Err(error) => {
                let retry_in = backoff(lost);
                lost += 1;
                on_event(PollEvent::ConnectionLost {
                    elapsed,
                    attempt: lost,
                    retry_in,
                    error,
                });
                wait = retry_in;
            }
            Ok(snap) => {
                polls += 1;
                lost = 0;
                wait = (wait * 2).min(interval);
                on_event(PollEvent::Polled {
                    elapsed,
                    snapshot: snap.clone(),
                });
                match snap.job {
                    JobState::Exited { code } => {
                        return classify(&snap, code, expected, previous, elapsed, polls);
                    }
                    JobState::Gone { started } => {
                        return VerifyOutcome::Vanished {
                            started,
                            unit: snap.unit,
                        };
                    }
                    JobState::Running => last = Some(snap),
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return VerifyOutcome::Timeout {
                elapsed: start.elapsed(),
                seen: last.as_ref().and_then(|s| s.current.clone()),
                last: last.map(|s| s.job),
            };
        }
    }
}

#[cfg(test)]
#[path = "verify_poll_tests.rs"]
mod tests;
