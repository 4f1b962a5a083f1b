//! Publishing a release to a git remote: `git push --atomic` of the tag and
//! the release branch together, so the remote gets both or neither.
//!
//! This shells out to `git` on purpose: the user's remote configuration,
//! credential helpers, SSH agent and hooks apply exactly as for their own
//! pushes. Interactive password prompts are disabled (`GIT_TERMINAL_PROMPT=0`)
//! so a push never hangs waiting for input; stdin is closed.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::name;

/// Lines of git's stderr kept in a failed outcome.
const STDERR_TAIL_LINES: usize = 20;

/// What [`push`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum PushOutcome {
    /// The remote accepted both refs.
    Pushed {
        remote: String,
        tag: String,
        branch: String,
    },
    /// git failed (remote unreachable, rejected, non-fast-forward, ...);
    /// nothing was updated on the remote (atomic push).
    Failed {
        remote: String,
        /// git's exit code; `None` if it was killed by a signal.
        exit: Option<i32>,
        /// The last lines of git's stderr.
        stderr_tail: String,
    },
}

/// Push `refs/tags/<tag>` and `refs/heads/<branch>` to `remote` (a remote
/// name or URL) atomically. `force_branch` lets the remote branch move
/// non-fast-forward (after a forced release); the tag is never forced.
///
/// Blocking (network): call it from `spawn_blocking` in async code.
pub fn push(
    repo: &Path,
    remote: &str,
    tag: &str,
    branch: &str,
    force_branch: bool,
) -> anyhow::Result<PushOutcome> {
    anyhow::ensure!(
        !remote.is_empty() && !remote.starts_with('-'),
        "{remote:?} is not a usable git remote name or URL"
    );
    for (what, short, kind) in [("tag", tag, "tags"), ("branch", branch, "heads")] {
        anyhow::ensure!(
            short.starts_with(name::PREFIX)
                && git2::Reference::is_valid_name(&format!("refs/{kind}/{short}")),
            "{short:?} is not a release {what} name (release/<target>...)"
        );
    }
    let tag_spec = format!("refs/tags/{tag}:refs/tags/{tag}");
    let plus = if force_branch { "+" } else { "" };
    let branch_spec = format!("{plus}refs/heads/{branch}:refs/heads/{branch}");
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "push",
            "--atomic",
            "--quiet",
            remote,
            &tag_spec,
            &branch_spec,
        ])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .context("running `git push` (is git installed and on PATH?)")?;
    if out.status.success() {
        return Ok(PushOutcome::Pushed {
            remote: remote.to_owned(),
            tag: tag.to_owned(),
            branch: branch.to_owned(),
        });
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
    Ok(PushOutcome::Failed {
        remote: remote.to_owned(),
        exit: out.status.code(),
        stderr_tail: tail,
    })
}
