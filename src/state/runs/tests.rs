use super::*;
use crate::report::spool::Spool;
use crate::report::stored::fixture;

/// Write `run` as nixgate does: events through a spool, then the report.
pub fn write_run(state_dir: &Path, run: &fixture::Run) {
    let mut spool = Spool::create(state_dir.join("runs/.spool.tmp")).unwrap();
    for s in &run.events {
        spool.push(&s.event, s.at_ms.unwrap());
    }
    let spool = spool.finish().unwrap();
    crate::state::run_report::write(state_dir, &run.report, Some(&spool)).unwrap();
}

fn with_id(id: &str, started: &str) -> fixture::Run {
    let mut run = fixture::run(0);
    run.report.run_id = id.into();
    run.report.started = started.into();
    run
}

/// Three runs: a finished push, a killed one (its stub and spool left
/// behind), a corrupt file; plus a newer finished run.
fn state_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_run(
        dir.path(),
        &with_id("20261122T100000Z-aaaa", "2026-11-22T10:00:00Z"),
    );
    // Killed: the stub written at the start, and its spool.
    let mut stub = with_id("20261122T110000Z-bbbb", "2026-11-22T11:00:00Z");
    stub.report.finished = None;
    stub.report.exit_code = None;
    stub.report.hosts.clear();
    crate::state::run_report::write(dir.path(), &stub.report, None).unwrap();
    // The spool a killed run leaves (a Spool removes its file when dropped,
    // a killed process does not): five events, and a sixth cut short.
    let mut lines = String::new();
    for s in stub.events.iter().take(6) {
        let stamp = crate::report::stored::Stamp {
            at_ms: s.at_ms,
            event: &s.event,
        };
        lines.push_str(&serde_json::to_string(&stamp).unwrap());
        lines.push('\n');
    }
    std::fs::write(
        dir.path().join("runs/.20261122T110000Z-bbbb.events.tmp"),
        &lines[..lines.len() - 8],
    )
    .unwrap();
    std::fs::write(
        dir.path().join("runs/20261122T120000Z-cccc.json"),
        "{\"run_id\": ",
    )
    .unwrap();
    write_run(
        dir.path(),
        &with_id("20261122T130000Z-dddd", "2026-11-22T13:00:00Z"),
    );
    dir
}

#[test]
fn runs_are_listed_newest_first_with_the_killed_one_interrupted() {
    let dir = state_dir();
    let runs = list(dir.path(), 10).unwrap();
    let ids: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "20261122T130000Z-dddd",
            "20261122T120000Z-cccc",
            "20261122T110000Z-bbbb",
            "20261122T100000Z-aaaa"
        ]
    );
    assert_eq!(runs[0].state, RunState::Finished);
    let head = runs[0].head.as_ref().unwrap();
    assert_eq!(head.exit_code, Some(1));
    let outcomes = head.outcomes();
    assert_eq!(outcomes[&OutcomeKind::KnownGood], 2);
    assert_eq!(outcomes[&OutcomeKind::RolledBack], 1);
    assert_eq!(outcomes[&OutcomeKind::DeferredPendingReboot], 1);
    assert!(
        runs[1].head.is_err(),
        "a corrupt report is listed with its error"
    );
    assert_eq!(runs[2].state, RunState::Interrupted);
    assert_eq!(list(dir.path(), 1).unwrap().len(), 1);
    assert!(list(&dir.path().join("none"), 5).unwrap().is_empty());
}

/// An unfinished run is running only while the controller lock is held,
/// by a holder that took it no later than the run started: a killed run's
/// lock file names a live pid (reused, or ours here) and still it is
/// interrupted, and pruned; the lock names its run, so one killed in the
/// same second as the run going is not taken for it.
#[test]
fn an_unfinished_run_is_running_only_while_its_lock_is_held() {
    let dir = state_dir();
    let d = dir.path();
    let killed = "20261122T110000Z-bbbb";
    let state_of = |id: &str| {
        list(d, 10)
            .unwrap()
            .into_iter()
            .find(|r| r.run_id == id)
            .unwrap()
            .state
    };
    // The killed run's lock file: our own pid, alive; nobody holds it.
    let holder = crate::state::lock::Holder {
        pid: std::process::id(),
        started: "2026-11-22T10:59:00Z".into(),
        command: "push".into(),
        run_id: None,
    };
    std::fs::write(d.join("lock"), serde_json::to_string(&holder).unwrap()).unwrap();
    assert_eq!(state_of(killed), RunState::Interrupted);
    // A run going on: it holds the lock, taken before it started; another
    // started in the same second (a higher salt: newer by id) was killed.
    let lock = crate::state::ControllerLock::acquire(d, "push", "29990101T000000Z-eeee").unwrap();
    let mut going = with_id("29990101T000000Z-eeee", "2999-01-01T00:00:00Z");
    going.report.finished = None;
    crate::state::run_report::write(d, &going.report, None).unwrap();
    let mut same_second = with_id("29990101T000000Z-ffff", "2999-01-01T00:00:00Z");
    same_second.report.finished = None;
    crate::state::run_report::write(d, &same_second.report, None).unwrap();
    assert_eq!(state_of("29990101T000000Z-eeee"), RunState::Running);
    assert_eq!(
        state_of("29990101T000000Z-ffff"),
        RunState::Interrupted,
        "the lock names the run holding it"
    );
    assert_eq!(
        state_of(killed),
        RunState::Interrupted,
        "older than the holder, and not the newest unfinished run"
    );
    let removed = prune(d, 0, "x").unwrap();
    assert!(
        !removed.contains(&"29990101T000000Z-eeee".to_owned()),
        "{removed:?}"
    );
    assert!(removed.contains(&killed.to_owned()), "{removed:?}");
    drop(lock);
    assert_eq!(state_of("29990101T000000Z-eeee"), RunState::Interrupted);
}

#[test]
fn a_run_is_found_by_id_prefix_or_latest() {
    let dir = state_dir();
    let d = dir.path();
    assert_eq!(resolve(d, "latest").unwrap(), "20261122T130000Z-dddd");
    assert_eq!(
        resolve(d, "20261122T110000Z-bbbb").unwrap(),
        "20261122T110000Z-bbbb"
    );
    assert_eq!(resolve(d, "20261122T10").unwrap(), "20261122T100000Z-aaaa");
    let e = resolve(d, "20261122T1").unwrap_err().to_string();
    assert!(
        e.contains("names 4 runs") && e.contains("more of the run id"),
        "{e}"
    );
    let e = resolve(d, "2025").unwrap_err().to_string();
    assert!(e.contains("nixgate runs"), "{e}");
    let e = resolve(&d.join("none"), "latest").unwrap_err().to_string();
    assert!(e.contains("no run reports"), "{e}");
}

/// A runs directory that cannot be read (here ENOTDIR) is said with its
/// path, not taken for one with no reports ("no run reports", exit 2).
#[test]
fn an_unreadable_runs_directory_is_said_not_taken_for_empty() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("runs"), "not a directory").unwrap();
    for spec in ["latest", "20261122T1"] {
        let e = resolve(dir.path(), spec).unwrap_err();
        let said = format!("{e:#}");
        assert!(matches!(e, ResolveError::Unreadable(_)), "{said}");
        assert!(
            said.contains(&format!("reading {}", dir.path().join("runs").display())),
            "{said}"
        );
    }
}

#[test]
fn a_report_reads_back_with_its_events_and_a_killed_run_from_its_spool() {
    let dir = state_dir();
    let mut events = Vec::new();
    let r = read(dir.path(), "20261122T100000Z-aaaa", &mut |s| events.push(s)).unwrap();
    let run = fixture::run(0);
    assert_eq!(events, run.events);
    assert_eq!(r.report.hosts, run.report.hosts);
    assert!(r.unreadable.is_empty() && !r.from_spool);

    let mut events = Vec::new();
    let r = read(dir.path(), "20261122T110000Z-bbbb", &mut |s| events.push(s)).unwrap();
    assert!(r.from_spool && r.report.finished.is_none());
    assert_eq!(events.len(), 5, "the spooled events, the cut one left out");
    assert_eq!(r.unreadable.len(), 1);

    let e = read(dir.path(), "20261122T120000Z-cccc", &mut |_| {}).unwrap_err();
    assert!(format!("{e:#}").contains("reading the run report"), "{e:#}");
}

#[test]
fn pruning_keeps_the_newest_and_the_current_run() {
    let dir = state_dir();
    let removed = prune(dir.path(), 2, "20261122T100000Z-aaaa").unwrap();
    assert_eq!(removed, ["20261122T110000Z-bbbb"]);
    assert!(
        !dir.path()
            .join("runs/.20261122T110000Z-bbbb.events.tmp")
            .exists()
    );
    let left = ids(dir.path()).unwrap();
    assert_eq!(
        left,
        [
            "20261122T100000Z-aaaa",
            "20261122T120000Z-cccc",
            "20261122T130000Z-dddd"
        ]
    );
    assert!(prune(dir.path(), 100, "x").unwrap().is_empty());
}

#[test]
#[ignore]
fn dump_state_dir() {
    let dir = state_dir();
    let keep = dir.keep();
    std::fs::remove_dir_all("/tmp/ngstate").ok();
    std::fs::rename(keep, "/tmp/ngstate").unwrap();
}

/// A spool with no report beside it (the run's first report could not be
/// written either: the disk was full) is no run's: `prune` removes it,
/// but never the running run's own.
#[test]
fn prune_removes_spools_no_report_lists() {
    let dir = state_dir();
    let d = dir.path();
    let runs = d.join("runs");
    let orphan = runs.join(".20990101T000000Z-zzzz.events.tmp");
    let current = runs.join(".20990101T000001Z-cccc.events.tmp");
    std::fs::write(&orphan, "[").unwrap();
    std::fs::write(&current, "[").unwrap();
    prune(d, 100, "20990101T000001Z-cccc").unwrap();
    assert!(!orphan.exists());
    assert!(current.exists());
}

/// A report a run was killed while writing (`.<id>.json.tmp<pid>`,
/// `.latest.json.tmp<pid>`) is removed by `prune` once its writer is gone
/// and it is old; one a live process writes, or written just now, stays.
#[test]
fn prune_removes_temp_reports_of_dead_writers() {
    let dir = state_dir();
    let d = dir.path();
    let runs = d.join("runs");
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let me = std::process::id();
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let write = |p: &Path, old: bool| {
        std::fs::write(p, "{").unwrap();
        if old {
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_modified(long_ago).unwrap();
        }
    };
    let killed = runs.join(format!(".20990101T000000Z-zzzz.json.tmp{dead_pid}"));
    let killed_latest = d.join(format!(".latest.json.tmp{dead_pid}"));
    let writing = runs.join(format!(".20990101T000001Z-cccc.json.tmp{me}"));
    let just_now = d.join(format!(".latest.json.tmp{dead_pid}9"));
    write(&killed, true);
    write(&killed_latest, true);
    write(&writing, true);
    write(&just_now, false);
    prune(d, 100, "20990101T000001Z-cccc").unwrap();
    assert!(!killed.exists() && !killed_latest.exists());
    assert!(writing.exists() && just_now.exists());
}
