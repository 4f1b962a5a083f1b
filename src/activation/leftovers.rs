//! What an earlier run left on a host, settled before this run changes it.
//!
//! A controller killed mid-switch (SIGKILL, a crash, a laptop closed)
//! leaves its detached switch running and its dead-man revert armed (see
//! [`super::deadman`]): the revert is due when the activation budget plus
//! the confirm window (2 minutes by default) ran out. The next run takes
//! the host lock at once (the dead controller's lock went with its
//! connection). Before this module, that run found the earlier switch
//! holding `switch-to-configuration`'s lock and failed (`lock_held`), or,
//! once the earlier switch had finished, deployed and marked its candidate
//! known-good, after which the earlier run's timer fired and switched the
//! host back live to what it ran before: a host reported known-good that
//! ran something else two minutes later (found by the fault matrix,
//! tests/fault_matrix_e2e.rs: controller SIGKILL at fire and at poll).
//!
//! So a run that is about to change a host first waits for the earlier
//! runs' units still running (within the activation budget), then runs each
//! earlier revert still armed, now, as its timer would have: nobody
//! confirmed that switch, and the revert is what its run promised. The host
//! is then where the earlier run's contract said it would be, and this run
//! starts from there.
//!
//! The same command reads how nixgate's last live switch of this run's
//! candidate ended on this boot ([`LastSwitch`], from its job's status
//! file). A controller killed before it read its switch's result (exit 4:
//! units failed to start) left the host running the candidate, no revert
//! armed when magic rollback was off; a run of the same candidate found it
//! already current and certified it without a switch. The pipeline
//! switches such a host again (see `pipeline::off_path`).
//!
//! On nix-darwin there are no units: a switch and a revert are each a
//! `setsid` process group whose leader's pid is in the job dir
//! (`<name>.pid`), the revert a sleeper that `exec`s its script. They are
//! listed from those pid files ([`LIST_DARWIN`]: a leader still alive
//! whose command line names its unit, so a pid reused by another process
//! is not taken for one), and an armed revert is run now by stopping its
//! sleeper and running its script in a group of its own
//! ([`RUN_REVERT_DARWIN`]). Before, a Darwin host was left as it was: an
//! earlier run's sleeper switched it back after this run had marked it
//! known-good.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;

use super::events::{ActivationEvent, Step};
use super::settings::{HostPaths, HostSettings, Os, RunId};
use crate::nix::StorePath;
use crate::remote::{Command, Remote};

/// The last live switch of the candidate `$cand` that the job dir `$jobs`
/// holds (this boot's on Linux: `/run` is a tmpfs): of the status files
/// whose program (see [`super::switch::JOB_WRAPPER`]: the file's lines
/// after the first; its last names the closure) is the candidate's
/// `switch-to-configuration test` or `switch` (Linux), or the activation
/// of it ([`super::darwin_activate::program`]: its last line ends
/// `nixgate-activate <closure>`), the newest (the job rewrites its file as
/// it ends), as `NixgateLastSwitch=<unit> <its first line>`: `exited
/// <code>`, or `started` for a job that never said it ended (stopped as
/// hung, killed). A rollback's job (`*-rollback`) is not one: its exit 4
/// for units failing before the deploy is accepted (see
/// `detached::earlier_failures_only`), and would read as the candidate's
/// switch having failed. A one-line file (an older nixgate's) names no
/// program. `-nt` is not POSIX; dash, busybox and bash have it.
macro_rules! last_switch {
    () => {
        r#"last=
for s in "$jobs"/nixgate-switch-*.status; do
  [ -f "$s" ] || continue
  case ${s##*/} in *-rollback.status|*-rollback-try*.status) continue ;; esac
  p=; n=0; while IFS= read -r l; do p=$l; n=$((n+1)); done 2>/dev/null < "$s"
  [ "$n" -ge 2 ] || continue
  case $p in "$cand/bin/switch-to-configuration test"|"$cand/bin/switch-to-configuration switch"|*" nixgate-activate $cand") ;; *) continue ;; esac
  [ -z "$last" ] || [ "$s" -nt "$last" ] || continue
  last=$s
done
if [ -n "$last" ]; then st=; IFS= read -r st < "$last" || :; n=${last##*/}; echo "NixgateLastSwitch=${n%.status} $st"; fi
"#
    };
}

/// nixgate's switch and revert units on the host, with their state; then
/// the last switch of the candidate `$2` in the job dir `$1`
/// ([`last_switch`]).
pub(crate) const LIST: &str = concat!(
    r#"jobs=$1; cand=$2
systemctl list-units --all --plain --no-legend --no-pager 'nixgate-switch-*' 'nixgate-confirm-*' 2>/dev/null |
while read -r unit load active sub rest; do echo "NixgateUnit=$unit $active $sub"; done
"#,
    last_switch!(),
    "exit 0"
);

/// Run an armed revert now: start the service its timer would start.
pub(crate) const RUN_REVERT: &str = r#"systemctl start "$1.service""#;

/// nix-darwin: [`LIST`]'s answer from the job dir `$1`'s pid files, the
/// revert's mark (made as it starts) in `$2`, the candidate `$3`: a switch
/// whose group leader lives is a running service; a revert's sleeper, an
/// armed timer, or a
/// running service once its revert began (its mark made, or its record
/// written: it removes its mark before its pid file). A leader is
/// its unit's only when its command line names it (the job's status
/// file, the revert's script): a pid reused since is passed over.
pub(crate) const LIST_DARWIN: &str = concat!(
    r#"dir=$1; marks=$2; cand=$3; jobs=$1
for p in "$dir"/nixgate-switch-*.pid "$dir"/nixgate-confirm-*.pid; do
  [ -f "$p" ] && pid=$(cat "$p" 2>/dev/null) && [ -n "$pid" ] || continue
  n=${p##*/}; n=${n%.pid}
  cmd=$(ps -ww -o command= -p "$pid" 2>/dev/null) || continue
  case $cmd in *"$n"*) ;; *) continue ;; esac
  case $n in
    nixgate-confirm-*)
      id=${n#nixgate-confirm-}
      if [ -e "$marks/.$id.started" ] || [ -e "$marks/$id.json" ]; then echo "NixgateUnit=$n.service active running"
      else echo "NixgateUnit=$n.timer active waiting"; fi ;;
    *) echo "NixgateUnit=$n.service active running" ;;
  esac
done
"#,
    last_switch!(),
    "exit 0"
);

/// nix-darwin: run the armed revert whose pid file is `$1`, script `$2`
/// and start mark `$3` now. One that began (its mark made) is left to
/// finish: the caller's next look sees it running. Else its sleeper's
/// group is stopped (one that began in between is cut short and run
/// again: its steps can run twice, as a re-arm's), and the script runs in
/// a group of its own, its pid written to the pid file as it is started
/// (every `exec` on the way keeps the pid: no fork; it writes it again as
/// it starts), so a look after a lost answer sees it. Waited for until it
/// made its mark or ended (it removes its pid file last), 10 s at most.
/// Before, the pid file was the revert's own to write, and a revert not
/// started within 1 s (a loaded host) was taken for one that had ended:
/// the next look found nothing, the run went on to deploy, and the revert
/// switched the host back under it (seen in a test under load). The
/// caller's looks wait out the rest, bounded by the activation budget (a
/// revert waited for here, a hung `activate` in it, held the run without
/// bound). A script gone ran to its end already (it removes itself last).
/// Ignores HUP, PIPE and TERM: a session cut between the sleeper's end and
/// the revert's start lost the revert.
pub(crate) const RUN_REVERT_DARWIN: &str = concat!(
    super::deadman::group_gone!(),
    r#"pidfile=$1; script=$2; mark=$3
trap '' HUP PIPE TERM
[ ! -e "$mark" ] || exit 0
pg=$(cat "$pidfile" 2>/dev/null) || pg=
if [ -n "$pg" ]; then
  kill -s TERM -- "-$pg" 2>/dev/null
  gone_within 50 || kill -s KILL -- "-$pg" 2>/dev/null
  gone_within 20 || { echo "the sleeper's group $pg did not end" >&2; exit 1; }
fi
[ -e "$script" ] || exit 0
rm -f "$pidfile"
run='echo $$ > "$1"; exec /bin/sh "$2"'
# The revert with the default signals (TERM stops it, as the disarm and
# a re-arm expect): not this script's ignored ones.
(
  trap - HUP PIPE TERM
  if command -v setsid >/dev/null 2>&1; then
    exec nohup setsid /bin/sh -c "$run" nixgate-revert "$pidfile" "$script" </dev/null >/dev/null 2>&1
  else
    exec nohup /usr/bin/perl -MPOSIX -e 'POSIX::setsid(); exec @ARGV or die' /bin/sh -c "$run" nixgate-revert "$pidfile" "$script" </dev/null >/dev/null 2>&1
  fi
) &
echo $! > "$pidfile"
i=0
while [ "$i" -lt 100 ] && [ ! -e "$mark" ] && [ -e "$pidfile" ]; do sleep 0.1; i=$((i + 1)); done
exit 0"#
);

/// Earlier runs' units on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// Services still running: switches, a revert in progress.
    pub running: Vec<String>,
    /// Armed reverts (`nixgate-confirm-<run>`, the timer's name without
    /// `.timer`).
    pub armed: Vec<String>,
    /// nixgate's last live switch of the candidate on this boot.
    pub last_switch: Option<LastSwitch>,
}

/// A live switch of the candidate by nixgate, as its job recorded it
/// ([`last_switch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastSwitch {
    /// Its unit, without `.service`.
    pub unit: String,
    /// What it exited with; `None`: it never said it ended (stopped as
    /// hung, killed).
    pub exit: Option<u32>,
}

impl LastSwitch {
    /// `NixgateLastSwitch=`'s value: the unit, then the status line.
    fn parse(s: &str) -> Option<LastSwitch> {
        let (unit, status) = s.split_once(' ').unwrap_or((s, ""));
        if unit.is_empty() {
            return None;
        }
        let exit = status.strip_prefix("exited ");
        Some(LastSwitch {
            unit: unit.to_owned(),
            exit: exit.and_then(|c| c.trim().parse().ok()),
        })
    }

    /// It did not end well: units failed (exit 4), or worse.
    pub fn failed(&self) -> bool {
        self.exit != Some(0)
    }
}

/// What settling found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// Earlier runs' units were waited for or run: what the host runs may
    /// have changed since the plan read it, by nixgate's own earlier run.
    pub changed: bool,
    /// nixgate's last live switch of the candidate on this boot, read once
    /// every earlier unit had ended.
    pub last_switch: Option<LastSwitch>,
}

fn is_active(state: &str) -> bool {
    matches!(
        state,
        "active" | "activating" | "deactivating" | "reloading" | "refreshing"
    )
}

/// Parse [`LIST`]'s output, leaving out this run's own units.
pub fn parse(stdout: &str, run_id: &RunId) -> Found {
    let own = [
        format!("nixgate-switch-{run_id}"),
        format!("nixgate-confirm-{run_id}"),
    ];
    let mut found = Found::default();
    for line in stdout.lines() {
        if let Some(last) = line.strip_prefix("NixgateLastSwitch=") {
            found.last_switch = LastSwitch::parse(last);
            continue;
        }
        let Some(rest) = line.strip_prefix("NixgateUnit=") else {
            continue;
        };
        let mut w = rest.split_whitespace();
        let (Some(unit), Some(active)) = (w.next(), w.next()) else {
            continue;
        };
        let ours = own.iter().any(|o| {
            unit.strip_prefix(o.as_str())
                .is_some_and(|r| r.starts_with(['.', '-']))
        });
        if ours || !is_active(active) {
            continue;
        }
        match unit.strip_suffix(".timer") {
            Some(base) if base.starts_with("nixgate-confirm-") => found.armed.push(base.into()),
            Some(_) => {}
            None => found.running.push(unit.into()),
        }
    }
    found
}

/// The command listing nixgate's units and the last switch of `candidate`
/// ([`LIST`]; [`LIST_DARWIN`], with sudo: the switch and the sleeper run
/// as root, and macOS shows another user's command line to root alone).
pub(crate) fn list_command(
    os: Os,
    paths: &HostPaths,
    sudo: bool,
    candidate: &StorePath,
) -> Command {
    let jobs = paths.job_dir.trim_end_matches('/');
    match os {
        Os::Linux => Command::script(LIST).arg(jobs).arg(candidate.as_str()),
        Os::Darwin => Command::script(LIST_DARWIN)
            .arg(jobs)
            .arg(super::deadman::record_dir(paths))
            .arg(candidate.as_str())
            .sudo(sudo),
    }
}

/// The command running the armed revert `unit` now ([`RUN_REVERT`];
/// [`RUN_REVERT_DARWIN`]).
fn run_revert_command(unit: &str, settings: &HostSettings) -> Command {
    let dir = settings.paths.job_dir.trim_end_matches('/');
    match settings.os {
        Os::Linux => Command::script(RUN_REVERT).arg(unit),
        Os::Darwin => Command::script(RUN_REVERT_DARWIN)
            .arg(format!("{dir}/{unit}.pid"))
            .arg(format!("{dir}/{unit}.sh"))
            .arg(format!(
                "{}/.{}.started",
                super::deadman::record_dir(&settings.paths),
                unit.trim_start_matches("nixgate-confirm-")
            )),
    }
    .sudo(settings.sudo)
}

async fn list<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    run_id: &RunId,
    candidate: &StorePath,
) -> anyhow::Result<Found> {
    let (os, paths, sudo) = (settings.os, &settings.paths, settings.sudo);
    let out = remote
        .exec(&list_command(os, paths, sudo, candidate))
        .await
        .with_context(|| format!("listing nixgate units on {}", remote.name()))?
        .check("listing nixgate units")?;
    Ok(parse(&out.stdout_str(), run_id))
}

/// Between two looks at the earlier run's units.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Wait for earlier runs' units, run their armed reverts, and read the
/// last switch of `candidate` once none runs (see [`Settled`]); `Err` when
/// an earlier unit still runs after the activation budget, or a revert
/// cannot be started.
pub async fn settle<R: Remote>(
    remote: &R,
    settings: &HostSettings,
    run_id: &RunId,
    candidate: &StorePath,
    emit: &(dyn Fn(ActivationEvent) + Send + Sync),
) -> anyhow::Result<Settled> {
    let deadline = tokio::time::Instant::now() + settings.activation_timeout;
    let mut waited: BTreeSet<String> = BTreeSet::new();
    let mut started: BTreeSet<String> = BTreeSet::new();
    loop {
        let found = list(remote, settings, run_id, candidate).await?;
        if !found.running.is_empty() {
            let new: Vec<String> = found
                .running
                .iter()
                .filter(|u| waited.insert((*u).clone()))
                .cloned()
                .collect();
            if !new.is_empty() {
                emit(ActivationEvent::Step {
                    step: Step::AwaitEarlierRun { units: new },
                });
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "units of an earlier nixgate run still run on {} after {:?}: {}; \
                 see `nixgate status`, or stop them with {}",
                remote.name(),
                settings.activation_timeout,
                found.running.join(", "),
                match settings.os {
                    Os::Linux => "`systemctl stop`".to_owned(),
                    Os::Darwin => format!(
                        "`kill -s TERM -- -<pid>`, the pid in {}/<unit without .service>.pid",
                        settings.paths.job_dir.trim_end_matches('/')
                    ),
                }
            );
            tokio::time::sleep(LOOK_EVERY).await;
            continue;
        }
        let Some(unit) = found.armed.iter().find(|u| !started.contains(*u)) else {
            anyhow::ensure!(
                found.armed.is_empty(),
                "the dead-man revert {} of an earlier run ran, yet it is still armed on {}; see {}",
                found.armed.join(", "),
                remote.name(),
                match settings.os {
                    Os::Linux => format!("`journalctl -u {}.service`", found.armed[0]),
                    Os::Darwin => format!(
                        "{}/{}.sh and its pid file",
                        settings.paths.job_dir.trim_end_matches('/'),
                        found.armed[0]
                    ),
                }
            );
            return Ok(Settled {
                changed: !waited.is_empty() || !started.is_empty(),
                last_switch: found.last_switch,
            });
        };
        emit(ActivationEvent::Step {
            step: Step::RunEarlierRevert { unit: unit.clone() },
        });
        remote
            .exec(&run_revert_command(unit, settings))
            .await
            .with_context(|| format!("starting {unit}.service on {}", remote.name()))?
            .check(&format!("starting the earlier run's revert {unit}.service"))?;
        started.insert(unit.clone());
    }
}

#[cfg(test)]
#[path = "leftovers_tests.rs"]
mod tests;
