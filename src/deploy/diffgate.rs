//! Gate 2 for a run: every host's candidate diffed against what it runs,
//! concurrently; drift (with `--expect`) fails the host before anything
//! changes on it. `plan` stops here; `push` goes on with the rest.

use std::collections::HashMap;
use std::sync::Arc;

use crate::activation::known_good::GateRecord;
use crate::activation::{HostPaths, known_good, links};
use crate::diff::{self, HostDiff};
use crate::fleet::{BUILDER, Sessions};
use crate::gates::Gate;
use crate::inventory::Inventory;
use crate::nix::{self, StorePath};
use crate::release;
use crate::remote::Remote;
use crate::report::{Event, EventSink};

use super::Candidate;

/// What every host's diff of one run shares.
struct Ctx<'a> {
    inv: &'a Inventory,
    sessions: &'a Sessions,
    expect: Option<&'a [String]>,
    /// The candidate's commit.
    commit: Option<&'a str>,
    drvs: diff::structural::SharedDrvCache,
    /// Every candidate's closure, and that of every system a host runs that
    /// the builder has, from one query on the builder.
    closures: HashMap<StorePath, Arc<Vec<nix::closure::PathInfo>>>,
}

/// What a host runs (`None`: no system), read before the builder is asked.
async fn running(
    sessions: &Sessions,
    inv: &Inventory,
    host: &str,
) -> anyhow::Result<Option<StorePath>> {
    let h = inv
        .host(host)
        .ok_or_else(|| anyhow::anyhow!("{host} is not in the inventory"))?;
    let session = sessions.get(host).await?;
    links::read_store_link(&session, &HostPaths::for_os(h.os).current_system).await
}

/// Diff one host.
async fn one(
    ctx: &Ctx<'_>,
    host: &str,
    cand: &StorePath,
    drv: &StorePath,
    current: Option<StorePath>,
) -> anyhow::Result<HostDiff> {
    let Ctx {
        inv,
        sessions,
        expect,
        commit,
        ref drvs,
        ..
    } = *ctx;
    let h = inv
        .host(host)
        .ok_or_else(|| anyhow::anyhow!("{host} is not in the inventory"))?;
    let session = sessions.get(host).await?;
    let builder = sessions.get(BUILDER).await?;
    let paths = HostPaths::for_os(h.os);
    let built = diff::Built {
        toplevel: cand,
        drv,
        closure: ctx.closures.get(cand).cloned(),
        current_closure: current.as_ref().and_then(|c| ctx.closures.get(c).cloned()),
    };
    let mut d = diff::diff_host(&session, &builder, current.as_ref(), built, expect, drvs).await?;
    // The commit the running system was validated from, if it is the known-good.
    let deployed = match &current {
        Some(cur) => known_good::history(&session, &paths)
            .await
            .ok()
            .and_then(|hist| {
                hist.into_iter()
                    .rev()
                    .find(|g| g.closure.as_ref() == Some(cur))
                    .and_then(|g| g.record.and_then(|r| r.commit))
            }),
        None => None,
    };
    let (Some(cur), Some(old_commit)) = (&current, deployed) else {
        return Ok(d);
    };
    if let Some(new_commit) = commit {
        d.flake_inputs = flake_inputs(&inv.builder.source, &old_commit, new_commit);
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

/// The builder lost the running system's derivation: re-evaluate the commit
/// it was deployed from, check that it yields exactly the running system,
/// and root it for later diffs.
async fn recover_old_drv(
    inv: &Inventory,
    builder: &crate::ssh::SshSession,
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

/// Flake inputs changed between two commits of the configuration repository.
fn flake_inputs(
    repo: &std::path::Path,
    old: &str,
    new: &str,
) -> Option<Vec<diff::flake_lock::InputChange>> {
    let read = |c: &str| {
        release::file_at(repo, c, "flake.lock")
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
    };
    // A lock on one side only means every input was added (or removed).
    const EMPTY: &str = r#"{"nodes":{"root":{}}}"#;
    let (a, b) = match (read(old), read(new)) {
        (None, None) => return None,
        (a, b) => (
            a.unwrap_or_else(|| EMPTY.into()),
            b.unwrap_or_else(|| EMPTY.into()),
        ),
    };
    diff::flake_lock::flake_inputs_diff(&a, &b).ok()
}

/// Host diffs in progress at once. The builder's derivation reads are
/// serialised anyway (one shared cache); what runs side by side is the
/// hosts' own reads (a round trip each) and the comparison.
const DIFFS_AT_ONCE: usize = 32;

/// Diff every candidate. As each host's diff (or why it could not be made)
/// is ready, `keep` takes what the caller needs of it, then the diff goes to
/// the reporter as an event: only what `keep` returns stays in memory (a
/// large change's diff is hundreds of kilobytes, and there may be hundreds
/// of hosts).
#[allow(clippy::too_many_arguments)]
pub async fn diff_all<T>(
    inv: &Inventory,
    sessions: &Arc<Sessions>,
    candidates: &HashMap<String, Candidate>,
    drvs: &HashMap<String, StorePath>,
    expect: Option<&[String]>,
    commit: Option<&str>,
    sink: &EventSink,
    mut keep: impl FnMut(&str, &Result<HostDiff, String>) -> T,
) -> HashMap<String, T> {
    let mut hosts: Vec<&String> = candidates.keys().collect();
    hosts.sort();
    // What each host runs, then one closure query on the builder for every
    // candidate and every running system the builder has (the hosts are
    // not asked for theirs: best effort, a host whose system the builder
    // lacks, or a failed query, is asked).
    let mut running: HashMap<&String, anyhow::Result<Option<StorePath>>> =
        futures_util::future::join_all(
            hosts
                .iter()
                .map(|h| async move { (*h, running(sessions, inv, h).await) }),
        )
        .await
        .into_iter()
        .collect();
    let mut roots: Vec<StorePath> = candidates.values().map(|c| c.closure.clone()).collect();
    let closures = match sessions.get(BUILDER).await {
        Ok(b) => {
            let mut currents: Vec<StorePath> = running
                .values()
                .filter_map(|r| r.as_ref().ok().cloned().flatten())
                .filter(|c| !roots.contains(c))
                .collect();
            currents.sort();
            currents.dedup();
            if let Ok(lacking) = nix::closure::missing(&b, &currents).await {
                roots.extend(currents.into_iter().filter(|c| !lacking.contains(c)));
            }
            nix::closure::closures(&b, &roots)
                .await
                .map(|m| m.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
                .unwrap_or_default()
        }
        Err(_) => HashMap::new(),
    };
    let ctx = Ctx {
        inv,
        sessions,
        expect,
        commit,
        drvs: Default::default(),
        closures,
    };
    let ctx = &ctx;
    let jobs = hosts.iter().map(|h| {
        let current = running
            .remove(*h)
            .unwrap_or_else(|| Err(anyhow::anyhow!("not read")));
        async move {
            let c = &candidates[*h];
            let r = match (drvs.get(*h), current) {
                (Some(drv), Ok(current)) => one(ctx, h, &c.closure, drv, current)
                    .await
                    .map_err(|e| format!("{e:#}")),
                (Some(_), Err(e)) => Err(format!("reading what {h} runs: {e:#}")),
                (None, _) => Err("no derivation known for the candidate".into()),
            };
            ((*h).clone(), r)
        }
    });
    // A bounded number at a time: each diff in progress holds both
    // closures, its derivations and its result, and with all of 500 hosts
    // in progress at once that was most of the controller's peak.
    let mut done =
        futures_util::StreamExt::buffer_unordered(futures_util::stream::iter(jobs), DIFFS_AT_ONCE);
    let mut kept = HashMap::new();
    while let Some((h, r)) = futures_util::StreamExt::next(&mut done).await {
        kept.insert(h.clone(), keep(&h, &r));
        match r {
            Ok(diff) => sink.emit_handled(Event::Diff { host: h, diff }).await,
            Err(reason) => sink.emit(Event::GateFailed {
                host: h,
                gate: Gate::Diff,
                reason,
            }),
        }
    }
    kept
}

/// The diff gate's evidence for the known-good record.
pub fn record(d: &HostDiff) -> GateRecord {
    GateRecord::new(Gate::Diff, d)
}
