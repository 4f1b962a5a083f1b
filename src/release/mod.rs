//! Release pointers in the configuration repository: an annotated tag
//! `release/<target>/<UTC>-<shortrev>` on the exact commit a host was proven
//! known-good with, and a branch `release/<target>` that only ever moves
//! forward (fast-forward) to the newest such commit.
//!
//! The tag message is the record: a human-readable header followed by a
//! fenced JSON block ([`record`]) that [`show`], [`list`] and [`resolve`] parse
//! back, so `nixgate push --release TAG` can redeploy the exact closure.
//!
//! Refs and tags go through libgit2 (`git2`): no scraping of `git` output, and
//! ref updates under libgit2's ref locks with the old value re-checked under
//! the lock (compare-and-swap). Only [`push`] shells out to `git push` (and
//! [`remote_branches`] to `git ls-remote`, for its lease), so the
//! user's own remote configuration and credentials apply.
//!
//! Everything here is synchronous and local (milliseconds), except [`push`],
//! which talks to a remote: call it from `tokio::task::spawn_blocking`.

mod create;
pub mod name;
mod publish;
mod query;
pub mod record;
mod worktree;

/// For tests that build a repository: git in `dir`, no global or system
/// config, a fixed identity; panics with its output on failure.
#[cfg(test)]
pub(crate) fn test_git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.org")
        .env("GIT_COMMITTER_NAME", "Author")
        .env("GIT_COMMITTER_EMAIL", "author@example.org")
        .output()
        .expect("git is installed");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// For tests: a repository `repo` in `dir` with a release
/// (`release/web1/t1`, `release/web1`) and a remote `origin` that never
/// answers a push (its pre-receive hook sleeps 15 s); the repository's path.
#[cfg(test)]
pub(crate) fn unanswering_remote(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let (repo, remote) = (dir.join("repo"), dir.join("remote.git"));
    std::fs::create_dir(&repo).expect("a directory");
    test_git(dir, &["init", "-q", "--bare", "remote.git"]);
    let hook = remote.join("hooks/pre-receive");
    // Its pid beside it: whether it outlives the push (it ran on, and the
    // remote took the refs after "not published").
    std::fs::write(&hook, "#!/bin/sh\necho $$ > hook.pid\nexec sleep 15\n").expect("the hook");
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("mode");
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["commit", "-q", "--allow-empty", "-m", "c"],
        &["tag", "-a", "-m", "t", "release/web1/t1"],
        &["branch", "release/web1"],
        &["remote", "add", "origin", "../remote.git"],
    ] {
        test_git(&repo, args);
    }
    repo
}

use serde::{Deserialize, Serialize};

use crate::nix::StorePath;

pub use create::{branch_commit, create};
pub use publish::{
    Lease, PushOutcome, RefRejected, RemoteBranches, lease, push, push_by_hand, remote_branches,
};
pub use query::{list, resolve, show};
pub use record::{Evidence, GateEvidence};
pub use worktree::{WorktreeState, worktree_state};

/// What to release: a target that reached known-good from `commit`.
#[derive(Debug, Clone)]
pub struct ReleaseRequest {
    /// The host name (inventory-validated; re-checked against git's ref rules).
    pub target: String,
    /// The commit the closure was built from: full hex id (a unique prefix of
    /// at least 7 hex digits is accepted); it must exist in the repository.
    pub commit: String,
    /// The working tree had uncommitted changes when the closure was built
    /// (`--allow-dirty`): such a closure is not what `commit` describes, so
    /// it is refused.
    pub dirty: bool,
    pub closure: StorePath,
    /// The builder host that built the closure.
    pub builder: String,
    pub run_id: String,
    pub evidence: Evidence,
    /// Move `release/<target>` even when that is not a fast-forward. Recorded
    /// in the tag and the outcome.
    pub force: bool,
    /// Release time; `None` means now. Its whole seconds name the tag.
    pub at: Option<std::time::SystemTime>,
}

/// What [`create`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum ReleaseOutcome {
    /// The tag was created and the branch points at the commit.
    Released {
        /// Short tag name, e.g. `release/web1/20261122T203000Z-0123456789ab`.
        tag: String,
        /// Branch name, e.g. `release/web1`.
        branch: String,
        /// Full hex id of the released commit.
        commit: String,
        update: BranchUpdate,
    },
    /// Nothing was written: the host is known-good but not released.
    Refused { reason: Refusal },
}

/// How `release/<target>` moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BranchUpdate {
    /// The branch did not exist before.
    Created,
    FastForward {
        from: String,
    },
    /// The branch already pointed at the commit (a new validation of it).
    Unchanged,
    /// Not a fast-forward; moved only because `force` was given.
    Forced {
        from: String,
    },
}

/// Why a release was refused (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Refusal {
    /// The closure was built from a dirty working tree.
    DirtyTree,
    /// `release/<target>` is at `branch_at`, which is not an ancestor of `new`.
    NotFastForward { branch_at: String, new: String },
    /// `refname` cannot be written because `existing` is in the way: git
    /// keeps refs as paths, so a ref cannot sit beside refs named below it
    /// (a branch `release` and a branch `release/web1`).
    RefNameConflict { refname: String, existing: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::DirtyTree => f.write_str(
                "the closure was built from a dirty working tree: commit the changes and deploy again to release",
            ),
            Refusal::NotFastForward { branch_at, new } => write!(
                f,
                "the release branch is at {branch_at}, which is not an ancestor of {new}: \
                 releasing would rewind or fork it; pass --force-release to move it anyway"
            ),
            Refusal::RefNameConflict { refname, existing } => write!(
                f,
                "{refname} cannot be written: {existing} exists, and git cannot keep a ref \
                 beside refs named below it; {}, here and on the remote if it is there, \
                 then a push of the same commit releases it",
                rename_advice(existing)
            ),
        }
    }
}

/// How to move `existing` out of the way, as the git command that does it.
fn rename_advice(existing: &str) -> String {
    if let Some(branch) = existing.strip_prefix("refs/heads/") {
        format!("rename the branch {branch} (`git branch -m {branch} NEW-NAME`)")
    } else if let Some(tag) = existing.strip_prefix("refs/tags/") {
        format!("rename the tag {tag} (`git tag NEW-NAME {tag} && git tag -d {tag}`)")
    } else {
        format!("rename or delete {existing}")
    }
}

/// A release parsed back from its tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    /// Short tag name (`release/<target>/<stamp>`).
    pub tag: String,
    pub target: String,
    /// RFC 3339 UTC, whole seconds (`2026-11-22T20:30:00Z`).
    pub time: String,
    /// Nanoseconds since the Unix epoch (orders releases within one second).
    pub time_unix_ns: u64,
    /// Full hex id of the tagged commit.
    pub commit: String,
    pub closure: StorePath,
    pub builder: String,
    pub run_id: String,
    pub nixgate_version: String,
    /// `Some(old branch tip)` when the release moved the branch by force.
    pub forced_from: Option<String>,
    /// The tagger, `Name <email>`.
    pub tagger: String,
}

/// A release with its full evidence and tag message ([`show`], [`resolve`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseDetail {
    pub info: ReleaseInfo,
    pub evidence: Evidence,
    /// The whole tag message as stored.
    pub message: String,
}

/// Errors callers branch on (inside the `anyhow::Error`: use `downcast_ref`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("target name {target:?} cannot be used in a release ref: {problem}")]
    InvalidTarget { target: String, problem: String },
    #[error("commit {commit:?} is not in the repository at {repo}: fetch it or check the id")]
    CommitNotFound { commit: String, repo: String },
    #[error("no release tag or branch named {spec:?}: see `nixgate release list`")]
    NotFound { spec: String },
    #[error(
        "release branch {branch} is at {commit}, but no release tag of {target} points there: \
         name a tag explicitly"
    )]
    NoTagOnBranchTip {
        branch: String,
        target: String,
        commit: String,
    },
    #[error("{tag} is not a nixgate release tag: {problem}")]
    NotARelease { tag: String, problem: String },
    #[error(
        "{refname} changed while the release was being written (another run, or a git command): \
         a push of the same commit releases it"
    )]
    ConcurrentUpdate { refname: String },
    /// `lock_file` is there: a git (or nixgate) writing the ref holds it,
    /// or one killed while writing it left it behind, and then every release
    /// fails on it until it is removed. Not a concurrent update: nothing
    /// may have changed, and running again cannot help.
    #[error(
        "{refname} is locked: {lock_file} exists. If no git process is running in this \
         repository, it is left over from one that was killed: remove {lock_file}, then a \
         push of the same commit releases it"
    )]
    RefLocked { refname: String, lock_file: String },
}

/// A file at a commit, as [`file_at`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileAt {
    Found(Vec<u8>),
    /// The commit is in the repository; the file is not in it.
    Absent,
    /// The commit is not in this clone (`git fetch` may bring it).
    NoCommit,
}

/// A file's contents at `commit`, `file` being relative to `dir` (a
/// directory inside the repository, such as the builder's `source`); a
/// commit without the file and a commit the clone lacks are told apart.
pub fn file_at(dir: &std::path::Path, commit: &str, file: &str) -> anyhow::Result<FileAt> {
    use anyhow::Context;
    let repo = open(dir)?;
    let workdir = repo
        .workdir()
        .ok_or_else(|| anyhow::anyhow!("{} is a bare repository", dir.display()))?;
    let rel = match (dir.canonicalize(), workdir.canonicalize()) {
        (Ok(d), Ok(w)) => d
            .strip_prefix(&w)
            .map(|p| p.to_path_buf())
            .unwrap_or_default(),
        _ => std::path::PathBuf::new(),
    };
    let found = match repo.revparse_single(commit) {
        Ok(obj) => obj,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(FileAt::NoCommit),
        Err(e) => return Err(e).with_context(|| format!("looking up commit {commit}")),
    };
    let tree = found
        .peel_to_commit()
        .and_then(|c| c.tree())
        .with_context(|| format!("{commit} is not a commit"))?;
    let entry = match tree.get_path(&rel.join(file)) {
        Ok(entry) => entry,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(FileAt::Absent),
        Err(e) => return Err(e).with_context(|| format!("reading {file} at {commit}")),
    };
    let obj = entry
        .to_object(&repo)
        .with_context(|| format!("reading {file} at {commit}"))?;
    Ok(match obj.as_blob() {
        Some(b) => FileAt::Found(b.content().to_vec()),
        None => FileAt::Absent,
    })
}

/// Open the git repository containing `path` (searching upwards, like Nix
/// does for a flake in a git checkout).
fn open(path: &std::path::Path) -> anyhow::Result<git2::Repository> {
    use anyhow::Context;
    git2::Repository::discover(path)
        .with_context(|| format!("opening the git repository at {}", path.display()))
}
