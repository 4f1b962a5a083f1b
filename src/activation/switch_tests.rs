//! Tests of step 4: exact argv of the fire, lock check and stop commands, and
//! the fixed scripts run for real on this machine.

use super::*;
use crate::remote::Output;
use crate::remote::local::LocalRemote;
use crate::remote::scripted::{ScriptedRemote, fail, ok};

pub(crate) const SYS: &str = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.11";

fn job(os: Os, action: SwitchAction) -> SwitchJob {
    SwitchJob::new(
        &RunId::parse("r1").unwrap(),
        JobPurpose::Candidate,
        action,
        &StorePath::parse(SYS).unwrap(),
        os,
        &HostPaths::for_os(os),
    )
}

const AROUND: Around<'static> = Around {
    lock: "/run/nixos/switch-to-configuration.lock",
    watched: Watched {
        current_system: "/run/current-system",
        profile: Some("/nix/var/nix/profiles/system"),
    },
    wait: Duration::from_millis(500),
};

/// `systemd-run`'s stand-in in the fire commands built by hand below: the
/// job's wrapper, detached, writing `status` and `log`; the program next.
fn detached(status: &str, log: &str) -> Vec<String> {
    let run = "\"$@\" </dev/null >/dev/null 2>&1 & exit 0";
    [
        "/bin/sh",
        "-c",
        run,
        "run",
        "/bin/sh",
        "-c",
        JOB_WRAPPER,
        "nixgate-job",
    ]
    .into_iter()
    .chain([status, log])
    .map(String::from)
    .collect()
}

/// A fire's arguments for the revert it arms: none.
const NO_ARM: [&str; 4] = ["", "", "", ""];

#[test]
fn linux_fire_argv() {
    let j = job(Os::Linux, SwitchAction::Switch);
    assert_eq!(j.unit, "nixgate-switch-r1");
    let cmd = fire_command(&j, true, true, AROUND, false);
    assert!(cmd.is_sudo());
    let want: Vec<String> = [
        "sh",
        "-c",
        FIRE_LINUX,
        "nixgate",
        // The lock check, the first poll's arguments, the job files.
        "/run/nixos/switch-to-configuration.lock",
        "nixgate-switch-r1.service",
        "/run/nixgate/nixgate-switch-r1.status",
        "/run/current-system",
        "5",
        "/nix/var/nix/profiles/system",
        "/run/nixgate",
        "/run/nixgate/nixgate-switch-r1.log",
        // A first fire: fresh job files; no profile set by the fire.
        "0",
        "",
        "",
        "120",
        // No revert armed by the fire.
        "",
        "",
        "",
        "",
        "systemd-run",
        "--unit=nixgate-switch-r1",
        "--description=nixgate switch of nixos-system-web1-24.11",
        "--collect",
        "--no-ask-password",
        "--service-type=exec",
        "--setenv=NIXOS_INSTALL_BOOTLOADER=1",
        "--",
        "/bin/sh",
        "-c",
        JOB_WRAPPER,
        "nixgate-job",
        "/run/nixgate/nixgate-switch-r1.status",
        "/run/nixgate/nixgate-switch-r1.log",
        &format!("{SYS}/bin/switch-to-configuration"),
        "switch",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(cmd.argv(), want.as_slice());
    // No argument to systemd-run spans lines (the description defaults to
    // the command line, and a multi-line one corrupts the unit's file).
    let argv = cmd.argv();
    let from = argv.iter().position(|a| a == "systemd-run").unwrap();
    let options = &argv[from..argv.iter().position(|a| a == "--").unwrap()];
    assert!(options.iter().all(|a| !a.contains('\n')), "{options:?}");
    // `test` never installs the boot loader.
    let t = fire_command(
        &job(Os::Linux, SwitchAction::Test),
        false,
        true,
        AROUND,
        false,
    );
    assert!(!t.argv().iter().any(|a| a.contains("INSTALL_BOOTLOADER")));
    assert_eq!(t.argv().last().unwrap(), "test");
    // A re-fire says so (it keeps the job's files).
    let again = fire_command(&j, true, true, AROUND, true);
    assert_eq!(again.argv()[12], "1");
}

#[test]
fn unit_names_per_purpose() {
    let id = RunId::parse("2025-01-01T12.00Z").unwrap();
    let sp = StorePath::parse(SYS).unwrap();
    let p = HostPaths::for_os(Os::Linux);
    let names: Vec<String> = [
        JobPurpose::Candidate,
        JobPurpose::Persist,
        JobPurpose::Rollback,
    ]
    .into_iter()
    .map(|purpose| SwitchJob::new(&id, purpose, SwitchAction::Boot, &sp, Os::Linux, &p).unit)
    .collect();
    assert_eq!(
        names,
        vec![
            "nixgate-switch-2025-01-01T12.00Z",
            "nixgate-switch-2025-01-01T12.00Z-persist",
            "nixgate-switch-2025-01-01T12.00Z-rollback"
        ]
    );
}

#[test]
fn darwin_fire_argv() {
    let j = job(Os::Darwin, SwitchAction::Switch);
    let cmd = fire_command(&j, true, false, AROUND, false);
    let argv = cmd.argv();
    assert_eq!(&argv[..3], &["sh", "-c", FIRE_DARWIN].map(String::from));
    assert_eq!(
        &argv[4..],
        &[
            "/var/run/nixgate",
            "/var/run/nixgate/nixgate-switch-r1.status",
            "/var/run/nixgate/nixgate-switch-r1.log",
            "/var/run/nixgate/nixgate-switch-r1.pid",
            JOB_WRAPPER,
            "/bin/sh",
            "-c",
            crate::activation::darwin_activate::ACTIVATE,
            "nixgate-activate",
            SYS,
        ]
        .map(String::from)
    );
}

async fn fire_once(j: &SwitchJob, answer: Output, again: bool) -> Launch {
    let r = ScriptedRemote::new("web1", move |_| answer.clone());
    fire(&r, j, (true, false), AROUND, again).await
}

fn tried(outcome: FireOutcome) -> Launch {
    Launch::Tried {
        unchecked: false,
        outcome,
        first: None,
    }
}

/// A fire whose answer was cut short after it said it stopped before
/// starting anything: what it said holds (it is no unconfirmed fire, fired
/// again until the budget ran out). Cut before that, it is unconfirmed.
#[tokio::test]
async fn a_lost_answer_that_already_said_nothing_started_is_believed() {
    let arm = crate::activation::deadman::FireArm {
        unit: "u".into(),
        due: tokio::time::Instant::now() + Duration::from_secs(90),
        script: "/run/nixgate/u.sh".into(),
        body: String::new(),
    };
    let j = job(Os::Linux, SwitchAction::Switch)
        .setting_profile("/nix/var/nix/profiles/system")
        .arming(arm);
    let lost = |out: &str| Output::new(Exit::ConnectionLost, out, "");
    let launch = fire_once(&j, lost("NixgateLock=free\nNixgateArmed=failed\n"), false).await;
    assert!(matches!(launch, Launch::ArmFailed { .. }), "{launch:?}");
    let launch = fire_once(
        &j,
        lost("NixgateLock=free\nNixgateArmed=new\nNixgateProfileSet=1\n"),
        false,
    )
    .await;
    assert!(
        matches!(launch, Launch::ProfileSetFailed { .. }),
        "{launch:?}"
    );
    let launch = fire_once(&j, lost("NixgateLock=held\n"), false).await;
    assert!(matches!(launch, Launch::LockHeld { .. }), "{launch:?}");
    for cut in [
        "NixgateLock=free\nNixgateArmed=new\n",
        "NixgateLock=free\nNixgateArmed=new\nNixgateProfileSet=0\n",
        "NixgateLock=free\nNixgateArmed=new\nNixgateProfileSet=",
        "NixgateLock=free\nNixgateArmed=fail",
    ] {
        let launch = fire_once(&j, lost(cut), true).await;
        assert!(
            matches!(
                launch,
                Launch::Tried {
                    outcome: FireOutcome::Unconfirmed { .. },
                    ..
                }
            ),
            "{cut:?}: {launch:?}"
        );
    }
}

/// Every answer of the Linux fire: lock held (by another switch, or by an
/// earlier fire of this very unit), lock check failed, refused, already
/// running, lost, and a start with its first poll.
#[tokio::test]
async fn linux_fire_outcomes() {
    let j = job(Os::Linux, SwitchAction::Test);
    let answer = |out: &str, err: &str| Output::new(Exit::Code { code: 0 }, out, err);
    let held = "NixgateLock=held\nNixgateHolder=nixgate-switch-old.service active running\n";
    assert_eq!(
        fire_once(&j, answer(held, ""), false).await,
        Launch::LockHeld {
            holders: vec!["nixgate-switch-old.service active running".into()],
            processes: Vec::new(),
        }
    );
    // An orphan: no switch unit, a process holding the lock.
    let orphan = "NixgateLock=held\nNixgateLockPid=4242 11520 session-3.scope /nix/store/x/bin/switch-to-configuration switch\nNixgateLockPid=99 - - perl\n";
    assert_eq!(
        fire_once(&j, answer(orphan, ""), false).await,
        Launch::LockHeld {
            holders: Vec::new(),
            processes: vec![
                LockProcess {
                    pid: 4242,
                    running_secs: Some(11520),
                    unit: Some("session-3.scope".into()),
                    command: "/nix/store/x/bin/switch-to-configuration switch".into(),
                },
                LockProcess {
                    pid: 99,
                    running_secs: None,
                    unit: None,
                    command: "perl".into(),
                },
            ],
        }
    );
    let ours = "NixgateLock=held\nNixgateHolder=nixgate-switch-r1.service active running\n";
    assert_eq!(
        fire_once(&j, answer(ours, ""), true).await,
        tried(FireOutcome::AlreadyRunning)
    );
    // No unit listed (systemctl failed: PID 1 slow, what refused the earlier
    // attempt), the process holding the lock in an earlier attempt's unit:
    // that attempt runs (it was: another switch, "nothing changed").
    let pid = |unit: &str| {
        format!(
            "NixgateLock=held\nNixgateLockPid=77 3 {unit} /nix/store/x/bin/switch-to-configuration test\n"
        )
    };
    let retry = j.renamed(2);
    assert_eq!(
        fire_once(&retry, answer(&pid("nixgate-switch-r1.service"), ""), false).await,
        tried(FireOutcome::EarlierAttempt {
            unit: "nixgate-switch-r1".into()
        })
    );
    assert_eq!(
        fire_once(
            &retry,
            answer(&pid("nixgate-switch-r1-try2.service"), ""),
            true
        )
        .await,
        tried(FireOutcome::AlreadyRunning)
    );
    assert!(matches!(
        fire_once(
            &retry,
            answer(&pid("nixgate-switch-other.service"), ""),
            false
        )
        .await,
        Launch::LockHeld { .. }
    ));
    match fire_once(&j, fail(1, "sudo: a password is required\n"), false).await {
        Launch::LockCheckFailed { error } => {
            assert!(error.contains("checking the switch lock failed"), "{error}");
            assert!(error.contains("a password is required"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        fire_once(&j, answer("garbage\n", ""), false).await,
        Launch::LockCheckFailed { .. }
    ));
    let refused = "Failed to start transient service unit: Unit nixgate-switch-r1.service was already loaded or has a fragment file.\n";
    // systemd-run's exit and its message, as a first fire's refusal, and as
    // the answer to a re-fire after a lost answer: maybe our first fire's
    // unit, not a refusal (yet).
    let (exit, tail) = (Exit::Code { code: 1 }, vec![refused.trim_end().to_string()]);
    let free = "NixgateLock=free\nNixgateFire=1\n";
    assert_eq!(
        fire_once(&j, answer(free, refused), false).await,
        tried(FireOutcome::Refused {
            exit: exit.clone(),
            tail: tail.clone()
        })
    );
    // `nix-env --set` and the arming write to the fire's stderr before
    // systemd-run starts: only what follows `NixgateRunning` is its answer,
    // and a systemd-run that said nothing (killed) after a noisy `nix-env`
    // said nothing (the fire's own lines: `never_ran` cannot tell).
    let noisy = "warning: the profile is old\nNixgateRunning\n";
    assert_eq!(
        fire_once(&j, answer(free, &format!("{noisy}{refused}")), false).await,
        tried(FireOutcome::Refused {
            exit: exit.clone(),
            tail: tail.clone()
        })
    );
    // The fire writes the line just before starting the unit.
    assert!(FIRE_LINUX.contains("then echo NixgateRunning >&2; \"$@\";"));
    // Before: a nix-env line saying "already exists" was "our unit runs".
    let exists_noise = format!("error: path already exists\nNixgateRunning\n{refused}");
    assert_eq!(
        fire_once(&j, answer(free, &exists_noise), false).await,
        tried(FireOutcome::Refused {
            exit: exit.clone(),
            tail: tail.clone()
        })
    );
    assert_eq!(
        fire_once(&j, answer(free, noisy), false).await,
        tried(FireOutcome::Refused {
            exit: exit.clone(),
            tail: vec!["NixgateLock=free".into(), "NixgateFire=1".into()]
        })
    );
    assert_eq!(
        fire_once(&j, answer(free, refused), true).await,
        tried(FireOutcome::Loaded { exit, tail })
    );
    let exists =
        "Failed to start transient service unit: Unit nixgate-switch-r1.service already exists.\n";
    assert_eq!(
        fire_once(
            &j,
            answer("NixgateLock=free\nNixgateFire=1\n", exists),
            true
        )
        .await,
        tried(FireOutcome::AlreadyRunning)
    );
    let lost = Output::new(Exit::ConnectionLost, "", "");
    assert!(matches!(
        fire_once(&j, lost, false).await,
        Launch::Tried {
            outcome: FireOutcome::Unconfirmed { .. },
            ..
        }
    ));
    // Killed between the lock check and systemd-run's answer: unknown.
    let killed = Output::new(
        Exit::Signal {
            signal: "KILL".into(),
        },
        "NixgateLock=free\n",
        "",
    );
    assert!(matches!(
        fire_once(&j, killed, false).await,
        Launch::Tried {
            outcome: FireOutcome::Unconfirmed { .. },
            ..
        }
    ));
    let started = format!(
        "NixgateLock=unchecked\nNixgateFire=0\nResult=success\nExecMainCode=0\nExecMainStatus=0\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nNixgateStatus=exited 0\nNixgateCurrent={SYS}\nNixgateProfile={SYS}\n"
    );
    match fire_once(&j, answer(&started, "Running as unit: x"), false).await {
        Launch::Tried {
            unchecked: true,
            outcome: FireOutcome::Started,
            first: Some(first),
        } => {
            assert_eq!(first.job, verify_poll::JobState::Exited { code: 0 });
            let sys = StorePath::parse(SYS).unwrap();
            assert_eq!(first.profile, Some(Some(sys)));
        }
        other => panic!("{other:?}"),
    }
}

/// The Darwin fire's outcomes come from its exit alone.
#[tokio::test]
async fn darwin_fire_outcomes() {
    let j = job(Os::Darwin, SwitchAction::Switch);
    assert_eq!(
        fire_once(&j, ok(""), false).await,
        tried(FireOutcome::Started)
    );
    assert!(matches!(
        fire_once(&j, fail(125, "mkdir: Permission denied"), false).await,
        Launch::Tried {
            outcome: FireOutcome::Refused { .. },
            ..
        }
    ));
}

/// [`FIRE_LINUX`] for real on this machine, with a stand-in for
/// `systemd-run` that starts the wrapper in the background (as the unit
/// would): a held lock stops it before the job starts; a free one starts
/// the job, waits on the host until it exits (not the whole wait), and
/// reports it with the profile.
#[tokio::test]
async fn linux_fire_script_for_real() {
    if !crate::activation::deadman::tests::have("flock") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    let (lock, status, log) = (d("switch.lock"), d("jobs/j.status"), d("jobs/j.log"));
    std::os::unix::fs::symlink(SYS, d("current")).unwrap();
    std::os::unix::fs::symlink(SYS, d("profile")).unwrap();
    let cmd = Command::script(FIRE_LINUX)
        .args([&lock, "nixgate-switch-real.service", &status, &d("current")])
        .args(["100", &d("profile"), &d("jobs"), &log, "0", "", "", "120"])
        .args(NO_ARM)
        .args(detached(&status, &log))
        .args(["/bin/sh", "-c", "sleep 0.5; echo switched"]);
    let r = LocalRemote::new("local");
    let j = SwitchJob::new(
        &RunId::parse("real").unwrap(),
        JobPurpose::Candidate,
        SwitchAction::Test,
        &StorePath::parse(SYS).unwrap(),
        Os::Linux,
        &HostPaths::for_os(Os::Linux),
    );
    // Held (as switch-to-configuration holds it): nothing starts.
    std::fs::write(&lock, "").unwrap();
    let mut holder = hold_lock(&lock).await;
    let launch = parse_fire_linux(&r.exec(&cmd).await.unwrap(), &j, false);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(matches!(launch, Launch::LockHeld { .. }), "{launch:?}");
    // A job wrongly started would have written its `started` by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!std::path::Path::new(&status).exists(), "nothing started");
    // Free: started, and the answer comes when the job exits, not from
    // an earlier job's files of that name (a first fire removes them).
    std::fs::create_dir(d("jobs")).unwrap();
    std::fs::write(&status, "exited 7\n").unwrap();
    std::fs::write(format!("{status}.stopped"), "").unwrap();
    let t0 = std::time::Instant::now();
    let launch = parse_fire_linux(&r.exec(&cmd).await.unwrap(), &j, false);
    let took = t0.elapsed();
    let Launch::Tried {
        outcome: FireOutcome::Started,
        first: Some(first),
        ..
    } = launch
    else {
        panic!("{launch:?}")
    };
    assert_eq!(first.job, verify_poll::JobState::Exited { code: 0 });
    let sys = StorePath::parse(SYS).unwrap();
    assert_eq!(first.current, Some(sys.clone()));
    assert_eq!(first.profile, Some(Some(sys)));
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(
        took < Duration::from_secs(5),
        "not the whole 10 s: {took:?}"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "switched\n");
    assert!(!std::path::Path::new(&format!("{status}.stopped")).exists());
}

#[test]
fn stop_and_log_commands() {
    let j = job(Os::Linux, SwitchAction::Test);
    let stop = stop_command(&j, true);
    assert!(stop.is_sudo());
    assert_eq!(stop.argv()[2], STOP_LINUX);
    assert_eq!(
        stop.argv()[4..],
        ["/run/nixgate", "nixgate-switch-r1.service"]
    );
    assert_eq!(
        log_tail_command(&j).argv()[4..],
        [
            "/run/nixgate/nixgate-switch-r1.log".to_string(),
            "nixgate-switch-r1".to_string()
        ]
    );
}

/// [`STOP_LINUX`] for real (a stand-in `systemctl` first on `PATH`): every
/// unit stopped at once, each read back; inactive or failed is stopped,
/// still active is not, and a `systemctl` that cannot answer (PID 1 busy,
/// the bus that timed a start out) is not either (it passed for stopped).
/// A job never confirmed stops every attempt's name.
#[tokio::test]
async fn a_stop_is_read_back_and_covers_every_attempt() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    std::fs::create_dir(d("bin")).unwrap();
    let (calls, state) = (d("calls"), d("state"));
    let body = format!(
        "#!/bin/sh\necho \"$*\" >> {calls}\n[ \"$1\" = is-active ] || exit 0\nread -r s < {state}\n[ \"$s\" = broken ] && {{ echo 'Failed to connect to bus' >&2; exit 1; }}\necho \"$s\"\n[ \"$s\" = active ] && exit 0\nexit 3\n"
    );
    std::fs::write(d("bin/systemctl"), body).unwrap();
    // Its read-back retries once a second: not waited out here.
    std::fs::write(d("bin/sleep"), "#!/bin/sh\nexit 0\n").unwrap();
    for tool in ["systemctl", "sleep"] {
        let mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(d(&format!("bin/{tool}")), mode).unwrap();
    }
    let path = format!("{}:{}", d("bin"), std::env::var("PATH").unwrap());
    let mut paths = HostPaths::for_os(Os::Linux);
    paths.job_dir = d("jobs");
    std::fs::create_dir(d("jobs")).unwrap();
    let first = SwitchJob::new(
        &RunId::parse("r1").unwrap(),
        JobPurpose::Candidate,
        SwitchAction::Test,
        &StorePath::parse(SYS).unwrap(),
        Os::Linux,
        &paths,
    );
    let j = first.renamed(2);
    let r = LocalRemote::new("local");
    for (s, stopped) in [
        ("inactive", true),
        ("failed", true),
        ("active", false),
        ("broken", false),
    ] {
        std::fs::write(&state, s).unwrap();
        let _ = std::fs::remove_file(&calls);
        let cmd = stop_attempts_command(&j, false).env("PATH", &path);
        let out = r.exec(&cmd).await.unwrap();
        assert_eq!(out.success(), stopped, "{s}: {out:?}");
        let units = "nixgate-switch-r1.service nixgate-switch-r1-try2.service nixgate-switch-r1-try3.service";
        let took = std::fs::read_to_string(&calls).unwrap();
        assert!(took.starts_with(&format!("stop {units}\n")), "{s}: {took}");
        // Not read back stopped: stopped again, 10 reads in all.
        let reads = took.lines().filter(|l| l.starts_with("is-active")).count();
        assert_eq!(reads, if stopped { 3 } else { 10 }, "{s}: {took}");
    }
    let one = stop_command(&j, false);
    assert_eq!(
        one.argv()[5..],
        ["nixgate-switch-r1-try2.service".to_string()]
    );
    // Each job marked stopped: a start PID 1 takes up after the stop runs
    // nothing (its wrapper leaves at once, no status, no log).
    for unit in [
        "nixgate-switch-r1",
        "nixgate-switch-r1-try2",
        "nixgate-switch-r1-try3",
    ] {
        assert!(
            dir.path()
                .join(format!("jobs/{unit}.status.stopped"))
                .exists(),
            "{unit}"
        );
    }
    let ran = d("ran");
    let late = Command::new("/bin/sh")
        .args([
            "-c",
            JOB_WRAPPER,
            "nixgate-job",
            &j.status_file,
            &j.log_file,
        ])
        .args(["/bin/sh", "-c", &format!("touch {ran}")]);
    let out = r.exec(&late).await.unwrap();
    assert_eq!(out.exit, crate::remote::Exit::Code { code: 125 }, "{out:?}");
    assert!(!std::path::Path::new(&ran).exists(), "the late start ran");
    assert!(!std::path::Path::new(&j.status_file).exists());
}

/// A Darwin job's stop kills its group, in the host's `sh` (dash here,
/// which refuses `kill -TERM -- -PGID`: the job lived on).
#[tokio::test]
async fn a_darwin_stop_kills_the_job() {
    if !crate::activation::deadman::tests::have("setsid") {
        return;
    }
    use crate::activation::deadman::tests::{ended_within, sleeper};
    let dir = tempfile::tempdir().unwrap();
    let mut paths = HostPaths::for_os(Os::Darwin);
    paths.job_dir = dir.path().to_str().unwrap().to_owned();
    let j = SwitchJob::new(
        &RunId::parse("r1").unwrap(),
        JobPurpose::Candidate,
        SwitchAction::Switch,
        &StorePath::parse(SYS).unwrap(),
        Os::Darwin,
        &paths,
    );
    let mut child = sleeper(&j.pid_file);
    let local = crate::remote::local::LocalRemote::new("local");
    let out = local.exec(&stop_command(&j, false)).await.unwrap();
    assert!(out.exit.success(), "{out:?}");
    assert!(ended_within(&mut child, 5), "the job lives on");
}

/// The wrapper run for real: status (and the program it is of) and log
/// files, exit code preserved.
#[tokio::test]
async fn wrapper_records_status_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("j.status");
    let log = dir.path().join("j.log");
    let r = LocalRemote::new("local");
    let program =
        "echo switching; echo 'warning: the following units failed: x.service' >&2; exit 4";
    let cmd = Command::new("/bin/sh")
        .args(["-c", JOB_WRAPPER, "nixgate-job"])
        .arg(status.display().to_string())
        .arg(log.display().to_string())
        .args(["sh", "-c", program]);
    let out = r.exec(&cmd).await.unwrap();
    assert_eq!(out.exit, Exit::Code { code: 4 });
    assert_eq!(
        std::fs::read_to_string(&status).unwrap(),
        format!("exited 4\nsh -c {program}\n")
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "switching\nwarning: the following units failed: x.service\n"
    );
}

/// A lock held by an earlier attempt of the same job under another unit
/// name (refused, yet started), active, is that attempt; one of another
/// job, a later attempt, or an earlier one no longer active, is not.
#[tokio::test]
async fn a_lock_held_by_an_earlier_attempt_is_that_attempt() {
    let j = job(Os::Linux, SwitchAction::Test);
    let try3 = j.renamed(3);
    assert_eq!(try3.unit, "nixgate-switch-r1-try3");
    assert_eq!(try3.renamed(4).unit, "nixgate-switch-r1-try4");
    let held = |holder: &str| {
        Output::new(
            Exit::Code { code: 0 },
            format!("NixgateLock=held\nNixgateHolder={holder}\n"),
            "",
        )
    };
    for (earlier, again) in [
        ("nixgate-switch-r1", false),
        ("nixgate-switch-r1-try2", true),
    ] {
        assert_eq!(
            fire_once(
                &try3,
                held(&format!("{earlier}.service active running")),
                again
            )
            .await,
            tried(FireOutcome::EarlierAttempt {
                unit: earlier.into()
            }),
            "{earlier}"
        );
    }
    for other in [
        // Not active: a leftover, not the holder.
        "nixgate-switch-r1.service failed failed",
        // Another job (the persist), a later attempt, another run.
        "nixgate-switch-r1-persist.service active running",
        "nixgate-switch-r1-try4.service active running",
        "nixgate-switch-r10.service active running",
    ] {
        assert!(
            matches!(
                fire_once(&try3, held(other), false).await,
                Launch::LockHeld { .. }
            ),
            "{other}"
        );
    }
    // The first attempt has no earlier one.
    assert!(matches!(
        fire_once(
            &j,
            held("nixgate-switch-r1-try2.service active running"),
            false
        )
        .await,
        Launch::LockHeld { .. }
    ));
}

/// The fire and the job's files, for real, as a user whose umask is 077
/// (which sudo keeps): the job dir (new, or made root-only by an earlier
/// command) is searchable by all and the status, log and pid files are
/// readable by all, so that the polls, never run through sudo, read them.
#[tokio::test]
async fn the_job_files_are_readable_by_all_under_a_umask_of_077() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let under_077 = |cmd: Command| {
        Command::new("/bin/sh")
            .args(["-c", "umask 077 && exec \"$@\"", "umask077"])
            .args(cmd.argv().iter().cloned())
    };
    let r = LocalRemote::new("local");
    for made_before in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let d = |f: &str| dir.path().join(f).display().to_string();
        let (jobs, status, log) = (d("jobs"), d("jobs/j.status"), d("jobs/j.log"));
        if made_before {
            std::fs::create_dir(&jobs).unwrap();
            std::fs::set_permissions(&jobs, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        // Linux, with the wrapper started by a stand-in for systemd-run
        // under the caller's umask (the worst case: systemd's is 022).
        let fire = Command::script(FIRE_LINUX)
            .args([
                &d("lock"),
                "nixgate-switch-real.service",
                &status,
                &d("current"),
            ])
            .args(["50", "", &jobs, &log, "0", "", "", "120"])
            .args(NO_ARM)
            .args(detached(&status, &log))
            .args(["/bin/sh", "-c", "echo switched"]);
        let out = r.exec(&under_077(fire)).await.unwrap();
        assert!(
            out.stdout_str().contains("NixgateStatus=exited 0"),
            "{out:?}"
        );
        assert_eq!(mode(&jobs), 0o755, "made before: {made_before}");
        assert_eq!((mode(&status), mode(&log)), (0o644, 0o644));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "switched\n");
        // Darwin's fire: its pid file too.
        let j = SwitchJob {
            job_dir: d("djobs"),
            status_file: d("djobs/j.status"),
            log_file: d("djobs/j.log"),
            pid_file: d("djobs/j.pid"),
            ..job(Os::Darwin, SwitchAction::Switch)
        };
        let fire = Command::script(FIRE_DARWIN)
            .args([&j.job_dir, &j.status_file, &j.log_file, &j.pid_file])
            .args([JOB_WRAPPER, "/bin/sh", "-c", "echo switched"]);
        assert!(r.exec(&under_077(fire)).await.unwrap().success());
        for _ in 0..100 {
            if std::fs::read_to_string(&j.status_file).is_ok_and(|s| s.starts_with("exited")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(mode(&j.job_dir), 0o755);
        let files = [&j.status_file, &j.log_file, &j.pid_file];
        assert_eq!(files.map(|f| mode(f)), [0o644; 3]);
    }
}

/// A re-fire after a lost answer keeps the job's status and log (they may
/// be the first fire's, which may have started); a first fire starts
/// with fresh ones.
#[tokio::test]
async fn a_refire_keeps_the_job_files() {
    let r = LocalRemote::new("local");
    for (again, kept) in [("1", true), ("0", false)] {
        let dir = tempfile::tempdir().unwrap();
        let d = |f: &str| dir.path().join(f).display().to_string();
        let (status, log) = (d("j.status"), d("j.log"));
        std::fs::write(&status, "started\n").unwrap();
        std::fs::write(&log, "activating\n").unwrap();
        // systemd-run refusing: a unit of this name is loaded.
        let fire = Command::script(FIRE_LINUX)
            .args([
                &d("lock"),
                "nixgate-switch-real.service",
                &status,
                &d("current"),
            ])
            .args(["0", "", &d(""), &log, again, "", "", "120"])
            .args(NO_ARM)
            .args([
                "sh",
                "-c",
                "echo 'Unit x was already loaded or has a fragment file.' >&2; exit 1",
            ]);
        let out = r.exec(&fire).await.unwrap();
        assert!(out.stdout_str().contains("NixgateFire=1"), "{out:?}");
        let files = [&status, &log].map(|f| std::path::Path::new(f).exists());
        assert_eq!(files, [kept; 2], "again={again}");
    }
}

/// [`FIRE_LINUX`] for real, setting the profile (a stand-in `nix-env`
/// first on `PATH` records its arguments and exits as told): only once the
/// lock is free and before the job starts; a failed set starts nothing and
/// says so, with `nix-env`'s stderr.
#[tokio::test]
async fn the_fire_sets_the_profile_once_the_lock_is_free_and_only_then_fires() {
    if !crate::activation::deadman::tests::have("flock") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    std::fs::create_dir(d("bin")).unwrap();
    std::fs::write(
        d("bin/nix-env"),
        format!(
            "#!/bin/sh\necho \"$*\" >> {calls}\nrc=$(cat {rc})\n[ \"$rc\" = 0 ] || echo 'error: No space left on device' >&2\nexit $rc\n",
            calls = d("calls"),
            rc = d("rc")
        ),
    )
    .unwrap();
    std::fs::set_permissions(d("bin/nix-env"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (lock, status, log) = (d("lock"), d("jobs/j.status"), d("jobs/j.log"));
    let j = job(Os::Linux, SwitchAction::Boot).setting_profile(&d("profile"));
    let fire = Command::script(FIRE_LINUX)
        .env(
            "PATH",
            format!("{}:{}", d("bin"), std::env::var("PATH").unwrap()),
        )
        .args([&lock, "nixgate-switch-real.service", &status, &d("current")])
        .args(["0", "", &d("jobs"), &log, "0", &d("profile"), SYS, "120"])
        .args(NO_ARM)
        .args(detached(&status, &log))
        .args(["/bin/sh", "-c", "echo booted"]);
    let r = LocalRemote::new("local");
    let calls = || std::fs::read_to_string(d("calls")).unwrap_or_default();

    // Held: neither the profile nor the job.
    std::fs::write(&lock, "").unwrap();
    let mut holder = hold_lock(&lock).await;
    std::fs::write(d("rc"), "0").unwrap();
    let launch = parse_fire_linux(&r.exec(&fire).await.unwrap(), &j, false);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(matches!(launch, Launch::LockHeld { .. }), "{launch:?}");
    assert_eq!(calls(), "");

    // The set fails: nothing fires.
    std::fs::write(d("rc"), "1").unwrap();
    let out = r.exec(&fire).await.unwrap();
    assert!(!out.stdout_str().contains("NixgateFire"), "{out:?}");
    match parse_fire_linux(&out, &j, false) {
        Launch::ProfileSetFailed { error } => {
            assert!(error.contains("exited 1"), "{error}");
            assert!(error.contains("No space left on device"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // A job wrongly started would have written its `started` by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!std::path::Path::new(&status).exists(), "nothing started");

    // Set, then fired.
    std::fs::write(d("rc"), "0").unwrap();
    let out = r.exec(&fire).await.unwrap();
    let text = out.stdout_str();
    let (set_at, fire_at) = (text.find("NixgateProfileSet=0"), text.find("NixgateFire=0"));
    assert!(set_at.is_some() && set_at < fire_at, "{out:?}");
    let want = format!("-p {} --set {SYS}\n", d("profile"));
    assert_eq!(
        calls(),
        format!("{want}{want}"),
        "the failed set and this one"
    );
    for _ in 0..100 {
        if std::fs::read_to_string(&status).is_ok_and(|s| s.starts_with("exited")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "booted\n");
}

/// [`FIRE_LINUX`] for real, arming a revert (stand-in `systemd-run` and
/// `systemctl` first on `PATH` record their arguments; the timer's start
/// succeeds or is refused as told, `is-active` says what it is told):
/// nothing is armed while the lock is held; the script is written and the
/// timer started before the job; a refused start with the timer active
/// (an earlier attempt's) keeps it; refused twice with none active, the
/// fire stops the timer, removes the script, says so and starts nothing.
#[tokio::test]
async fn the_fire_arms_the_revert_once_the_lock_is_free_and_only_then_fires() {
    if !crate::activation::deadman::tests::have("flock") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    std::fs::create_dir(d("bin")).unwrap();
    let stand_in = |name: &str, body: String| {
        std::fs::write(d(&format!("bin/{name}")), body).unwrap();
        std::fs::set_permissions(
            d(&format!("bin/{name}")),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    };
    let calls = d("calls");
    stand_in(
        "systemd-run",
        format!(
            "#!/bin/sh\necho \"systemd-run $*\" >> {calls}\n[ \"$(cat {start})\" = ok ] && exit 0\necho 'Failed to start transient timer unit: Unit u.timer was already loaded' >&2\nexit 1\n",
            start = d("start")
        ),
    );
    stand_in(
        "systemctl",
        format!(
            "#!/bin/sh\necho \"systemctl $*\" >> {calls}\n[ \"$1\" != is-active ] || cat {state}\nexit 0\n",
            state = d("timer")
        ),
    );
    let (lock, status, log, script) = (
        d("lock"),
        d("jobs/j.status"),
        d("jobs/j.log"),
        d("revert/u.sh"),
    );
    let body = "#!/bin/sh\n# the revert\nset -- 'a b' '%s'\n";
    let j = job(Os::Linux, SwitchAction::Test).arming(crate::activation::deadman::FireArm {
        unit: "u".into(),
        due: tokio::time::Instant::now() + Duration::from_secs(90),
        script: script.clone(),
        body: body.into(),
    });
    let fire = Command::script(FIRE_LINUX)
        .env(
            "PATH",
            format!("{}:{}", d("bin"), std::env::var("PATH").unwrap()),
        )
        .args([&lock, "nixgate-switch-real.service", &status, &d("current")])
        .args(["0", "", &d("jobs"), &log, "0", "", "", "120"])
        .args(["u", "90", &script, body])
        .args(detached(&status, &log))
        .args(["/bin/sh", "-c", "echo tested"]);
    let r = LocalRemote::new("local");
    // What the fire asked of systemd, its first poll's `show` aside.
    let took = || {
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("systemctl show"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    // The job runs in the background (the stand-in for `systemd-run` is
    // `&`): its wrapper's first line, its `started`, may come after the
    // fire has answered (1 run in 3 failed here under load, checked at
    // once). Nothing fired: no status, however long one waits.
    let fired = || async {
        for _ in 0..100 {
            if std::path::Path::new(&status).exists() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    let reset = || {
        let _ = std::fs::remove_file(&calls);
        let _ = std::fs::remove_dir_all(d("jobs"));
    };

    // Held: nothing armed, nothing fired; the process holding the lock is
    // named (from /proc/locks), with its command line.
    std::fs::write(&lock, "").unwrap();
    let mut holder = hold_lock(&lock).await;
    std::fs::write(d("start"), "ok").unwrap();
    let launch = parse_fire_linux(&r.exec(&fire).await.unwrap(), &j, false);
    let pid = holder.id();
    holder.kill().unwrap();
    holder.wait().unwrap();
    match &launch {
        Launch::LockHeld { processes, .. } => assert!(
            processes
                .iter()
                // `flock --no-fork` execs its command, which keeps the lock.
                .any(|p| p.pid == pid && p.command == "sleep 30" && p.running_secs.is_some()),
            "{launch:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(!took().contains("systemd-run"), "{}", took());
    assert!(!std::path::Path::new(&script).exists());
    let _ = std::fs::remove_file(&calls);

    // Armed, then fired: the script written as given, the timer started
    // (a fresh fire of a name a stop once marked runs: the mark goes).
    let marked = format!("{status}.stopped");
    std::fs::create_dir_all(std::path::Path::new(&marked).parent().unwrap()).unwrap();
    std::fs::write(&marked, "").unwrap();
    let out = r.exec(&fire).await.unwrap();
    assert!(!std::path::Path::new(&marked).exists());
    let text = out.stdout_str();
    let (armed_at, fire_at) = (text.find("NixgateArmed=new"), text.find("NixgateFire=0"));
    assert!(armed_at.is_some() && armed_at < fire_at, "{out:?}");
    assert!(matches!(
        parse_fire_linux(&out, &j, false),
        Launch::Tried {
            outcome: FireOutcome::Started,
            ..
        }
    ));
    assert_eq!(std::fs::read_to_string(&script).unwrap(), body);
    let arm = format!(
        "systemd-run --unit=u --description=nixgate: revert unless the switch is confirmed \
         --on-active=90s --timer-property=AccuracySec=1s --collect --no-ask-password \
         --service-type=exec -- /bin/sh {script}\n"
    );
    assert_eq!(took(), arm);
    assert!(fired().await);

    // Refused, an earlier attempt's timer active: kept, fired.
    reset();
    std::fs::write(d("start"), "refuse").unwrap();
    std::fs::write(d("timer"), "active\n").unwrap();
    let out = r.exec(&fire).await.unwrap();
    assert!(out.stdout_str().contains("NixgateArmed=kept"), "{out:?}");
    assert_eq!(took(), format!("{arm}systemctl is-active u.timer\n"));
    assert!(fired().await);

    // Refused twice, none active: nothing fired, and why.
    reset();
    std::fs::write(d("timer"), "inactive\n").unwrap();
    let out = r.exec(&fire).await.unwrap();
    assert!(out.stdout_str().contains("NixgateArmed=failed"), "{out:?}");
    assert!(!out.stdout_str().contains("NixgateFire"), "{out:?}");
    match parse_fire_linux(&out, &j, false) {
        Launch::ArmFailed { error } => assert!(error.contains("already loaded"), "{error}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        took(),
        format!(
            "{arm}systemctl is-active u.timer\nsystemctl stop u.timer u.service\n\
             systemctl reset-failed u.timer u.service\n{arm}systemctl stop u.timer\n"
        )
    );
    // A job wrongly started would have written its `started` by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!std::path::Path::new(&status).exists(), "nothing started");
    // A start refused yet under way (a D-Bus timeout) reverts nothing
    // later: its timer stopped, its script gone.
    assert!(!std::path::Path::new(&script).exists());
}

/// `flock` holding `lock` (as switch-to-configuration holds it), returned
/// once it has it: a probe that starts nothing waits for it (the holder's
/// start is not instant on a busy machine; a fire that found the lock
/// still free started the job, and a test failed "nothing started", 1 run
/// in 30 under load).
async fn hold_lock(lock: &str) -> std::process::Child {
    let holder = std::process::Command::new("flock")
        .args(["--exclusive", "--no-fork", lock, "sleep", "30"])
        .spawn()
        .unwrap();
    let held = || {
        !std::process::Command::new("flock")
            .args(["--nonblock", "--shared", lock, "true"])
            .status()
            .unwrap()
            .success()
    };
    for _ in 0..200 {
        if held() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(held(), "the holder never took the lock");
    holder
}
