//! Creating a release: policy checks and a check that no existing ref is in
//! the way of the new names, then the tag object, then both refs
//! (tag and branch) under libgit2 ref locks with their old values re-checked
//! under the lock.
//!
//! Order of work: everything is checked before anything is written; the only
//! write before the locks is the (unreferenced, invisible) tag object. A
//! refusal or an error before the transaction commits leaves no ref changed.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use git2::{ErrorCode, Oid, Repository, Signature};

use super::record::Record;
use super::{BranchUpdate, Refusal, ReleaseError, ReleaseOutcome, ReleaseRequest, name, open};
use crate::state::clock::Utc;

/// Most releases of one commit in one second before giving up on a free name.
const MAX_ATTEMPTS: u32 = 1000;

/// Tag `rel.commit` as a release of `rel.target` and fast-forward the
/// target's release branch to it (see the module docs for the refusals).
pub fn create(repo_path: &Path, rel: &ReleaseRequest) -> anyhow::Result<ReleaseOutcome> {
    name::check_target(&rel.target)?;
    let repo = open(repo_path)?;
    let commit = find_commit(&repo, &rel.commit, repo_path)?;
    let new = commit.id();
    if rel.dirty {
        return Ok(refused(Refusal::DirtyTree));
    }

    let branch = name::branch(&rel.target);
    let branch_ref = format!("refs/heads/{branch}");
    let old = ref_target(&repo, &branch_ref)?;
    let update = match branch_update(&repo, old, new, rel.force)? {
        Ok(update) => update,
        Err(refusal) => return Ok(refused(refusal)),
    };

    let (secs, ns) = release_time(rel.at)?;
    let new_hex = new.to_string();
    let tag = free_tag_name(&repo, &rel.target, secs, &new_hex)?;
    let tag_ref = format!("refs/tags/{tag}");
    for refname in [&branch_ref, &tag_ref] {
        if let Some(existing) = in_the_way(&repo, refname)? {
            return Ok(refused(Refusal::RefNameConflict {
                refname: refname.clone(),
                existing,
            }));
        }
    }

    let message = record(rel, &new_hex, (secs, ns), &update).to_message()?;
    let tagger = tagger(&repo, secs)?;
    let tag_oid = repo
        .tag_annotation_create(&tag, commit.as_object(), &tagger, &message)
        .context("writing the release tag object")?;

    let mut tx = repo.transaction().context("starting a ref transaction")?;
    for r in [&tag_ref, &branch_ref] {
        tx.lock_ref(r).map_err(|e| lock_error(&repo, e, r))?;
    }
    // Re-check under the locks: nobody may have created the tag or moved the
    // branch since we looked (compare-and-swap on the old values).
    if ref_target(&repo, &tag_ref)?.is_some() {
        return Err(concurrent(&tag_ref));
    }
    if ref_target(&repo, &branch_ref)? != old {
        return Err(concurrent(&branch_ref));
    }
    let log = format!("nixgate release {tag}");
    tx.set_target(&tag_ref, tag_oid, Some(&tagger), &log)
        .context("staging the tag ref")?;
    if update != BranchUpdate::Unchanged {
        tx.set_target(&branch_ref, new, Some(&tagger), &log)
            .context("staging the release branch")?;
    }
    tx.commit()
        .with_context(|| format!("writing {tag_ref} and {branch_ref}"))?;

    Ok(ReleaseOutcome::Released {
        tag,
        branch,
        commit: new_hex,
        update,
    })
}

fn refused(reason: Refusal) -> ReleaseOutcome {
    ReleaseOutcome::Refused { reason }
}

/// How the release branch, now at `old`, would move to `new`; a refusal if
/// that rewinds or forks it and `force` was not given.
fn branch_update(
    repo: &Repository,
    old: Option<Oid>,
    new: Oid,
    force: bool,
) -> anyhow::Result<Result<BranchUpdate, Refusal>> {
    Ok(Ok(match old {
        None => BranchUpdate::Created,
        Some(o) if o == new => BranchUpdate::Unchanged,
        Some(o) if is_descendant(repo, new, o)? => BranchUpdate::FastForward {
            from: o.to_string(),
        },
        Some(o) if force => BranchUpdate::Forced {
            from: o.to_string(),
        },
        Some(o) => {
            return Ok(Err(Refusal::NotFastForward {
                branch_at: o.to_string(),
                new: new.to_string(),
            }));
        }
    }))
}

/// The release time (`None`: now) as whole seconds and nanoseconds since
/// the Unix epoch.
fn release_time(at: Option<SystemTime>) -> anyhow::Result<(i64, u64)> {
    let since = at
        .unwrap_or_else(SystemTime::now)
        .duration_since(UNIX_EPOCH)
        .context("the release time is before 1970")?;
    let secs = i64::try_from(since.as_secs()).context("the release time is out of range")?;
    let ns = u64::try_from(since.as_nanos()).context("the release time is out of range")?;
    Ok((secs, ns))
}

fn record(
    rel: &ReleaseRequest,
    commit: &str,
    (secs, ns): (i64, u64),
    update: &BranchUpdate,
) -> Record {
    Record {
        target: rel.target.clone(),
        commit: commit.to_owned(),
        closure: rel.closure.clone(),
        builder: rel.builder.clone(),
        run_id: rel.run_id.clone(),
        time: Utc::from_unix(secs).rfc3339(),
        time_unix_ns: ns,
        nixgate_version: env!("CARGO_PKG_VERSION").to_owned(),
        forced_from: match update {
            BranchUpdate::Forced { from } => Some(from.clone()),
            _ => None,
        },
        evidence: rel.evidence.clone(),
    }
}

/// An existing ref that keeps `refname` from being written: one it would
/// sit below (`refs/heads/release` for `refs/heads/release/web1`) or one
/// below it (`refs/heads/release/web1/old`). git stores refs as paths and
/// refuses such pairs, but libgit2 checks only loose refs, and that late,
/// with a filesystem error naming no ref: next to a packed `release` branch
/// (after `git gc`) or tag it wrote the release ref, and git then refused to
/// update either ref and remotes refused the push.
fn in_the_way(repo: &Repository, refname: &str) -> anyhow::Result<Option<String>> {
    // Below `refs/<kind>/` only: `refs` and `refs/heads` are directories.
    let above = refname
        .match_indices('/')
        .skip(2)
        .map(|(i, _)| &refname[..i]);
    for prefix in above {
        match repo.find_reference(prefix) {
            Ok(_) => return Ok(Some(prefix.to_owned())),
            Err(e) if e.code() == ErrorCode::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {prefix}")),
        }
    }
    let below = format!("{refname}/");
    let mut refs = repo
        .references_glob(&format!("{below}*"))
        .with_context(|| format!("listing the refs below {refname}"))?;
    for r in refs.names() {
        let r = r.with_context(|| format!("listing the refs below {refname}"))?;
        if r.starts_with(&below) {
            return Ok(Some(r.to_owned()));
        }
    }
    Ok(None)
}

/// The commit `release/<target>` points at, if the branch exists.
pub fn branch_commit(repo_path: &Path, target: &str) -> anyhow::Result<Option<String>> {
    let repo = open(repo_path)?;
    let branch_ref = format!("refs/heads/{}", name::branch(target));
    Ok(ref_target(&repo, &branch_ref)?.map(|o| o.to_string()))
}

/// The commit named by a hex id or unique prefix (at least 7 digits).
fn find_commit<'r>(
    repo: &'r Repository,
    id: &str,
    repo_path: &Path,
) -> anyhow::Result<git2::Commit<'r>> {
    let not_found = || ReleaseError::CommitNotFound {
        commit: id.to_owned(),
        repo: repo_path.display().to_string(),
    };
    if id.len() < 7 || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found().into());
    }
    match repo.find_commit_by_prefix(id) {
        Ok(c) => Ok(c),
        Err(e) if e.code() == ErrorCode::NotFound => Err(not_found().into()),
        Err(e) => Err(e).with_context(|| format!("looking up commit {id}")),
    }
}

/// Where a direct ref points (peeled to its object id), if it exists.
pub(super) fn ref_target(repo: &Repository, refname: &str) -> anyhow::Result<Option<Oid>> {
    match repo.find_reference(refname) {
        Ok(r) => Ok(Some(
            r.resolve()
                .with_context(|| format!("resolving {refname}"))?
                .target()
                .with_context(|| format!("{refname} has no target"))?,
        )),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {refname}")),
    }
}

fn is_descendant(repo: &Repository, new: Oid, old: Oid) -> anyhow::Result<bool> {
    repo.graph_descendant_of(new, old)
        .with_context(|| format!("checking whether {new} descends from {old}"))
}

/// The first free tag name for this release second and commit.
fn free_tag_name(repo: &Repository, target: &str, secs: i64, hex: &str) -> anyhow::Result<String> {
    for attempt in 1..=MAX_ATTEMPTS {
        let tag = name::tag(target, secs, hex, attempt);
        let refname = format!("refs/tags/{tag}");
        if !git2::Reference::is_valid_name(&refname) {
            return Err(ReleaseError::InvalidTarget {
                target: target.to_owned(),
                problem: format!("git refuses the tag name {tag}"),
            }
            .into());
        }
        if ref_target(repo, &refname)?.is_none() {
            return Ok(tag);
        }
    }
    anyhow::bail!("{MAX_ATTEMPTS} releases of {hex} for {target} in one second: wait a second")
}

/// The repository's configured `user.name`/`user.email`, else nixgate's own
/// identity, at the release time (UTC).
fn tagger(repo: &Repository, secs: i64) -> anyhow::Result<Signature<'static>> {
    let time = git2::Time::new(secs, 0);
    let configured = repo.config().ok().and_then(|c| {
        let name = c.get_string("user.name").ok()?;
        let email = c.get_string("user.email").ok()?;
        Signature::new(&name, &email, &time).ok()
    });
    match configured {
        Some(s) => Ok(s),
        None => Signature::new("nixgate", "nixgate@localhost", &time)
            .context("building the default tagger identity"),
    }
}

fn concurrent(refname: &str) -> anyhow::Error {
    ReleaseError::ConcurrentUpdate {
        refname: refname.to_owned(),
    }
    .into()
}

/// A ref that could not be locked. Its lock file still there: held, or
/// left over (say which file to remove: libgit2's own message is lost in
/// the error chain). Gone again: a writer held it and finished, a real
/// concurrent update.
fn lock_error(repo: &Repository, e: git2::Error, refname: &str) -> anyhow::Error {
    if e.code() != ErrorCode::Locked {
        return anyhow::Error::new(e).context(format!("locking {refname}"));
    }
    // Branches and tags live in the common directory, shared by worktrees.
    let lock_file = repo.commondir().join(format!("{refname}.lock"));
    if lock_file.exists() {
        ReleaseError::RefLocked {
            refname: refname.to_owned(),
            lock_file: lock_file.display().to_string(),
        }
        .into()
    } else {
        concurrent(refname)
    }
}
