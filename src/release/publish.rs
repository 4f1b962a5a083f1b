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
/// name or URL) atomically. `forced_from`: the release moved the branch
/// non-fast-forward from that commit (`--force-release`), so the remote
/// branch may move the same way, but only while it is still there
/// (`--force-with-lease`): a release someone else pushed since is never
/// overwritten. Every other release is a plain push (a `--force-release`
/// run forced every push before, without a lease, whether its release
/// needed it or not). The tag is never forced.
///
/// Blocking (network): call it from `spawn_blocking` in async code.
pub fn push(
    repo: &Path,
    remote: &str,
    tag: &str,
    branch: &str,
    forced_from: Option<&str>,
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
    let branch_spec = format!("refs/heads/{branch}:refs/heads/{branch}");
    let mut args = vec!["push".to_owned(), "--atomic".into(), "--quiet".into()];
    if let Some(from) = forced_from {
        anyhow::ensure!(
            !from.is_empty() && from.bytes().all(|b| b.is_ascii_hexdigit()),
            "{from:?} is not a commit id"
        );
        args.push(format!("--force-with-lease=refs/heads/{branch}:{from}"));
    }
    args.extend([remote.to_owned(), tag_spec, branch_spec]);
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(&args)
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
