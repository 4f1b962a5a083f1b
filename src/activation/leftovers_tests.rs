//! Settling what an earlier run left: against the fake host, paused time.

use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::activation::fake_host::{FakeHost, Job, SYSTEM, describe};
use crate::nix::StorePath;

const OLD: &str = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.05";
const MID: &str = "/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-nixos-system-web1-24.11";

fn sp(s: &str) -> StorePath {
    StorePath::parse(s).unwrap()
}

fn settings() -> HostSettings {
    let mut s = HostSettings::new(Os::Linux);
    s.activation_timeout = Duration::from_secs(60);
    s
}

/// A host an earlier run `r0` was switching to MID when its controller
/// died: its switch still running for `polls` more looks, its revert
/// (back to OLD) armed.
fn left_by_a_killed_run(polls: u32) -> FakeHost {
    let host = FakeHost::new(&sp(OLD));
    let mut st = host.state();
    st.current = sp(MID);
    st.jobs.insert(
        "nixgate-switch-r0".into(),
        Job {
            closure: sp(MID),
            action: "test".into(),
            status: "started".into(),
            running: true,
            polls_left: polls,
            log: Vec::new(),
        },
    );
    st.lock_held = true;
    let args = [
        "/var/lib/nixgate/deadman",
        "r0",
        OLD,
        MID,
        SYSTEM,
        "",
        "nixgate-switch-r0",
        "nixgate-confirm-r0",
    ];
    st.timers.insert(
        "nixgate-confirm-r0".into(),
        (1, args.iter().map(|s| s.to_string()).collect()),
    );
    drop(st);
    host
}

/// Settle for a run `run` of MID.
async fn settle_on(
    host: &FakeHost,
    run: &str,
) -> (anyhow::Result<Settled>, Vec<Step>, Vec<String>) {
    let remote = host.remote();
    let steps = Mutex::new(Vec::new());
    let run = RunId::parse(run).unwrap();
    let r = settle(&remote, &settings(), &run, &sp(MID), &|e| {
        if let ActivationEvent::Step { step } = e {
            steps.lock().unwrap().push(step)
        }
    })
    .await;
    let cmds = remote.commands().iter().map(describe).collect();
    (r, steps.into_inner().unwrap(), cmds)
}

#[tokio::test(start_paused = true)]
async fn an_earlier_switch_is_waited_for_then_its_armed_revert_runs_now() {
    let host = left_by_a_killed_run(3);
    let (r, steps, cmds) = settle_on(&host, "r1").await;
    let settled = r.unwrap();
    assert!(settled.changed, "an earlier run's units were settled");
    // Read once r0's switch had ended, not as it ran.
    let last = settled.last_switch.expect("r0's switch of MID");
    assert_eq!(last.unit, "nixgate-switch-r0");
    assert_eq!(last.exit, Some(0));
    assert_eq!(
        steps,
        [
            Step::AwaitEarlierRun {
                units: vec!["nixgate-switch-r0.service".into()]
            },
            Step::RunEarlierRevert {
                unit: "nixgate-confirm-r0".into()
            }
        ]
    );
    assert!(
        cmds.contains(&"run-revert nixgate-confirm-r0".to_string()),
        "{cmds:?}"
    );
    let st = host.state();
    // Back where r0 promised: what ran before it, its revert recorded, no
    // timer left to take this run's deploy back later.
    assert_eq!(st.current, sp(OLD));
    assert!(st.timers.is_empty());
    assert!(
        st.revert_records
            .contains_key("/var/lib/nixgate/deadman/r0.json")
    );
}

#[tokio::test(start_paused = true)]
async fn this_runs_own_units_and_a_quiet_host_are_left_alone() {
    let host = FakeHost::new(&sp(OLD));
    let (r, steps, cmds) = settle_on(&host, "r1").await;
    assert_eq!(r.unwrap(), Settled::default(), "nothing of an earlier run");
    assert!(steps.is_empty());
    assert_eq!(cmds, [format!("list-nixgate-units /run/nixgate {MID}")]);
    let found = parse(
        "NixgateUnit=nixgate-switch-r1-persist.service active running\n\
         NixgateUnit=nixgate-confirm-r1.timer active waiting\n\
         NixgateUnit=nixgate-switch-r10.service active running\n\
         NixgateUnit=nixgate-switch-r0.service inactive dead\n\
         NixgateUnit=nixgate-confirm-r0.timer active waiting\n",
        &RunId::parse("r1").unwrap(),
    );
    assert_eq!(found.running, ["nixgate-switch-r10.service"]);
    assert_eq!(found.armed, ["nixgate-confirm-r0"]);
}

#[tokio::test(start_paused = true)]
async fn an_earlier_switch_running_past_the_budget_fails_with_what_to_do() {
    let host = left_by_a_killed_run(u32::MAX);
    let started = tokio::time::Instant::now();
    let (r, _, _) = settle_on(&host, "r1").await;
    let e = format!("{:#}", r.unwrap_err());
    assert!(
        e.contains("nixgate-switch-r0.service") && e.contains("systemctl stop"),
        "{e}"
    );
    assert!(started.elapsed() <= Duration::from_secs(61));
    // Nothing was reverted under a switch still running.
    assert_eq!(host.state().timers.len(), 1);
}

/// Darwin, for real in this machine's shell (`setsid`, `ps`): an earlier
/// run `r0` left its switch running (a process group whose leader's pid
/// is in the job dir) and its revert's sleeper armed. The switch is waited
/// for, then the revert runs now, once, in a group of its own (its sleeper
/// gone); a pid file whose process is not nixgate's (a pid reused) is not
/// taken for one. Before, Darwin hosts were left as they were: the sleeper
/// switched the host back after this run marked it known-good.
///
/// Linux only (`setsid(1)`, `/proc`), and it relies on PID 1 reaping the
/// killed sleeper (an orphan): a zombie keeps its group alive to `kill -s
/// 0`, as in the Darwin re-arm's tests.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_darwin_hosts_earlier_switch_is_waited_for_and_its_revert_runs_now() {
    if !crate::activation::deadman::tests::have("setsid") {
        return;
    }
    use crate::activation::deadman::{Armed, Arming, arm_command};
    use crate::activation::settings::HostPaths;
    use crate::remote::local::LocalRemote;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut s = HostSettings::new(Os::Darwin);
    s.activation_timeout = Duration::from_secs(30);
    s.paths = HostPaths {
        job_dir: format!("{d}/jobs"),
        known_good_records: format!("{d}/var/known-good"),
        ..HostPaths::for_os(Os::Darwin)
    };
    std::fs::create_dir_all(format!("{d}/jobs")).unwrap();
    std::fs::create_dir_all(format!("{d}/var/deadman")).unwrap();
    // r0's switch: still running for a second, its group's leader's pid kept.
    let status = format!("{d}/jobs/nixgate-switch-r0.status");
    let mut switch = spawn_group(&["sh", "-c", "sleep 1", "nixgate-job", &status]);
    let pid_file = |run: &str| format!("{d}/jobs/nixgate-switch-{run}.pid");
    std::fs::write(pid_file("r0"), format!("{}\n", switch.id())).unwrap();
    // A pid file whose pid is another program's now (a nixgate one even).
    let mut other = spawn_group(&["sh", "-c", "sleep 30", "nixgate-job"]);
    std::fs::write(pid_file("r9"), format!("{}\n", other.id())).unwrap();
    // r0's revert, armed for 60 s: a stand-in marking its start as REVERT
    // does, writing its record before it removes its mark (a look between
    // the two read a live revert with neither as an armed one: "ran, yet
    // still armed", under load), and removing itself and its pid file at
    // its end.
    let armed = Armed::for_run(
        &RunId::parse("r0").unwrap(),
        Os::Darwin,
        &s.paths,
        Duration::from_secs(60),
    );
    let revert = format!(
        ": > {d}/var/deadman/.r0.started\ngrep SigIgn /proc/$$/status > {d}/ignored\nsleep 1\necho ran >> {d}/reverted\n\
         echo '{{}}' > {d}/var/deadman/r0.json\n\
         rm -f {d}/var/deadman/.r0.started \"$0\" \"$0.arming\" \"${{0%.sh}}.pid\"\n"
    );
    let local = LocalRemote::new("local");
    let arm = arm_command(&armed, Arming::Fresh, false);
    let armed_out = crate::remote::exec_input(&local, &arm, revert.as_bytes()).await;
    assert!(armed_out.unwrap().success());
    let sleeper: u32 = std::fs::read_to_string(&armed.pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Settled, as a run that comes later finds them (a group not led yet
    // reads as gone).
    for pid in [switch.id(), other.id(), sleeper] {
        crate::activation::deadman::tests::settled_in_its_group(pid);
    }
    let steps = Mutex::new(Vec::new());
    let r = settle(&local, &s, &RunId::parse("r1").unwrap(), &sp(MID), &|e| {
        if let ActivationEvent::Step { step } = e {
            steps.lock().unwrap().push(step)
        }
    })
    .await;
    r.unwrap();
    assert_eq!(
        steps.into_inner().unwrap(),
        [
            Step::AwaitEarlierRun {
                units: vec!["nixgate-switch-r0.service".into()]
            },
            Step::RunEarlierRevert {
                unit: "nixgate-confirm-r0".into()
            },
            // Started, and waited for by the looks (not by the command).
            Step::AwaitEarlierRun {
                units: vec!["nixgate-confirm-r0.service".into()]
            }
        ]
    );
    assert_eq!(
        std::fs::read_to_string(format!("{d}/reverted")).unwrap(),
        "ran\n"
    );
    assert!(!std::path::Path::new(&armed.pid_file).exists());
    assert!(!std::path::Path::new(&armed.script).exists());
    // The revert runs with TERM as it comes (the disarm, a re-arm, a
    // person stop it with TERM), not ignored as the command that ran it.
    let ignored = std::fs::read_to_string(format!("{d}/ignored")).unwrap();
    let mask =
        u64::from_str_radix(ignored.trim().trim_start_matches("SigIgn:").trim(), 16).unwrap();
    assert_eq!(mask & (1 << (15 - 1)), 0, "TERM ignored: {ignored}");
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    assert!(!alive(sleeper), "the sleeper lives on");
    let _ = other.kill();
    let _ = (other.wait(), switch.wait());
}

/// nixgate's last live switch of the candidate, read for real (this
/// machine's `sh`, the real job wrapper) from the job dir: of the jobs
/// there, the one that ended last among the candidate's `test` and
/// `switch` jobs (not its `boot`, not another closure's, not a status file
/// of an older nixgate, which names no program), with what it exited with;
/// `started`, a job that never said it ended, is no exit.
#[tokio::test]
async fn the_last_switch_of_the_candidate_is_read_from_its_jobs_status() {
    use crate::activation::switch::JOB_WRAPPER;
    use crate::remote::local::{LocalRemote, executable};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let jobs = format!("{d}/jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    // Closures whose switch exits with what `code` says.
    let (x, y) = (format!("{d}/x"), format!("{d}/y"));
    for c in [&x, &y] {
        std::fs::create_dir_all(format!("{c}/bin")).unwrap();
        let body = format!("#!/bin/sh\nexit $(cat {d}/code)\n");
        executable(format!("{c}/bin/switch-to-configuration"), &body);
    }
    let local = LocalRemote::new("local");
    let at = std::time::SystemTime::now();
    // A job of `closure`: run by the wrapper, its status dated `secs` on.
    let job = |unit: &'static str, closure: &str, action: &'static str, code: u32, secs: u64| {
        std::fs::write(format!("{d}/code"), code.to_string()).unwrap();
        let status = format!("{jobs}/nixgate-switch-{unit}.status");
        let cmd = Command::new("/bin/sh")
            .args(["-c", JOB_WRAPPER, "nixgate-job"])
            .args([status.clone(), format!("{jobs}/nixgate-switch-{unit}.log")])
            .args([
                format!("{closure}/bin/switch-to-configuration"),
                action.into(),
            ]);
        let local = &local;
        async move {
            let out = local.exec(&cmd).await.unwrap();
            assert_eq!(out.exit, crate::remote::Exit::Code { code }, "{out:?}");
            let file = std::fs::File::options().write(true).open(&status).unwrap();
            file.set_modified(at + Duration::from_secs(secs)).unwrap();
        }
    };
    let last = || async {
        let list = Command::script(LIST).arg(&jobs).arg(&x);
        let out = local.exec(&list).await.unwrap();
        assert!(out.success(), "{out:?}");
        parse(&out.stdout_str(), &RunId::parse("r9").unwrap()).last_switch
    };
    assert_eq!(last().await, None, "no job yet");
    job("r0", &x, "test", 4, 10).await;
    job("r0-persist", &x, "boot", 0, 20).await;
    job("r1", &y, "test", 0, 30).await;
    std::fs::write(format!("{jobs}/nixgate-switch-r2.status"), "exited 0\n").unwrap();
    let r0 = LastSwitch {
        unit: "nixgate-switch-r0".into(),
        exit: Some(4),
    };
    assert_eq!(last().await, Some(r0.clone()));
    // A later switch of it that went well; one dated before it, not.
    job("r3", &x, "switch", 0, 40).await;
    job("r0-rollback", &x, "test", 0, 5).await;
    let r3 = last().await.expect("r3");
    assert_eq!((r3.unit.as_str(), r3.exit), ("nixgate-switch-r3", Some(0)));
    assert!(!r3.failed());
    // One that never said it ended (stopped as hung).
    let status = format!("{jobs}/nixgate-switch-r4.status");
    std::fs::write(
        &status,
        format!("started\n{x}/bin/switch-to-configuration test\n"),
    )
    .unwrap();
    let file = std::fs::File::options().write(true).open(&status).unwrap();
    file.set_modified(at + Duration::from_secs(50)).unwrap();
    let r4 = last().await.expect("r4");
    assert_eq!((r4.unit.as_str(), r4.exit), ("nixgate-switch-r4", None));
    assert!(r4.failed() && r0.failed());
    // A rollback to it whose exit 4 (units failing before) was accepted,
    // newer: not the candidate's switch.
    job("r5-rollback", &x, "test", 4, 60).await;
    job("r5-rollback-try2", &x, "test", 4, 61).await;
    assert_eq!(last().await.expect("r4").unit, "nixgate-switch-r4");
}

/// nix-darwin: the job's program is `sh -c <activation script> ...
/// <closure>` (several lines): its last line names the closure.
#[tokio::test]
async fn the_last_activation_of_a_darwin_candidate_is_read_from_its_jobs_status() {
    use crate::activation::switch::JOB_WRAPPER;
    use crate::remote::local::{LocalRemote, executable};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let jobs = format!("{d}/jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let x = format!("{d}/x");
    std::fs::create_dir_all(&x).unwrap();
    executable(
        format!("{x}/activate"),
        "#!/bin/sh
exit 2
",
    );
    let closure =
        StorePath::parse(&format!("/nix/store/{}-darwin-system", "a".repeat(32))).unwrap();
    let program = crate::activation::darwin_activate::program(&closure, false);
    // The job as the wrapper runs it, its program pointed at `x` to run
    // here; the status then says the closure's program, as on a Mac.
    let status = format!("{jobs}/nixgate-switch-r0.status");
    let mut argv = program.clone();
    *argv.last_mut().unwrap() = x.clone();
    let local = LocalRemote::new("local");
    let cmd = Command::new("/bin/sh")
        .args(["-c", JOB_WRAPPER, "nixgate-job"])
        .args([status.clone(), format!("{jobs}/nixgate-switch-r0.log")])
        .args(argv);
    let out = local.exec(&cmd).await.unwrap();
    assert_eq!(out.exit, crate::remote::Exit::Code { code: 2 }, "{out:?}");
    let text = std::fs::read_to_string(&status).unwrap();
    std::fs::write(&status, text.replace(&x, closure.as_str())).unwrap();
    let list = Command::script(LIST).arg(&jobs).arg(closure.as_str());
    let out = local.exec(&list).await.unwrap();
    let last = parse(&out.stdout_str(), &RunId::parse("r9").unwrap()).last_switch;
    let last = last.expect("the Darwin activation of the candidate");
    assert_eq!(
        (last.unit.as_str(), last.exit),
        ("nixgate-switch-r0", Some(2))
    );
}

/// `argv` in a session (and group) of its own (its leader's pid is the
/// child's: a process that leads no group, `setsid` does not fork).
fn spawn_group(argv: &[&str]) -> std::process::Child {
    std::process::Command::new("setsid")
        .args(argv)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// A Darwin revert that began (its mark made) when the run came to run it
/// now is left to finish, not killed mid-way and run again: its group
/// lives on and the command says it is done with it.
#[cfg(target_os = "linux")]
#[test]
fn a_darwin_revert_under_way_is_not_cut_short() {
    if !crate::activation::deadman::tests::have("setsid") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut revert = spawn_group(&["sh", "-c", "sleep 30", "nixgate-confirm-r0"]);
    let (pid_file, script, mark) = (
        format!("{d}/r0.pid"),
        format!("{d}/r0.sh"),
        format!("{d}/.r0.started"),
    );
    std::fs::write(&pid_file, format!("{}\n", revert.id())).unwrap();
    std::fs::write(&script, "echo again >> ran\n").unwrap();
    std::fs::write(&mark, "").unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", RUN_REVERT_DARWIN, "sh", &pid_file, &script, &mark])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        revert.try_wait().unwrap().is_none(),
        "the revert under way was killed"
    );
    assert!(
        !std::path::Path::new(&format!("{d}/ran")).exists(),
        "run again"
    );
    let _ = revert.kill();
    let _ = revert.wait();
}

/// A revert that starts slowly (a loaded host: `setsid` played by one
/// that waits 2 s first) is waited for until it made its mark: the
/// command does not end with nothing of the revert to see. Before, its
/// pid file was the revert's own to write and the wait gave up on a
/// missing one after 1 s: the next look found nothing, the run deployed,
/// and the revert switched the host back under it.
#[cfg(target_os = "linux")]
#[test]
fn a_darwin_revert_slow_to_start_is_waited_for() {
    use crate::remote::local::executable;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    std::fs::create_dir_all(format!("{d}/bin")).unwrap();
    let real = ["/usr/bin/setsid", "/bin/setsid"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("setsid(1)");
    executable(
        format!("{d}/bin/setsid"),
        &format!("#!/bin/sh\nsleep 2\nexec {real} \"$@\"\n"),
    );
    let (pid_file, script, mark) = (
        format!("{d}/r0.pid"),
        format!("{d}/r0.sh"),
        format!("{d}/.r0.started"),
    );
    // The revert: its mark, a while, then gone (mark, script, pid file).
    let body = format!(": > {mark}\nsleep 1\nrm -f {mark} \"$0\" {pid_file}\n");
    std::fs::write(&script, body).unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", RUN_REVERT_DARWIN, "sh", &pid_file, &script, &mark])
        .env("PATH", format!("{d}/bin:/usr/bin:/bin"))
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let seen = std::path::Path::new(&mark).exists() || !std::path::Path::new(&script).exists();
    assert!(seen, "the command ended before the revert began");
    // Let it end before the temp dir goes.
    for _ in 0..100 {
        if !std::path::Path::new(&pid_file).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
