//! Step 5: poll a fired switch until it is proven, or time runs out.
//!
//! Each poll is ONE command that returns the job's state (Linux: `systemctl
//! show` of the unit; Darwin: whether the pid lives), the job's status file
//! and `readlink -f /run/current-system`, read in that order (see
//! [`super::switch`] for why the order matters), and, once the job has
//! exited, the system profile (step 6 starts from it instead of reading it
//! with a command of its own). A poll that loses the
//! connection, or cannot start, is retried with backoff until the deadline:
//! the `Remote` reconnects on demand and the detached job does not care. A
//! reconnect refused in a way waiting cannot change (the host key changed,
//! no key to offer: [`crate::remote::patient::refused_for_good`]) ends the
//! polling at once, [`VerifyOutcome::ReconnectRefused`]: it was polled
//! until the activation budget ran out (300 s by default), then called a
//! timeout, for a failure known at the first refusal.
//!
//! The wait between polls happens on the host: a poll waits there up to the
//! poll interval for the job's status to say `exited` (looking every 0.1 s)
//! and answers then. Before (issue 21), the controller slept 0.1, 0.2, 0.4 s
//! ... between polls, so a switch was seen up to a wait plus a round trip
//! after it ended, and a switch of 0.5 s took three or four polls at 50 ms
//! RTT; now it is seen within 0.1 s plus half a round trip, with one poll per
//! interval while it runs. On Linux the first poll is part of the fire
//! ([`super::switch::FIRE_LINUX`]).
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
    /// The profile the poll was asked to read, once the job had exited:
    /// `Some` is what reading it would have returned (`Some(None)`: no
    /// such profile); `None` when not read (or not readable there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Option<StorePath>>,
}

/// Waits up to `$ticks` tenths of a second for the job's status file to
/// say `exited` (builtins and `sleep` only), so a poll answers the moment
/// the job ends instead of after a fixed wait. Shared by the polls and the
/// Linux fire ([`super::switch::FIRE_LINUX`]), which set `$status` and
/// `$ticks` first. `$fine` (the fire's) looks that many times every 25 ms
/// before the tenths: a job that ends within 0.1 s of its start (a
/// `test` that changes little) was seen up to 0.1 s late, twice per gated
/// push; three `sleep`s more at most.
macro_rules! wait_for_exit {
    () => {
        "i=0; f=${fine:-0}
while [ \"$i\" -lt \"$ticks\" ]; do
  s=; if [ -f \"$status\" ]; then read -r s < \"$status\"; fi
  case $s in exited*) break ;; esac
  if [ \"$f\" -gt 0 ]; then
    f=$((f - 1))
    if sleep 0.025 2>/dev/null; then [ $((f % 4)) -ne 0 ] || i=$((i + 1)); continue; fi
    f=0
  fi
  if sleep 0.1 2>/dev/null; then i=$((i + 1)); else sleep 1; i=$((i + 10)); fi
done
"
    };
}
pub(crate) use wait_for_exit;

/// The job's status, `/run/current-system` and, once the job has exited and
/// `$profile` is set, the profile (step 6 reads it from here: one command
/// fewer after every switch). `$status`, `$current`, `$profile` set first.
macro_rules! report_links {
    () => {
        "if [ -e \"$status\" ]; then st=; IFS= read -r st < \"$status\" || :; echo \"NixgateStatus=$st\"; else st=; echo NixgateStatus=absent; fi
echo \"NixgateCurrent=$(readlink -f \"$current\")\"
case $st in exited*) if [ -n \"$profile\" ]; then
  if [ -L \"$profile\" ] || [ -e \"$profile\" ]; then t=$(readlink -f \"$profile\") || t=unreadable; else t=; fi
  echo \"NixgateProfile=$t\"
fi ;; esac
exit 0"
    };
}

/// The unit's state (Linux), then [`report_links`]. `$unit` set first.
macro_rules! poll_linux_body {
    () => {
        concat!(
            "systemctl show \"$unit\" --property=LoadState,ActiveState,SubState,Result,ExecMainCode,ExecMainStatus 2>/dev/null || echo NixgateSystemctl=failed\n",
            $crate::activation::verify_poll::report_links!()
        )
    };
}
pub(crate) use {poll_linux_body, report_links};

pub(crate) const POLL_LINUX: &str = concat!(
    "unit=$1; status=$2; current=$3; ticks=$4; profile=$5; fine=0\n",
    wait_for_exit!(),
    poll_linux_body!()
);

const POLL_DARWIN: &str = concat!(
    "pidfile=$1; status=$2; current=$3; ticks=$4; profile=$5; fine=0\n",
    wait_for_exit!(),
    "pid=$(cat \"$pidfile\" 2>/dev/null)
if [ -n \"$pid\" ] && ps -p \"$pid\" >/dev/null 2>&1; then echo NixgateAlive=yes; else echo NixgateAlive=no; fi
",
    report_links!()
);

/// What one poll reads besides the job: the running system's link, and
/// the profile to read once the job has exited (`None`: not read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watched<'a> {
    pub current_system: &'a str,
    pub profile: Option<&'a str>,
}

/// A poll's host-side wait in the `$ticks` the scripts take (tenths of a
/// second, rounded up).
pub fn ticks(wait: Duration) -> String {
    wait.as_millis().div_ceil(100).to_string()
}

/// The single command of one poll: it waits on the host up to `wait` for
/// the job to exit, then reports.
pub fn poll_command(job: &SwitchJob, watched: Watched<'_>, wait: Duration) -> Command {
    let (script, first) = match job.os {
        super::settings::Os::Linux => (POLL_LINUX, format!("{}.service", job.unit)),
        super::settings::Os::Darwin => (POLL_DARWIN, job.pid_file.clone()),
    };
    Command::script(script)
        .arg(first)
        .arg(&job.status_file)
        .arg(watched.current_system)
        .arg(ticks(wait))
        .arg(watched.profile.unwrap_or_default())
}

/// Whether a unit in this `ActiveState` runs (or is about to, or still does).
pub(crate) fn unit_alive(active_state: &str) -> bool {
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
    let profile = kv.get("NixgateProfile").and_then(|v| match *v {
        "" => Some(None),
        v => StorePath::parse(v).ok().map(Some),
    });
    Ok(PollSnapshot {
        job,
        unit,
        current,
        profile,
    })
}

/// How a fired switch ended, as far as polling can tell.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VerifyOutcome {
    /// Exit 0 and `/run/current-system` is the expected closure;
    /// `profile` is the watched profile as the last poll read it.
    Settled {
        elapsed: Duration,
        polls: u32,
        #[serde(skip)]
        profile: Option<Option<StorePath>>,
    },
    /// The job exited non-zero; `seen` is where the link pointed then.
    Exited {
        code: u32,
        seen: Option<StorePath>,
        unit: Option<UnitState>,
        elapsed: Duration,
        polls: u32,
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
    /// Reconnecting to poll was refused in a way waiting cannot change
    /// (as [`super::reboot::RebootOutcome::ReconnectRefused`]): `error`,
    /// `elapsed` after firing; `seen`, the link at the last poll that
    /// answered. The job may still run.
    ReconnectRefused {
        error: String,
        elapsed: Duration,
        seen: Option<StorePath>,
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

/// Why one poll produced no snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollFailed {
    /// Lost, unanswered, or an answer that was not a poll's: asked again.
    Lost(String),
    /// The reconnect was refused in a way waiting cannot change
    /// ([`crate::remote::patient::refused_for_good`]): asking again gets
    /// the same answer.
    Refused(String),
}

impl std::fmt::Display for PollFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollFailed::Lost(e) | PollFailed::Refused(e) => f.write_str(e),
        }
    }
}

/// Run one poll, waiting on the host up to `wait` for the job to exit;
/// `Err` carries why it did not produce a snapshot.
pub async fn poll_once<R: Remote>(
    remote: &R,
    job: &SwitchJob,
    watched: Watched<'_>,
    wait: Duration,
) -> Result<PollSnapshot, PollFailed> {
    let lost = |e: String| Err(PollFailed::Lost(e));
    match remote.exec(&poll_command(job, watched, wait)).await {
        Err(e) if crate::remote::patient::refused_for_good(&e) => {
            Err(PollFailed::Refused(format!("{e:#}")))
        }
        Err(e) => lost(format!("{e:#}")),
        Ok(out) if out.exit == Exit::ConnectionLost => lost(out.exit.to_string()),
        Ok(out) if !out.success() => lost(format!("poll failed ({}): {:?}", out.exit, out.tail(3))),
        Ok(out) => parse_poll(&out.stdout_str()).or_else(|e| lost(format!("{e:#}"))),
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
            elapsed,
            polls,
        },
        Some(s) if s == expected => VerifyOutcome::Settled {
            elapsed,
            polls,
            profile: snap.profile.clone(),
        },
        _ => VerifyOutcome::NotFlipped { seen },
    }
}

/// The longest one poll command may take beyond its host-side wait before
/// it counts as lost (a connection that hangs without dropping). Not tied
/// to the poll interval: a poll over a new SSH connection on a busy host
/// takes seconds.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(15);

/// The next poll: the fire's own (`fires`: it has waited on the host
/// already), else one sent now that waits there up to `wait`, bounded by
/// [`POLL_TIMEOUT`] beyond it; and how long it waited on the host.
async fn next_poll<R: Remote>(
    remote: &R,
    job: &SwitchJob,
    watched: Watched<'_>,
    wait: Duration,
    fires: Option<PollSnapshot>,
) -> (Result<PollSnapshot, PollFailed>, Duration) {
    if let Some(snap) = fires {
        return (Ok(snap), Duration::ZERO);
    }
    let poll = poll_once(remote, job, watched, wait);
    let polled = tokio::time::timeout(wait + POLL_TIMEOUT, poll)
        .await
        .unwrap_or_else(|_| {
            let error = format!("no answer to a poll within {POLL_TIMEOUT:?}");
            Err(PollFailed::Lost(error))
        });
    (polled, wait)
}

/// The fire's answer, when it carried the first poll (Linux: see
/// [`super::switch::FIRE_LINUX`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstPoll {
    /// When the fire that ran the job was sent: elapsed times count from here.
    pub fired_at: tokio::time::Instant,
    pub snapshot: Option<PollSnapshot>,
}

/// Step 5: poll `job` until it has finished, then judge it against
/// `expected` (what `/run/current-system` must be now) and `previous` (what
/// it was before the switch). Every poll waits on the host up to
/// `interval` and answers as soon as the job exits (the host looks every
/// 0.1 s), so a switch that takes 0.2 s is seen at 0.2 s plus half a round
/// trip, with one command per `interval` while it runs. A poll that
/// answers "running" sooner than its wait (a host whose `sleep` cannot
/// wait) is waited out here. `first` is the fire's own poll, when it made
/// one. No wait goes past `deadline` (the activation budget, counted from
/// firing), and at the deadline the outcome is `Timeout`: the wait ends
/// within the budget plus one poll (at most [`POLL_TIMEOUT`]). A reconnect
/// refused for good ends it at once ([`VerifyOutcome::ReconnectRefused`]).
#[allow(clippy::too_many_arguments)]
pub async fn verify_poll<R: Remote>(
    remote: &R,
    job: &SwitchJob,
    watched: Watched<'_>,
    expected: &StorePath,
    previous: &StorePath,
    interval: Duration,
    deadline: tokio::time::Instant,
    first: FirstPoll,
    on_event: &(dyn Fn(PollEvent) + Send + Sync),
) -> VerifyOutcome {
    let start = first.fired_at;
    let mut polls = 0u32;
    let mut lost = 0u32;
    let mut last: Option<PollSnapshot> = None;
    let mut fires = first.snapshot;
    let mut pause = Duration::ZERO;
    loop {
        tokio::time::sleep(
            pause.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        )
        .await;
        let sent = tokio::time::Instant::now();
        let wait = interval.min(deadline.saturating_duration_since(sent));
        let (polled, waited) = next_poll(remote, job, watched, wait, fires.take()).await;
        let elapsed = start.elapsed();
        match polled {
            Err(PollFailed::Refused(error)) => {
                return VerifyOutcome::ReconnectRefused {
                    error,
                    elapsed,
                    seen: last.and_then(|s| s.current),
                };
            }
            Err(PollFailed::Lost(error)) => {
                let retry_in = backoff(lost);
                lost += 1;
                on_event(PollEvent::ConnectionLost {
                    elapsed,
                    attempt: lost,
                    retry_in,
                    error,
                });
                pause = retry_in;
            }
            Ok(snap) => {
                polls += 1;
                lost = 0;
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
                pause = waited.saturating_sub(sent.elapsed());
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
pub(crate) mod tests;
