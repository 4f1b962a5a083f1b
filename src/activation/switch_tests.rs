//! Tests of step 4: exact argv of the fire, lock check and stop commands, and
//! the fixed scripts run for real on this machine.

use super::*;
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

#[test]
fn linux_fire_argv() {
    let j = job(Os::Linux, SwitchAction::Switch);
    assert_eq!(j.unit, "nixgate-switch-r1");
    let cmd = fire_command(&j, true, true);
    assert!(cmd.is_sudo());
    let want: Vec<String> = [
        "sh",
        "-c",
        FIRE_LINUX,
        "nixgate",
        "/run/nixgate",
        "/run/nixgate/nixgate-switch-r1.status",
        "/run/nixgate/nixgate-switch-r1.log",
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
    let t = fire_command(&job(Os::Linux, SwitchAction::Test), false, true);
    assert!(!t.argv().iter().any(|a| a.contains("INSTALL_BOOTLOADER")));
    assert_eq!(t.argv().last().unwrap(), "test");
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
    let cmd = fire_command(&j, true, false);
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
            &format!("{SYS}/activate"),
        ]
        .map(String::from)
    );
}

#[tokio::test]
async fn fire_outcomes() {
    let j = job(Os::Linux, SwitchAction::Test);
    let r = ScriptedRemote::new("web1", |_| {
        crate::remote::Output::new(
            Exit::Code { code: 0 },
            "",
            "Running as unit: nixgate-switch-r1.service; invocation ID: 5d1c2e4f\n",
        )
    });
    assert_eq!(fire(&r, &j, true, false).await, FireOutcome::Started);
    let r = ScriptedRemote::new("web1", |_| {
        fail(
            1,
            "Failed to start transient service unit: Unit nixgate-switch-r1.service was already loaded or has a fragment file.\n",
        )
    });
    assert!(matches!(
        fire(&r, &j, true, false).await,
        FireOutcome::Refused { .. }
    ));
    let r = ScriptedRemote::new("web1", |_| {
        fail(
            1,
            "Failed to start transient service unit: Unit nixgate-switch-r1.service already exists.\n",
        )
    });
    assert_eq!(fire(&r, &j, true, false).await, FireOutcome::AlreadyRunning);
    let r = ScriptedRemote::new("web1", |_| {
        crate::remote::Output::new(Exit::ConnectionLost, "", "")
    });
    assert!(matches!(
        fire(&r, &j, true, false).await,
        FireOutcome::Unconfirmed { .. }
    ));
}

#[tokio::test]
async fn lock_check_parses_holders() {
    let r = ScriptedRemote::new("web1", |_| {
        ok("NixgateLock=held\nNixgateHolder=nixgate-switch-old.service active running\n")
    });
    let paths = HostPaths::for_os(Os::Linux);
    assert_eq!(
        check_switch_lock(&r, Os::Linux, &paths, true)
            .await
            .unwrap(),
        LockState::Held {
            holders: vec!["nixgate-switch-old.service active running".into()]
        }
    );
    assert_eq!(
        r.argvs()[0],
        vec![
            "sh",
            "-c",
            LOCK_CHECK,
            "nixgate",
            "/run/nixos/switch-to-configuration.lock"
        ]
    );
    assert!(parse_lock_check("garbage").is_err());
    assert_eq!(
        parse_lock_check("NixgateLock=free\n").unwrap(),
        LockState::Free
    );
    // Darwin has no lock: nothing is run.
    let r = ScriptedRemote::new("mac", |_| fail(1, "must not run"));
    assert_eq!(
        check_switch_lock(&r, Os::Darwin, &HostPaths::for_os(Os::Darwin), true)
            .await
            .unwrap(),
        LockState::Free
    );
    assert!(r.argvs().is_empty());
}

/// The lock check against a real `flock` holder on this machine.
#[tokio::test]
async fn lock_check_real_flock() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("switch-to-configuration.lock");
    let mut paths = HostPaths::for_os(Os::Linux);
    paths.switch_lock = lock.display().to_string();
    let r = LocalRemote::new("local");
    // Absent lock file: free.
    assert_eq!(
        check_switch_lock(&r, Os::Linux, &paths, false)
            .await
            .unwrap(),
        LockState::Free
    );
    // An exclusive holder (as switch-to-configuration takes it).
    let mut holder = std::process::Command::new("flock")
        .args(["--exclusive", "--no-fork"])
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    let mut state = LockState::Free;
    for _ in 0..50 {
        state = check_switch_lock(&r, Os::Linux, &paths, false)
            .await
            .unwrap();
        if state != LockState::Free {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(matches!(state, LockState::Held { .. }), "{state:?}");
    assert_eq!(
        check_switch_lock(&r, Os::Linux, &paths, false)
            .await
            .unwrap(),
        LockState::Free
    );
}

#[test]
fn stop_and_log_commands() {
    let j = job(Os::Linux, SwitchAction::Test);
    let stop = stop_command(&j, true);
    assert!(stop.is_sudo());
    assert_eq!(stop.argv()[2], STOP_LINUX);
    assert_eq!(stop.argv()[4], "nixgate-switch-r1.service");
    assert_eq!(
        log_tail_command(&j).argv()[4..],
        [
            "/run/nixgate/nixgate-switch-r1.log".to_string(),
            "nixgate-switch-r1".to_string()
        ]
    );
}

/// The wrapper run for real: status and log files, exit code preserved.
#[tokio::test]
async fn wrapper_records_status_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("j.status");
    let log = dir.path().join("j.log");
    let r = LocalRemote::new("local");
    let cmd = Command::new("/bin/sh")
        .args(["-c", JOB_WRAPPER, "nixgate-job"])
        .arg(status.display().to_string())
        .arg(log.display().to_string())
        .args([
            "sh",
            "-c",
            "echo switching; echo 'warning: the following units failed: x.service' >&2; exit 4",
        ]);
    let out = r.exec(&cmd).await.unwrap();
    assert_eq!(out.exit, Exit::Code { code: 4 });
    assert_eq!(std::fs::read_to_string(&status).unwrap(), "exited 4\n");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "switching\nwarning: the following units failed: x.service\n"
    );
}
