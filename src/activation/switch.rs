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
//! Before firing, the fire looks for a switch still holding
//! `/run/nixos/switch-to-configuration.lock` (an orphan from an earlier
//! interrupted deploy, deploy-rs#390) and reports it instead of firing blind.
//!
//! Round trips (issue 21): on Linux the lock check, the fire and the first
//! poll are ONE command, [`FIRE_LINUX`]; none of them needs the controller
//! in between (a held lock stops the script before it fires, a refused
//! start is its exit code, the first poll waits on the host for the job to
//! exit). They were three commands and a 100 ms wait on the controller: at
//! 50 ms RTT, 3 round trips and ~250 ms per switch more, and a gated push
//! runs two switches per host (`test`, `boot`). nix-darwin has no lock and
//! its fire stays one command of its own.

use std::time::Duration;

use anyhow::Context;

use super::settings::{HostPaths, Os, RunId};
use super::verify_poll::{self, PollSnapshot, Watched};
use crate::gates::SwitchAction;
use crate::nix::StorePath;
use crate::remote::{Command, Exit, Output, Remote};

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
    /// Why it runs: a rollback's job takes the host back (on nix-darwin,
    /// its `activate` runs even when `activate-user` fails: see
    /// [`super::darwin_activate`]).
    #[serde(skip)]
    pub purpose: JobPurpose,
    pub job_dir: String,
    pub status_file: String,
    pub log_file: String,
    /// Darwin: the detached process's pid.
    pub pid_file: String,
    /// Linux: the profile the fire points at `closure` (`nix-env --set`)
    /// after the lock check and before it starts the job (see
    /// [`FIRE_LINUX`]): one round trip less than a command of its own.
    pub sets_profile: Option<String>,
    /// Linux: the dead-man revert the fire arms once the lock is free,
    /// before anything else (see [`FIRE_LINUX`]).
    pub arms: Option<super::deadman::FireArm>,
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
            purpose,
            sets_profile: None,
            arms: None,
        }
    }

    /// The same job, arming `arm` as it fires (Linux; see
    /// [`SwitchJob::arms`]).
    pub fn arming(self, arm: super::deadman::FireArm) -> SwitchJob {
        SwitchJob {
            arms: Some(arm),
            ..self
        }
    }

    /// The same job, firing only after pointing `profile` at its closure
    /// (Linux; see [`SwitchJob::sets_profile`]).
    pub fn setting_profile(self, profile: &str) -> SwitchJob {
        SwitchJob {
            sets_profile: Some(profile.to_owned()),
            ..self
        }
    }

    /// The same job under the fresh unit name of a later `attempt` (a
    /// retry after the host refused to start the unit).
    pub fn renamed(&self, attempt: u32) -> SwitchJob {
        self.named(format!("{}-try{attempt}", self.base_unit()))
    }

    /// The job's first unit name (without `-tryN`): every attempt's name
    /// is made from it.
    pub fn base_unit(&self) -> &str {
        split_attempt(&self.unit).0
    }

    /// Which attempt of its job this is (1: the first fire).
    pub fn attempt(&self) -> u32 {
        split_attempt(&self.unit).1
    }

    /// Whether `unit` (without `.service`) is an attempt of this job fired
    /// before this one: its first name, or an earlier `-tryN`.
    pub fn is_earlier_attempt(&self, unit: &str) -> bool {
        let (base, n) = split_attempt(&self.unit);
        let (other, m) = split_attempt(unit);
        other == base && m < n
    }

    /// The same job under the unit name `unit` (and its files).
    pub fn named(&self, unit: String) -> SwitchJob {
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
            Os::Darwin => {
                let back = self.purpose == JobPurpose::Rollback;
                super::darwin_activate::program(&self.closure, back)
            }
        }
    }
}

/// A unit name's job name and attempt: `<base>-try<N>` is attempt N of
/// `<base>`, any other name attempt 1 of itself.
fn split_attempt(unit: &str) -> (&str, u32) {
    unit.rsplit_once("-try")
        .and_then(|(b, n)| {
            let n: u32 = n
                .parse()
                .ok()
                .filter(|_| n.bytes().all(|c| c.is_ascii_digit()))?;
            Some((b, n))
        })
        .unwrap_or((unit, 1))
}

/// Runs inside the detached job: `$1` status file, `$2` log file, the rest is
/// the program. Builtins only. The polls read both files as the SSH user,
/// without sudo: they are created world-readable (umask 022) whatever
/// umask the job inherited (Darwin: the user's, which sudo keeps when it is
/// stricter than 022), while the program keeps its own. After the status
/// file's first line comes the program (`<closure>/bin/switch-to-configuration
/// <action>`; on nix-darwin `sh -c <script> nixgate-activate <closure>`,
/// several lines, the last naming the closure): the polls read the first
/// alone, and a later run reads what an earlier one's switch of its
/// candidate ended with ([`super::leftovers`]: a controller killed before it
/// read the result).
pub const JOB_WRAPPER: &str = "status=$1; log=$2; shift 2
[ ! -e \"$status.stopped\" ] || exit 125
(umask 022; { echo started; echo \"$*\"; } > \"$status\"; : > \"$log\")
\"$@\" > \"$log\" 2>&1
code=$?
{ echo \"exited $code\"; echo \"$*\"; } > \"$status\"
exit \"$code\"";

/// Over SSH on Linux, one command from the lock check to the first poll:
/// is `switch-to-configuration`'s lock free (else list the switch units
/// that may hold it, and stop: nothing fired), the job dir (searchable by
/// all: the polls read it without sudo, and sudo keeps a user's umask of
/// 077; a dir made root-only by an earlier command is opened up), fresh job
/// files (`$again` = 1, a re-fire after a lost answer: kept, they may be
/// the first fire's, which may have started),
/// `systemd-run` (the rest of the arguments; its exit code is
/// `NixgateFire`, its stderr the command's), then, once it started, wait on
/// the host up to `$ticks` tenths of a second for the job to exit and poll
/// it as [`super::verify_poll::POLL_LINUX`] does. Nothing in between needs
/// the controller: a held lock, a refused start and a finished job are all
/// read from this one answer.
///
/// `$10` (not empty: a profile) is pointed at `$11` with `nix-env --set`,
/// bounded by `$12` seconds where `timeout` exists, once the lock is free
/// and before anything else; its exit code is `NixgateProfileSet`, and
/// nothing fires when it failed. Run again on a re-fire: setting a profile
/// to the closure of its newest generation makes no new generation. Before,
/// `nix-env --set` was a command of its own before the fire (a round trip
/// more per switch that sets the profile: 50 ms at 50 ms RTT), and a held
/// lock found the profile moved already (it was put back).
///
/// `$13`-`$16` (not empty: a dead-man revert, see [`super::deadman`]): the
/// timer's unit, its seconds, the revert script's path and its text. Once
/// the lock is free, before the profile is set, the script is written and
/// the timer started (`NixgateArmed=new`); a timer of that name already
/// active was started by an earlier attempt of this fire (a refused or
/// unanswered one: the budget the timer counts, the activation budget plus
/// the confirm window, outlasts every attempt) and is kept
/// (`NixgateArmed=kept`); nothing fires when it could be neither
/// (`NixgateArmed=failed`). A new timer is arming 1 (see
/// [`super::deadman::Armed::generation`]). It was a command of its own before the fire:
/// one round trip and one `sh` less per live switch.
pub(crate) const FIRE_LINUX: &str = concat!(
    "lock=$1; unit=$2; status=$3; current=$4; ticks=$5; profile=$6; dir=$7; log=$8; again=$9
setp=${10}; setc=${11}; setl=${12}; aunit=${13}; asecs=${14}; ascript=${15}; abody=${16}; shift 16
fine=4
absent() { for f; do { [ -e \"$f\" ] || [ -L \"$f\" ]; } && return 1; done; return 0; }
",
    super::deadman::arm_timer!(),
    "if ! command -v flock >/dev/null 2>&1; then echo NixgateLock=unchecked
elif [ ! -e \"$lock\" ] || flock --nonblock --shared 9 9<\"$lock\"; then echo NixgateLock=free
else
  echo NixgateLock=held
  systemctl list-units --all --plain --no-legend --no-pager 'nixgate-switch-*' 'nixos-rebuild-switch-to-configuration*' 2>/dev/null |
  while read -r u load active sub rest; do echo \"NixgateHolder=$u $active $sub\"; done
",
    lock_holders!(),
    "  exit 0
fi
if [ -n \"$aunit\" ]; then
  if { [ -d \"${ascript%/*}\" ] || mkdir -p \"${ascript%/*}\"; } && printf '%s' \"$abody\" > \"$ascript.tmp\" && mv -f \"$ascript.tmp\" \"$ascript\"; then
    if arm \"$aunit\" \"$asecs\" \"$ascript\" >/dev/null 2>&1; then armed=new
    elif [ \"$(systemctl is-active \"$aunit.timer\" 2>/dev/null)\" = active ]; then armed=kept
    elif systemctl stop \"$aunit.timer\" \"$aunit.service\" 2>/dev/null; arm_again \"$aunit\" \"$asecs\" \"$ascript\" >&2; then armed=new
    else armed=failed; fi
  else armed=failed; fi
  # Refused (a D-Bus timeout may have started it even so): nothing of it
  # stays to revert a later deploy.
  [ \"$armed\" != failed ] || { systemctl stop \"$aunit.timer\" 2>/dev/null; rm -f \"$ascript\" \"$ascript.arming\"; }
  [ \"$armed\" != new ] || echo 1 > \"$ascript.arming\"
  echo \"NixgateArmed=$armed\"
  [ \"$armed\" != failed ] || exit 0
fi
if [ -n \"$setp\" ]; then
  if command -v timeout >/dev/null 2>&1; then timeout -k 5 \"$setl\" nix-env -p \"$setp\" --set \"$setc\" >&2
  else nix-env -p \"$setp\" --set \"$setc\" >&2; fi
  rc=$?; echo \"NixgateProfileSet=$rc\"
  [ \"$rc\" = 0 ] || exit 0
fi
if { [ -d \"$dir\" ] || (umask 022 && mkdir -p \"$dir\"); } && { chmod go+rx \"$dir\" 2>/dev/null; [ \"$again\" = 1 ] || absent \"$status\" \"$log\" \"$status.stopped\" || rm -f \"$status\" \"$log\" \"$status.stopped\"; }
then echo NixgateRunning >&2; \"$@\"; rc=$?; else rc=125; fi
echo \"NixgateFire=$rc\"
[ \"$rc\" = 0 ] || exit 0
",
    super::verify_poll::wait_for_exit!(),
    super::verify_poll::poll_linux_body!()
);

/// Over SSH on Darwin: start the wrapper in its own session, record its pid
/// (the dir and the pid file readable by all, as on Linux).
const FIRE_DARWIN: &str = "dir=$1; status=$2; log=$3; pidfile=$4; wrapper=$5; shift 5
(umask 022 && mkdir -p \"$dir\") && { chmod go+rx \"$dir\" 2>/dev/null; rm -f \"$status\" \"$log\" \"$pidfile\"; } || exit 125
if command -v setsid >/dev/null 2>&1; then
  nohup setsid /bin/sh -c \"$wrapper\" nixgate-job \"$status\" \"$log\" \"$@\" </dev/null >/dev/null 2>&1 &
else
  nohup /usr/bin/perl -MPOSIX -e 'POSIX::setsid(); exec @ARGV or die' /bin/sh -c \"$wrapper\" nixgate-job \"$status\" \"$log\" \"$@\" </dev/null >/dev/null 2>&1 &
fi
pid=$!
(umask 022; echo \"$pid\" > \"$pidfile\")";

/// What the Linux fire checks and reads around the job (see [`FIRE_LINUX`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Around<'a> {
    /// `switch-to-configuration`'s lock, checked before firing.
    pub lock: &'a str,
    /// What the first poll reads.
    pub watched: Watched<'a>,
    /// How long the first poll waits on the host for the job to exit.
    pub wait: Duration,
}

/// The command that fires `job` (Linux: with the lock check before and
/// the first poll after, see [`FIRE_LINUX`]; `again`: a re-fire after a
/// lost answer, which keeps the job's files).
pub fn fire_command(
    job: &SwitchJob,
    sudo: bool,
    install_bootloader: bool,
    around: Around<'_>,
    again: bool,
) -> Command {
    match job.os {
        Os::Linux => {
            // A one-line description: systemd-run's default is the command
            // line, and the wrapper's newlines would corrupt the transient
            // unit's file, read back at the switch's own daemon-reload.
            let mut cmd = Command::script(FIRE_LINUX)
                .arg(around.lock)
                .arg(format!("{}.service", job.unit))
                .args([&job.status_file, around.watched.current_system])
                .arg(verify_poll::ticks(around.wait))
                .arg(around.watched.profile.unwrap_or_default())
                .args([&job.job_dir, &job.log_file])
                .arg(if again { "1" } else { "0" })
                .arg(job.sets_profile.as_deref().unwrap_or_default())
                .arg(match job.sets_profile {
                    Some(_) => job.closure.to_string(),
                    None => String::new(),
                })
                .arg(super::settings::STEP_LIMIT.as_secs().to_string())
                .args(match &job.arms {
                    Some(a) => [
                        a.unit.clone(),
                        a.secs().to_string(),
                        a.script.clone(),
                        a.body.clone(),
                    ],
                    None => Default::default(),
                })
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
    /// An earlier attempt of this job under another unit name (refused,
    /// yet started: a D-Bus timeout) holds the lock: it runs, nothing fired.
    EarlierAttempt {
        unit: String,
    },
    /// A re-fire after a lost answer found a unit of this name loaded
    /// (current systemd's answer to a second start, "already loaded"):
    /// most likely the first fire, which may have started. Not known yet;
    /// a refusal only if the unit turns out not to run (see `detached`).
    Loaded {
        exit: Exit,
        tail: Vec<String>,
    },
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

/// The processes that hold `$lock` (from `/proc/locks`, by its device and
/// inode: inode numbers repeat across filesystems, tmpfs's are small; a
/// waiter's `->` line holds nothing): `NixgateLockPid=<pid> <seconds
/// running> <its unit, from its cgroup> <command line>` (`-`: not known). A switch killed with the SSH session it ran
/// in, or hung, holds the lock outside any unit (deploy-rs#390): every
/// later deploy fails on it, and without its pid the error named nothing
/// to act on.
macro_rules! lock_holders {
    () => {
        "  ino=$(stat -c %i \"$lock\" 2>/dev/null)
  dev=$(stat -c '%Hd %Ld' \"$lock\" 2>/dev/null) && dev=$(printf '%02x:%02x' $dev) || dev=
  [ -z \"$ino\" ] || [ -z \"$dev\" ] || [ ! -r /proc/locks ] || while read -r _ kind _ _ pid at _; do
    [ \"$kind\" != '->' ] && [ \"$at\" = \"$dev:$ino\" ] && [ -r \"/proc/$pid/cmdline\" ] || continue
    age=$(ps -o etimes= -p \"$pid\" 2>/dev/null | tr -d ' ')
    unit=$(sed -n 's|^0::.*/||p' \"/proc/$pid/cgroup\" 2>/dev/null | head -n 1)
    cmd=$(tr '\\000' ' ' < \"/proc/$pid/cmdline\" | cut -c1-300)
    echo \"NixgateLockPid=$pid ${age:--} ${unit:--} $cmd\"
  done < /proc/locks
"
    };
}
pub(crate) use lock_holders;

/// A process that holds `switch-to-configuration`'s lock, as the host
/// listed it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockProcess {
    pub pid: u32,
    /// How long it has run (`None`: `ps` could not say).
    pub running_secs: Option<u64>,
    /// The systemd unit it runs in (a service, or a session's scope), from
    /// its cgroup (`None`: not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Its command line (arguments joined by spaces, cut at 300 bytes).
    pub command: String,
}

impl LockProcess {
    /// `NixgateLockPid=` values: `<pid> <seconds or -> <unit or -> <command
    /// line>`.
    pub fn parse(line: &str) -> Option<LockProcess> {
        let mut parts = line.splitn(4, ' ');
        let pid = parts.next()?.parse().ok()?;
        let running_secs = parts.next()?.parse().ok();
        let unit = parts.next().filter(|u| *u != "-" && !u.is_empty());
        let command = parts.next().unwrap_or_default().trim_end().to_owned();
        Some(LockProcess {
            pid,
            running_secs,
            unit: unit.map(str::to_owned),
            command,
        })
    }
}

/// One fire as the host answered it, lock check and first poll included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// Another switch holds `switch-to-configuration`'s lock: nothing
    /// fired. `holders` lists the switch units loaded (`unit state sub`),
    /// `processes` what holds the lock.
    LockHeld {
        holders: Vec<String>,
        processes: Vec<LockProcess>,
    },
    /// The lock check could not run (nothing fired).
    LockCheckFailed { error: String },
    /// The lock was free, but pointing the profile at the closure failed
    /// (see [`SwitchJob::sets_profile`]): nothing fired.
    ProfileSetFailed { error: String },
    /// The lock was free, but the dead-man revert could not be armed (see
    /// [`SwitchJob::arms`]): nothing fired, nor was the profile set.
    ArmFailed { error: String },
    /// The lock was free (or, `unchecked`, the host has no `flock`) and
    /// firing went as `outcome` says; `first` is the poll that followed a
    /// start (Linux).
    Tried {
        unchecked: bool,
        outcome: FireOutcome,
        first: Option<Box<PollSnapshot>>,
    },
}

/// Fire `job` once. Never retries by itself: see `detached::run_detached`.
/// `again`: an earlier fire's answer was lost, so a command that cannot be
/// started leaves the fire unconfirmed (the first time, nothing can have
/// run: the lock check failed).
pub async fn fire<R: Remote>(
    remote: &R,
    job: &SwitchJob,
    (sudo, install_bootloader): (bool, bool),
    around: Around<'_>,
    again: bool,
) -> Launch {
    let unconfirmed = |error: String| Launch::Tried {
        unchecked: false,
        outcome: FireOutcome::Unconfirmed { error },
        first: None,
    };
    match remote
        .exec(&fire_command(job, sudo, install_bootloader, around, again))
        .await
    {
        Err(e) if again || job.os == Os::Darwin => unconfirmed(format!("{e:#}")),
        Err(e) => Launch::LockCheckFailed {
            error: format!("checking the switch lock on {}: {e:#}", remote.name()),
        },
        Ok(out) if out.exit == Exit::ConnectionLost && !stopped_before_firing(job, &out) => {
            unconfirmed(out.exit.to_string())
        }
        Ok(out) if job.os == Os::Darwin => Launch::Tried {
            unchecked: false,
            outcome: fire_outcome(&out, out.exit.code(), again),
            first: None,
        },
        Ok(out) => parse_fire_linux(&out, job, again),
    }
}

/// The Linux fire's answer, cut short by a lost connection, already says
/// it stopped before starting anything (a held lock, a revert it could not
/// arm, a profile it could not set: complete lines): that holds. Read as
/// unconfirmed, it was fired again until the budget ran out, and the host,
/// where nothing had changed, was rolled back.
fn stopped_before_firing(job: &SwitchJob, out: &Output) -> bool {
    job.os == Os::Linux && FireLines::of(&out.stdout_str()).stopped()
}

/// The Linux fire's `Nixgate<Key>=` lines, the complete ones only: an
/// answer cut short may end mid-line, and a cut `NixgateProfileSet=1...`
/// must not read as a profile not set (nor `NixgateLock=he` as anything).
struct FireLines<'a>(Vec<&'a str>);

impl<'a> FireLines<'a> {
    fn of(text: &'a str) -> Self {
        FireLines(
            text.split_inclusive('\n')
                .filter_map(|l| l.strip_suffix('\n'))
                .collect(),
        )
    }

    /// The first `key` line's value.
    fn value(&self, key: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find_map(|l| l.strip_prefix(key).map(str::trim))
    }

    /// Every `key` line's value.
    fn values(&self, key: &'a str) -> impl Iterator<Item = &'a str> + '_ {
        self.0
            .iter()
            .filter_map(move |l| l.strip_prefix(key).map(str::trim))
    }

    /// `nix-env --set`'s exit code, when it failed (a number, not 0).
    fn profile_set_failed(&self) -> Option<&'a str> {
        self.value("NixgateProfileSet=")
            .filter(|c| c.parse::<u32>().is_ok_and(|n| n != 0))
    }

    /// The fire stopped before starting anything: the lock held, the
    /// revert not armed, the profile not set.
    fn stopped(&self) -> bool {
        self.value("NixgateLock=") == Some("held")
            || self.value("NixgateArmed=") == Some("failed")
            || self.profile_set_failed().is_some()
    }
}

/// How the fire itself went: `code` is `systemd-run`'s exit (Darwin: the
/// command's), `None` when the command ended before it answered. A unit
/// of that name that "already exists" (older systemd) is ours, running;
/// one "already loaded" (current systemd: also a unit left loaded after a
/// failed start) refuses a first fire (it is fired again under a fresh
/// name), and on a re-fire (`again`) may be the first fire's.
fn fire_outcome(out: &Output, code: Option<u32>, again: bool) -> FireOutcome {
    let exit = match code {
        Some(0) => return FireOutcome::Started,
        Some(code) => Exit::Code { code },
        None => out.exit.clone(),
    };
    let stderr = run_said(out);
    let tail = match crate::remote::last_lines(&stderr, 10) {
        // It said nothing: the fire's own lines (never_ran's "said
        // nothing").
        t if t.is_empty() => crate::remote::last_lines(&out.stdout_str(), 10),
        t => t,
    };
    if stderr.contains("already exists") {
        FireOutcome::AlreadyRunning
    } else if again && stderr.contains("already loaded") {
        FireOutcome::Loaded { exit, tail }
    } else {
        FireOutcome::Refused { exit, tail }
    }
}

/// What `systemd-run` itself wrote to stderr: what follows the fire's
/// `NixgateRunning` line ([`FIRE_LINUX`] writes it just before starting
/// it), all of stderr when there is none (Darwin, or the fire cut short).
/// `nix-env --set` and the revert's arming write to the same stderr
/// before it: their words are not the host's answer to the start (a
/// silent `systemd-run` killed after a noisy `nix-env` was judged by
/// `nix-env`'s lines, see `detached::never_ran`).
fn run_said(out: &Output) -> String {
    let stderr = out.stderr_str();
    match stderr.rfind("NixgateRunning\n") {
        Some(at) => stderr[at + "NixgateRunning\n".len()..].to_owned(),
        None => stderr,
    }
}

/// Read [`FIRE_LINUX`]'s answer. A lock held by this very unit is an
/// earlier fire of ours whose answer was lost: it runs. One held by an
/// earlier attempt of this job under another name, active, is that
/// attempt: it was refused, yet started, and runs (see [`FireOutcome`]).
pub fn parse_fire_linux(out: &Output, job: &SwitchJob, again: bool) -> Launch {
    let text = out.stdout_str();
    let lines = FireLines::of(&text);
    let holders: Vec<String> = lines.values("NixgateHolder=").map(str::to_owned).collect();
    let unchecked = match lines.value("NixgateLock=") {
        Some("free") => false,
        Some("unchecked") => true,
        Some("held") => {
            let processes: Vec<LockProcess> = lines
                .values("NixgateLockPid=")
                .filter_map(LockProcess::parse)
                .collect();
            return match held_by_us(&holders, &processes, job) {
                Some(outcome) => Launch::Tried {
                    unchecked: false,
                    outcome,
                    first: None,
                },
                None => Launch::LockHeld { holders, processes },
            };
        }
        _ => {
            let error = match out.clone().check("checking the switch lock") {
                Err(e) => format!("{e:#}"),
                Ok(_) => format!("unexpected answer from the switch lock check: {text:?}"),
            };
            return Launch::LockCheckFailed { error };
        }
    };
    if let (Some(arm), Some("failed")) = (&job.arms, lines.value("NixgateArmed=")) {
        let error = format!(
            "arming the dead-man timer {}: {}",
            arm.unit,
            out.tail(5).join(" / ")
        );
        return Launch::ArmFailed { error };
    }
    if let (Some(profile), Some(code)) = (&job.sets_profile, lines.profile_set_failed()) {
        let error = format!(
            "nix-env -p {profile} --set {} exited {code}: {}",
            job.closure,
            out.tail(5).join(" / ")
        );
        return Launch::ProfileSetFailed { error };
    }
    let outcome = match lines
        .value("NixgateFire=")
        .and_then(|c| c.parse::<u32>().ok())
    {
        // Ended (killed) between the lock check and `systemd-run`'s answer.
        None => FireOutcome::Unconfirmed {
            error: format!("the fire ended before systemd-run answered ({})", out.exit),
        },
        code => fire_outcome(out, code, again),
    };
    let first = match outcome {
        FireOutcome::Started => verify_poll::parse_poll(&text).ok().map(Box::new),
        _ => None,
    };
    Launch::Tried {
        unchecked,
        outcome,
        first,
    }
}

/// Whether a lock holder listed (`unit state sub`) is this job: this very
/// unit (in any state, as before), or an earlier attempt of it that is
/// active. A process holding the lock counts as its unit, active: the
/// unit list comes from `systemctl`, which fails or times out when PID 1
/// is slow (what refused the earlier attempt), while the process is read
/// from `/proc` (our own refused-yet-started attempt was reported as
/// another switch, "nothing changed", and its `kill` advised).
fn held_by_us(
    holders: &[String],
    processes: &[LockProcess],
    job: &SwitchJob,
) -> Option<FireOutcome> {
    let ours = format!("{}.service", job.unit);
    let units = || {
        let listed = holders.iter().filter_map(|h| {
            let mut words = h.split(' ');
            Some((words.next()?, words.next().unwrap_or_default()))
        });
        let running = processes
            .iter()
            .filter_map(|p| Some((p.unit.as_deref()?, "active")));
        listed.chain(running)
    };
    if units().any(|(u, _)| u == ours) {
        return Some(FireOutcome::AlreadyRunning);
    }
    units()
        .filter(|(_, state)| verify_poll::unit_alive(state))
        .filter_map(|(u, _)| u.strip_suffix(".service"))
        .find(|u| job.is_earlier_attempt(u))
        .map(|u| FireOutcome::EarlierAttempt { unit: u.to_owned() })
}

/// Stop the units (a queued start of one is cancelled by its stop); one
/// already gone (finished, collected, never started) is stopped. Each must
/// be read back inactive or failed: `is-active --quiet` fails alike for an
/// inactive unit and for a `systemctl` that cannot reach PID 1 (the bus
/// that timed a start out), which passed for stopped. A unit not read back
/// so is stopped again, once a second, for 10 s (a busy PID 1 is what
/// refused the start). Each unit's job is marked stopped first (`$1` the
/// job dir): a start PID 1 takes up only after the stop (a call that
/// timed out, still unread on its socket: the unit not loaded yet, read
/// back inactive) finds the mark in the wrapper ([`JOB_WRAPPER`]) and
/// runs nothing. A fresh fire of that name removes the mark.
pub(crate) const STOP_LINUX: &str = "dir=$1; shift
(umask 022; mkdir -p \"$dir\") 2>/dev/null
for u in \"$@\"; do { : > \"$dir/${u%.service}.status.stopped\"; } 2>/dev/null; done
systemctl stop \"$@\" 2>/dev/null
for u in \"$@\"; do
  i=0
  while :; do
    s=$(systemctl is-active \"$u\" 2>/dev/null)
    case $s in inactive|failed) break ;; esac
    i=$((i + 1))
    [ \"$i\" -lt 10 ] || { echo \"$u is still ${s:-in a state systemctl could not read}\" >&2; exit 1; }
    sleep 1; systemctl stop \"$u\" 2>/dev/null
  done
done
exit 0";

const STOP_DARWIN: &str =
    "pid=$(cat \"$1\" 2>/dev/null) && [ -n \"$pid\" ] && kill -s TERM -- \"-$pid\"; exit 0";

/// The command stopping a hung job.
pub fn stop_command(job: &SwitchJob, sudo: bool) -> Command {
    match job.os {
        Os::Linux => Command::script(STOP_LINUX)
            .arg(&job.job_dir)
            .arg(format!("{}.service", job.unit))
            .sudo(sudo),
        Os::Darwin => Command::script(STOP_DARWIN).arg(&job.pid_file).sudo(sudo),
    }
}

/// The command stopping every attempt of a job (its first name and each
/// `-tryN` a refused fire is retried under): a fire never confirmed may
/// have started any of them, queued behind a start that timed out.
pub fn stop_attempts_command(job: &SwitchJob, sudo: bool) -> Command {
    match job.os {
        Os::Linux => {
            let mut units = vec![format!("{}.service", job.base_unit())];
            let tries = 2..=super::detached::FIRE_ATTEMPTS;
            units.extend(tries.map(|n| format!("{}.service", job.renamed(n).unit)));
            Command::script(STOP_LINUX)
                .arg(&job.job_dir)
                .args(units)
                .sudo(sudo)
        }
        Os::Darwin => stop_command(job, sudo),
    }
}

/// Stop `job` by `cmd` ([`stop_command`]: a hung job, which holds the
/// lock a rollback needs; [`stop_attempts_command`]: every attempt of one
/// whose start was never confirmed).
pub async fn stop_job<R: Remote>(remote: &R, job: &SwitchJob, cmd: &Command) -> anyhow::Result<()> {
    remote
        .exec(cmd)
        .await
        .with_context(|| format!("stopping {} on {}", job.unit, remote.name()))?
        .check(&format!("stopping {}", job.unit))?;
    Ok(())
}

/// What is stopped before a rollback (or after a rollback's own switch
/// failed so): a hung job, or every attempt of a
/// job whose start was never confirmed.
#[derive(Clone, Copy)]
pub enum Stop {
    Job,
    Attempts,
}

impl Stop {
    /// What a switch that failed so must have stopped before anything
    /// else: one still running at the deadline, or no longer polled (its
    /// reconnect refused), or one whose start was never confirmed (it may
    /// run yet); `None`: nothing runs.
    pub fn after(f: &super::detached::SwitchFailure) -> Option<Stop> {
        use super::detached::SwitchFailure;
        match f {
            SwitchFailure::Timeout { .. } | SwitchFailure::ReconnectRefused { .. } => {
                Some(Stop::Job)
            }
            f if f.start_unconfirmed() => Some(Stop::Attempts),
            _ => None,
        }
    }

    pub async fn run<R: Remote>(
        self,
        remote: &R,
        job: &SwitchJob,
        sudo: bool,
    ) -> anyhow::Result<()> {
        let cmd = match self {
            Stop::Job => stop_command(job, sudo),
            Stop::Attempts => stop_attempts_command(job, sudo),
        };
        stop_job(remote, job, &cmd).await
    }
}

pub(crate) const LOG_TAIL: &str = "if [ -e \"$1\" ]; then tail -n 50 \"$1\"
elif command -v journalctl >/dev/null 2>&1; then journalctl -u \"$2\" -n 50 --no-pager -o cat
fi 2>/dev/null; exit 0";

/// The last lines the job wrote (its log file; the journal if the file is gone).
pub fn log_tail_command(job: &SwitchJob) -> Command {
    Command::script(LOG_TAIL).arg(&job.log_file).arg(&job.unit)
}

/// How long the log of a finished job is asked for again while the
/// connection is lost: its lines are what tells a deferral (NixOS's switch
/// inhibitors) or a held lock from a failure, so one blip must not make a
/// change that only needs a reboot a failure rolled back.
const LOG_PATIENCE: Duration = Duration::from_secs(30);

/// The job's last output lines; empty if they cannot be read (asked again
/// while the connection is lost, for [`LOG_PATIENCE`]).
pub async fn log_tail<R: Remote>(remote: &R, job: &SwitchJob) -> Vec<String> {
    let patient = crate::remote::patient::Patient::new(remote, LOG_PATIENCE);
    match patient.exec(&log_tail_command(job)).await {
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
