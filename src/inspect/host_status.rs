//! `status`: per host, what it runs, what it boots next, its known-good
//! (generation), whether a reboot is pending or what runs is unvalidated,
//! and its own last run from the controller's run reports (a run that never
//! finished shows as running while it holds the controller lock, else as
//! interrupted: killed mid-way).

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::activation::deadman::{self, RevertRecord};
use crate::activation::host_state::{self, Activity};
use crate::activation::{HostPaths, host_lock, known_good};
use crate::deploy::OutcomeKind;
use crate::fleet::Fleet;
use crate::inspect::bound::{self, bounded};
use crate::inventory::Inventory;
use crate::nix::StorePath;
use crate::plan::rollback_target;
use crate::state::runs::{self, RunState};

/// A host's last run, from the controller's reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    pub run_id: String,
    pub command: String,
    /// How the host ended; `None` while the run goes on (`running`) and
    /// when it never finished (`interrupted`).
    pub outcome: Option<OutcomeKind>,
    /// It never finished, and no run holds the controller lock: killed.
    pub interrupted: bool,
    /// It has not finished: it holds the controller lock now (see
    /// `state::runs::still_running`). Added after `interrupted`, which such
    /// a run wrongly set before; absent from older output, so default false.
    #[serde(default)]
    pub running: bool,
}

/// One host's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub host: String,
    pub reachable: bool,
    pub current: Option<StorePath>,
    pub booted: Option<StorePath>,
    /// The system profile: what the host boots next.
    pub boot_default: Option<StorePath>,
    pub known_good: Option<StorePath>,
    pub known_good_generation: Option<u64>,
    /// The commit the known-good was built from, when recorded.
    pub known_good_commit: Option<String>,
    /// It runs its known-good, built from another commit than the
    /// configuration's HEAD (`None`: not known).
    pub behind_head: Option<bool>,
    /// The boot default differs from what runs: a reboot would change it.
    pub pending_reboot: bool,
    /// What runs is not the known-good closure (or the known-good has no
    /// record, or no final mark proves it, its soak pending: nixgate cannot
    /// vouch for it).
    pub unvalidated: bool,
    /// The known-good profile is on a generation without its tag record: a
    /// mark cut off between `nix-env --set` and the record (the host went
    /// down mid-mark), or a profile set by hand. Not proven known-good; the
    /// next push that marks it writes the record.
    #[serde(default)]
    pub known_good_unrecorded: bool,
    /// The known-good profile is on a generation marked in a wave with a
    /// soak that never passed (its record says `soak_pending`: the run that
    /// marked it was stopped or killed mid-soak, or its soak's word never
    /// reached the host). Not proven: no rollback goes there; the next push
    /// of its commit marks and soaks it again.
    #[serde(default)]
    pub known_good_soak_pending: bool,
    pub last_run: Option<LastRun>,
    /// The host took itself back after a switch nobody confirmed (magic
    /// rollback), more recently than its last known-good mark.
    pub reverted: Option<RevertRecord>,
    /// nixgate units on the host now (a switch still running, an armed
    /// dead-man timer) and the holder of the host lock, if held.
    pub activity: Activity,
    /// Why something could not be read.
    pub error: Option<String>,
}

/// Read one host's state.
pub async fn probe<F: Fleet>(fleet: &F, inv: &Inventory, host: &str) -> HostStatus {
    let mut st = HostStatus {
        host: host.to_owned(),
        ..Default::default()
    };
    let Some(h) = inv.host(host) else { return st };
    let remote = match fleet.host(host).await {
        Ok(s) => s,
        Err(e) => {
            st.error = Some(e.to_string());
            return st;
        }
    };
    st.reachable = true;
    let paths = HostPaths::for_os(h.os);
    // Every read that failed is said (each replaced the one before), and
    // nothing is judged from a read that failed.
    let mut errors = Vec::new();
    let by = bound::deadline();
    let links = host_state::read_links(&remote, &paths, &h.profile);
    match bounded(by, "reading its system links", links).await {
        Ok(l) => (st.current, st.booted, st.boot_default) = (l.current, l.booted, l.boot_default),
        Err(e) => errors.push(format!("{e:#}")),
    }
    let history = known_good::history(&remote, &paths);
    let history = bounded(by, "reading its known-good history", history).await;
    let (marked_at, proven) = match &history {
        Ok(hist) => {
            let (marked_at, proven) = known_good_of(&mut st, hist);
            (marked_at, Some(proven))
        }
        Err(e) => {
            errors.push(format!("{e:#}"));
            (None, None)
        }
    };
    let what = "reading the revert records";
    let records = async { deadman::records(&remote, &paths).await.context(what) };
    match bounded(by, what, records).await {
        Ok(records) => {
            st.reverted = reverted_since(records, marked_at.as_ref());
        }
        Err(e) => errors.push(format!("{e:#}")),
    }
    let lock = host_lock::path(&paths);
    let activity = host_state::activity(&remote, &lock);
    match bounded(by, "reading its nixgate units and host lock", activity).await {
        Ok(a) => st.activity = a,
        Err(e) => errors.push(format!("{e:#}")),
    }
    judge(&mut st, proven, errors);
    st
}

/// The known-good the history shows (where its profile is) into `st`;
/// returns that generation's record (a revert after it is news) and
/// whether a finished, final mark proves what runs
/// ([`rollback_target::proven`]).
fn known_good_of(
    st: &mut HostStatus,
    hist: &[known_good::KnownGoodGeneration],
) -> (Option<known_good::KnownGoodRecord>, bool) {
    let proven = (st.current.as_ref()).is_some_and(|c| rollback_target::proven(hist, c));
    let Some(cur) = hist.iter().find(|g| g.current) else {
        return (None, proven);
    };
    st.known_good = cur.closure.clone();
    st.known_good_generation = Some(cur.generation);
    st.known_good_commit = cur.record.as_ref().and_then(|r| r.commit.clone());
    st.known_good_unrecorded = cur.record.is_none();
    st.known_good_soak_pending = cur.soak_pending();
    (cur.record.clone(), proven)
}

/// The host's last revert, if it came after `mark` (the known-good
/// profile's current record; none: any revert is news). Both times by the
/// host's clock: the revert's `reverted_at` from its `date -u`, the mark's
/// `marked_on_host` from MARK's. Before, `marked_at`, the controller's
/// clock, was compared: a host clock fast showed a revert before a good
/// mark as `reverted-by-host` on a healthy host, one slow hid a real
/// revert after it. A record from before `marked_on_host` was written has
/// only `marked_at` to go by.
fn reverted_since(
    records: Vec<RevertRecord>,
    mark: Option<&known_good::KnownGoodRecord>,
) -> Option<RevertRecord> {
    let marked = mark.map(|m| m.marked_on_host.as_ref().unwrap_or(&m.marked_at));
    records
        .into_iter()
        .next_back()
        .filter(|r| marked.is_none_or(|m| r.reverted_at > *m))
}

/// What the reads say together: a reboot pending, and (only when the
/// history was read: unread, it proves nothing either way; `proven`, a
/// finished, final mark of what runs) a running system that is not the
/// known-good, or one no final mark proves (a known-good whose soak never
/// passed was counted validated, though no rollback goes there and the
/// diff gate calls it unvalidated); the failed reads as the error.
fn judge(st: &mut HostStatus, proven: Option<bool>, errors: Vec<String>) {
    st.pending_reboot = st.boot_default.is_some() && st.boot_default != st.current;
    st.unvalidated = proven.is_some_and(|proven| {
        st.current.is_some() && (st.current != st.known_good || st.known_good_unrecorded || !proven)
    });
    if !errors.is_empty() {
        st.error = Some(errors.join("; "));
    }
}

/// Every selected host's state, with its last run from `state_dir`.
pub async fn collect<F: Fleet>(
    fleet: &F,
    inv: &Inventory,
    hosts: &[String],
    state_dir: Option<&Path>,
) -> Vec<HostStatus> {
    let mut all = futures_util::future::join_all(hosts.iter().map(|h| probe(fleet, inv, h))).await;
    if let Some(dir) = state_dir {
        let mut last = last_runs(dir, hosts);
        for st in &mut all {
            st.last_run = last.remove(&st.host);
        }
    }
    all
}

/// How many run reports are read, newest first, to find each host's last
/// run (a host absent from all of them shows none).
const REPORTS_READ: usize = 50;

#[derive(Deserialize)]
struct ReportHead {
    run_id: String,
    command: String,
    #[serde(default)]
    started: String,
    finished: Option<String>,
    #[serde(default)]
    selected: Vec<String>,
    #[serde(default)]
    hosts: Vec<ReportHost>,
}

#[derive(Deserialize)]
struct ReportHost {
    host: String,
    outcome: OutcomeKind,
}

/// Each host's last run, from the newest run reports of `dir`.
pub fn last_runs(dir: &Path, hosts: &[String]) -> std::collections::HashMap<String, LastRun> {
    let mut found = std::collections::HashMap::new();
    let runs = dir.join("runs");
    let mut reports: Vec<std::path::PathBuf> = match std::fs::read_dir(&runs) {
        Ok(d) => (d.filter_map(|e| e.ok().map(|e| e.path())))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        // Not silently "no last run" for every host.
        Err(e) => {
            tracing::warn!(
                "reading {}: {e} (no host's last run is shown)",
                runs.display()
            );
            Vec::new()
        }
    };
    // Run ids start with their UTC time: by name is by age.
    reports.sort();
    let mut judge = runs::Judge::new(dir);
    for path in reports.iter().rev().take(REPORTS_READ) {
        if found.len() == hosts.len() {
            break;
        }
        let Some(head) = read_head(path) else {
            continue;
        };
        let state = judge.state(head.finished.is_some(), &head.run_id, &head.started);
        for h in hosts {
            if found.contains_key(h) {
                continue;
            }
            let outcome = head.hosts.iter().find(|x| x.host == *h).map(|x| x.outcome);
            let unfinished = state != RunState::Finished && head.selected.contains(h);
            if outcome.is_some() || unfinished {
                found.insert(
                    h.clone(),
                    LastRun {
                        run_id: head.run_id.clone(),
                        command: head.command.clone(),
                        outcome,
                        interrupted: unfinished && state == RunState::Interrupted,
                        running: unfinished && state == RunState::Running,
                    },
                );
            }
        }
    }
    found
}

/// The head of a run report (its events are skipped, not kept).
fn read_head(path: &Path) -> Option<ReportHead> {
    let file = std::fs::File::open(path).ok()?;
    serde_json::from_reader(std::io::BufReader::new(file)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host whose clock runs an hour fast: a revert at 10:00 by its
    /// clock, then a good mark at 09:30 by the controller's (10:30 by the
    /// host's) is no revert since the mark (before: `reverted-by-host` on a
    /// healthy host); one slow: a mark at 10:00 by the controller's (09:00
    /// by the host's), then a revert at 09:30 by the host's is one (before:
    /// hidden). A record without the host's time goes by `marked_at`.
    #[test]
    fn a_revert_is_news_by_the_hosts_own_clock() {
        let revert = |at: &str| RevertRecord {
            run_id: "r2".into(),
            reverted_at: at.into(),
            ..Default::default()
        };
        let mark = |controller: &str, host: Option<&str>| known_good::KnownGoodRecord {
            version: 1,
            host: "web1".into(),
            generation: 2,
            closure: StorePath::parse(
                "/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.05",
            )
            .unwrap(),
            marked_at: controller.into(),
            commit: None,
            run_id: crate::activation::RunId::parse("r3").unwrap(),
            gates: Vec::new(),
            replaced: None,
            created: None,
            lineage: None,
            soak_pending: false,
            marked_on_host: host.map(str::to_owned),
            rolled_back_from: None,
        };
        let fast = mark("2026-01-01T09:30:00Z", Some("2026-01-01T10:30:00Z"));
        let before = vec![revert("2026-01-01T10:00:00Z")];
        assert_eq!(reverted_since(before, Some(&fast)), None);
        let slow = mark("2026-01-01T10:00:00Z", Some("2026-01-01T09:00:00Z"));
        let after = revert("2026-01-01T09:30:00Z");
        assert_eq!(
            reverted_since(vec![after.clone()], Some(&slow)),
            Some(after.clone())
        );
        let old = mark("2026-01-01T09:00:00Z", None);
        assert_eq!(
            reverted_since(vec![after.clone()], Some(&old)),
            Some(after.clone())
        );
        assert_eq!(reverted_since(vec![after.clone()], None), Some(after));
    }

    /// An unread history claims nothing (it said `unvalidated`), and every
    /// failed read is said (the last replaced the others).
    #[test]
    fn failed_reads_are_said_and_judge_nothing() {
        let sys =
            StorePath::parse("/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.05")
                .unwrap();
        let mut st = HostStatus {
            reachable: true,
            current: Some(sys.clone()),
            boot_default: Some(sys),
            ..Default::default()
        };
        judge(
            &mut st,
            None,
            vec!["history: lost".into(), "records: lost".into()],
        );
        assert!(!st.unvalidated && !st.pending_reboot);
        assert_eq!(st.error.as_deref(), Some("history: lost; records: lost"));
        judge(&mut st, Some(false), Vec::new());
        assert!(st.unvalidated, "read, and no known-good: unvalidated");
    }

    /// web1 runs its known-good, generation 2, whose soak never passed
    /// (`soak_pending`): status flags it and counts it unvalidated (before:
    /// `known-good-soak-pending`, yet `unvalidated` false, as if proven, and
    /// `behind_head` judged from its commit). The same pending generation
    /// re-marking the closure generation 1 had proven is validated.
    #[test]
    fn a_known_good_whose_soak_never_passed_is_unvalidated() {
        let sys = |p: &str| StorePath::parse(p).unwrap();
        let old = sys("/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web-24.05");
        let new = sys("/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-nixos-system-web-24.11");
        let generation = |n: u64, c: &StorePath, pending: bool| {
            let record = format!(
                r#"{{"generation":{n},"soak_pending":{pending},"version":1,"host":"web1","closure":"{c}","marked_at":"2026-01-01T00:00:00Z","commit":"c{n}","run_id":"r{n}","gates":[]}}"#
            );
            known_good::KnownGoodGeneration {
                generation: n,
                closure: Some(c.clone()),
                present: true,
                record: Some(serde_json::from_str(&record).unwrap()),
                recorded: true,
                current: n == 2,
                cut_off: false,
                stood: None,
            }
        };
        let status_on = |runs: &StorePath| {
            let mut st = HostStatus {
                reachable: true,
                current: Some(runs.clone()),
                boot_default: Some(runs.clone()),
                ..Default::default()
            };
            let hist = [generation(1, &old, false), generation(2, runs, true)];
            let (_, proven) = known_good_of(&mut st, &hist);
            judge(&mut st, Some(proven), Vec::new());
            st
        };
        let st = status_on(&new);
        assert_eq!(st.known_good_generation, Some(2));
        assert!(st.known_good_soak_pending && st.unvalidated, "{st:?}");
        let st = status_on(&old);
        assert!(st.known_good_soak_pending && !st.unvalidated, "{st:?}");
    }

    #[test]
    fn each_host_gets_its_own_last_run_and_an_unfinished_run_is_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        std::fs::create_dir(&runs).unwrap();
        let write = |id: &str, body: serde_json::Value| {
            std::fs::write(runs.join(format!("{id}.json")), body.to_string()).unwrap();
        };
        write(
            "20260101T000000Z-a",
            serde_json::json!({"run_id": "20260101T000000Z-a", "command": "push",
                "finished": "x", "selected": ["web1", "web2"], "events": [1, 2],
                "hosts": [{"host": "web1", "outcome": "rolled-back"},
                          {"host": "web2", "outcome": "known-good"}]}),
        );
        write(
            "20260102T000000Z-b",
            serde_json::json!({"run_id": "20260102T000000Z-b", "command": "push",
                "finished": "x", "selected": ["web2"],
                "hosts": [{"host": "web2", "outcome": "known-good"}]}),
        );
        // Killed mid-run: the report written at the start was never finished.
        write(
            "20260103T000000Z-c",
            serde_json::json!({"run_id": "20260103T000000Z-c", "command": "rollback",
                "finished": null, "selected": ["db1"], "hosts": []}),
        );
        let hosts: Vec<String> = ["web1", "web2", "db1", "none"].map(String::from).into();
        let last = last_runs(dir.path(), &hosts);
        assert_eq!(last["web1"].outcome, Some(OutcomeKind::RolledBack));
        assert_eq!(last["web1"].run_id, "20260101T000000Z-a");
        assert_eq!(last["web2"].run_id, "20260102T000000Z-b");
        assert!(last["db1"].interrupted && last["db1"].outcome.is_none());
        assert!(!last["db1"].running);
        assert_eq!(last["db1"].command, "rollback");
        assert!(!last.contains_key("none"));
    }

    /// A run going on (a cron push: its stub report written at its start,
    /// the lock held) is running, not interrupted, in the table and the
    /// JSON; once its holder is gone (killed) it is interrupted.
    #[test]
    fn a_run_that_holds_the_lock_is_running_not_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let id = "29990101T000000Z-a";
        let lock = crate::state::ControllerLock::acquire(dir.path(), "push", id).unwrap();
        let runs = dir.path().join("runs");
        std::fs::create_dir(&runs).unwrap();
        let started = crate::state::clock::Utc::now().rfc3339();
        std::fs::write(
            runs.join("29990101T000000Z-a.json"),
            serde_json::json!({"run_id": "29990101T000000Z-a", "command": "push",
                "started": started, "finished": null, "selected": ["web1"], "hosts": []})
            .to_string(),
        )
        .unwrap();
        let hosts = vec!["web1".to_owned()];
        let last = last_runs(dir.path(), &hosts).remove("web1").unwrap();
        assert!(last.running && !last.interrupted, "{last:?}");
        let st = HostStatus {
            host: "web1".into(),
            last_run: Some(last),
            ..Default::default()
        };
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["last_run"]["running"], true);
        assert_eq!(json["last_run"]["interrupted"], false);
        let labels = crate::report::human::labels::Labels::default();
        let table = crate::report::human::tables::status_table(&[st], &labels).to_string();
        assert!(
            table.contains("push running (29990101T000000Z-a)"),
            "{table}"
        );
        drop(lock);
        let last = last_runs(dir.path(), &hosts).remove("web1").unwrap();
        assert!(last.interrupted && !last.running, "{last:?}");
    }
}
