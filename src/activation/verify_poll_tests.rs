//! Tests of step 5: parsing real `systemctl show` output, the poll loop's
//! outcomes under paused time, and a real detached job on this machine.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::activation::settings::{HostPaths, Os, RunId};
use crate::activation::switch::{self, JobPurpose};
use crate::gates::SwitchAction;
use crate::remote::Output;
use crate::remote::local::LocalRemote;
use crate::remote::scripted::{ScriptedRemote, ok};

pub(crate) const OLD: &str = "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.05";
pub(crate) const NEW: &str = "/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-nixos-system-web1-24.11";
const ODD: &str = "/nix/store/wsapfasykqjyaw5h4glxcsgprzxp7bjd-nixos-system-web1-other";

/// `systemctl show` of a running transient unit, as systemd prints it (the
/// Service properties come before the Unit ones, whatever order was asked).
const RUNNING: &str = "Result=success\nExecMainCode=0\nExecMainStatus=0\nLoadState=loaded\nActiveState=active\nSubState=running\n";
/// ... of a unit collected after it finished: indistinguishable from success.
const COLLECTED: &str = "Result=success\nExecMainCode=0\nExecMainStatus=0\nLoadState=not-found\nActiveState=inactive\nSubState=dead\n";

pub(crate) fn sp(s: &str) -> StorePath {
    StorePath::parse(s).unwrap()
}

/// A test-action job of run `r1` (the detached tests use it too).
pub(crate) fn job() -> SwitchJob {
    SwitchJob::new(
        &RunId::parse("r1").unwrap(),
        JobPurpose::Candidate,
        SwitchAction::Test,
        &sp(NEW),
        Os::Linux,
        &HostPaths::for_os(Os::Linux),
    )
}

fn answer(unit: &str, status: &str, current: &str) -> String {
    format!("{unit}NixgateStatus={status}\nNixgateCurrent={current}\n")
}

#[test]
fn parses_running_finished_and_gone() {
    let s = parse_poll(&answer(RUNNING, "started", OLD)).unwrap();
    assert_eq!(s.job, JobState::Running);
    assert_eq!(s.current, Some(sp(OLD)));
    assert_eq!(s.unit.as_ref().unwrap().sub_state, "running");
    // Status file written before the unit shows up as started: still running.
    assert_eq!(
        parse_poll(&answer(RUNNING, "absent", OLD)).unwrap().job,
        JobState::Running
    );
    let s = parse_poll(&answer(COLLECTED, "exited 4", NEW)).unwrap();
    assert_eq!(s.job, JobState::Exited { code: 4 });
    assert_eq!(s.unit.unwrap().load_state, "not-found");
    assert_eq!(
        parse_poll(&answer(COLLECTED, "started", OLD)).unwrap().job,
        JobState::Gone { started: true }
    );
    assert_eq!(
        parse_poll(&answer(COLLECTED, "absent", OLD)).unwrap().job,
        JobState::Gone { started: false }
    );
    // A failed (not collected) unit killed by SIGTERM.
    let failed = "Result=signal\nExecMainCode=2\nExecMainStatus=15\nLoadState=loaded\nActiveState=failed\nSubState=failed\n";
    assert_eq!(
        parse_poll(&answer(failed, "started", OLD)).unwrap().job,
        JobState::Gone { started: true }
    );
    // Darwin form.
    let s = parse_poll("NixgateAlive=yes\nNixgateStatus=started\nNixgateCurrent=\n").unwrap();
    assert_eq!(s.job, JobState::Running);
    assert_eq!(s.current, None);
    assert!(parse_poll("").is_err());
    // `systemctl show` failed (D-Bus busy, no systemctl): the job's own
    // status and the link decide; that is no lost connection.
    let s = parse_poll(&format!(
        "NixgateSystemctl=failed\nNixgateStatus=exited 0\nNixgateCurrent={NEW}\n"
    ))
    .unwrap();
    assert_eq!(s.job, JobState::Exited { code: 0 });
    assert_eq!(s.current, Some(sp(NEW)));
    assert_eq!(s.unit, None);
    let s = parse_poll("NixgateSystemctl=failed\nNixgateStatus=started\n").unwrap();
    assert_eq!(
        s.job,
        JobState::Running,
        "unknown: wait on, within the budget"
    );
    let s = parse_poll("NixgateSystemctl=failed\nNixgateStatus=absent\n").unwrap();
    assert_eq!(s.job, JobState::Gone { started: false });
}

const WATCHED: Watched<'static> = Watched {
    current_system: "/run/current-system",
    profile: Some("/nix/var/nix/profiles/system"),
};

#[test]
fn poll_argv() {
    let cmd = poll_command(&job(), WATCHED, Duration::from_millis(450));
    assert_eq!(
        cmd.argv(),
        &[
            "sh",
            "-c",
            POLL_LINUX,
            "nixgate",
            "nixgate-switch-r1.service",
            "/run/nixgate/nixgate-switch-r1.status",
            "/run/current-system",
            // Tenths of a second to wait on the host, rounded up.
            "5",
            "/nix/var/nix/profiles/system"
        ]
        .map(String::from)
    );
    let unwatched = Watched {
        profile: None,
        ..WATCHED
    };
    let cmd = poll_command(&job(), unwatched, Duration::ZERO);
    assert_eq!(cmd.argv()[7..], ["0".to_string(), String::new()]);
}

/// The poll script for real: it waits on the host until the job's status
/// says `exited` (not the whole wait), then reports the links; a job that
/// is still running is reported after the wait.
#[tokio::test]
async fn the_poll_waits_on_the_host_for_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    std::os::unix::fs::symlink(NEW, d("current")).unwrap();
    std::os::unix::fs::symlink(NEW, d("profile")).unwrap();
    std::fs::write(d("status"), "started\n").unwrap();
    let mut j = job();
    j.status_file = d("status");
    let watched = Watched {
        current_system: &d("current"),
        profile: Some(&d("profile")),
    };
    let r = LocalRemote::new("local");
    // Still running: answered after the wait (0.3 s), no profile read.
    let t0 = std::time::Instant::now();
    let snap = poll_once(&r, &j, watched, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(snap.job, JobState::Running);
    assert_eq!(snap.profile, None);
    // The job exits 0.4 s into a 10 s wait: the answer comes then.
    let status = d("status");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(400));
        std::fs::write(status, "exited 0\n").unwrap();
    });
    let t0 = std::time::Instant::now();
    let snap = poll_once(&r, &j, watched, Duration::from_secs(10))
        .await
        .unwrap();
    let took = t0.elapsed();
    writer.join().unwrap();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(
        took < Duration::from_secs(5),
        "not the whole 10 s: {took:?}"
    );
    assert_eq!(snap.job, JobState::Exited { code: 0 });
    assert_eq!(snap.current, Some(sp(NEW)));
    assert_eq!(snap.profile, Some(Some(sp(NEW))));
    // An absent profile reads as absent.
    std::fs::remove_file(d("profile")).unwrap();
    let snap = poll_once(&r, &j, watched, Duration::ZERO).await.unwrap();
    assert_eq!(snap.profile, Some(None));
}

/// A scripted host answering polls from a list; the last answer repeats.
fn sequenced(answers: Vec<Output>) -> ScriptedRemote {
    let n = AtomicUsize::new(0);
    ScriptedRemote::new("web1", move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst).min(answers.len() - 1);
        answers[i].clone()
    })
}

async fn run(r: &ScriptedRemote, timeout_s: u64) -> (VerifyOutcome, Vec<PollEvent>) {
    run_from(r, timeout_s, None).await
}

/// `first`: the fire's own poll.
async fn run_from(
    r: &ScriptedRemote,
    timeout_s: u64,
    first: Option<PollSnapshot>,
) -> (VerifyOutcome, Vec<PollEvent>) {
    let events = Mutex::new(Vec::new());
    let now = tokio::time::Instant::now();
    let out = verify_poll(
        r,
        &job(),
        WATCHED,
        &sp(NEW),
        &sp(OLD),
        Duration::from_secs(2),
        now + Duration::from_secs(timeout_s),
        FirstPoll {
            fired_at: now,
            snapshot: first,
        },
        &|e| events.lock().unwrap().push(e),
    )
    .await;
    (out, events.into_inner().unwrap())
}

#[tokio::test(start_paused = true)]
async fn settles_after_running_polls() {
    let r = sequenced(vec![
        ok(&answer(RUNNING, "started", OLD)),
        ok(&answer(RUNNING, "started", NEW)),
        ok(&answer(COLLECTED, "exited 0", NEW)),
    ]);
    let (out, events) = run(&r, 300).await;
    // Each poll waits on the host up to the 2 s interval; this host answers
    // at once (as one whose `sleep` cannot wait would), so the controller
    // waits out the rest: one poll per interval while the job runs.
    assert_eq!(
        out,
        VerifyOutcome::Settled {
            elapsed: Duration::from_secs(4),
            polls: 3,
            profile: None,
        }
    );
    assert_eq!(events.len(), 3);
    // One command per poll, each asking the host to wait 2 s.
    assert_eq!(r.argvs().len(), 3);
    assert!(r.argvs().iter().all(|a| a[7] == "20"), "{:?}", r.argvs());
}

/// The fire's own poll counts as the first: a job it saw finish needs no
/// command more, and its profile reading comes out with the outcome.
#[tokio::test(start_paused = true)]
async fn the_fires_poll_is_the_first() {
    let r = sequenced(vec![ok(&answer(COLLECTED, "exited 0", NEW))]);
    let mut first = parse_poll(&answer(COLLECTED, "exited 0", NEW)).unwrap();
    first.profile = Some(Some(sp(NEW)));
    let (out, events) = run_from(&r, 300, Some(first)).await;
    assert_eq!(
        out,
        VerifyOutcome::Settled {
            elapsed: Duration::ZERO,
            polls: 1,
            profile: Some(Some(sp(NEW))),
        }
    );
    assert_eq!(events.len(), 1);
    assert!(r.argvs().is_empty(), "no poll command");
    // Still running there: the next poll goes out at once (the host waited).
    let r = sequenced(vec![ok(&format!(
        "{}NixgateProfile={OLD}\n",
        answer(COLLECTED, "exited 0", NEW)
    ))]);
    let first = parse_poll(&answer(RUNNING, "started", OLD)).unwrap();
    let (out, _) = run_from(&r, 300, Some(first)).await;
    assert_eq!(
        out,
        VerifyOutcome::Settled {
            elapsed: Duration::ZERO,
            polls: 2,
            profile: Some(Some(sp(OLD))),
        }
    );
}

#[tokio::test(start_paused = true)]
async fn exit_4_after_flip_is_a_failure() {
    let r = sequenced(vec![ok(&answer(COLLECTED, "exited 4", NEW))]);
    match run(&r, 300).await.0 {
        VerifyOutcome::Exited { code, seen, .. } => {
            assert_eq!(code, 4);
            assert_eq!(seen, Some(sp(NEW)));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn flipped_to_unexpected() {
    let r = sequenced(vec![ok(&answer(COLLECTED, "exited 0", ODD))]);
    assert_eq!(
        run(&r, 300).await.0,
        VerifyOutcome::FlippedToUnexpected {
            seen: sp(ODD),
            code: Some(0)
        }
    );
    let r = sequenced(vec![ok(&answer(COLLECTED, "exited 0", OLD))]);
    assert_eq!(
        run(&r, 300).await.0,
        VerifyOutcome::NotFlipped {
            seen: Some(sp(OLD))
        }
    );
}

#[tokio::test(start_paused = true)]
async fn hang_times_out() {
    let r = sequenced(vec![ok(&answer(RUNNING, "started", NEW))]);
    match run(&r, 30).await.0 {
        VerifyOutcome::Timeout {
            elapsed,
            seen,
            last,
        } => {
            // A poll every 2 s (0 .. 28 s), and one at the 30 s deadline
            // (its wait cut to nothing), where the poll decides.
            assert_eq!(elapsed, Duration::from_secs(30));
            assert_eq!(seen, Some(sp(NEW)));
            assert_eq!(last, Some(JobState::Running));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.argvs().len(), 16);
    assert_eq!(r.argvs().last().unwrap()[7], "0");
}

#[tokio::test(start_paused = true)]
async fn a_poll_without_systemctl_still_settles_on_the_status_file() {
    let no_systemctl = |status: &str, current: &str| {
        ok(&format!(
            "NixgateSystemctl=failed\nNixgateStatus={status}\nNixgateCurrent={current}\n"
        ))
    };
    let r = sequenced(vec![
        no_systemctl("started", OLD),
        no_systemctl("exited 0", NEW),
    ]);
    let (out, events) = run(&r, 300).await;
    assert!(
        matches!(out, VerifyOutcome::Settled { polls: 2, .. }),
        "{out:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, PollEvent::ConnectionLost { .. })),
        "{events:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn connection_lost_is_retried_with_backoff() {
    let r = sequenced(vec![
        ok(&answer(RUNNING, "started", OLD)),
        Output::new(Exit::ConnectionLost, "", ""),
        Output::new(Exit::ConnectionLost, "", ""),
        ok(&answer(COLLECTED, "exited 0", NEW)),
    ]);
    let (out, events) = run(&r, 300).await;
    assert!(
        matches!(out, VerifyOutcome::Settled { polls: 2, .. }),
        "{out:?}"
    );
    let lost: Vec<(u32, Duration)> = events
        .iter()
        .filter_map(|e| match e {
            PollEvent::ConnectionLost {
                attempt, retry_in, ..
            } => Some((*attempt, *retry_in)),
            _ => None,
        })
        .collect();
    assert_eq!(
        lost,
        vec![(1, Duration::from_secs(1)), (2, Duration::from_secs(2))]
    );
}

/// A reconnect the host refuses for good (its host key changed, as a
/// reinstall does) ends the polling at once, saying so, with what the
/// last poll saw. Before, it was polled again with backoff until the
/// deadline (300 s here), then a `Timeout`.
#[tokio::test(start_paused = true)]
async fn a_reconnect_refused_for_good_ends_the_polling_at_once() {
    use crate::remote::patient::refusing::Refusing;
    let r = Refusing(std::sync::atomic::AtomicU32::new(0));
    let now = tokio::time::Instant::now();
    let events = Mutex::new(Vec::new());
    let out = verify_poll(
        &r,
        &job(),
        WATCHED,
        &sp(NEW),
        &sp(OLD),
        Duration::from_secs(2),
        now + Duration::from_secs(300),
        FirstPoll {
            fired_at: now,
            snapshot: Some(parse_poll(&answer(RUNNING, "started", OLD)).unwrap()),
        },
        &|e| events.lock().unwrap().push(e),
    )
    .await;
    match out {
        VerifyOutcome::ReconnectRefused {
            error,
            elapsed,
            seen,
        } => {
            assert!(error.contains("HOST KEY CHANGED"), "{error}");
            assert_eq!(elapsed, Duration::ZERO);
            assert_eq!(seen, Some(sp(OLD)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.0.load(Ordering::SeqCst), 1, "asked once");
    assert_eq!(now.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn vanished_without_status() {
    let r = sequenced(vec![ok(&answer(COLLECTED, "started", OLD))]);
    assert_eq!(
        run(&r, 300).await.0,
        VerifyOutcome::Vanished {
            started: true,
            unit: Some(
                parse_poll(&answer(COLLECTED, "x", OLD))
                    .unwrap()
                    .unit
                    .unwrap()
            )
        }
    );
}

/// End to end on this machine with the Darwin detach path (`setsid` +
/// `nohup`, which works on Linux too): a real store path whose `activate`
/// flips a `current-system` link after a moment, then exits with a code.
#[tokio::test]
#[ignore = "needs Nix and a writable store (root): run scripts/test"]
async fn real_detached_job_is_polled_to_the_end() {
    for code in [0u32, 4] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let current = d.join("current-system");
        std::os::unix::fs::symlink(d, &current).unwrap();
        let sys = d.join(format!("sys{code}"));
        std::fs::create_dir(&sys).unwrap();
        let script = format!(
            "#!/bin/sh\necho activating\nsleep 1\nln -sfn \"$(dirname \"$0\")\" {}\necho done\nexit {code}\n",
            current.display()
        );
        std::fs::write(sys.join("activate"), script).unwrap();
        std::process::Command::new("chmod")
            .args(["+x"])
            .arg(sys.join("activate"))
            .status()
            .unwrap();
        let out = std::process::Command::new("nix-store")
            .arg("--add")
            .arg(&sys)
            .output()
            .unwrap();
        assert!(out.status.success());
        let closure = sp(String::from_utf8(out.stdout).unwrap().trim());
        let mut paths = HostPaths::for_os(Os::Darwin);
        paths.job_dir = d.join("jobs").display().to_string();
        let job = SwitchJob::new(
            &RunId::parse(&format!("real{code}")).unwrap(),
            JobPurpose::Candidate,
            SwitchAction::Switch,
            &closure,
            Os::Darwin,
            &paths,
        );
        let r = LocalRemote::new("local");
        let watched = Watched {
            current_system: current.to_str().unwrap(),
            profile: None,
        };
        let around = switch::Around {
            lock: "/nonexistent",
            watched,
            wait: Duration::ZERO,
        };
        let fired_at = tokio::time::Instant::now();
        assert_eq!(
            switch::fire(&r, &job, (false, false), around, false).await,
            switch::Launch::Tried {
                unchecked: false,
                outcome: switch::FireOutcome::Started,
                first: None
            }
        );
        let previous = sp(OLD);
        let out = verify_poll(
            &r,
            &job,
            watched,
            &closure,
            &previous,
            Duration::from_millis(200),
            fired_at + Duration::from_secs(20),
            FirstPoll {
                fired_at,
                snapshot: None,
            },
            &|_| {},
        )
        .await;
        // The "previous" link here pointed outside the store, so a flip is
        // judged against expected only.
        match (code, out) {
            (0, VerifyOutcome::Settled { polls, .. }) => assert!(polls >= 2),
            (4, VerifyOutcome::Exited { code: 4, seen, .. }) => {
                assert_eq!(seen, Some(closure.clone()))
            }
            (_, other) => panic!("exit {code}: {other:?}"),
        }
        assert_eq!(
            switch::log_tail(&r, &job).await,
            vec!["activating".to_string(), "done".to_string()]
        );
    }
}

/// The host-side wait with `sleep` replaced by a function that logs its
/// argument (and fails for fractions when `frac_fails`): which sleeps it
/// takes, for a job that never exits.
fn sleeps_of_the_wait(ticks: u32, fine: u32, frac_fails: bool) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "sleep() {{ {} echo \"$1\" >> \"$log\"; }}\nstatus=$1/status; ticks={ticks}; fine={fine}\n{}",
        if frac_fails {
            "case $1 in *.*) return 1 ;; esac;"
        } else {
            ""
        },
        super::wait_for_exit!()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script, "wait", &dir.path().display().to_string()])
        .env("log", &log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_fires_wait_looks_every_25_ms_for_its_first_tenth_then_every_tenth() {
    // Four looks 25 ms apart count as one tenth; the second tenth is one.
    assert_eq!(
        sleeps_of_the_wait(2, 4, false),
        ["0.025", "0.025", "0.025", "0.025", "0.1"]
    );
    // A poll's wait (no fine looks): tenths only.
    assert_eq!(sleeps_of_the_wait(2, 0, false), ["0.1", "0.1"]);
    // A `sleep` without fractions: whole seconds, as before.
    assert_eq!(sleeps_of_the_wait(10, 4, true), ["1"]);
}

#[test]
fn the_wait_ends_at_once_for_a_job_that_has_exited() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("status"), "exited 0\n").unwrap();
    let script = format!(
        "sleep() {{ echo slept; }}\nstatus=$1/status; ticks=10; fine=4\n{}echo done",
        super::wait_for_exit!()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script, "wait", &dir.path().display().to_string()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
}
