//! Magic rollback with no agent: before a live switch, nixgate arms a
//! dead-man timer on the host itself, and only a controller that reaches
//! the host again over a NEW connection afterwards (fresh TCP, handshake,
//! authentication: sshd keeps established sessions when it is stopped or
//! reconfigured, and a firewall may block only new connections) disarms it.
//! A candidate that cuts the controller off (an sshd change, a firewall
//! rule, a broken network unit, a moved address) is taken back by the host:
//! the timer's job stops the candidate's switch if it still runs, puts the
//! system profile and boot default back when the deploy had changed them,
//! switches the previous system live (`switch-to-configuration test`), and
//! writes what it did to `/var/lib/nixgate/deadman/<run>.json`.
//!
//! Linux: a transient timer `nixgate-confirm-<run>.timer` (`systemd-run
//! --on-active`); it belongs to systemd, so it survives the SSH session, the
//! controller, and the switch restarting units (switch-to-configuration
//! leaves transient units alone). It is armed for the activation budget
//! plus `confirm_timeout` by the switch's own fire, once the switch lock is
//! free and before anything changes ([`super::switch::FIRE_LINUX`]; a
//! controller that dies mid-switch still gets its host back), and shortened to `confirm_timeout`
//! once the switch settled, when the first try at a new connection did not
//! confirm (the pipeline's `confirm`). Disarming stops the timer: a good push leaves
//! no nixgate timer or unit behind. Darwin: a `setsid` sleeper (launchd has
//! no transient timers; a detached process group survives the SSH session
//! and the controller the same way), disarmed by killing its group.

use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::settings::{HostPaths, Os, RunId};
use crate::nix::StorePath;
use crate::remote::{Command, Remote};

/// What the host puts back if nobody confirms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Revert {
    /// What ran before the deploy: switched live again.
    pub previous: StorePath,
    /// The candidate (for the record).
    pub candidate: StorePath,
    /// The system profile, and what it pointed at before the deploy, when
    /// the deploy changed it (then the boot default is restored too).
    pub profile: String,
    pub boot_before: Option<StorePath>,
    /// The candidate's switch unit, stopped first if it still runs (and
    /// the names it is fired again under when the host refuses it,
    /// `-try2`.. up to [`super::detached::FIRE_ATTEMPTS`]: the switch that
    /// runs may be any of them).
    pub switch_unit: String,
    /// The switch's job directory: each attempt is marked stopped there
    /// before it is stopped (`<unit>.status.stopped`: the job wrapper runs
    /// nothing once marked, so a start PID 1 takes up after the stop, a
    /// refused one queued behind a timed-out call, switches nothing).
    pub switch_dir: String,
}

/// An armed dead-man timer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Armed {
    /// `nixgate-confirm-<run>` (Linux: the timer and service's name).
    pub unit: String,
    pub os: Os,
    /// Darwin: the sleeper's pid file.
    pub pid_file: String,
    /// The revert script on the host.
    pub script: String,
    /// When the host reverts, counted from when this was armed.
    pub fires_after: Duration,
    pub record: String,
    /// Made by the revert as it starts, removed once its record is
    /// written: a disarm that finds it (or the record) is too late.
    pub started: String,
    /// The armings sent so far: 1 (the first, with the fire or before
    /// it), 2 once the shorter re-arm was sent. Each arming leaves its
    /// number on the host (`<script>.arming`), and a disarm stops only what
    /// is no later than its own (see [`DISARM_LINUX`]).
    pub generation: u32,
}

/// What the host wrote when it reverted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevertRecord {
    pub run_id: String,
    pub reverted_at: String,
    pub from: String,
    pub to: String,
    /// `ok`, or which steps failed, comma-separated (`profile-failed`,
    /// `boot-failed`, `test-exited-4`), or `host-moved`: it found the
    /// host running and booting a system neither the deploy's candidate
    /// nor what it ran before (someone else moved it) and changed nothing.
    pub result: String,
    /// `/run/current-system` after the revert.
    pub current: String,
    /// Darwin: the candidate's switch, as the revert found it before it
    /// activated the previous system (Linux's records leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<SwitchStopped>,
}

/// What a Darwin revert found of the candidate's switch, and did to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchStopped {
    /// No attempt of it was running.
    #[serde(rename = "none")]
    NoneRunning,
    /// One was running (its `activate` hung, or slow) and was stopped.
    Stopped,
    /// One outlived TERM and KILL: the previous system was activated with
    /// it still there.
    StillRunning,
}

impl RevertRecord {
    /// Whether the revert found the host moved by someone else, and left
    /// it alone (see [`RevertRecord::result`]).
    pub fn host_moved(&self) -> bool {
        self.result == "host-moved"
    }

    /// Whether the revert put the system profile and the boot default back
    /// (it had them to put back when the deploy moved them): a host whose
    /// live system is back but whose boot default is still the candidate
    /// boots it again at its next reboot.
    pub fn boot_back(&self) -> bool {
        !self.host_moved()
            && !self
                .result
                .split(',')
                .any(|r| r == "profile-failed" || r == "boot-failed")
    }
}

/// The host's boot id (Linux's, or macOS's boot session UUID), printed:
/// the revert's mark holds it ([`REVERT`]), and [`READ_RECORD`] counts a
/// mark only from this boot. One text for both: they must agree.
macro_rules! boot_id {
    () => {
        "cat /proc/sys/kernel/random/boot_id 2>/dev/null || sysctl -n kern.bootsessionuuid 2>/dev/null"
    };
}

/// Darwin: `gone_within TICKS`, whether the process group `$pg` is gone
/// within TICKS tenths of a second (polled: a killed group lasts until
/// its members are reaped).
macro_rules! group_gone {
    () => {
        r#"gone_within() {
  i=0
  while [ "$i" -lt "$1" ] && kill -s 0 -- "-$pg" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
  ! kill -s 0 -- "-$pg" 2>/dev/null
}
"#
    };
}
pub(crate) use group_gone;

/// Darwin: `stop_group PIDFILE UNIT`, stop the switch attempt UNIT when
/// it still runs: its process group, its leader's pid in PIDFILE as the
/// fire wrote it (`setsid`: the pid is the group's), TERM, then KILL
/// after 5 s. A live leader whose command line does not name the
/// attempt's status file is another program that got the pid since, left
/// alone (a group outlives its leader, and its id is not reused while it
/// does). Sets `$stopped` to `stopped`, or `still-running` when the group
/// outlived the KILL too (a process stuck in the kernel).
macro_rules! stop_group {
    () => {
        r#"stop_group() {
  pg=$(cat "$1" 2>/dev/null) || return 0
  case $pg in ''|*[!0-9]*|0|1) return 0 ;; esac
  kill -s 0 -- "-$pg" 2>/dev/null || return 0
  if cmd=$(ps -ww -o command= -p "$pg" 2>/dev/null); then
    case $cmd in *"/$2.status"*) ;; *) return 0 ;; esac
  fi
  kill -s TERM -- "-$pg" 2>/dev/null
  gone_within 50 || kill -s KILL -- "-$pg" 2>/dev/null
  if gone_within 20; then [ "$stopped" = still-running ] || stopped=stopped; else stopped=still-running; fi
}
"#
    };
}

/// Runs on the host when the timer fires. The previous system's tools are
/// put on the PATH: a transient unit's PATH has no
/// /run/current-system/sw/bin on NixOS, and the current system is the one
/// being reverted. nix-darwin's previous system is activated as the switch
/// activates one (its `activate-user` first, as the user, when it is a
/// nix-darwin 24.11 or older system: see [`super::darwin_activate`]), but
/// going back: a failing `activate-user` does not stop its `activate`.
///
/// The candidate's switch still running is stopped first: on Linux its
/// unit (`systemctl stop`); on Darwin, where that is a no-op, the
/// process group of each attempt from its pid file (`stop_group`), TERM
/// then KILL. Before, a Darwin candidate whose `activate` hung went on
/// running while the previous system was activated over it. The Darwin
/// record says what it found (`stopped`: [`SwitchStopped`]).
pub(crate) const REVERT: &str = concat!(
    super::darwin_activate::activate_darwin!(),
    group_gone!(),
    stop_group!(),
    r#"dir=$1; run=$2; previous=$3; candidate=$4; profile=$5; before=$6; unit=$7; timer=$8; jobs=$9; current=${10}
PATH="${PATH:-/usr/bin:/bin}:$previous/sw/bin:/run/current-system/sw/bin:/usr/sbin:/sbin"
export PATH
mkdir -p "$dir"
{ "#,
    boot_id!(),
    r#" || :; } > "$dir/.$run.started"
result=ok
stopped=
[ "$(uname -s 2>/dev/null)" != Darwin ] || stopped=none
for u in "$unit" "$unit-try2" "$unit-try3"; do
  { : > "$jobs/$u.status.stopped"; } 2>/dev/null
  systemctl stop "$u.service" 2>/dev/null
  [ -z "$stopped" ] || stop_group "$jobs/$u.pid" "$u"
done
# Someone else moved the host (a hand's `nixos-rebuild switch`, another
# run): it runs neither the candidate nor what it ran before, and boots
# it too. Nothing of it is undone.
now=$(readlink -f "$current")
code=0
case $now in
  "$candidate"|"$previous") ;;
  *) [ -z "$now" ] || [ "$now" != "$(readlink -f "$profile")" ] || result=host-moved ;;
esac
if [ "$result" = ok ] && [ -n "$before" ]; then
  nix-env -p "$profile" --set "$before" >/dev/null 2>&1 || result=profile-failed
  if [ -x "$before/bin/switch-to-configuration" ]; then
    "$before/bin/switch-to-configuration" boot || result=boot-failed
  fi
fi
if [ "$result" = host-moved ]; then :
elif [ -x "$previous/bin/switch-to-configuration" ]; then
  "$previous/bin/switch-to-configuration" test; code=$?
else
  activate_darwin "$previous" back; code=$?
fi
# A failed live test is added to what failed before it (the boot default
# not put back must not read as a test's exit code).
if [ "$code" != 0 ]; then
  if [ "$result" = ok ]; then result="test-exited-$code"; else result="$result,test-exited-$code"; fi
fi
now=$(readlink -f "$current")
at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
more=; [ -z "$stopped" ] || more=",\"stopped\":\"$stopped\""
printf '{"run_id":"%s","reverted_at":"%s","from":"%s","to":"%s","result":"%s","current":"%s"%s}\n' \
  "$run" "$at" "$candidate" "$previous" "$result" "$now" "$more" > "$dir/.$run.json.tmp" &&
  mv -f "$dir/.$run.json.tmp" "$dir/$run.json"
rm -f "$dir/.$run.started"
# Done: the timer that started this goes too, and this script (nothing of
# nixgate is left; on Darwin, the sleeper's pid file too).
systemctl stop "$timer.timer" 2>/dev/null
rm -f "$0" "$0.arming" "${0%.sh}.pid"
exit 0"#
);

/// `arm UNIT SECS SCRIPT`: start the transient timer UNIT that runs
/// `/bin/sh SCRIPT` after SECS seconds (Linux). `arm_again`, the same
/// after a refused start: units started with `--collect` are unloaded once
/// stopped or failed, so a refusal means one of that name is left (a
/// failed unit not yet collected): it is reset first. It stops nothing: a
/// service of that name may be a revert under way (the caller stops what
/// it knows to be idle). Shared by [`ARM_LINUX`] and the fire that arms as
/// it fires ([`super::switch::FIRE_LINUX`]).
macro_rules! arm_timer {
    () => {
        r#"arm() {
  systemd-run --unit="$1" --description="nixgate: revert unless the switch is confirmed" \
    --on-active="$2s" --timer-property=AccuracySec=1s \
    --collect --no-ask-password --service-type=exec -- /bin/sh "$3"
}
arm_again() {
  systemctl reset-failed "$1.timer" "$1.service" 2>/dev/null
  arm "$@"
}
"#
    };
}
pub(crate) use arm_timer;

/// Take the job dir's lock (`$script`'s directory; fd 8, held until the
/// script ends) where `flock` exists: an arming and a disarm of one revert
/// never interleave. A disarm sent before a re-arm and still running when
/// it comes (its answer given up on) would otherwise stop the new timer,
/// or remove its script, and leave the host with no revert where one is
/// counted on. Not had within 10 s: exit 7, nothing touched (the
/// controller tries again, or keeps the timer it had).
macro_rules! lock_job_dir {
    () => {
        r#"if [ -d "${script%/*}" ] && command -v flock >/dev/null 2>&1 && command exec 8<"${script%/*}"; then
  flock -w 10 8 || { echo "the revert's lock is busy: nothing done" >&2; exit 7; }
fi
"#
    };
}

/// A re-arm (`$mode` not `fresh`) of a revert already disarmed or run
/// (its script and number gone: a re-arm whose answer was lost, late
/// behind a disarm that went through) exits 7, arming nothing: the host
/// was confirmed. Then the arming's number goes first (`1`, or `2` for a
/// re-arm), before anything is stopped or started: a disarm sent before
/// it finds it.
macro_rules! still_armed {
    () => {
        r#"if [ "$mode" != fresh ] && [ ! -e "$script" ] && [ ! -e "$script.arming" ]; then
  echo "nothing to re-arm: the revert was disarmed or ran" >&2; exit 7
fi
gen=1; [ "$mode" = fresh ] || gen=2
echo "$gen" > "$script.arming" || exit 1
"#
    };
}

/// For a re-arm (`$mode` not `fresh`): `marked`, the revert has begun or
/// ran (its mark `$started` or record `$record` exists; either may be
/// empty); `ran`, its record exists; `not_rearmed WHY` arms nothing and
/// exits 4 (the arming number written goes when the revert is done; the
/// script's new text, `$script.tmp`, goes with the arm's `EXIT` trap).
macro_rules! revert_begun {
    () => {
        r#"ran() { [ -n "$record" ] && [ -e "$record" ]; }
marked() { { [ -n "$started" ] && [ -e "$started" ]; } || ran; }
not_rearmed() {
  [ -e "$script" ] || rm -f "$script.arming"
  echo "not re-armed: the revert $1" >&2; exit 4
}
"#
    };
}

/// Exit 6 when the arming on the host is later than `$gen`, the one this
/// disarm may stop.
macro_rules! later_arming {
    () => {
        r#"if [ -n "$gen" ] && [ -f "$script.arming" ] && read -r now < "$script.arming" && [ "$now" -gt "$gen" ] 2>/dev/null; then
  echo "not disarmed: arming $now replaced arming $gen" >&2; exit 6
fi
"#
    };
}

/// Over SSH (Linux): write the revert script (stdin) to `$3`, then (re)arm
/// the timer that runs it. The script runs from a file, never from the
/// unit's command line: systemd reads a transient unit back from its file
/// at every `daemon-reload` (a switch does one), and a multi-line command
/// line, its `%` specifiers and `${...}` came back mangled (the revert
/// failed with a shell syntax error on the test fleet's systemd 252). The
/// description is set for the same reason.
///
/// `$4` is `fresh` (the first arm: nothing of this name should exist, so
/// no `systemctl` call before `systemd-run`; only tests arm this way now,
/// the fire arms on Linux) or `replace` (the re-arm: the timer of this
/// name is stopped first, the timer only; one that cannot be stopped and
/// still runs is left, exit 1). A revert the first timer already started
/// (its record `$5` or mark `$6` made, or its service running: looked at
/// before the first start and after each refused one) is left to run to
/// its end: exit 4, nothing armed ([`RevertBegan`]). Before, the re-arm
/// stopped the service too, and a revert caught mid-way (a re-arm that
/// reached the host after its first timer fired) was killed between its
/// profile and its `test`. A refused start is tried once more after a
/// `reset-failed` (see `arm_timer!`), stopping nothing.
/// Each `systemctl` or `systemd-run` call costs the host 7-13 ms of CPU on
/// the test fleet's systemd 252, up to 31 ms on its light hosts' stand-ins
/// (BENCHMARKS.md, "Where a host's CPU goes"); the arm, re-arm and disarm
/// made 10 of them, then 5 (arm 1, re-arm 2, disarm 2); now 3 on a host
/// confirmed at the first try, which is not re-armed, and 6 on one
/// re-armed (the re-arm's third, `is-active`, keeps a revert under way).
/// A re-arm refused twice exits 5: the earlier timer is stopped, nothing
/// is armed ([`NothingArmed`]: the controller must not wait for a revert).
/// Every arming holds the job dir's lock and leaves its number first
/// ([`Armed::generation`], `<script>.arming`); a re-arm of a revert
/// already disarmed exits 7 (see `still_armed!`).
pub(crate) const ARM_LINUX: &str = concat!(
    r#"unit=$1; secs=$2; script=$3; mode=$4; record=$5; started=$6
trap 'rm -f "$script.tmp"' EXIT
mkdir -p "${script%/*}" && cat > "$script.tmp" || exit 1
"#,
    lock_job_dir!(),
    revert_begun!(),
    r#"if_begun() {
  [ "$mode" != fresh ] || return 0
  case $(systemctl is-active "$unit.service" 2>/dev/null) in
    active | activating | deactivating | reloading) not_rearmed "is running" ;;
  esac
  ! marked || not_rearmed "has begun"
}
timer_up() { [ "$(systemctl is-active "$unit.timer" 2>/dev/null)" = active ]; }
[ "$mode" = fresh ] || ! ran || not_rearmed "ran"
"#,
    still_armed!(),
    arm_timer!(),
    r#"if [ "$mode" != fresh ]; then
  # Stopped for certain (or not there), else left standing: only then is
  # a timer up after a refused start this one.
  if ! systemctl stop "$unit.timer" 2>/dev/null; then
    case $(systemctl is-active "$unit.timer" 2>/dev/null) in
      inactive | failed) ;;
      *) echo "not re-armed: the first timer could not be stopped (it may stand)" >&2; exit 1 ;;
    esac
  fi
  if_begun
fi
mv -f "$script.tmp" "$script" || exit 1
arm "$unit" "$secs" "$script" 2>/dev/null && exit 0
# Refused, yet started (a D-Bus timeout): the first timer was stopped, so
# a timer up now is this one (fresh mode, which only tests use: nothing of
# this name was armed before).
if_begun; timer_up && exit 0
arm_again "$unit" "$secs" "$script" && exit 0
[ "$mode" = fresh ] && exit 1
if_begun; timer_up && exit 0
# Nothing armed: nothing of it stays.
rm -f "$script" "$script.arming"
echo "nothing armed: the earlier timer was stopped and the new one refused" >&2
exit 5"#
);

/// Over SSH (Darwin): write the revert script (stdin) to `$3`, then a
/// detached sleeper that runs it, replacing an earlier one. A re-arm never
/// kills a revert that has begun (its mark `$6` or record `$5` made): exit
/// 4, as on Linux. One that began as the sleeper was killed (the revert
/// `exec`s in the sleeper's group) was cut short: it is started again at
/// once (its steps can run twice), and the re-arm exits 4 all the same.
const ARM_DARWIN: &str = concat!(
    r#"pidfile=$1; secs=$2; script=$3; mode=$4; record=$5; started=$6
trap 'rm -f "$script.tmp"' EXIT
mkdir -p "$(dirname "$script")" && cat > "$script.tmp" || exit 1
"#,
    revert_begun!(),
    r#"if [ "$mode" != fresh ]; then
  ! ran || not_rearmed "ran"
  ! marked || not_rearmed "has begun"
fi
"#,
    still_armed!(),
    group_gone!(),
    r#"pg=$(cat "$pidfile" 2>/dev/null) || pg=
[ -z "$pg" ] || kill -s TERM -- "-$pg" 2>/dev/null
cut=
if [ "$mode" != fresh ] && marked; then
  ! ran || not_rearmed "ran"
  # Cut short: once its group is gone (a second at most), run it again.
  gone_within 10 || :
  cut=1; secs=0
fi
mv -f "$script.tmp" "$script" || exit 1
if command -v setsid >/dev/null 2>&1; then
  nohup setsid /bin/sh -c 'sleep "$1"; exec /bin/sh "$2"' nixgate-deadman "$secs" "$script" </dev/null >/dev/null 2>&1 &
else
  nohup /usr/bin/perl -MPOSIX -e 'POSIX::setsid(); exec @ARGV or die' /bin/sh -c 'sleep "$1"; exec /bin/sh "$2"' nixgate-deadman "$secs" "$script" </dev/null >/dev/null 2>&1 &
fi
echo $! > "$pidfile"
[ -z "$cut" ] || { echo "not re-armed: the revert began as its sleeper was stopped, and runs again now" >&2; exit 4; }"#
);

/// Over SSH: stop the timer (Linux) or the sleeper (Darwin); nothing left.
/// `$1` the unit (Darwin: the pid file), `$2` the revert script, `$3` its
/// record, `$4` the mark the revert makes as it starts, `$5` the arming it
/// may stop (see [`Armed::generation`]; empty: any); with `$6` and `$7`,
/// only while the link `$6` resolves to `$7`. Exit 6: a later arming than
/// `$5` stands (this disarm was sent before it): left alone. Exit 4: too late, the revert
/// has begun (or ran): it is left to finish, and the caller must not
/// count the host as confirmed (a revert that had already put the profile
/// and boot default back, with `test` of the old system still to come,
/// read as a disarmed timer before: the run went on to mark the candidate
/// known-good on a host switching away from it). Linux: both units' states
/// come from one `systemctl is-active` (a stopped `--collect` unit is
/// unloaded: `inactive`; stopping a timer leaves the service it started
/// running); the timer must be gone.
pub(crate) const DISARM_LINUX: &str = concat!(
    r#"unit=$1; script=$2; record=$3; started=$4; gen=$5
if [ $# -ge 7 ] && [ "$(readlink -f "$6")" != "$7" ]; then echo "not disarmed: $6 is not $7" >&2; exit 3; fi
"#,
    lock_job_dir!(),
    later_arming!(),
    r#"systemctl stop "$unit.timer" 2>/dev/null
systemctl is-active "$unit.timer" "$unit.service" 2>/dev/null | {
  read -r timer; read -r service
  case $service in active | activating | deactivating | reloading) echo "not disarmed: the revert is running" >&2; exit 4 ;; esac
  if [ -e "$started" ] || [ -e "$record" ]; then echo "not disarmed: the revert ran" >&2; exit 4; fi
  [ "$timer" != active ] || exit 1
  rm -f "$script" "$script.arming"
  exit 0
}"#
);

/// Darwin: the mark is looked at before the sleeper's group is killed
/// (a revert under way is left to finish) and after (one that began in
/// between was cut short: the caller looks at the host). macOS has no
/// `flock(1)`: the arming number alone keeps a late disarm off a later
/// arming (one that reads the number just before the re-arm writes it
/// still kills the new sleeper).
const DISARM_DARWIN: &str = concat!(
    r#"pidfile=$1; script=$2; record=$3; started=$4; gen=$5
if [ $# -ge 7 ] && [ "$(readlink -f "$6")" != "$7" ]; then echo "not disarmed: $6 is not $7" >&2; exit 3; fi
"#,
    later_arming!(),
    r#"begun() { [ -e "$started" ] || [ -e "$record" ]; }
if begun; then echo "not disarmed: the revert began" >&2; exit 4; fi
pid=$(cat "$pidfile" 2>/dev/null) && [ -n "$pid" ] && kill -s TERM -- "-$pid" 2>/dev/null
if begun; then echo "not disarmed: the revert began" >&2; exit 4; fi
rm -f "$pidfile" "$script" "$script.arming"; exit 0"#
);

/// A re-arm the host refused after stopping the earlier timer: no revert
/// is armed any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NothingArmed;

impl std::fmt::Display for NothingArmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the host stopped its revert timer and refused the new one: none is armed")
    }
}

impl std::error::Error for NothingArmed {}

/// A disarm that came too late: the host's revert has begun (or ran), and
/// is left to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevertBegan;

impl std::fmt::Display for RevertBegan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the host's revert had begun before the disarm arrived")
    }
}

impl std::error::Error for RevertBegan {}

/// Read a run's revert record `$1`, if the host wrote one, and say
/// whether its revert is under way (its mark `$2` made, the record not
/// written yet: the revert writes its record, then removes its mark).
/// The mark is looked at first (a revert ending between the two reads
/// then shows its record), and counts only when made this boot (a revert
/// a reboot cut off leaves its mark, and nothing runs it any more): it
/// holds the boot id (Linux's, or macOS's boot session UUID).
pub(crate) const READ_RECORD: &str = concat!(
    r#"m=
if [ -e "$2" ]; then
  m=1; b=$("#,
    boot_id!(),
    r#")
  if [ -n "$b" ] && c=$(cat "$2" 2>/dev/null) && [ -n "$c" ] && [ "$c" != "$b" ]; then m=; fi
fi
if [ -f "$1" ]; then cat "$1"; elif [ -n "$m" ]; then echo NixgateRevertUnderWay; fi
exit 0"#
);

pub(crate) fn record_dir(paths: &HostPaths) -> String {
    let kg = paths.known_good_records.trim_end_matches('/');
    let base = kg.rsplit_once('/').map_or(kg, |(b, _)| b);
    format!("{base}/deadman")
}

impl Armed {
    pub fn for_run(run_id: &RunId, os: Os, paths: &HostPaths, fires_after: Duration) -> Armed {
        let unit = format!("nixgate-confirm-{run_id}");
        let dir = paths.job_dir.trim_end_matches('/');
        Armed {
            pid_file: format!("{dir}/{unit}.pid"),
            script: format!("{dir}/{unit}.sh"),
            record: format!("{}/{run_id}.json", record_dir(paths)),
            started: format!("{}/.{run_id}.started", record_dir(paths)),
            unit,
            os,
            fires_after,
            generation: 1,
        }
    }

    /// This revert re-armed to fire `after` the re-arm: the second arming.
    pub fn shorter(&self, after: Duration) -> Armed {
        Armed {
            fires_after: after,
            generation: 2,
            ..self.clone()
        }
    }
}

/// Whether a timer of the same name is already armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arming {
    /// Before the switch: nothing of this run's should be armed yet.
    Fresh,
    /// After it, shorter: this run's timer is replaced.
    Replace,
}

/// The command arming (or re-arming, shorter) a revert; its script comes
/// on stdin ([`revert_script`]).
pub fn arm_command(a: &Armed, arming: Arming, sudo: bool) -> Command {
    let secs = a.fires_after.as_secs().max(1).to_string();
    let (script, first) = match a.os {
        Os::Linux => (ARM_LINUX, a.unit.clone()),
        Os::Darwin => (ARM_DARWIN, a.pid_file.clone()),
    };
    let mode = match arming {
        Arming::Fresh => "fresh",
        Arming::Replace => "replace",
    };
    Command::script(script)
        .args([first, secs, a.script.clone(), mode.to_owned()])
        .args([a.record.clone(), a.started.clone()])
        .sudo(sudo)
}

/// The revert script the host runs: [`REVERT`] with its arguments set
/// (each quoted once, by the one quoting function).
pub fn revert_script(a: &Armed, run_id: &RunId, paths: &HostPaths, revert: &Revert) -> String {
    let before = revert
        .boot_before
        .as_ref()
        .map(|b| b.to_string())
        .unwrap_or_default();
    let args = [
        record_dir(paths),
        run_id.to_string(),
        revert.previous.to_string(),
        revert.candidate.to_string(),
        revert.profile.clone(),
        before,
        revert.switch_unit.clone(),
        a.unit.clone(),
        revert.switch_dir.clone(),
        paths.current_system.clone(),
    ];
    format!(
        "#!/bin/sh\n# nixgate: revert of run {run_id} unless the switch is confirmed\nset -- {}\n{REVERT}\n",
        crate::remote::quote::join(&args)
    )
}

/// A revert armed by the fire itself (Linux: [`super::switch::FIRE_LINUX`]),
/// one round trip less than [`arm`] before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FireArm {
    pub unit: String,
    /// When the revert is due: every attempt of the fire arms it for what
    /// is left until then (a re-fire after an answer lost before the host
    /// got it arms later than the first send, and would otherwise revert
    /// later than the controller counts on).
    #[serde(skip)]
    pub due: tokio::time::Instant,
    /// The revert script's path on the host, and its text.
    pub script: String,
    #[serde(skip)]
    pub body: String,
}

impl FireArm {
    /// The timer's seconds for a fire sent now: what is left until `due`,
    /// rounded up (the host reverts no earlier than counted), at least 1.
    pub fn secs(&self) -> u64 {
        let left = self
            .due
            .saturating_duration_since(tokio::time::Instant::now());
        (left.as_millis().div_ceil(1000) as u64).max(1)
    }
}

/// What the fire needs to arm `a` (Linux), due at `due`.
pub fn fire_arm(
    a: &Armed,
    run_id: &RunId,
    paths: &HostPaths,
    revert: &Revert,
    due: tokio::time::Instant,
) -> FireArm {
    FireArm {
        unit: a.unit.clone(),
        due,
        script: a.script.clone(),
        body: revert_script(a, run_id, paths, revert),
    }
}

/// Arm the revert; it fires after `a.fires_after` unless disarmed.
pub async fn arm<R: Remote>(
    remote: &R,
    a: &Armed,
    arming: Arming,
    run_id: &RunId,
    paths: &HostPaths,
    revert: &Revert,
    sudo: bool,
) -> anyhow::Result<()> {
    let script = revert_script(a, run_id, paths, revert);
    let out = remote
        .exec_small_input(&arm_command(a, arming, sudo), script.as_bytes())
        .await
        .with_context(|| format!("arming {} on {}", a.unit, remote.name()))?;
    match out.exit.code() {
        Some(5) if arming == Arming::Replace => return Err(anyhow::Error::new(NothingArmed)),
        Some(4) if arming == Arming::Replace => return Err(anyhow::Error::new(RevertBegan)),
        _ => {}
    }
    out.check(&format!("arming the dead-man timer {}", a.unit))?;
    Ok(())
}

/// Disarm: the timer (or sleeper) is stopped and gone.
pub async fn disarm<R: Remote>(remote: &R, a: &Armed, sudo: bool) -> anyhow::Result<()> {
    run_disarm(remote, a, &disarm_command(a, sudo, None)).await
}

/// The disarm command; with `guard` (a link and a path) it disarms only
/// while the link resolves to that path, read by the same command on
/// the host (so it can ride in a batch behind the controller's own read
/// of the link: [`crate::remote::batch`]), and fails otherwise.
pub fn disarm_command(a: &Armed, sudo: bool, guard: Option<(&str, &str)>) -> Command {
    let (script, first) = match a.os {
        Os::Linux => (DISARM_LINUX, &a.unit),
        Os::Darwin => (DISARM_DARWIN, &a.pid_file),
    };
    let generation = a.generation.to_string();
    let cmd = Command::script(script).args([first, &a.script, &a.record, &a.started, &generation]);
    let cmd = match guard {
        Some((link, path)) => cmd.args([link, path]),
        None => cmd,
    };
    cmd.sudo(sudo)
}

/// Run `cmd`, a [`disarm_command`] for `a`. Too late (the revert has
/// begun) is a [`RevertBegan`] error.
pub async fn run_disarm<R: Remote>(remote: &R, a: &Armed, cmd: &Command) -> anyhow::Result<()> {
    let out = remote
        .exec(cmd)
        .await
        .with_context(|| format!("disarming {} on {}", a.unit, remote.name()))?;
    if out.exit.code() == Some(4) {
        return Err(anyhow::Error::new(RevertBegan));
    }
    out.check(&format!("disarming the dead-man timer {}", a.unit))?;
    Ok(())
}

/// Stop a revert under way for longer than any switch may take, before
/// the controller rolls the host back itself, and leave nothing of it (a
/// timer left loaded, elapsed, would have the next run start the revert
/// again as an earlier run's leftover). `$1` the unit (Darwin: the pid
/// file), `$2` the script. Exit 1: still running (the controller must not
/// switch the host).
pub(crate) const STOP_REVERT_LINUX: &str = r#"systemctl stop "$1.timer" "$1.service" 2>/dev/null
for u in "$1.service" "$1.timer"; do
  state=$(systemctl is-active "$u" 2>/dev/null)
  case $state in
    inactive | failed) ;;
    *) echo "$u is ${state:-of unknown state}: not stopped" >&2; exit 1 ;;
  esac
done
rm -f "$2" "$2.arming"; exit 0"#;

/// Darwin: TERM to the sleeper's group, 5 s for it to end, then KILL.
const STOP_REVERT_DARWIN: &str = concat!(
    group_gone!(),
    r#"pg=$(cat "$1" 2>/dev/null) || pg=
if [ -n "$pg" ]; then
  kill -s TERM -- "-$pg" 2>/dev/null
  gone_within 50 || kill -s KILL -- "-$pg" 2>/dev/null
  gone_within 20 || { echo "the revert's group $pg may still be running" >&2; exit 1; }
fi
rm -f "$1" "$2" "$2.arming"; exit 0"#
);

/// The command stopping `a`'s revert (see [`STOP_REVERT_LINUX`]).
pub fn stop_revert_command(a: &Armed, sudo: bool) -> Command {
    match a.os {
        Os::Linux => Command::script(STOP_REVERT_LINUX).args([&a.unit, &a.script]),
        Os::Darwin => Command::script(STOP_REVERT_DARWIN).args([&a.pid_file, &a.script]),
    }
    .sudo(sudo)
}

/// What the host shows of its revert.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevertSeen {
    /// What it wrote when it reverted, if it did.
    pub record: Option<RevertRecord>,
    /// Begun and not done: its mark made, its record not written yet.
    pub under_way: bool,
}

/// The record the host wrote when it reverted, if it did.
pub async fn record<R: Remote>(remote: &R, a: &Armed) -> anyhow::Result<Option<RevertRecord>> {
    Ok(seen(remote, a).await?.record)
}

/// What the host shows of `a`'s revert: its record, or whether it is
/// under way.
pub async fn seen<R: Remote>(remote: &R, a: &Armed) -> anyhow::Result<RevertSeen> {
    let out = remote
        .exec(&Command::script(READ_RECORD).args([&a.record, &a.started]))
        .await?
        .check("reading the revert record")?;
    let text = out.stdout_str();
    let mut seen = RevertSeen::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == "NixgateRevertUnderWay" {
            seen.under_way = true;
            continue;
        }
        let record = serde_json::from_str(line)
            .with_context(|| format!("{} is not a revert record: {text:?}", a.record))?;
        seen.record = Some(record);
    }
    Ok(seen)
}

/// Every revert record on the host (for `status`), newest run last.
pub async fn records<R: Remote>(
    remote: &R,
    paths: &HostPaths,
) -> anyhow::Result<Vec<RevertRecord>> {
    let out = remote
        .exec(&Command::script(LIST_RECORDS).arg(record_dir(paths)))
        .await?
        .check("listing revert records")?;
    let mut all: Vec<RevertRecord> = out
        .stdout_str()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    all.sort_by(|a, b| a.reverted_at.cmp(&b.reverted_at));
    Ok(all)
}

const LIST_RECORDS: &str = r#"for f in "$1"/*.json; do [ -f "$f" ] && cat "$f"; done; exit 0"#;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `cmd` run under the job dir `dir`'s lock (as a re-arm or a disarm
    /// holds it), returned once it holds it; `None` (said: the test is
    /// skipped) where `flock(1)` is missing.
    fn locked_by(dir: &str, cmd: &[&str]) -> Option<std::process::Child> {
        if std::process::Command::new("flock")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("skipped: no flock(1) here");
            return None;
        }
        let holder = std::process::Command::new("flock")
            .arg("--exclusive")
            .arg(dir)
            .args(cmd)
            .spawn()
            .unwrap();
        while std::process::Command::new("flock")
            .args(["--nonblock", "--shared", dir, "true"])
            .status()
            .unwrap()
            .success()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(holder)
    }

    /// Run r1's revert, armed for 90 s, its files and records under `d`.
    /// [`REVERT`] run by `sh` in `d` as the timer would run it (run r1,
    /// `d/previous` back from `d/candidate`, the boot default `before`, the
    /// job dir `jobs`), `d/bin` first on PATH: the caller adds its
    /// environment and runs it.
    fn revert_in(d: &str, before: &str, jobs: &str) -> std::process::Command {
        std::fs::write(format!("{d}/revert.sh"), REVERT).unwrap();
        let mut cmd = std::process::Command::new("sh");
        cmd.arg(format!("{d}/revert.sh"))
            .args([
                &format!("{d}/rec"),
                "r1",
                &format!("{d}/previous"),
                &format!("{d}/candidate"),
                &format!("{d}/profile"),
                before,
                "sw-r1",
                "conf-r1",
                jobs,
                &format!("{d}/current"),
            ])
            .env("PATH", format!("{d}/bin:/usr/bin:/bin"));
        cmd
    }

    fn armed_under(d: &str, os: Os) -> Armed {
        let mut paths = HostPaths::for_os(os);
        paths.job_dir = d.to_owned();
        paths.known_good_records = format!("{d}/known-good");
        let run = RunId::parse("r1").unwrap();
        Armed::for_run(&run, os, &paths, Duration::from_secs(90))
    }

    #[test]
    fn arm_and_disarm_commands() {
        let paths = HostPaths::for_os(Os::Linux);
        let run = RunId::parse("r1").unwrap();
        let a = Armed::for_run(&run, Os::Linux, &paths, Duration::from_secs(90));
        assert_eq!(a.unit, "nixgate-confirm-r1");
        assert_eq!(a.record, "/var/lib/nixgate/deadman/r1.json");
        let sp = |c: char| {
            StorePath::parse(&format!("/nix/store/{}-s", c.to_string().repeat(32))).unwrap()
        };
        let revert = Revert {
            previous: sp('a'),
            candidate: sp('b'),
            profile: "/nix/var/nix/profiles/system".into(),
            boot_before: None,
            switch_unit: "nixgate-switch-r1".into(),
            switch_dir: "/run/nixgate/jobs".into(),
        };
        let cmd = arm_command(&a, Arming::Fresh, false);
        let argv = cmd.argv();
        assert_eq!(argv[2], ARM_LINUX);
        assert_eq!(
            &argv[4..],
            [
                "nixgate-confirm-r1",
                "90",
                "/run/nixgate/nixgate-confirm-r1.sh",
                "fresh",
                "/var/lib/nixgate/deadman/r1.json",
                "/var/lib/nixgate/deadman/.r1.started"
            ]
        );
        assert_eq!(arm_command(&a, Arming::Replace, false).argv()[7], "replace");
        let script = revert_script(&a, &run, &paths, &revert);
        // Arguments set once, quoted; the body runs on them.
        let set = script.lines().nth(2).unwrap();
        assert_eq!(
            set,
            format!(
                "set -- /var/lib/nixgate/deadman r1 {} {} /nix/var/nix/profiles/system '' nixgate-switch-r1 nixgate-confirm-r1 /run/nixgate/jobs /run/current-system",
                sp('a'),
                sp('b')
            )
        );
        assert!(script.ends_with(&format!("{REVERT}\n")));
        // Every name the switch may run under is stopped.
        let last = format!("\"$unit-try{}\"", super::super::detached::FIRE_ATTEMPTS);
        assert!(REVERT.contains(&last), "{last}");
        assert_eq!(a.started, "/var/lib/nixgate/deadman/.r1.started");
        // The script runs in a POSIX shell: it parses.
        let parsed = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .status()
            .unwrap();
        assert!(parsed.success());
        let rec: RevertRecord = serde_json::from_str(
            r#"{"run_id":"r1","reverted_at":"2026-12-02T10:00:00Z","from":"b","to":"a","result":"ok","current":"a"}"#,
        )
        .unwrap();
        assert_eq!(rec.result, "ok");
    }

    /// The guarded disarm in a real shell, both forms: off the given path
    /// it fails and leaves the revert script in place; on it, it disarms
    /// (no timer runs here: the script is removed).
    #[tokio::test]
    async fn a_guarded_disarm_only_disarms_on_the_given_path() {
        use crate::remote::local::LocalRemote;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        for os in [Os::Linux, Os::Darwin] {
            let a = armed_under(d, os);
            let (on, off) = (format!("{d}/on"), format!("{d}/off"));
            std::fs::create_dir_all(&on).unwrap();
            std::fs::create_dir_all(&off).unwrap();
            let link = format!("{d}/current");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&on, &link).unwrap();
            std::fs::write(&a.script, "revert").unwrap();
            let local = LocalRemote::new("local");
            let refused = disarm_command(&a, false, Some((&link, &off)));
            let e = run_disarm(&local, &a, &refused).await.unwrap_err();
            assert!(format!("{e:#}").contains("not disarmed"), "{e:#}");
            assert!(e.downcast_ref::<RevertBegan>().is_none());
            assert!(std::path::Path::new(&a.script).exists());
            run_disarm(&local, &a, &disarm_command(&a, false, Some((&link, &on))))
                .await
                .unwrap();
            assert!(!std::path::Path::new(&a.script).exists(), "{os:?}");
        }
    }

    /// The arm script with `systemd-run` refusing every start: a first arm
    /// fails (1), a re-arm, which stopped the earlier timer, says nothing
    /// is armed (5); and with `systemd-run` working both exit 0.
    #[test]
    fn a_refused_re_arm_says_nothing_is_armed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let run_with = |systemd_run: &str, mode: &str| {
            for (tool, body) in [("systemctl", "exit 0"), ("systemd-run", systemd_run)] {
                let path = format!("{d}/{tool}");
                std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
                let exe = std::fs::Permissions::from_mode(0o755);
                std::fs::set_permissions(&path, exe).unwrap();
            }
            let script = format!("{d}/run/revert.sh");
            std::process::Command::new("sh")
                .args([
                    "-c",
                    ARM_LINUX,
                    "nixgate",
                    "nixgate-confirm-r1",
                    "30",
                    &script,
                    mode,
                ])
                .env("PATH", format!("{d}:/usr/bin:/bin"))
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
                .status
                .code()
        };
        assert_eq!(run_with("exit 1", "fresh"), Some(1));
        assert_eq!(run_with("exit 1", "replace"), Some(5));
        let arming = || std::fs::read_to_string(format!("{d}/run/revert.sh.arming")).unwrap();
        assert_eq!(run_with("exit 0", "fresh"), Some(0));
        assert_eq!(arming(), "1\n", "the first arming's number");
        assert_eq!(run_with("exit 0", "replace"), Some(0));
        assert_eq!(arming(), "2\n", "the re-arm's");
        // Disarmed meanwhile (script and number gone): a late re-arm arms
        // nothing (its answer lost, it came after the disarm that went
        // through).
        std::fs::remove_file(format!("{d}/run/revert.sh")).unwrap();
        std::fs::remove_file(format!("{d}/run/revert.sh.arming")).unwrap();
        assert_eq!(run_with("exit 0", "replace"), Some(7));
        assert!(!std::path::Path::new(&format!("{d}/run/revert.sh")).exists());
    }

    /// Whether util-linux's `tool` (`setsid`, `flock`) is here; said when
    /// not, and the test asking is skipped. macOS has neither (the package's
    /// Darwin checks run the unit tests there), and the tests that start a
    /// sleeper with `setsid` also read its group from /proc, which macOS
    /// lacks as well.
    pub(crate) fn have(tool: &str) -> bool {
        let here = std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok();
        if !here {
            eprintln!("skipped: no {tool}(1) here");
        }
        here
    }

    /// A sleeper in its own session and process group, as the Darwin arm
    /// starts it; its pid in `pid_file` (the test first asks `have("setsid")`).
    pub(crate) fn sleeper(pid_file: &str) -> std::process::Child {
        let child = std::process::Command::new("setsid")
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        settled_in_its_group(child.id());
        std::fs::write(pid_file, format!("{}\n", child.id())).unwrap();
        child
    }

    /// Wait until `pid` leads its own process group. Its own group only
    /// once `setsid` ran in the child: a kill of the group sent before
    /// that finds no group, and the sleeper lived on (1 run in ~10 under
    /// load). The fire's sleeper is long settled when a disarm comes; a
    /// test's must be too.
    pub(crate) fn settled_in_its_group(pid: u32) {
        let leads_its_group = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
            stat.ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.to_owned()))
                .and_then(|rest| rest.split_whitespace().nth(2).map(str::to_owned))
                == Some(pid.to_string())
        };
        for _ in 0..250 {
            if leads_its_group() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{pid} never led its own group");
    }

    /// Whether `child` ended within `secs` (reaped if so; killed if not).
    pub(crate) fn ended_within(child: &mut std::process::Child, secs: u64) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(secs) {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The Darwin disarm kills its sleeper's process group, in the host's
    /// `sh` (dash here: `kill -TERM -- -PGID` is refused there, "Illegal
    /// number", and the sleeper lived on; `kill -s TERM -- -PGID` is
    /// POSIX, and bash's and dash's).
    #[tokio::test]
    async fn a_darwin_disarm_kills_its_sleeper() {
        if !have("setsid") {
            return;
        }
        use crate::remote::local::LocalRemote;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let a = armed_under(d, Os::Darwin);
        std::fs::write(&a.script, "revert").unwrap();
        let mut child = sleeper(&a.pid_file);
        let local = LocalRemote::new("local");
        run_disarm(&local, &a, &disarm_command(&a, false, None))
            .await
            .unwrap();
        assert!(ended_within(&mut child, 5), "the sleeper lives on");
        assert!(!std::path::Path::new(&a.pid_file).exists());
    }

    /// Stand-ins in `d` (each an `sh` body), executable.
    fn stand_ins(d: &str, tools: &[(&str, String)]) {
        use std::os::unix::fs::PermissionsExt;
        for (tool, body) in tools {
            let path = format!("{d}/{tool}");
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// Run `a`'s re-arm in a real shell, the stand-ins in `d` first on the
    /// PATH, the script's new text on stdin.
    fn re_arm(a: &Armed, d: &str) -> std::process::Output {
        re_arm_with(a, d, b"new revert")
    }

    /// [`re_arm`] with `text` as the script's new text.
    fn re_arm_with(a: &Armed, d: &str, text: &[u8]) -> std::process::Output {
        use std::io::Write;
        let cmd = arm_command(&a.shorter(Duration::from_secs(30)), Arming::Replace, false);
        let mut child = std::process::Command::new(&cmd.argv()[0])
            .args(&cmd.argv()[1..])
            .env("PATH", format!("{d}:/usr/bin:/bin"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    /// A re-arm that finds the first timer's revert under way (its service
    /// running, its mark made) or done (its record written, its script
    /// gone) leaves it alone: exit 4, the service never stopped, nothing
    /// started, the script the revert runs kept, no arming number left
    /// behind a finished one. Not begun: re-armed as before.
    #[test]
    fn a_re_arm_leaves_a_revert_under_way_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let calls = format!("{d}/calls");
        let a = armed_under(d, Os::Linux);
        std::fs::create_dir_all(format!("{d}/deadman")).unwrap();
        let arming = format!("{}.arming", a.script);
        let run_with = |service: &str, begun: Option<&str>| {
            std::fs::write(&a.script, "revert").unwrap();
            std::fs::write(&arming, "1\n").unwrap();
            for f in [&a.started, &a.record] {
                let _ = std::fs::remove_file(f);
            }
            if let Some(f) = begun {
                std::fs::write(f, "").unwrap();
            }
            let systemctl = format!(
                "echo \"systemctl $*\" >> {calls}\n[ \"$1\" != is-active ] || echo {service}"
            );
            let run = format!("echo \"systemd-run $*\" >> {calls}");
            stand_ins(d, &[("systemctl", systemctl), ("systemd-run", run)]);
            let _ = std::fs::remove_file(&calls);
            let out = re_arm(&a, d);
            let calls = std::fs::read_to_string(&calls).unwrap_or_default();
            if out.status.code() == Some(4) {
                assert_eq!(std::fs::read_to_string(&a.script).unwrap(), "revert");
                assert!(!std::path::Path::new(&format!("{}.tmp", a.script)).exists());
            }
            (out.status.code(), calls)
        };
        let (code, calls) = run_with("active", None);
        assert_eq!(code, Some(4), "{calls}");
        assert_eq!(
            calls,
            "systemctl stop nixgate-confirm-r1.timer\nsystemctl is-active nixgate-confirm-r1.service\n"
        );
        let (code, calls) = run_with("inactive", Some(&a.started));
        assert_eq!(
            (code, calls.contains("systemd-run")),
            (Some(4), false),
            "{calls}"
        );
        // Done: its script and number gone, its record written. Before: 7.
        std::fs::remove_file(&a.script).unwrap();
        std::fs::remove_file(&arming).unwrap();
        std::fs::write(&a.record, "{}").unwrap();
        let out = re_arm(&a, d);
        assert_eq!(out.status.code(), Some(4), "{out:?}");
        assert!(!std::path::Path::new(&arming).exists());
        assert!(!std::path::Path::new(&a.script).exists());
        // Not begun: re-armed as before.
        let (code, calls) = run_with("inactive", None);
        assert_eq!(code, Some(0), "{calls}");
        assert!(
            calls.contains("systemd-run --unit=nixgate-confirm-r1 "),
            "{calls}"
        );
        assert_eq!(std::fs::read_to_string(&a.script).unwrap(), "new revert");
    }

    /// The re-arm against a systemd played by marker files in `d`: after
    /// a refused start, a timer up (refused, yet started: the first one
    /// was stopped) is this one (exit 0); a revert that started meanwhile
    /// is left to run (exit 4, its service never stopped); a first timer
    /// that cannot be stopped stands (exit 1, the script as it was); both
    /// starts refused: 5; a revert already disarmed: 7. No `.tmp` left.
    #[test]
    fn a_re_arm_after_a_refused_start() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let a = armed_under(d, Os::Linux);
        let calls = format!("{d}/calls");
        let u = &a.unit;
        let systemctl = format!(
            "echo \"systemctl $*\" >> {calls}
case \"$1 $2\" in
  \"stop {u}.timer\") [ ! -e {d}/stop-fails ] || exit 1; rm -f {d}/timer-up ;;
  \"is-active {u}.timer\") [ ! -e {d}/timer-unknown ] || exit 1
    if [ -e {d}/timer-up ]; then echo active; else echo inactive; fi ;;
  \"is-active {u}.service\") if [ -e {d}/revert-up ]; then echo active; else echo inactive; fi ;;
esac
exit 0"
        );
        let run = format!(
            "echo \"systemd-run $*\" >> {calls}
[ ! -e {d}/starts-timer ] || : > {d}/timer-up
[ ! -e {d}/starts-revert ] || : > {d}/revert-up
[ ! -e {d}/starts-timer-late ] || {{ [ ! -e {d}/tried ] || : > {d}/timer-up; : > {d}/tried; }}
exit 1"
        );
        stand_ins(d, &[("systemctl", systemctl), ("systemd-run", run)]);
        let case = |markers: &[&str]| {
            for m in [
                "stop-fails",
                "timer-up",
                "timer-unknown",
                "revert-up",
                "starts-timer",
                "starts-timer-late",
                "starts-revert",
                "tried",
            ] {
                let _ = std::fs::remove_file(format!("{d}/{m}"));
            }
            for m in markers {
                std::fs::write(format!("{d}/{m}"), "").unwrap();
            }
            std::fs::write(&a.script, "revert").unwrap();
            std::fs::write(format!("{}.arming", a.script), "1\n").unwrap();
            let _ = std::fs::remove_file(&calls);
            let out = re_arm(&a, d);
            assert!(!std::path::Path::new(&format!("{}.tmp", a.script)).exists());
            let calls = std::fs::read_to_string(&calls).unwrap_or_default();
            (out.status.code(), calls)
        };
        let (code, calls) = case(&["starts-timer"]);
        assert_eq!(code, Some(0), "{calls}");
        assert_eq!(calls.matches("systemd-run").count(), 1, "{calls}");
        let (code, calls) = case(&["starts-revert"]);
        assert_eq!(code, Some(4), "{calls}");
        let stops_revert = |l: &str| l.starts_with("systemctl stop") && l.contains(".service");
        assert!(!calls.lines().any(stops_revert), "{calls}");
        let (code, calls) = case(&["stop-fails", "timer-up"]);
        assert_eq!(code, Some(1), "{calls}");
        assert_eq!(std::fs::read_to_string(&a.script).unwrap(), "revert");
        let arming = std::fs::read_to_string(format!("{}.arming", a.script)).unwrap();
        assert_eq!(arming, "2\n", "later disarms name the re-arm's number");
        // Its state not known (a D-Bus error: no answer): left standing,
        // never taken for this re-arm's timer.
        let (code, calls) = case(&["stop-fails", "timer-unknown", "starts-timer"]);
        assert_eq!(code, Some(1), "{calls}");
        assert!(!calls.contains("systemd-run"), "{calls}");
        // Stopped meanwhile (not there any more): re-armed; refused yet
        // started on the second try: this one (0).
        let (code, calls) = case(&["stop-fails", "starts-timer-late"]);
        assert_eq!(code, Some(0), "{calls}");
        assert_eq!(calls.matches("systemd-run").count(), 2, "{calls}");
        let (code, calls) = case(&[]);
        assert_eq!(code, Some(5), "{calls}");
        assert_eq!(calls.matches("systemd-run").count(), 2, "{calls}");
        // Nothing armed: nothing of it left. A re-arm after that: 7.
        assert!(!std::path::Path::new(&a.script).exists());
        assert!(!std::path::Path::new(&format!("{}.arming", a.script)).exists());
        let out = re_arm(&a, d);
        assert_eq!(out.status.code(), Some(7), "{out:?}");
        assert!(!std::path::Path::new(&format!("{}.tmp", a.script)).exists());
    }

    /// Darwin: a re-arm finding the revert marked leaves its sleeper's
    /// group alone (exit 4, the sleeper still runs). One that began as the
    /// sleeper was killed (here: marked by a stand-in `cat` reading the pid
    /// file, just before the kill) was cut short: it is started again at
    /// once, and the re-arm exits 4.
    #[test]
    fn a_darwin_re_arm_never_leaves_a_revert_cut_short() {
        if !have("setsid") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let a = armed_under(d, Os::Darwin);
        std::fs::create_dir_all(format!("{d}/deadman")).unwrap();
        let sleeper = || sleeper(&a.pid_file);
        let alive = |pid: u32| {
            std::process::Command::new("kill")
                .args(["-0", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        };
        // Marked already: nothing killed.
        std::fs::write(&a.script, "revert").unwrap();
        std::fs::write(&a.started, "").unwrap();
        let mut first = sleeper();
        let out = re_arm(&a, d);
        assert_eq!(out.status.code(), Some(4), "{out:?}");
        assert!(alive(first.id()), "the revert's group was killed");
        let _ = first.kill();
        let _ = first.wait();
        // Marked as the sleeper is killed: run again, at once.
        std::fs::remove_file(&a.started).unwrap();
        let ran = format!("{d}/ran");
        std::fs::write(&a.script, "revert").unwrap();
        let cat = format!(
            "[ \"$1\" != {} ] || : > {}\nexec /bin/cat \"$@\"",
            a.pid_file, a.started
        );
        stand_ins(d, &[("cat", cat)]);
        let mut second = sleeper();
        let out = re_arm_with(&a, d, format!("echo again > {ran}").as_bytes());
        assert!(ended_within(&mut second, 5), "the sleeper was not killed");
        assert_eq!(out.status.code(), Some(4), "{out:?}");
        let started = std::time::Instant::now();
        while !std::path::Path::new(&ran).exists() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(std::path::Path::new(&ran).exists(), "the revert ran again");
    }

    /// A disarm sent for an arming a later one replaced (its answer given
    /// up on, and run late) leaves the later one alone: exit 6, the script
    /// and the arming kept. One for the arming that stands disarms it and
    /// removes both. Both OSes, in a real shell.
    #[tokio::test]
    async fn a_disarm_never_stops_a_later_arming() {
        use crate::remote::local::LocalRemote;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        for os in [Os::Linux, Os::Darwin] {
            let first = armed_under(d, os);
            let second = first.shorter(Duration::from_secs(30));
            std::fs::write(&first.script, "revert").unwrap();
            let arming = format!("{}.arming", first.script);
            std::fs::write(&arming, "2\n").unwrap();
            let local = LocalRemote::new("local");
            let stale = run_disarm(&local, &first, &disarm_command(&first, false, None)).await;
            let e = stale.unwrap_err();
            assert!(format!("{e:#}").contains("exit"), "{os:?}: {e:#}");
            assert!(
                format!("{e:#}").contains("arming 2 replaced arming 1"),
                "{os:?}: {e:#}"
            );
            assert!(std::path::Path::new(&first.script).exists(), "{os:?}");
            assert!(std::path::Path::new(&arming).exists(), "{os:?}");
            run_disarm(&local, &second, &disarm_command(&second, false, None))
                .await
                .unwrap();
            assert!(!std::path::Path::new(&first.script).exists(), "{os:?}");
            assert!(!std::path::Path::new(&arming).exists(), "{os:?}");
        }
    }

    /// A disarm of arming 1 that waits for the lock while the re-arm holds
    /// it (here: a `flock` held while arming 2 is written) finds arming 2
    /// once it has the lock: exit 6, the script and the number kept.
    #[test]
    fn a_disarm_waiting_for_the_lock_finds_the_later_arming() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let jobs = format!("{d}/run");
        std::fs::create_dir_all(&jobs).unwrap();
        let script = format!("{jobs}/revert.sh");
        std::fs::write(&script, "revert").unwrap();
        std::fs::write(format!("{script}.arming"), "1\n").unwrap();
        // The "re-arm": holds the lock, then writes arming 2.
        let arming = format!("{script}.arming");
        let write_2 = ["sh", "-c", "sleep 1; echo 2 > \"$0\"", &arming];
        let Some(mut holder) = locked_by(&jobs, &write_2) else {
            return;
        };
        let rec = format!("{d}/rec.json");
        let started = format!("{d}/.started");
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                DISARM_LINUX,
                "nixgate",
                "u",
                &script,
                &rec,
                &started,
                "1",
            ])
            .env("PATH", "/nonexistent:/usr/bin:/bin")
            .output()
            .unwrap();
        holder.wait().unwrap();
        assert_eq!(out.status.code(), Some(6), "{out:?}");
        assert!(std::path::Path::new(&script).exists());
        assert_eq!(
            std::fs::read_to_string(format!("{script}.arming")).unwrap(),
            "2\n"
        );
    }

    /// A lock not had within 10 s (a disarm or re-arm stuck behind one
    /// that hangs): both give up, exit 7, touching nothing (no `systemctl`
    /// call, the script and its arming number as they were). Waits 10 s.
    #[test]
    fn a_lock_not_had_within_10_s_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let calls = format!("{d}/calls");
        let log = format!("echo \"$0 $*\" >> {calls}");
        stand_ins(d, &[("systemctl", log.clone()), ("systemd-run", log)]);
        let a = armed_under(d, Os::Linux);
        std::fs::write(&a.script, "revert").unwrap();
        std::fs::write(format!("{}.arming", a.script), "1\n").unwrap();
        let Some(mut holder) = locked_by(d, &["sleep", "30"]) else {
            return;
        };
        let started = std::time::Instant::now();
        let disarm = std::thread::spawn({
            let cmd = disarm_command(&a, false, None);
            let path = format!("{d}:/usr/bin:/bin");
            move || {
                std::process::Command::new(&cmd.argv()[0])
                    .args(&cmd.argv()[1..])
                    .env("PATH", path)
                    .output()
                    .unwrap()
            }
        });
        let re_armed = re_arm(&a, d);
        let disarmed = disarm.join().unwrap();
        let took = started.elapsed();
        let _ = holder.kill();
        let _ = holder.wait();
        for out in [&re_armed, &disarmed] {
            assert_eq!(out.status.code(), Some(7), "{out:?}");
            assert!(String::from_utf8_lossy(&out.stderr).contains("lock is busy"));
        }
        assert!(took >= Duration::from_secs(10), "{took:?}");
        assert!(took < Duration::from_secs(25), "{took:?}");
        assert!(!std::path::Path::new(&calls).exists());
        assert_eq!(std::fs::read_to_string(&a.script).unwrap(), "revert");
        let arming = std::fs::read_to_string(format!("{}.arming", a.script)).unwrap();
        assert_eq!(arming, "1\n");
        assert!(!std::path::Path::new(&format!("{}.tmp", a.script)).exists());
    }

    /// A re-arm waits for a disarm that holds the job dir's lock (here: a
    /// `flock` held for a second): they never interleave.
    #[test]
    fn a_re_arm_waits_for_a_disarm_under_way() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        for tool in ["systemctl", "systemd-run"] {
            let path = format!("{d}/{tool}");
            std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let jobs = format!("{d}/run");
        std::fs::create_dir_all(&jobs).unwrap();
        // What the fire armed: the script and arming 1.
        let script = format!("{jobs}/revert.sh");
        std::fs::write(&script, "revert").unwrap();
        std::fs::write(format!("{script}.arming"), "1\n").unwrap();
        let Some(mut holder) = locked_by(&jobs, &["sleep", "1"]) else {
            return;
        };
        let started = std::time::Instant::now();
        let out = std::process::Command::new("sh")
            .args(["-c", ARM_LINUX, "nixgate", "u", "30", &script, "replace"])
            .env("PATH", format!("{d}:/usr/bin:/bin"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        holder.wait().unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }

    /// A disarm that arrives once the revert has begun (its mark made, or
    /// its record written) is too late: it says so (exit 4, a
    /// [`RevertBegan`]) and leaves the revert its script, on the candidate
    /// or not. Before, it exited 0 and the run counted the host confirmed.
    #[tokio::test]
    async fn a_disarm_after_the_revert_began_is_too_late() {
        use crate::remote::local::LocalRemote;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        for os in [Os::Linux, Os::Darwin] {
            let a = armed_under(d, os);
            std::fs::create_dir_all(format!("{d}/deadman")).unwrap();
            let on = format!("{d}/on");
            std::fs::create_dir_all(&on).unwrap();
            let link = format!("{d}/current");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&on, &link).unwrap();
            let local = LocalRemote::new("local");
            for begun in [&a.started, &a.record] {
                std::fs::write(&a.script, "revert").unwrap();
                std::fs::write(begun, "").unwrap();
                let guarded = disarm_command(&a, false, Some((&link, &on)));
                for cmd in [guarded, disarm_command(&a, false, None)] {
                    let e = run_disarm(&local, &a, &cmd).await.unwrap_err();
                    assert_eq!(
                        e.downcast_ref::<RevertBegan>(),
                        Some(&RevertBegan),
                        "{os:?}"
                    );
                    assert!(std::path::Path::new(&a.script).exists(), "{os:?}");
                }
                std::fs::remove_file(begun).unwrap();
            }
        }
    }

    /// What the host shows of a revert, read in a real shell: its record
    /// (the record wins over a mark left with it); a mark made this boot
    /// (or empty: no boot id to tell) is a revert under way; one from an
    /// earlier boot (a reboot cut the revert off) is not.
    #[tokio::test]
    async fn a_revert_under_way_is_one_marked_this_boot() {
        use crate::remote::local::LocalRemote;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let a = armed_under(d, Os::Linux);
        std::fs::create_dir_all(format!("{d}/deadman")).unwrap();
        let local = LocalRemote::new("local");
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let under_way = |mark: Option<&str>| {
            let _ = std::fs::remove_file(&a.started);
            if let Some(m) = mark {
                std::fs::write(&a.started, m).unwrap();
            }
            let (local, a) = (&local, &a);
            async move { seen(local, a).await.unwrap().under_way }
        };
        assert!(!under_way(None).await);
        assert!(under_way(Some("")).await);
        assert!(under_way(Some(&boot)).await);
        if !boot.is_empty() {
            let earlier = "00000000-0000-0000-0000-000000000000\n";
            assert!(
                !under_way(Some(earlier)).await,
                "a mark from an earlier boot"
            );
        }
        std::fs::write(&a.started, &boot).unwrap();
        let record =
            r#"{"run_id":"r1","reverted_at":"t","from":"b","to":"a","result":"ok","current":"a"}"#;
        std::fs::write(&a.record, record).unwrap();
        let both = seen(&local, &a).await.unwrap();
        assert_eq!(both.record.map(|r| r.result).as_deref(), Some("ok"));
        assert!(!both.under_way);
    }

    /// Stopping a revert stuck under way, in a real shell: Linux stops its
    /// timer and service and removes its script and number, or says it
    /// still runs (exit 1, nothing removed); Darwin kills its sleeper's
    /// group (a real one here) and removes its files.
    #[tokio::test]
    async fn a_stuck_revert_is_stopped_and_leaves_nothing() {
        use crate::remote::local::LocalRemote;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let calls = format!("{d}/calls");
        let local = LocalRemote::new("local");
        let linux = armed_under(d, Os::Linux);
        let cmd = stop_revert_command(&linux, false);
        for still in [true, false] {
            let state = if still { "deactivating" } else { "inactive" };
            let body = format!(
                "echo \"systemctl $*\" >> {calls}\n[ \"$1\" != is-active ] || echo {state}"
            );
            stand_ins(d, &[("systemctl", body)]);
            std::fs::write(&linux.script, "revert").unwrap();
            std::fs::write(format!("{}.arming", linux.script), "2\n").unwrap();
            let path = format!("{d}:/usr/bin:/bin");
            let out = std::process::Command::new(&cmd.argv()[0])
                .args(&cmd.argv()[1..])
                .env("PATH", path)
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(if still { 1 } else { 0 }),
                "{out:?}"
            );
            assert_eq!(std::path::Path::new(&linux.script).exists(), still);
            let arming = format!("{}.arming", linux.script);
            assert_eq!(std::path::Path::new(&arming).exists(), still);
        }
        let logged = std::fs::read_to_string(&calls).unwrap();
        assert!(
            logged.starts_with(
                "systemctl stop nixgate-confirm-r1.timer nixgate-confirm-r1.service\n"
            ),
            "{logged}"
        );
        // Darwin: a sleeper in its own group whose parent (a shell waiting
        // on it, as launchd would) reaps it at once, so its end can be seen.
        if !have("setsid") {
            return;
        }
        let darwin = armed_under(d, Os::Darwin);
        std::fs::write(&darwin.script, "revert").unwrap();
        let mut parent = std::process::Command::new("sh")
            .args([
                "-c",
                "setsid sleep 30 >/dev/null 2>&1 & echo $! > \"$0\"; wait",
            ])
            .arg(&darwin.pid_file)
            .spawn()
            .unwrap();
        while std::fs::read_to_string(&darwin.pid_file).map_or(true, |p| p.trim().is_empty()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Not before it leads its group (a stop before that found no group,
        // said it gone, and the sleeper lived on: seen once under load).
        let pid = std::fs::read_to_string(&darwin.pid_file).unwrap();
        settled_in_its_group(pid.trim().parse().unwrap());
        let out = local
            .exec(&stop_revert_command(&darwin, false))
            .await
            .unwrap();
        assert!(out.exit.success(), "{out:?}");
        assert!(ended_within(&mut parent, 5), "the revert's group lives on");
        assert!(!std::path::Path::new(&darwin.script).exists());
        assert!(!std::path::Path::new(&darwin.pid_file).exists());
    }

    /// The revert makes its mark before it changes anything and removes it
    /// once its record is written; run here with the tools it calls
    /// played by `true` (and `readlink`, `date` for real).
    #[test]
    fn the_revert_marks_its_start_and_leaves_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let bin = format!("{d}/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let log = format!("{d}/calls");
        for tool in ["systemctl", "nix-env"] {
            // A stop says whether its unit was marked by then.
            let stub = format!(
                "#!/bin/sh\necho \"{tool} $*\" >> {log}\n[ \"$1\" != stop ] || [ ! -e \"{d}/jobs/${{2%.service}}.status.stopped\" ] || echo \"marked before: $2\" >> {log}\n"
            );
            std::fs::write(format!("{bin}/{tool}"), stub).unwrap();
            use std::os::unix::fs::PermissionsExt;
            let exe = std::fs::Permissions::from_mode(0o755);
            std::fs::set_permissions(format!("{bin}/{tool}"), exe).unwrap();
        }
        let previous = format!("{d}/previous");
        std::fs::create_dir_all(&previous).unwrap();
        // The previous system's activation: did the mark exist by then?
        let activate = format!("#!/bin/sh\n[ -e {d}/rec/.r1.started ] && echo marked >> {log}\n");
        std::fs::write(format!("{previous}/activate"), activate).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let exe = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(format!("{previous}/activate"), exe).unwrap();
        let script = format!("{d}/revert.sh");
        std::fs::write(&script, REVERT).unwrap();
        // Darwin's sleeper pid file, next to the script: it goes too.
        std::fs::write(format!("{d}/revert.pid"), "1\n").unwrap();
        let path = format!("{bin}:/usr/bin:/bin");
        let args = [
            &format!("{d}/rec"),
            "r1",
            &previous,
            "cand",
            "prof",
            "",
            "sw-r1",
            "conf-r1",
            &format!("{d}/jobs"),
            &format!("{d}/current"),
        ];
        // The switch's job dir: each attempt is marked stopped there.
        std::fs::create_dir_all(format!("{d}/jobs")).unwrap();
        let status = std::process::Command::new("sh")
            .arg(&script)
            .args(args)
            .env("PATH", &path)
            .status()
            .unwrap();
        assert!(status.success());
        let calls = std::fs::read_to_string(&log).unwrap();
        let stops = ["sw-r1", "sw-r1-try2", "sw-r1-try3"]
            .map(|u| format!("systemctl stop {u}.service\nmarked before: {u}.service\n"));
        assert!(
            calls.starts_with(&format!("{}marked\n", stops.concat())),
            "{calls}"
        );
        for u in ["sw-r1", "sw-r1-try2", "sw-r1-try3"] {
            let mark = format!("{d}/jobs/{u}.status.stopped");
            assert!(std::path::Path::new(&mark).exists(), "{mark}");
        }
        assert!(std::path::Path::new(&format!("{d}/rec/r1.json")).exists());
        assert!(!std::path::Path::new(&format!("{d}/rec/.r1.started")).exists());
        for gone in ["revert.sh", "revert.pid"] {
            assert!(
                !std::path::Path::new(&format!("{d}/{gone}")).exists(),
                "{gone}"
            );
        }
    }

    /// A Darwin revert to a nix-darwin 24.11 system runs its
    /// `activate-user` as the user the run logged in as (the sleeper runs
    /// under `sudo`, which names them), then `activate`: as its switch
    /// would (see [`super::super::darwin_activate`]). Going back, a failing
    /// `activate-user` does not stop `activate` (before, the candidate was
    /// left live): the revert's result is `activate`'s, and its output says
    /// the user half failed.
    #[test]
    fn a_darwin_revert_to_an_old_system_runs_its_activate_user_first() {
        for user_fails in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().to_str().unwrap();
            let (calls, rec, err) = darwin_revert(d, user_fails);
            assert_eq!(
                calls,
                format!(
                    "sudo -n -H -u nixgate-test-alice -- {d}/previous/activate-user\n\
                     previous/activate-user\nprevious/activate\n"
                ),
                "activate-user failing: {user_fails}"
            );
            assert_eq!(rec.result, "ok", "activate-user failing: {user_fails}");
            assert_eq!(
                err.contains(
                    "previous/activate-user exited 2 (as nixgate-test-alice): the user's half"
                ),
                user_fails,
                "{err}"
            );
        }
    }

    /// A Darwin revert in `d` from `candidate` to `previous`, two
    /// nix-darwin 24.11 systems (`previous`'s `activate-user` exiting 2
    /// when `user_fails`), run under `sudo` by nixgate-test-alice: what ran,
    /// its record and its stderr.
    fn darwin_revert(d: &str, user_fails: bool) -> (String, RevertRecord, String) {
        use crate::remote::local::executable;
        let log = format!("{d}/calls");
        std::fs::create_dir_all(format!("{d}/bin")).unwrap();
        let sudo = format!(
            "#!/bin/sh\necho \"sudo $*\" >> {log}\nwhile [ \"$1\" != -- ]; do shift; done; shift\nexec \"$@\"\n"
        );
        executable(format!("{d}/bin/sudo"), &sudo);
        // macOS has neither: played by no-ops.
        for tool in ["systemctl", "nix-env"] {
            executable(format!("{d}/bin/{tool}"), "#!/bin/sh\nexit 0\n");
        }
        for sys in ["previous", "candidate"] {
            std::fs::create_dir_all(format!("{d}/{sys}")).unwrap();
            for script in ["activate", "activate-user"] {
                let fails = user_fails && sys == "previous" && script == "activate-user";
                let exit = if fails { 2 } else { 0 };
                let body = format!("#!/bin/sh\necho \"{sys}/{script}\" >> {log}\nexit {exit}\n");
                executable(format!("{d}/{sys}/{script}"), &body);
            }
        }
        std::os::unix::fs::symlink(format!("{d}/candidate"), format!("{d}/current")).unwrap();
        std::fs::create_dir_all(format!("{d}/jobs")).unwrap();
        let out = revert_in(d, "", &format!("{d}/jobs"))
            .env("SUDO_USER", "nixgate-test-alice")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let calls = std::fs::read_to_string(&log).unwrap();
        let rec = std::fs::read_to_string(format!("{d}/rec/r1.json")).unwrap();
        (calls, serde_json::from_str(&rec).unwrap(), err)
    }

    /// A Darwin revert whose candidate's `activate` hangs: `systemctl
    /// stop` is nothing there, and the candidate went on running under the
    /// previous system's activation. The revert stops its process group
    /// (the pid file the fire wrote) before it activates anything, and its
    /// record says so; a pid file whose pid is another program's now is
    /// left alone.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_darwin_revert_stops_a_hung_candidate_first() {
        if !have("setsid") {
            return;
        }
        use crate::remote::local::executable;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let log = format!("{d}/calls");
        std::fs::create_dir_all(format!("{d}/bin")).unwrap();
        // macOS: no systemctl (a no-op here), `uname` says Darwin.
        executable(
            format!("{d}/bin/systemctl"),
            "#!/bin/sh
exit 0
",
        );
        executable(
            format!("{d}/bin/nix-env"),
            "#!/bin/sh
exit 0
",
        );
        executable(
            format!("{d}/bin/uname"),
            "#!/bin/sh
echo Darwin
",
        );
        let jobs = format!("{d}/jobs");
        std::fs::create_dir_all(&jobs).unwrap();
        let group = |argv: &[&str]| {
            let child = std::process::Command::new("setsid")
                .args(argv)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            settled_in_its_group(child.id());
            child
        };
        // The candidate's switch, its `activate` hung, as the fire starts it.
        let status = format!("{jobs}/sw-r1.status");
        let mut hung = group(&["sh", "-c", "sleep 30", "nixgate-job", &status, "log"]);
        let hung_pid = hung.id();
        std::fs::write(format!("{jobs}/sw-r1.pid"), format!("{hung_pid}\n")).unwrap();
        // Reaped as it ends, as the host's launchd reaps it: a zombie
        // leader still counts in its group.
        let (ended, hung_ended) = std::sync::mpsc::channel();
        let reaper = std::thread::spawn(move || {
            let _ = hung.wait();
            let _ = ended.send(());
        });
        // The second attempt's pid file, its pid another program's now.
        let mut other = group(&["sh", "-c", "sleep 30", "nixgate-job"]);
        std::fs::write(
            format!("{jobs}/sw-r1-try2.pid"),
            format!("{}\n", other.id()),
        )
        .unwrap();
        for sys in ["previous", "candidate"] {
            std::fs::create_dir_all(format!("{d}/{sys}")).unwrap();
        }
        let activate = format!(
            "#!/bin/sh\nif kill -s 0 -- -{hung_pid} 2>/dev/null; then echo 'activated, candidate running' >> {log}; else echo 'activated, candidate gone' >> {log}; fi\n"
        );
        executable(format!("{d}/previous/activate"), &activate);
        std::os::unix::fs::symlink(format!("{d}/candidate"), format!("{d}/current")).unwrap();
        let status = revert_in(d, "", &jobs).status().unwrap();
        let stopped = hung_ended.recv_timeout(Duration::from_secs(5)).is_ok();
        if !stopped {
            let _ = std::process::Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{hung_pid}")])
                .status();
        }
        let _ = reaper.join();
        assert!(status.success());
        assert!(stopped, "the candidate's switch lives on");
        let other_lives = other.try_wait().unwrap().is_none();
        let _ = other.kill();
        let _ = other.wait();
        assert!(other_lives, "another program's group was killed");
        let calls = std::fs::read_to_string(&log).unwrap();
        assert_eq!(calls, "activated, candidate gone\n");
        let rec = std::fs::read_to_string(format!("{d}/rec/r1.json")).unwrap();
        let rec: RevertRecord = serde_json::from_str(&rec).unwrap();
        assert_eq!(rec.stopped, Some(SwitchStopped::Stopped), "{rec:?}");
        assert_eq!(rec.result, "ok");
        // The script's other words, as it writes them.
        for (said, is) in [
            ("none", SwitchStopped::NoneRunning),
            ("still-running", SwitchStopped::StillRunning),
        ] {
            let v: SwitchStopped = serde_json::from_str(&format!("\"{said}\"")).unwrap();
            assert_eq!(v, is);
        }
    }

    /// Someone else moved the host before its revert came due (a hand's
    /// `nixos-rebuild switch`: it runs and boots a third system): the
    /// revert changes nothing and says so. A third system only run live
    /// (a `test`, or the candidate's switch flipping the link elsewhere)
    /// is still reverted.
    #[test]
    fn a_revert_leaves_a_host_someone_else_moved_alone() {
        use crate::remote::local::executable;
        for (boots_it, moved) in [(true, true), (false, false)] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().to_str().unwrap();
            let log = format!("{d}/calls");
            for tool in ["systemctl", "nix-env"] {
                let stub = format!("#!/bin/sh\necho \"{tool} $*\" >> {log}\n");
                std::fs::create_dir_all(format!("{d}/bin")).unwrap();
                executable(format!("{d}/bin/{tool}"), &stub);
            }
            for sys in ["previous", "candidate", "third"] {
                std::fs::create_dir_all(format!("{d}/{sys}")).unwrap();
            }
            let activate = format!("#!/bin/sh\necho activated >> {log}\n");
            executable(format!("{d}/previous/activate"), &activate);
            std::os::unix::fs::symlink(format!("{d}/third"), format!("{d}/current")).unwrap();
            let boots = if boots_it { "third" } else { "candidate" };
            std::os::unix::fs::symlink(format!("{d}/{boots}"), format!("{d}/profile")).unwrap();
            std::fs::create_dir_all(format!("{d}/jobs")).unwrap();
            let status = revert_in(d, &format!("{d}/previous"), &format!("{d}/jobs"))
                .status()
                .unwrap();
            assert!(status.success());
            let rec = std::fs::read_to_string(format!("{d}/rec/r1.json")).unwrap();
            let rec: RevertRecord = serde_json::from_str(&rec).unwrap();
            let calls = std::fs::read_to_string(&log).unwrap();
            assert_eq!(rec.host_moved(), moved, "{rec:?}");
            assert_eq!(calls.contains("nix-env"), !moved, "{calls}");
            assert_eq!(calls.contains("activated"), !moved, "{calls}");
            assert_eq!(rec.current, format!("{d}/third"));
        }
    }
}
