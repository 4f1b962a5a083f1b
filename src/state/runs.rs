//! The run reports of a state directory (`runs/<run-id>.json`): listed
//! newest first, found by id, unique prefix or `latest`, read back with
//! their events streamed one at a time, and pruned to the newest N.
//!
//! Run ids start with their UTC start time, so by name is by age. A report
//! whose `finished` is null is a run that has not ended: it is running when
//! the controller lock is held now by the run that started it
//! ([`still_running`]), else it was killed (interrupted). A killed run
//! leaves its event spool behind (`.<run-id>.events.tmp`): its events are
//! read from there.
//!
//! Listing reads each report's head and skips its events without keeping
//! them (serde's `IgnoredAny`); reading streams the `events` array element
//! by element, so a report of hundreds of megabytes is never held whole.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::deploy::OutcomeKind;
use crate::report::stored::{self, Stamped, Unreadable};
use crate::state::clock::parse_rfc3339;
use crate::state::lock::{self, Standing};
use crate::state::run_report::RunReport;

/// How a listed run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Finished,
    /// Its report was never finished and no run holds the lock: killed.
    Interrupted,
    /// Its report is not finished and it holds the lock now
    /// ([`still_running`]).
    Running,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Finished => "finished",
            RunState::Interrupted => "interrupted",
            RunState::Running => "running",
        }
    }
}

/// One run of the listing.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEntry {
    pub run_id: String,
    pub path: PathBuf,
    pub head: Result<RunHead, String>,
    pub state: RunState,
}

/// What the listing reads of a report.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunHead {
    pub run_id: String,
    pub command: String,
    pub goal: String,
    pub started: String,
    pub finished: Option<String>,
    pub exit_code: Option<u8>,
    #[serde(default)]
    pub selected: Vec<String>,
    #[serde(default)]
    hosts: Vec<HostHead>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct HostHead {
    outcome: OutcomeKind,
}

impl RunHead {
    /// How many hosts ended how.
    pub fn outcomes(&self) -> BTreeMap<OutcomeKind, usize> {
        let mut m = BTreeMap::new();
        for h in &self.hosts {
            *m.entry(h.outcome).or_default() += 1;
        }
        m
    }
}

fn runs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runs")
}

/// The run ids with a report, oldest first.
pub fn ids(state_dir: &Path) -> anyhow::Result<Vec<String>> {
    let dir = runs_dir(state_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(".json")?;
            (!id.starts_with('.') && !id.is_empty()).then(|| id.to_owned())
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// The newest `limit` runs, newest first.
pub fn list(state_dir: &Path, limit: usize) -> anyhow::Result<Vec<RunEntry>> {
    let mut judge = Judge::new(state_dir);
    let mut ids = ids(state_dir)?;
    ids.reverse();
    ids.truncate(limit);
    Ok(ids
        .into_iter()
        .map(|run_id| {
            let path = crate::state::run_report::path(state_dir, &run_id);
            let head = read_head(&path);
            let state = match &head {
                Ok(h) => judge.state(h.finished.is_some(), &run_id, &h.started),
                Err(_) => RunState::Interrupted,
            };
            RunEntry {
                run_id,
                path,
                head,
                state,
            }
        })
        .collect())
}

fn read_head(path: &Path) -> Result<RunHead, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| e.to_string())
}

/// Whether a run whose report is unfinished, started at `started`, is
/// still going rather than killed: the controller lock is held now
/// (`lock`, from [`lock::standing`]), by a holder that took it no later
/// than the run started. A run holds the lock from before its start to its
/// end, so one that started before the holder took the lock had lost it:
/// it was killed. A holder or start that cannot be read (the instant
/// between taking the lock and writing the holder) counts as going: `prune`
/// must not remove a live run's report.
pub fn still_running(lock: &Standing, run_id: &str, started: &str) -> bool {
    match lock {
        Standing::Free => false,
        Standing::Held(None) => true,
        Standing::Held(Some(holder)) if holder.run_id.is_some() => {
            holder.run_id.as_deref() == Some(run_id)
        }
        Standing::Held(Some(holder)) => {
            match (parse_rfc3339(&holder.started), parse_rfc3339(started)) {
                (Some(took), Some(began)) => took <= began,
                _ => true,
            }
        }
    }
}

/// How each run stands, for runs taken newest first: the lock is tested
/// once, and only the newest unfinished run can be the one going (an older
/// one was killed before a later run could start).
pub struct Judge {
    lock: Standing,
    newest_unfinished: bool,
}

impl Judge {
    pub fn new(state_dir: &Path) -> Judge {
        Judge {
            lock: lock::standing(state_dir),
            newest_unfinished: true,
        }
    }

    /// The next run's state: `finished` (its report says so), `started`.
    pub fn state(&mut self, finished: bool, run_id: &str, started: &str) -> RunState {
        if finished {
            return RunState::Finished;
        }
        // A lock naming its run tells which one it is; an older lock, by
        // time, only the newest unfinished run can be.
        let newest = std::mem::take(&mut self.newest_unfinished);
        let named = matches!(&self.lock, Standing::Held(Some(h)) if h.run_id.is_some());
        if (named || newest) && still_running(&self.lock, run_id, started) {
            RunState::Running
        } else {
            RunState::Interrupted
        }
    }
}

/// Who runs nixgate, for the run report: `$USER@hostname` (the user
/// alone when the host name is unknown; `uid N` for a uid with no name).
pub fn operator() -> String {
    let user = crate::account::name().unwrap_or_else(|| format!("uid {}", crate::account::uid()));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty());
    match host {
        Some(h) => format!("{user}@{h}"),
        None => user,
    }
}

/// A run named on the command line that is not there.
#[derive(Debug, thiserror::Error)]
pub enum NotFound {
    #[error("no run reports in {0}: runs are recorded by push and rollback")]
    Empty(PathBuf),
    #[error("no run {0:?} in {1}: `nixgate runs` lists them")]
    Unknown(String, PathBuf),
    #[error("{0:?} names {1} runs ({2}): give more of the run id")]
    Ambiguous(String, usize, String),
}

/// Why a run named on the command line was not found.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Not there (a usage error).
    #[error(transparent)]
    NotFound(#[from] NotFound),
    /// The runs directory could not be read (EACCES, ENOTDIR): said with
    /// its path, never taken for an empty one ("no run reports").
    #[error(transparent)]
    Unreadable(anyhow::Error),
}

/// The run id `spec` names: `latest`, an id, or a unique prefix of one.
pub fn resolve(state_dir: &Path, spec: &str) -> Result<String, ResolveError> {
    let dir = runs_dir(state_dir);
    let ids = ids(state_dir).map_err(ResolveError::Unreadable)?;
    if spec == "latest" {
        return Ok(ids.last().cloned().ok_or(NotFound::Empty(dir))?);
    }
    if ids.iter().any(|i| i == spec) {
        return Ok(spec.to_owned());
    }
    let matching: Vec<&String> = ids.iter().filter(|i| i.starts_with(spec)).collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(NotFound::Unknown(spec.to_owned(), dir).into()),
        many => {
            let shown: Vec<&str> = many.iter().rev().take(3).map(|s| s.as_str()).collect();
            let more = if many.len() > 3 { ", ..." } else { "" };
            Err(NotFound::Ambiguous(
                spec.to_owned(),
                many.len(),
                format!("{}{more}", shown.join(", ")),
            )
            .into())
        }
    }
}

/// A report read back.
#[derive(Debug)]
pub struct Read {
    pub report: RunReport,
    /// Events this build could not read (another version wrote them).
    pub unreadable: Vec<Unreadable>,
    /// The events came from the spool a killed run left behind.
    pub from_spool: bool,
}

/// Read the report of `run_id`, handing each event to `on_event` in order
/// as it is read.
pub fn read(
    state_dir: &Path,
    run_id: &str,
    on_event: &mut dyn FnMut(Stamped),
) -> anyhow::Result<Read> {
    let path = crate::state::run_report::path(state_dir, run_id);
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut unreadable = Vec::new();
    let mut events = 0usize;
    let head = {
        let mut take = |r: Result<Stamped, Unreadable>| {
            events += 1;
            match r {
                Ok(s) => on_event(s),
                Err(u) => unreadable.push(u),
            }
        };
        let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(file));
        ReportSeed { take: &mut take }
            .deserialize(&mut de)
            .and_then(|h| de.end().map(|()| h))
            .with_context(|| format!("reading the run report {}", path.display()))?
    };
    let report: RunReport =
        serde_json::from_value(serde_json::Value::Object(head)).with_context(|| {
            format!(
                "reading the run report {}: written by another version of nixgate?",
                path.display()
            )
        })?;
    let spool = runs_dir(state_dir).join(format!(".{run_id}.events.tmp"));
    let from_spool = report.finished.is_none() && events == 0 && spool.exists();
    if from_spool {
        read_spool(&spool, on_event, &mut unreadable)?;
    }
    Ok(Read {
        report,
        unreadable,
        from_spool,
    })
}

fn read_spool(
    path: &Path,
    on_event: &mut dyn FnMut(Stamped),
    unreadable: &mut Vec<Unreadable>,
) -> anyhow::Result<()> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    for line in std::io::BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.is_empty() {
            continue;
        }
        // The last line of a killed run may be cut short: unreadable.
        match stored::parse_event(&line) {
            Ok(s) => on_event(s),
            Err(u) => unreadable.push(u),
        }
    }
    Ok(())
}

type Take<'a> = dyn FnMut(Result<Stamped, Unreadable>) + 'a;

/// The report object: `events` streamed to `take`, the rest kept.
struct ReportSeed<'a, 'b> {
    take: &'a mut Take<'b>,
}

impl<'de> DeserializeSeed<'de> for ReportSeed<'_, '_> {
    type Value = serde_json::Map<String, serde_json::Value>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReportSeed<'_, '_> {
    type Value = serde_json::Map<String, serde_json::Value>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a run report (a JSON object)")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut head = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "events" {
                map.next_value_seed(EventsSeed {
                    take: &mut *self.take,
                })?;
            } else {
                let value = map.next_value()?;
                head.insert(key, value);
            }
        }
        Ok(head)
    }
}

struct EventsSeed<'a, 'b> {
    take: &'a mut Take<'b>,
}

impl<'de> DeserializeSeed<'de> for EventsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EventsSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the run's events (a JSON array)")
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        while let Some(raw) = seq.next_element::<Box<serde_json::value::RawValue>>()? {
            (self.take)(stored::parse_event(raw.get()));
        }
        Ok(())
    }
}

/// Remove the oldest reports (and a killed run's spool and half-written
/// reports) so that `keep` remain; never the report of `current` or of a run still going. Returns
/// the run ids removed.
pub fn prune(state_dir: &Path, keep: usize, current: &str) -> anyhow::Result<Vec<String>> {
    let ids = ids(state_dir)?;
    let excess = ids.len().saturating_sub(keep);
    let lock = lock::standing(state_dir);
    let mut removed = Vec::new();
    for id in ids.iter().take(excess) {
        if id == current {
            continue;
        }
        let path = crate::state::run_report::path(state_dir, id);
        if lock != Standing::Free
            && read_head(&path)
                .is_ok_and(|h| h.finished.is_none() && still_running(&lock, id, &h.started))
        {
            continue;
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        let _ = std::fs::remove_file(runs_dir(state_dir).join(format!(".{id}.events.tmp")));
        removed.push(id.clone());
    }
    remove_orphan_spools(state_dir, &ids, current);
    remove_stale_temps(state_dir);
    Ok(removed)
}

/// How long ago a dead writer's temp file must have been written last to
/// be removed.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(600);

/// A report a run was killed while writing (`.<id>.json.tmp<pid>` in
/// `runs/`, `.latest.json.tmp<pid>` in the state directory: see
/// [`crate::state::write_atomic`]) is no run's, and nothing else would ever
/// remove it. Removed only when no process has its writer's pid and it was
/// last written [`STALE_TEMP`] ago, so a run writing its own now (another
/// command, or a pid namespace where that pid looks dead) keeps it.
fn remove_stale_temps(state_dir: &Path) {
    for dir in [state_dir.to_path_buf(), runs_dir(state_dir)] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(temp_writer) else {
                continue;
            };
            let age = e.metadata().and_then(|m| m.modified()).ok();
            let old = age
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a >= STALE_TEMP);
            if old && !alive(pid) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The writer's pid of a temp report: `.<name>.json.tmp<pid>`.
fn temp_writer(name: &str) -> Option<rustix::process::Pid> {
    let (base, pid) = name.strip_prefix('.')?.rsplit_once(".tmp")?;
    if !base.ends_with(".json") || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rustix::process::Pid::from_raw(pid.parse().ok()?)
}

/// Whether a process with this pid exists (one of another user's too).
fn alive(pid: rustix::process::Pid) -> bool {
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// Event spools with no report beside them (a run whose first report
/// could not be written either: a disk already full) are no run's: none
/// lists or shows them, and they hold the space the disk lacked. Not the
/// running run's (`current`, the only one going: `prune` runs under the
/// lock).
fn remove_orphan_spools(state_dir: &Path, ids: &[String], current: &str) {
    let Ok(entries) = std::fs::read_dir(runs_dir(state_dir)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(id) = (name.to_str())
            .and_then(|n| n.strip_prefix('.'))
            .and_then(|n| n.strip_suffix(".events.tmp"))
        else {
            continue;
        };
        if id != current && !ids.iter().any(|i| i == id) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
