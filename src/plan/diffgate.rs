//! Gate 2 for the plan: every ready host's candidate diffed against what it
//! runs, concurrently; drift (with `--expect`) refuses the host before
//! anything changes on it, and so does a host that cannot be read. Each
//! host's diff goes to the reporters as an event; the plan keeps only the
//! verdict and the diff's record for the known-good, in pieces shared
//! between hosts (see [`crate::report::shared_json`]: 500 hosts' records of
//! a 300-path change were 55 MB of nearly the same text).

use std::collections::HashMap;
use std::sync::Arc;

use crate::activation::known_good::{GateRecord, KnownGoodGeneration, RolledAway};
use crate::activation::{HostPaths, known_good, links};
use crate::diff::flake_lock::{InputChange, InputsUnknown};
use crate::diff::{self, HostDiff};
use crate::fleet::{Fleet, SessionError};
use crate::gates::Gate;
use crate::inventory::Inventory;
use crate::nix::{self, StorePath};
use crate::release::{self, FileAt};
use crate::remote::Remote;
use crate::report::shared_json::PieceStore;
use crate::report::{Event, EventSink};

use super::{Judging, Planning, Refusal, Source, Verdict};

/// What every host's diff of one run shares.
struct Ctx<'a, F: Fleet> {
    inv: &'a Inventory,
    fleet: &'a F,
    expect: Option<&'a [String]>,
    /// Where the candidate's flake.lock is.
    new_lock: Option<NewLock<'a>>,
    drvs: diff::structural::SharedDrvCache,
    /// Every candidate's closure, and that of every system a host runs that
    /// the builder has, from one query on the builder.
    closures: HashMap<StorePath, Arc<Vec<nix::closure::PathInfo>>>,
}

/// Why what a host runs could not be read.
enum ReadError {
    Unreachable(SessionError),
    Failed(anyhow::Error),
}

/// What a host runs (`None`: no system), read before the builder is asked.
async fn running<F: Fleet>(
    fleet: &F,
    inv: &Inventory,
    host: &str,
) -> Result<Option<StorePath>, ReadError> {
    let h = inv
        .host(host)
        .ok_or_else(|| ReadError::Failed(anyhow::anyhow!("{host} is not in the inventory")))?;
    let session = fleet.host(host).await.map_err(ReadError::Unreachable)?;
    links::read_store_link(&session, &HostPaths::for_os(h.os).current_system)
        .await
        .map_err(ReadError::Failed)
}

/// The link naming what `host` runs (for a refusal's words).
fn current_link(inv: &Inventory, host: &str) -> String {
    let os = inv.host(host).map(|h| h.os).unwrap_or_default();
    HostPaths::for_os(os).current_system
}

/// Diff one host.
async fn one<F: Fleet>(
    ctx: &Ctx<'_, F>,
    host: &str,
    cand: &StorePath,
    drv: &StorePath,
    current: Option<StorePath>,
) -> anyhow::Result<HostDiff> {
    let Ctx {
        inv,
        fleet,
        expect,
        new_lock,
        ref drvs,
        ..
    } = *ctx;
    let h = inv
        .host(host)
        .ok_or_else(|| anyhow::anyhow!("{host} is not in the inventory"))?;
    let session = fleet.host(host).await?;
    let builder = fleet.builder().await?;
    let paths = HostPaths::for_os(h.os);
    let built = diff::Built {
        toplevel: cand,
        drv,
        closure: ctx.closures.get(cand).cloned(),
        current_closure: current.as_ref().and_then(|c| ctx.closures.get(c).cloned()),
    };
    // What the running system is to nixgate, read from the host while the
    // builder answers the diff: whether it is a proven known-good, and the
    // commit its record names (it was built from), if any.
    let deployed = async {
        let cur = current.as_ref()?;
        let hist = known_good::history_of(&session, &paths, cur).await.ok()?;
        Some(deployed(&hist, cur, cand))
    };
    let diffed = diff::diff_host(&session, &builder, current.as_ref(), built, expect, drvs);
    let (d, deployed) = tokio::join!(diffed, deployed);
    let mut d = d?;
    // History unread: nothing is claimed either way.
    let Some(deployed) = deployed else {
        return Ok(d);
    };
    d.unvalidated = !deployed.proven;
    d.rolled_back = deployed.rolled_back;
    let (Some(cur), Some(old_commit)) = (&current, deployed.commit) else {
        return Ok(d);
    };
    if let Some(new_lock) = new_lock {
        match flake_inputs(&inv.builder.source, &old_commit, new_lock) {
            Ok(inputs) => d.flake_inputs = inputs,
            Err(why) => d.flake_inputs_unknown = Some(why),
        }
    }
    if matches!(d.structural, diff::Structural::OldDerivationMissing { .. }) {
        match recover_old_drv(inv, &builder, host, &h.attribute, &old_commit, cur).await {
            Ok(old_drv) => {
                d.structural =
                    diff::structural::structural_diff(&builder, drvs, Some(&old_drv), drv).await?;
                if let (Some(p), Some(e)) = (&d.packages, expect) {
                    d.drift = diff::drift::drift(p, &d.structural, e);
                }
            }
            Err(e) => tracing::warn!(
                "{host}: could not re-evaluate commit {old_commit} for the structural diff: {e:#}"
            ),
        }
    }
    Ok(d)
}

/// What the running system is to nixgate, by the host's known-good history.
struct Deployed {
    /// Proven ([`super::rollback_target::proven`]). A mark that never
    /// finished does not count. One whose soak never passed proves nothing,
    /// but takes nothing from an earlier final mark of the same closure: a
    /// re-mark of a proven closure in a soaking wave, its soak cut short,
    /// hid the proven generation and the closure read unvalidated.
    proven: bool,
    /// The commit its newest mark names (it was built from), if any; a
    /// pending mark's commit is still where the closure was built from.
    commit: Option<String>,
    /// The host stands where a `nixgate rollback` took it away from the
    /// candidate.
    rolled_back: Option<RolledAway>,
}

/// What the running system `cur` is to nixgate, and whether a rollback
/// took the host away from `cand`: the record of the generation the
/// profile stands on says so, when the host runs it. A push since then
/// (of anything) moved the profile on, and lifts it.
fn deployed(hist: &[KnownGoodGeneration], cur: &StorePath, cand: &StorePath) -> Deployed {
    let unfinished = super::rollback_target::Unfinished::of(hist);
    let newest = (hist.iter().rev()).find(|g| g.closure.as_ref() == Some(cur) && !unfinished.is(g));
    let commit = newest.and_then(|g| g.record.as_ref()?.commit.clone());
    let rolled_back = (hist.iter())
        .find(|g| g.current && g.closure.as_ref() == Some(cur))
        .and_then(|g| {
            let r = g.record.as_ref()?;
            (r.rolled_back_from.as_ref() == Some(cand)).then(|| RolledAway {
                run_id: r.run_id.clone(),
                at: r.marked_at.clone(),
                generation: g.generation,
            })
        });
    Deployed {
        proven: super::rollback_target::proven(hist, cur),
        commit,
        rolled_back,
    }
}

/// The builder lost the running system's derivation: re-evaluate the commit
/// it was deployed from, check that it yields exactly the running system,
/// and root it for later diffs.
async fn recover_old_drv<B: Remote>(
    inv: &Inventory,
    builder: &B,
    host: &str,
    attribute: &str,
    old_commit: &str,
    current: &StorePath,
) -> anyhow::Result<StorePath> {
    use anyhow::Context;
    let shipped = nix::source::ship_source(builder, &inv.builder.source, old_commit, false)
        .await
        .with_context(|| format!("shipping commit {old_commit} to the builder"))?;
    let drv = nix::build::instantiate(builder, &shipped.dir, inv.builder.flake, attribute).await?;
    let outputs = builder
        .exec(&crate::remote::Command::new("nix-store").args([
            "--query",
            "--outputs",
            drv.as_str(),
        ]))
        .await?
        .check("nix-store --query --outputs")?
        .stdout_str();
    anyhow::ensure!(
        outputs.lines().any(|l| l.trim() == current.as_str()),
        "commit {old_commit} evaluates to {}, not to the running {current}",
        outputs.trim()
    );
    nix::gcroots::add_old_drv_root(builder, host, current, &drv).await?;
    Ok(drv)
}

/// Flake inputs changed between two commits of the configuration
/// repository (`None`: neither has a flake.lock). A lock on one side only
/// means every input was added (or removed); a base commit the clone lacks
/// leaves the change unknown.
/// Where the candidate's flake.lock is read: the commit shipped, or the
/// work tree (a dirty tree ships its own, not HEAD's: a `nix flake update`
/// not committed yet was built and not shown).
#[derive(Debug, Clone, Copy)]
enum NewLock<'a> {
    Commit(&'a str),
    WorkTree,
}

fn flake_inputs(
    repo: &std::path::Path,
    old: &str,
    new: NewLock<'_>,
) -> Result<Option<Vec<InputChange>>, InputsUnknown> {
    let read = |c: &str| -> Result<Option<String>, InputsUnknown> {
        let unreadable = |error: String| InputsUnknown::Unreadable { error };
        match release::file_at(repo, c, "flake.lock") {
            Ok(FileAt::Found(b)) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| unreadable(format!("flake.lock at {c} is not UTF-8"))),
            Ok(FileAt::Absent) => Ok(None),
            Ok(FileAt::NoCommit) if c == old => Err(InputsUnknown::BaseNotInClone {
                commit: c.to_owned(),
            }),
            Ok(FileAt::NoCommit) => Err(unreadable(format!("commit {c} is not in this clone"))),
            Err(e) => Err(unreadable(format!("reading flake.lock at {c}: {e:#}"))),
        }
    };
    const EMPTY: &str = r#"{"nodes":{"root":{}}}"#;
    let new_at = new;
    let new = match new {
        NewLock::Commit(c) => read(c)?,
        NewLock::WorkTree => match std::fs::read_to_string(repo.join("flake.lock")) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(InputsUnknown::Unreadable {
                    error: format!("reading flake.lock in {}: {e}", repo.display()),
                });
            }
        },
    };
    let (a, b) = match (read(old)?, new) {
        (None, None) => return Ok(None),
        (a, b) => (
            a.unwrap_or_else(|| EMPTY.into()),
            b.unwrap_or_else(|| EMPTY.into()),
        ),
    };
    // Relative path inputs are read from the repository (they lock no
    // hash): the old side at `old`, the new where its lock was read.
    let old_tree = |dir: &str| diff::source_tree::tree_at(repo, old, dir);
    let new_tree = |dir: &str| match new_at {
        NewLock::Commit(c) => diff::source_tree::tree_at(repo, c, dir),
        NewLock::WorkTree => diff::source_tree::worktree_tree(repo, dir),
    };
    diff::flake_lock::flake_inputs_diff_in(&a, &b, &old_tree, &new_tree)
        .map(Some)
        .map_err(|e| InputsUnknown::Unreadable {
            error: format!("a flake.lock does not parse: {e}"),
        })
}

/// Host diffs in progress at once. The builder's derivation reads are
/// serialised anyway (one shared cache); what runs side by side is the
/// hosts' own reads (a round trip each) and the comparison.
const DIFFS_AT_ONCE: usize = 32;

/// What the diff gate leaves for the rest of the run.
pub struct GateResult {
    /// Every candidate's closure, for the copy gate.
    pub closures: HashMap<StorePath, Arc<Vec<nix::closure::PathInfo>>>,
    /// Ctrl-C stopped the gate.
    pub cancelled: bool,
}

/// Diff every ready host of `verdicts`; refuse those that drift or cannot be
/// read. Stops at Ctrl-C (the hosts not yet diffed stay as they were: the
/// plan is cancelled, nothing runs).
pub async fn run<F: Fleet>(
    p: &Planning<'_, F>,
    verdicts: &mut HashMap<String, Verdict>,
    drvs: &HashMap<String, StorePath>,
    judging: &Judging,
    source: &Source,
) -> GateResult {
    let mut cands: Vec<(String, StorePath)> = verdicts
        .iter()
        .filter_map(|(h, v)| match v {
            Verdict::Ready { candidate, .. } => Some((h.clone(), candidate.closure.clone())),
            _ => None,
        })
        .collect();
    cands.sort();
    let mut closures = HashMap::new();
    let mut pieces = PieceStore::default();
    let gate = diff_all(
        p.inventory,
        p.fleet.as_ref(),
        &cands,
        drvs,
        judging.expect.as_deref(),
        Some(if source.dirty {
            NewLock::WorkTree
        } else {
            NewLock::Commit(&source.commit)
        }),
        p.sink,
        &mut closures,
        |host, found| {
            apply(
                verdicts,
                &mut pieces,
                judging.allow_rolled_back,
                host,
                found,
            )
        },
    );
    let cancelled = tokio::select! {
        _ = gate => false,
        _ = p.stop.cancelled() => true,
    };
    GateResult {
        closures,
        cancelled,
    }
}

/// What the gate found for one host.
enum Found<'a> {
    Diff(&'a HostDiff),
    /// Refused without a diff: no session (unreachable, or sudo refused the
    /// run's password), or `--expect` on a host that runs no known system.
    Refused(Refusal),
    Failed(String),
}

/// Why a host has no diff.
enum Miss {
    Refused(Refusal),
    Failed(String),
}

/// Record a host's diff finding in its verdict (its record's text shared
/// through `pieces` with the other hosts').
fn apply(
    verdicts: &mut HashMap<String, Verdict>,
    pieces: &mut PieceStore,
    allow_rolled_back: bool,
    host: &str,
    found: Found<'_>,
) {
    let Some(v) = verdicts.get_mut(host) else {
        return;
    };
    let refusal = match found {
        Found::Diff(d) => match judged(d, allow_rolled_back) {
            Some(refusal) => refusal,
            None => {
                if let Verdict::Ready { candidate, running } = v {
                    candidate.earlier_gates.push(record(d, pieces));
                    *running = d.current.clone();
                }
                return;
            }
        },
        Found::Refused(refusal) => refusal,
        Found::Failed(error) => Refusal::DiffFailed { error },
    };
    *v = Verdict::Refused { refusal };
}

/// Why a host's diff refuses it, if it does: the candidate is the closure a
/// `nixgate rollback` took it away from (unless `allow_rolled_back`), or
/// it drifts.
fn judged(d: &HostDiff, allow_rolled_back: bool) -> Option<Refusal> {
    if let Some(away) = d.rolled_back.as_ref().filter(|_| !allow_rolled_back) {
        return Some(Refusal::RolledBack { away: away.clone() });
    }
    if d.drift.is_empty() {
        return None;
    }
    // A package rebuilt at two versions drifts once by name.
    let mut packages: Vec<String> = d.drift.iter().map(|x| x.package.clone()).collect();
    packages.dedup();
    Some(Refusal::Drift { packages })
}

/// Diff every candidate. As each host's diff (or why it could not be made)
/// is ready, `found` takes what the caller needs of it, then the diff goes
/// to the reporter as an event: only what `found` keeps stays in memory (a
/// large change's diff is hundreds of kilobytes, and there may be hundreds
/// of hosts).
#[allow(clippy::too_many_arguments)]
async fn diff_all<F: Fleet>(
    inv: &Inventory,
    fleet: &F,
    candidates: &[(String, StorePath)],
    drvs: &HashMap<String, StorePath>,
    expect: Option<&[String]>,
    new_lock: Option<NewLock<'_>>,
    sink: &EventSink,
    closures_out: &mut HashMap<StorePath, Arc<Vec<nix::closure::PathInfo>>>,
    mut found: impl FnMut(&str, Found<'_>),
) {
    // What each host runs, then one closure query on the builder for every
    // candidate and every running system the builder has (the hosts are
    // not asked for theirs: best effort, a host whose system the builder
    // lacks, or a failed query, is asked).
    let mut running: HashMap<&str, Result<Option<StorePath>, ReadError>> =
        futures_util::future::join_all(
            candidates
                .iter()
                .map(|(h, _)| async move { (h.as_str(), running(fleet, inv, h).await) }),
        )
        .await
        .into_iter()
        .collect();
    let closures = builder_closures(fleet, candidates, &running).await;
    let owned = Ctx {
        inv,
        fleet,
        expect,
        new_lock,
        drvs: Default::default(),
        closures,
    };
    let ctx = &owned;
    let mut fetched = HashMap::new();
    let jobs = candidates.iter().map(|(h, cand)| {
        let current = running
            .remove(h.as_str())
            .unwrap_or_else(|| Err(ReadError::Failed(anyhow::anyhow!("not read"))));
        async move {
            let r = match (drvs.get(h), current) {
                (Some(drv), Ok(current)) => one(ctx, h, cand, drv, current).await.map_err(|e| {
                    match e.downcast_ref::<diff::ExpectUnchecked>() {
                        Some(_) => Miss::Refused(Refusal::NoCurrentSystem {
                            link: current_link(inv, h),
                        }),
                        None => Miss::Failed(format!("{e:#}")),
                    }
                }),
                (Some(_), Err(ReadError::Unreachable(e))) => {
                    Err(Miss::Refused(Refusal::no_session(&e)))
                }
                (Some(_), Err(ReadError::Failed(e))) => {
                    Err(Miss::Failed(format!("reading what {h} runs: {e:#}")))
                }
                (None, _) => Err(Miss::Failed("no derivation known for the candidate".into())),
            };
            (h.clone(), r)
        }
    });
    // A bounded number at a time: each diff in progress holds both
    // closures, its derivations and its result, and with all of 500 hosts
    // in progress at once that was most of the controller's peak.
    let mut done =
        futures_util::StreamExt::buffer_unordered(futures_util::stream::iter(jobs), DIFFS_AT_ONCE);
    while let Some((h, r)) = futures_util::StreamExt::next(&mut done).await {
        match r {
            Ok(diff) => {
                if let Some(c) = &diff.candidate_closure {
                    fetched.insert(diff.candidate.clone(), c.clone());
                }
                found(&h, Found::Diff(&diff));
                sink.emit_handled(Event::Diff { host: h, diff }).await
            }
            Err(Miss::Refused(refusal)) => found(&h, Found::Refused(refusal)),
            Err(Miss::Failed(error)) => found(&h, Found::Failed(error)),
        }
    }
    drop(done);
    *closures_out = owned.closures;
    closures_out.extend(fetched);
}

/// Every candidate's closure, and that of every running system the builder
/// has, from one query on the builder (empty when it fails: each host's
/// diff then asks for what it needs).
async fn builder_closures<F: Fleet>(
    fleet: &F,
    candidates: &[(String, StorePath)],
    running: &HashMap<&str, Result<Option<StorePath>, ReadError>>,
) -> HashMap<StorePath, Arc<Vec<nix::closure::PathInfo>>> {
    let Ok(b) = fleet.builder().await else {
        return HashMap::new();
    };
    let mut roots: Vec<StorePath> = candidates.iter().map(|(_, c)| c.clone()).collect();
    roots.extend(
        running
            .values()
            .filter_map(|r| r.as_ref().ok().cloned().flatten()),
    );
    roots.sort();
    roots.dedup();
    nix::closure::closures_present(&b, &roots)
        .await
        .map(|m| m.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
        .unwrap_or_default()
}

/// The diff gate's evidence for the known-good record: the same text as
/// [`GateRecord::new`] would hold, in pieces shared with the other records
/// made through `pieces`.
pub fn record(d: &HostDiff, pieces: &mut PieceStore) -> GateRecord {
    GateRecord {
        gate: Gate::Diff,
        evidence: pieces.share(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::stored::fixture::sp;

    /// A host's diff of a change shared by every host but for its own paths.
    fn diff(host: &str) -> HostDiff {
        let changes = (0..200)
            .map(|i| diff::packages::PackageChange {
                name: format!("filler-{i}"),
                change: diff::packages::Change::Added {
                    versions: vec![format!("1.{i}")],
                },
                selected: false,
            })
            .collect();
        HostDiff {
            current: Some(sp('a', &format!("nixos-system-{host}"))),
            candidate: sp('b', &format!("nixos-system-{host}")),
            packages: Some(diff::PackageDiff {
                changes,
                size: Default::default(),
            }),
            structural: diff::Structural::Identical,
            drift: Vec::new(),
            flake_inputs: None,
            flake_inputs_unknown: None,
            unvalidated: false,
            rolled_back: None,
            candidate_closure: None,
        }
    }

    use crate::release::test_git as git;

    fn lock(rev: &str) -> String {
        format!(
            r#"{{"nodes":{{"root":{{"inputs":{{"nixpkgs":"nixpkgs","home":"home"}}}},"nixpkgs":{{"locked":{{"rev":"{rev}","narHash":"h{rev}"}}}},"home":{{"locked":{{"rev":"x","narHash":"hx"}}}}}}}}"#
        )
    }

    /// The base commit missing from the clone is not a base without a
    /// flake.lock: the inputs' change is unknown, not "every input added".
    #[test]
    fn flake_inputs_against_a_commit_not_in_the_clone_are_unknown_not_all_added() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        git(dir, &["init", "-q"]);
        std::fs::write(dir.join("flake.nix"), "{}\n").unwrap();
        git(dir, &["add", "flake.nix"]);
        git(dir, &["commit", "-q", "-m", "no lock yet"]);
        let no_lock = git(dir, &["rev-parse", "HEAD"]);
        std::fs::write(dir.join("flake.lock"), lock("a")).unwrap();
        git(dir, &["add", "flake.lock"]);
        git(dir, &["commit", "-q", "-m", "lock a"]);
        let a = git(dir, &["rev-parse", "HEAD"]);
        std::fs::write(dir.join("flake.lock"), lock("b")).unwrap();
        git(dir, &["commit", "-q", "-am", "lock b"]);
        let b = git(dir, &["rev-parse", "HEAD"]);
        let missing = "1234567890abcdef1234567890abcdef12345678";

        assert_eq!(
            flake_inputs(dir, missing, NewLock::Commit(&b)),
            Err(InputsUnknown::BaseNotInClone {
                commit: missing.into()
            })
        );
        let why = flake_inputs(dir, missing, NewLock::Commit(&b)).unwrap_err();
        assert_eq!(
            diff::render::render_inputs_unknown(&why),
            format!("flake inputs: unknown (base commit {missing} not in this clone: git fetch)")
        );
        // A base that has no flake.lock: every input was added.
        let added = flake_inputs(dir, &no_lock, NewLock::Commit(&b))
            .unwrap()
            .unwrap();
        assert_eq!(added.len(), 2, "{added:?}");
        assert!(added.iter().all(|c| matches!(c, InputChange::Added { .. })));
        assert_eq!(
            flake_inputs(dir, &a, NewLock::Commit(&b))
                .unwrap()
                .map(|v| v.len()),
            Some(1)
        );
        // A dirty tree: its own flake.lock, not HEAD's (an update not
        // committed yet was built and not shown).
        std::fs::write(dir.join("flake.lock"), lock("c")).unwrap();
        let dirty = flake_inputs(dir, &b, NewLock::WorkTree).unwrap().unwrap();
        assert_eq!(dirty.len(), 1, "{dirty:?}");
        assert_eq!(
            flake_inputs(dir, &b, NewLock::Commit(&b))
                .unwrap()
                .map(|v| v.len()),
            Some(0)
        );
    }

    /// A Nix 2.26 relative path input (`inputs.sub.url = "./sub"`) locks
    /// no hash: its lock is the same before and after an edit in `sub/`.
    /// The edit is an update of `sub` all the same, committed or in the
    /// working tree (a new file there too, untracked: the dirty build ships it),
    /// from one git tree of `sub/` to the other.
    #[test]
    fn a_relative_path_input_changes_with_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        git(dir, &["init", "-q"]);
        let lock = r#"{"nodes":{"root":{"inputs":{"sub":"sub"}},"sub":{"locked":{"path":"./sub","type":"path"},"original":{"path":"./sub","type":"path"},"parent":[]}},"root":"root","version":7}"#;
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("flake.lock"), lock).unwrap();
        std::fs::write(dir.join("sub/flake.nix"), "{ outputs = _: { x = 1; }; }").unwrap();
        git(dir, &["add", "."]);
        git(dir, &["commit", "-q", "-m", "one"]);
        let a = git(dir, &["rev-parse", "HEAD"]);
        let tree_a = git(dir, &["rev-parse", "HEAD:sub"]);
        std::fs::write(dir.join("sub/flake.nix"), "{ outputs = _: { x = 2; }; }").unwrap();
        git(dir, &["commit", "-q", "-am", "two"]);
        let b = git(dir, &["rev-parse", "HEAD"]);
        let tree_b = git(dir, &["rev-parse", "HEAD:sub"]);
        let updated = |old: &str, new: &str| {
            vec![InputChange::Updated {
                name: "sub".into(),
                old_rev: Some(old.into()),
                new_rev: Some(new.into()),
                old_modified: None,
                new_modified: None,
            }]
        };
        assert_eq!(
            flake_inputs(dir, &a, NewLock::Commit(&b)),
            Ok(Some(updated(&tree_a, &tree_b)))
        );
        assert_eq!(flake_inputs(dir, &b, NewLock::WorkTree), Ok(Some(vec![])));
        std::fs::write(dir.join("sub/new.nix"), "3").unwrap();
        let dirty = flake_inputs(dir, &b, NewLock::WorkTree).unwrap().unwrap();
        assert!(
            matches!(&dirty[..], [InputChange::Updated { old_rev: Some(o), new_rev: Some(n), .. }]
                if *o == tree_b && *n != tree_b),
            "{dirty:?}"
        );
        let lines = diff::render::render_inputs(&dirty);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with(&format!("flake input sub {} -> ", &tree_b[..12])),
            "{lines:?}"
        );
    }

    /// Generations 1.. of `closures` (`(closure, soak pending)`), each
    /// with its record naming commit `c<N>`, the last current.
    fn history(closures: &[(&StorePath, bool)]) -> Vec<KnownGoodGeneration> {
        let gen_of = |i: usize, (c, pending): (&StorePath, bool)| {
            let generation = i as u64 + 1;
            let record = format!(
                r#"{{"version":1,"host":"web1","generation":{generation},"closure":"{c}","marked_at":"2026-12-01T00:00:00Z","commit":"c{generation}","run_id":"r{generation}","gates":[],"soak_pending":{pending}}}"#
            );
            KnownGoodGeneration {
                generation,
                closure: Some(c.clone()),
                present: true,
                record: Some(serde_json::from_str(&record).unwrap()),
                recorded: true,
                current: i + 1 == closures.len(),
                cut_off: false,
                stood: None,
            }
        };
        (closures.iter().enumerate())
            .map(|(i, g)| gen_of(i, *g))
            .collect()
    }

    /// web1 runs `a`, proven by generation 1; a later run re-marked `a`
    /// (generation 3, after `b`) in a soaking wave and its soak was cut
    /// short: the closure is still proven by generation 1 (before: the
    /// newest mark of it was read alone, pending, and the diff called the
    /// host unvalidated), the commit the newest mark's. Marks of `a` all
    /// pending, or none: unvalidated.
    #[test]
    fn a_pending_re_mark_does_not_hide_a_proven_mark_of_the_same_closure() {
        let (a, b) = (sp('a', "nixos-system-web1"), sp('b', "nixos-system-web1"));
        let d = sp('d', "nixos-system-web1");
        let deployed = |h: &[KnownGoodGeneration], cur: &StorePath| {
            let found = deployed(h, cur, &d);
            (found.proven, found.commit)
        };
        let h = history(&[(&a, false), (&b, false), (&a, true)]);
        assert_eq!(deployed(&h, &a), (true, Some("c3".into())));
        let h = history(&[(&a, true), (&b, false), (&a, true)]);
        assert_eq!(deployed(&h, &a), (false, Some("c3".into())));
        assert_eq!(deployed(&h, &d), (false, None));
        let h = history(&[(&b, false), (&a, false)]);
        assert_eq!(deployed(&h, &a), (true, Some("c2".into())));
    }

    /// `nixgate rollback` took web1 from `c` back to generation 2 (`b`),
    /// re-selected: the candidate `c` again (the nightly push of the
    /// unchanged HEAD) is the closure the rollback left; another candidate
    /// is not. Once the profile moved on (a push of `d` marked generation
    /// 4), `c` is a candidate like any other; so it is on a host that runs
    /// something else than where the rollback left it.
    #[test]
    fn the_closure_a_rollback_left_is_known_while_the_host_stands_where_it_went() {
        let [a, b, c, d] = ['a', 'b', 'c', 'd'].map(|x| sp(x, "nixos-system-web1"));
        let mut h = history(&[(&a, false), (&b, false), (&c, false)]);
        h[2].current = false;
        h[1].current = true;
        let r = h[1].record.as_mut().unwrap();
        r.rolled_back_from = Some(c.clone());
        r.marked_at = "2026-12-06T03:00:00Z".into();
        let away = deployed(&h, &b, &c)
            .rolled_back
            .expect("rolled back from c");
        assert_eq!(
            (away.run_id.to_string(), away.at.as_str(), away.generation),
            ("r2".into(), "2026-12-06T03:00:00Z", 2)
        );
        assert_eq!(deployed(&h, &b, &d).rolled_back, None);
        assert_eq!(deployed(&h, &a, &c).rolled_back, None);
        h[1].current = false;
        h.extend(history(&[(&a, false), (&b, false), (&c, false), (&d, false)]).pop());
        assert_eq!(deployed(&h, &d, &c).rolled_back, None);
    }

    #[test]
    fn a_shared_record_is_the_record_a_host_would_have_alone() {
        let mut pieces = PieceStore::default();
        for host in ["web1", "web2", "db10"] {
            let shared = record(&diff(host), &mut pieces);
            let alone = GateRecord::new(Gate::Diff, &diff(host));
            assert_eq!(shared, alone);
            assert_eq!(
                serde_json::to_string(&shared).unwrap(),
                serde_json::to_string(&alone).unwrap()
            );
        }
    }
}
