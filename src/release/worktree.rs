//! The state of the configuration checkout a deploy builds from: its HEAD
//! commit and whether the working tree differs from it (which makes the
//! build not releasable).

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

/// HEAD and cleanliness of the checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorktreeState {
    /// Full hex id of HEAD's commit; `None` before the first commit.
    pub commit: Option<String>,
    /// Tracked files modified, staged or deleted, or untracked files that are
    /// not ignored (a non-flake build includes those). Submodules are
    /// checked too.
    pub dirty: bool,
}

/// Read HEAD and the working tree's status.
pub fn worktree_state(repo: &Path) -> anyhow::Result<WorktreeState> {
    let repo = super::open(repo)?;
    let commit = match repo.head() {
        Ok(head) => Some(
            head.peel_to_commit()
                .context("HEAD does not point at a commit")?
                .id()
                .to_string(),
        ),
        Err(e) if e.code() == git2::ErrorCode::UnbornBranch => None,
        Err(e) => return Err(e).context("reading HEAD"),
    };
    let mut opts = git2::StatusOptions::new();
    opts.include_untracked(true)
        .recurse_untracked_dirs(false)
        .include_ignored(false)
        .exclude_submodules(false);
    let statuses = repo
        .statuses(Some(&mut opts))
        .context("reading the working tree's status")?;
    let dirty = statuses.iter().any(|s| s.status() != git2::Status::CURRENT);
    Ok(WorktreeState { commit, dirty })
}
