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
//! plus `confirm_timeout` before the switch fires (a controller that dies
//! mid-switch still gets its host back), and shortened to `confirm_timeout`
//! once the switch settled. Disarming stops the timer: a good push leaves
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
    /// The candidate's switch unit, stopped first if it still runs.
    pub switch_unit: String,
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
}

/// What the host wrote when it reverted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevertRecord {
    pub run_id: String,
    pub reverted_at: String,
    pub from: String,
    pub to: String,
    /// `ok`, or which step failed (`test-exited-4`, ...).
    pub result: String,
    /// `/run/current-system` after the revert.
    pub current: String,
}

/// Runs on the host when the timer fires. The previous system's tools are
/// put on the PATH: a transient unit's PATH has no
/// /run/current-system/sw/bin on NixOS, and the current system is the one
/// being reverted.
pub(crate) const REVERT: &str = r#"dir=$1; run=$2; previous=$3; candidate=$4; profile=$5; before=$6; unit=$7; timer=$8
PATH="${PATH:-/usr/bin:/bin}:$previous/sw/bin:/run/current-system/sw/bin:/usr/sbin:/sbin"
export PATH
mkdir -p "$dir"
result=ok
systemctl stop "$unit.service" 2>/dev/null
if [ -n "$before" ]; then
  nix-env -p "$profile" --set "$before" >/dev/null 2>&1 || result=profile-failed
  if [ -x "$before/bin/switch-to-configuration" ]; then
    "$before/bin/switch-to-configuration" boot || result=boot-failed
  fi
fi
if [ -x "$previous/bin/switch-to-configuration" ]; then
  "$previous/bin/switch-to-configuration" test; code=$?
else
  "$previous/activate"; code=$?
fi
[ "$code" = 0 ] || result="test-exited-$code"
now=$(readlink -f /run/current-system)
at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
printf '{"run_id":"%s","reverted_at":"%s","from":"%s","to":"%s","result":"%s","current":"%s"}\n' \
  "$run" "$at" "$candidate" "$previous" "$result" "$now" > "$dir/.$run.json.tmp" &&
  mv -f "$dir/.$run.json.tmp" "$dir/$run.json"
# Done: the timer that started this goes too, and this script (nothing of
# nixgate is left).
systemctl stop "$timer.timer" 2>/dev/null
rm -f "$0"
exit 0"#;

/// Over SSH (Linux): write the revert script (stdin) to `$3`, then (re)arm
/// the timer that runs it. The script runs from a file, never from the
/// unit's command line: systemd reads a transient unit back from its file
/// at every `daemon-reload` (a switch does one), and a multi-line command
/// line, its `%` specifiers and `${...}` came back mangled (the revert
/// failed with a shell syntax error on the test fleet's systemd 252). The
/// description is set for the same reason.
///
/// `$4` is `fresh` (the first arm: nothing of this name should exist, so
/// no `systemctl` call before `systemd-run`) or `replace` (the re-arm: the
/// timer of this name is stopped first). Units started with `--collect`
/// are unloaded once stopped or failed, so `reset-failed` runs only when a
/// start is refused even so (a unit left by an arm whose answer was lost).
/// Each `systemctl` or `systemd-run` call costs the host 7-13 ms of CPU on
/// the test fleet's systemd 252, up to 31 ms on its light hosts' stand-ins
/// (BENCHMARKS.md, "Where a host's CPU goes"); the arm, re-arm and disarm
/// made 10 of them and make 5 now (arm 1, re-arm 2, disarm 2).
pub(crate) const ARM_LINUX: &str = r#"unit=$1; secs=$2; script=$3; mode=$4
mkdir -p "${script%/*}" && cat > "$script.tmp" && mv -f "$script.tmp" "$script" || exit 1
arm() {
  systemd-run --unit="$unit" --description="nixgate: revert unless the switch is confirmed" \
    --on-active="${secs}s" --timer-property=AccuracySec=1s \
    --collect --no-ask-password --service-type=exec -- /bin/sh "$script"
}
[ "$mode" = fresh ] || systemctl stop "$unit.timer" "$unit.service" 2>/dev/null
arm 2>/dev/null && exit 0
systemctl stop "$unit.timer" "$unit.service" 2>/dev/null
systemctl reset-failed "$unit.timer" "$unit.service" 2>/dev/null
arm"#;

/// Over SSH (Darwin): write the revert script (stdin) to `$3`, then a
/// detached sleeper that runs it, replacing an earlier one.
const ARM_DARWIN: &str = r#"pidfile=$1; secs=$2; script=$3
if [ -f "$pidfile" ]; then kill -TERM -- "-$(cat "$pidfile")" 2>/dev/null; fi
mkdir -p "$(dirname "$script")" && cat > "$script.tmp" && mv -f "$script.tmp" "$script" || exit 1
if command -v setsid >/dev/null 2>&1; then
  nohup setsid /bin/sh -c 'sleep "$1"; exec /bin/sh "$2"' nixgate-deadman "$secs" "$script" </dev/null >/dev/null 2>&1 &
else
  nohup /usr/bin/perl -MPOSIX -e 'POSIX::setsid(); exec @ARGV or die' /bin/sh -c 'sleep "$1"; exec /bin/sh "$2"' nixgate-deadman "$secs" "$script" </dev/null >/dev/null 2>&1 &
fi
echo $! > "$pidfile""#;

/// Over SSH: stop the timer (Linux) or the sleeper (Darwin); nothing left.
/// Linux: both units' states come from one `systemctl is-active` (a
/// stopped `--collect` unit is unloaded: `inactive`); the timer must be
/// gone, and the revert script goes too unless the revert is running it
/// right now.
pub(crate) const DISARM_LINUX: &str = r#"if [ $# -ge 4 ] && [ "$(readlink -f "$3")" != "$4" ]; then echo "not disarmed: $3 is not $4" >&2; exit 3; fi
unit=$1
systemctl stop "$unit.timer" 2>/dev/null
systemctl is-active "$unit.timer" "$unit.service" 2>/dev/null | {
  read -r timer; read -r service
  [ "$timer" != active ] || exit 1
  case $service in active | activating | deactivating | reloading) ;; *) rm -f "$2" ;; esac
  exit 0
}"#;

const DISARM_DARWIN: &str = r#"if [ $# -ge 4 ] && [ "$(readlink -f "$3")" != "$4" ]; then echo "not disarmed: $3 is not $4" >&2; exit 3; fi
pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && kill -TERM -- "-$pid" 2>/dev/null; rm -f "$1" "$2"; exit 0"#;

/// Read a run's revert record, if the host wrote one.
pub(crate) const READ_RECORD: &str = r#"[ -f "$1" ] && cat "$1"; exit 0"#;

fn record_dir(paths: &HostPaths) -> String {
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
            unit,
            os,
            fires_after,
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
    ];
    format!(
        "#!/bin/sh\n# nixgate: revert of run {run_id} unless the switch is confirmed\nset -- {}\n{REVERT}\n",
        crate::remote::quote::join(&args)
    )
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
    remote
        .exec_small_input(&arm_command(a, arming, sudo), script.as_bytes())
        .await
        .with_context(|| format!("arming {} on {}", a.unit, remote.name()))?
        .check(&format!("arming the dead-man timer {}", a.unit))?;
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
    let cmd = match a.os {
        Os::Linux => Command::script(DISARM_LINUX).args([&a.unit, &a.script]),
        Os::Darwin => Command::script(DISARM_DARWIN).args([&a.pid_file, &a.script]),
    };
    let cmd = match guard {
        Some((link, path)) => cmd.args([link, path]),
        None => cmd,
    };
    cmd.sudo(sudo)
}

/// Run `cmd`, a [`disarm_command`] for `a`.
pub async fn run_disarm<R: Remote>(remote: &R, a: &Armed, cmd: &Command) -> anyhow::Result<()> {
    remote
        .exec(cmd)
        .await
        .with_context(|| format!("disarming {} on {}", a.unit, remote.name()))?
        .check(&format!("disarming the dead-man timer {}", a.unit))?;
    Ok(())
}

/// The record the host wrote when it reverted, if it did.
pub async fn record<R: Remote>(remote: &R, a: &Armed) -> anyhow::Result<Option<RevertRecord>> {
    let out = remote
        .exec(&Command::script(READ_RECORD).arg(&a.record))
        .await?
        .check("reading the revert record")?;
    let text = out.stdout_str();
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text.trim())
        .map(Some)
        .with_context(|| format!("{} is not a revert record: {text:?}", a.record))
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
mod tests {
    use super::*;

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
                "fresh"
            ]
        );
        assert_eq!(arm_command(&a, Arming::Replace, false).argv()[7], "replace");
        let script = revert_script(&a, &run, &paths, &revert);
        // Arguments set once, quoted; the body runs on them.
        let set = script.lines().nth(2).unwrap();
        assert_eq!(
            set,
            format!(
                "set -- /var/lib/nixgate/deadman r1 {} {} /nix/var/nix/profiles/system '' nixgate-switch-r1 nixgate-confirm-r1",
                sp('a'),
                sp('b')
            )
        );
        assert!(script.ends_with(&format!("{REVERT}\n")));
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
            let mut paths = HostPaths::for_os(os);
            paths.job_dir = d.to_owned();
            let run = RunId::parse("r1").unwrap();
            let a = Armed::for_run(&run, os, &paths, Duration::from_secs(90));
            let (on, off) = (format!("{d}/on"), format!("{d}/off"));
            std::fs::create_dir_all(&on).unwrap();
            std::fs::create_dir_all(&off).unwrap();
            let link = format!("{d}/current");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&on, &link).unwrap();
            std::fs::write(&a.script, "revert").unwrap();
            let local = LocalRemote::new("local");
            let refused = disarm_command(&a, false, Some((&link, &off)));
            let e = format!("{:#}", run_disarm(&local, &a, &refused).await.unwrap_err());
            assert!(e.contains("not disarmed"), "{e}");
            assert!(std::path::Path::new(&a.script).exists());
            run_disarm(&local, &a, &disarm_command(&a, false, Some((&link, &on))))
                .await
                .unwrap();
            assert!(!std::path::Path::new(&a.script).exists(), "{os:?}");
        }
    }
}
