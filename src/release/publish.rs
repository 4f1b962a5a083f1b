//! Publishing a release to a git remote: `git push --atomic` of the tag and
//! the release branch together, so the remote gets both or neither.
//!
//! This shells out to `git` on purpose: the user's remote configuration,
//! credential helpers, SSH agent and hooks apply exactly as for their own
//! pushes. Interactive password prompts are disabled (`GIT_TERMINAL_PROMPT=0`)
//! so a push never hangs waiting for input; stdin is closed; and git is
//! given [`PUSH_WITHIN`] to finish, then killed.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::name;
use crate::process_group::GroupKill;

/// How long a release push may take. It sends two refs and the objects
/// the remote lacks of a configuration repository (kilobytes, a few
/// megabytes at most): seconds on any working link, so a minute leaves a
/// slow one room. git has no overall bound of its own: a remote that does
/// not answer (a black-holed address, an SSH prompt on the terminal, a
/// stalled transfer) held the end of the run for ever.
pub const PUSH_WITHIN: Duration = Duration::from_secs(60);

/// Lines of git's stderr kept in a failed outcome.
const STDERR_TAIL_LINES: usize = 20;

/// Most lines in a failed push's `reason`.
const REASON_LINES: usize = 6;

/// Reasons git gives a ref refused only because another ref of the atomic
/// push was: they say nothing of why.
const KNOCK_ON: [&str; 2] = ["atomic push failed", "atomic transaction failed"];

/// git's `error:` lines that only restate that refs were refused.
const RESTATED: [&str; 2] = [
    "error: failed to push some refs",
    "error: atomic push failed for ref",
];

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
        /// Why, in git's words, on one line: the refs refused with git's
        /// reasons and the remote's own `remote:` lines, else git's
        /// `error:`/`fatal:` lines. Empty in reports from before it existed.
        #[serde(default)]
        reason: String,
        /// Each ref git or the remote refused; empty when git failed before
        /// it got to the refs (remote unreachable, authentication, ...).
        #[serde(default)]
        rejected: Vec<RefRejected>,
        /// The last lines of git's stderr.
        stderr_tail: String,
    },
}

/// A ref `git push` refused, as its `--porcelain` status line says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefRejected {
    /// The remote ref, e.g. `refs/heads/release/web1`.
    pub refname: String,
    /// Who refused it, in git's words: `rejected` (git itself: the remote
    /// branch is ahead, the lease is stale, the tag exists) or `remote
    /// rejected` (the remote: a hook, a protected branch, a ref in the way).
    pub status: String,
    /// git's reason, e.g. `non-fast-forward`, `stale info`,
    /// `pre-receive hook declined`.
    pub reason: String,
}

/// Push `refs/tags/<tag>` and `refs/heads/<branch>` to `remote` (a remote
/// name or URL) atomically. `lease`: the release moved the branch
/// non-fast-forward (`--force-release`), so the remote branch may move the
/// same way, but only while it is still what [`lease`] found there
/// (`--force-with-lease`): a release someone else pushed since is never
/// overwritten. Every other release is a plain push (a `--force-release`
/// run forced every push before, without a lease, whether its release
/// needed it or not). The tag is never forced.
///
/// git runs as a child process, awaited (the runtime is not blocked);
/// past [`PUSH_WITHIN`] it is killed and the push is an error saying how
/// to finish it by hand, as is dropping the future (git is killed).
pub async fn push(
    repo: &Path,
    remote: &str,
    tag: &str,
    branch: &str,
    lease: Option<&Lease>,
) -> anyhow::Result<PushOutcome> {
    push_within(repo, remote, (tag, branch), lease, PUSH_WITHIN).await
}

/// [`push`], given `within` to finish.
async fn push_within(
    repo: &Path,
    remote: &str,
    (tag, branch): (&str, &str),
    lease: Option<&Lease>,
    within: Duration,
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
    // `--porcelain`: the refs' status lines, which say why a push was
    // refused, go to stdout in a format meant for parsing.
    let mut args = vec![
        "push".to_owned(),
        "--atomic".into(),
        "--quiet".into(),
        "--porcelain".into(),
    ];
    if let Some(lease) = lease {
        if let Lease::At(at) = lease {
            anyhow::ensure!(
                !at.is_empty() && at.bytes().all(|b| b.is_ascii_hexdigit()),
                "{at:?} is not a commit id"
            );
        }
        args.push(lease.arg(branch));
    }
    args.extend([remote.to_owned(), tag_spec, branch_spec]);
    let Some(out) = run_within(git(repo, &args), within).await else {
        anyhow::bail!(
            "`git push` to {remote} did not finish within {}s and was stopped (the remote may \
             have the release or not): check with `git -C {} ls-remote {remote} refs/tags/{tag}`, \
             and if it is missing push it: `{}`",
            within.as_secs(),
            repo.display(),
            push_by_hand(repo, remote, tag, branch, lease),
        );
    };
    let out = out?;
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
    let rejected = rejected_refs(&String::from_utf8_lossy(&out.stdout));
    let exit = out.status.code();
    Ok(PushOutcome::Failed {
        remote: remote.to_owned(),
        exit,
        reason: failure_reason(&rejected, &stderr, exit),
        rejected,
        stderr_tail: tail,
    })
}

/// What a forced release's push requires of the remote's release branch
/// (`--force-with-lease=refs/heads/<branch>:<expect>`), as [`lease`] found
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// The remote has no such branch, and must still have none.
    Absent,
    /// The remote branch must still be on this commit.
    At(String),
}

impl Lease {
    fn arg(&self, branch: &str) -> String {
        let expect = match self {
            Lease::Absent => "",
            Lease::At(at) => at,
        };
        format!("--force-with-lease=refs/heads/{branch}:{expect}")
    }
}

/// A remote's release branches, `release/<target>` to the commit it is on.
pub type RemoteBranches = HashMap<String, String>;

/// The release branches `remote` has now, every host's in one
/// `git ls-remote`, run as [`push`] runs git (never asking anyone, given
/// [`PUSH_WITHIN`]).
///
/// A forced release's lease is what the remote has, not what this
/// repository last released: an earlier push that did not get through (the
/// remote was down), or `[release] remote` set after releases were made,
/// leaves the remote behind the local branch or without it, and a lease on
/// the local branch's old commit was refused as `stale info` for ever.
pub async fn remote_branches(repo: &Path, remote: &str) -> anyhow::Result<RemoteBranches> {
    remote_branches_within(repo, remote, PUSH_WITHIN).await
}

async fn remote_branches_within(
    repo: &Path,
    remote: &str,
    within: Duration,
) -> anyhow::Result<RemoteBranches> {
    anyhow::ensure!(
        !remote.is_empty() && !remote.starts_with('-'),
        "{remote:?} is not a usable git remote name or URL"
    );
    let pattern = format!("refs/heads/{}*", name::PREFIX);
    let args = ["ls-remote".to_owned(), remote.to_owned(), pattern];
    let Some(out) = run_within(git(repo, &args), within).await else {
        anyhow::bail!(
            "`git ls-remote {remote}` did not finish within {}s and was stopped",
            within.as_secs()
        );
    };
    let out = out?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::bail!(
            "`git ls-remote {remote}` failed: {}",
            failure_reason(&[], &stderr, out.status.code())
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout
        .lines()
        .filter_map(|line| {
            let (id, refname) = line.split_once('\t')?;
            let branch = refname.strip_prefix("refs/heads/")?;
            branch
                .starts_with(name::PREFIX)
                .then(|| (branch.to_owned(), id.to_owned()))
        })
        .collect())
}

/// The lease a release that moved `branch` by force from `from` to `new`
/// pushes with, given where the remote's branch is (`remote_at`, `None`:
/// it has none): exactly that, when it overwrites nothing but this
/// repository's own releases (the remote is on `from` or on a commit
/// `from` descends from: an earlier release of ours not published yet, or
/// already on `new`). `Ok(None)`: the remote is on a commit that is
/// neither (someone else published a release there, or this repository
/// never saw it): not to be overwritten.
pub fn lease(
    repo: &Path,
    (from, new): (&str, &str),
    remote_at: Option<&str>,
) -> anyhow::Result<Option<Lease>> {
    let Some(at) = remote_at else {
        return Ok(Some(Lease::Absent));
    };
    if at == from || at == new {
        return Ok(Some(Lease::At(at.to_owned())));
    }
    let repo = super::open(repo)?;
    let (Ok(at_id), Ok(from_id)) = (git2::Oid::from_str(at), git2::Oid::from_str(from)) else {
        return Ok(None);
    };
    // A commit this repository does not have is no release of its own.
    if repo.find_commit(at_id).is_err() {
        return Ok(None);
    }
    let ours = repo
        .graph_descendant_of(from_id, at_id)
        .with_context(|| format!("checking whether {from} descends from {at}"))?;
    Ok(ours.then(|| Lease::At(at.to_owned())))
}

/// `git -C repo <args>` as nixgate runs it against a remote: never
/// asking anyone, in a process group of its own.
///
/// In a process group of its own: the terminal's Ctrl-C (sent to the
/// foreground group) does not kill a push the run is finishing; a push
/// bounded out or stopped by the second Ctrl-C is ended with all it
/// started (its ssh, a local receive-pack), which would otherwise go on
/// and update the remote after "not published".
fn git(repo: &Path, args: &[String]) -> Command {
    let mut git = Command::new("git");
    // Off the terminal's foreground group, an ssh that asks for a key's
    // passphrase or a new host key is stopped by the kernel (SIGTTIN) and
    // waits out the bound: it asks no one instead and fails at once
    // (OpenSSH 8.4+; `SSH_ASKPASS*` of the user's own are kept).
    if std::env::var_os("SSH_ASKPASS").is_none()
        && std::env::var_os("SSH_ASKPASS_REQUIRE").is_none()
    {
        git.env("SSH_ASKPASS", "false")
            .env("SSH_ASKPASS_REQUIRE", "force");
    }
    git.arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    git
}

/// Run `cmd` ([`git`]) to its end, awaited; `None`: it did not end within
/// `within` and was killed with its process group (as it is when the
/// future is dropped).
async fn run_within(
    mut cmd: Command,
    within: Duration,
) -> Option<anyhow::Result<std::process::Output>> {
    let spawned = cmd.spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) => return Some(Err(e).context("running git (is git installed and on PATH?)")),
    };
    let group = GroupKill::new(child.id());
    let finished = tokio::time::timeout(within, child.wait_with_output()).await;
    if finished.is_ok() {
        group.done();
    }
    let out = finished.ok()?;
    Some(out.context("running git (is git installed and on PATH?)"))
}

/// The command that publishes a release by hand, as [`push`] would have:
/// with the branch's lease when the release moved it by force (without
/// it, the remote refuses the branch as not a fast-forward).
pub fn push_by_hand(
    repo: &Path,
    remote: &str,
    tag: &str,
    branch: &str,
    lease: Option<&Lease>,
) -> String {
    let lease = lease
        .map(|lease| format!(" {}", lease.arg(branch)))
        .unwrap_or_default();
    format!(
        "git -C {} push --atomic{lease} {remote} refs/tags/{tag} refs/heads/{branch}",
        repo.display()
    )
}

/// The refused refs of `git push --porcelain` output: lines
/// `!<TAB>from:to<TAB>[status] (reason)`.
fn rejected_refs(porcelain: &str) -> Vec<RefRejected> {
    porcelain.lines().filter_map(rejection).collect()
}

fn rejection(line: &str) -> Option<RefRejected> {
    let mut fields = line.split('\t');
    if fields.next()? != "!" {
        return None;
    }
    let (_, refname) = fields.next()?.rsplit_once(':')?;
    let (status, rest) = fields.next()?.strip_prefix('[')?.split_once(']')?;
    let rest = rest.trim();
    let reason = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or(rest);
    Some(RefRejected {
        refname: refname.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
    })
}

/// Why the push failed, on one line, from what git said: the refs refused
/// for a reason of their own and the remote's `remote:` lines (its hooks
/// speak there); else git's `error:`/`fatal:` lines (remote unreachable,
/// authentication); else whatever git said first. The `To <url>` line git
/// starts its report with, and the lines only restating that refs were
/// refused, are never the reason.
fn failure_reason(rejected: &[RefRejected], stderr: &str, exit: Option<i32>) -> String {
    let lines = || stderr.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut why = refusals(
        rejected
            .iter()
            .filter(|r| !KNOCK_ON.contains(&r.reason.as_str())),
    );
    why.extend(
        lines()
            .filter(|l| l.starts_with("remote:") && l.len() > "remote:".len())
            .map(str::to_owned),
    );
    if why.is_empty() {
        why.extend(
            lines()
                .filter(|l| l.starts_with("error:") || l.starts_with("fatal:"))
                .filter(|l| !RESTATED.iter().any(|r| l.starts_with(r)))
                .map(str::to_owned),
        );
    }
    if why.is_empty() {
        why = refusals(rejected.iter());
    }
    if why.is_empty() {
        why.extend(lines().find(|l| !l.starts_with("To ")).map(str::to_owned));
    }
    if why.is_empty() {
        return match exit {
            Some(code) => format!("git push exited with {code} and said nothing"),
            None => "git push was killed by a signal".to_owned(),
        };
    }
    why.truncate(REASON_LINES);
    why.join("; ")
}

/// `release/web1 rejected (non-fast-forward)`: one entry per status and
/// reason, naming its refs.
fn refusals<'a>(refs: impl Iterator<Item = &'a RefRejected>) -> Vec<String> {
    let mut groups: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for r in refs {
        let short = r
            .refname
            .strip_prefix("refs/heads/")
            .or_else(|| r.refname.strip_prefix("refs/tags/"))
            .unwrap_or(&r.refname);
        match groups
            .iter_mut()
            .find(|(status, why, _)| *status == r.status && *why == r.reason)
        {
            Some((_, _, names)) => names.push(short),
            None => groups.push((&r.status, &r.reason, vec![short])),
        }
    }
    groups
        .into_iter()
        .map(|(status, why, names)| format!("{} {status} ({why})", names.join(", ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A remote that never answers (its pre-receive hook sleeps longer
    /// than the push may take): git is stopped when its time is up, and
    /// the error says how to finish by hand (the push waited on it, and
    /// the run's end with it, as long as the remote took).
    #[tokio::test]
    async fn a_push_the_remote_never_answers_is_stopped_in_time() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = crate::release::unanswering_remote(tmp.path());
        let started = std::time::Instant::now();
        let names = ("release/web1/t1", "release/web1");
        let within = Duration::from_secs(1);
        let pushed = push_within(&repo, "origin", names, None, within).await;
        let error = format!("{:#}", pushed.expect_err("the push waited for the remote"));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(error.contains("did not finish within 1s"), "{error}");
        assert!(error.contains("push --atomic origin"), "{error}");
        // The remote's side of the push (its hook) ended with it.
        let pid = std::fs::read_to_string(tmp.path().join("remote.git/hook.pid")).unwrap();
        let alive = || {
            std::process::Command::new("kill")
                .args(["-0", pid.trim()])
                .status()
                .is_ok_and(|s| s.success())
        };
        let gone_by = std::time::Instant::now() + Duration::from_secs(3);
        while alive() && std::time::Instant::now() < gone_by {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !alive(),
            "the remote's receive-pack and hook outlived the push"
        );
    }

    /// A release that moved its branch by force is published by hand with
    /// the same lease (the remote refuses it as not a fast-forward without).
    #[test]
    fn by_hand_keeps_the_lease() {
        let by_hand = |lease: Option<Lease>| {
            let repo = std::path::Path::new("/r");
            push_by_hand(repo, "origin", "release/w/t", "release/w", lease.as_ref())
        };
        assert_eq!(
            by_hand(Some(Lease::At("abc1".into()))),
            "git -C /r push --atomic --force-with-lease=refs/heads/release/w:abc1 origin refs/tags/release/w/t refs/heads/release/w"
        );
        assert_eq!(
            by_hand(Some(Lease::Absent)),
            "git -C /r push --atomic --force-with-lease=refs/heads/release/w: origin refs/tags/release/w/t refs/heads/release/w"
        );
        assert_eq!(
            by_hand(None),
            "git -C /r push --atomic origin refs/tags/release/w/t refs/heads/release/w"
        );
    }

    /// What git 2.47 says when the remote refuses the release branch (it
    /// has a branch `release`, so `release/web1` cannot be created there).
    const REMOTE_REFUSED_OUT: &str = "To ../r2.git\n\
        !\trefs/tags/release/web1/t2:refs/tags/release/web1/t2\t[remote rejected] (atomic transaction failed)\n\
        !\trefs/heads/release/web1:refs/heads/release/web1\t[remote rejected] (atomic transaction failed)\n\
        Done\n";
    const REMOTE_REFUSED_ERR: &str = "remote: error: cannot lock ref 'refs/heads/release/web1': \
        'refs/heads/release' exists; cannot create 'refs/heads/release/web1'        \n\
        error: failed to push some refs to '../r2.git'\n";

    #[test]
    fn porcelain_status_lines_are_the_refused_refs() {
        let rejected = rejected_refs(REMOTE_REFUSED_OUT);
        assert_eq!(
            rejected[1],
            RefRejected {
                refname: "refs/heads/release/web1".into(),
                status: "remote rejected".into(),
                reason: "atomic transaction failed".into(),
            }
        );
        assert_eq!(rejected.len(), 2);
    }

    #[test]
    fn the_reason_is_what_the_remote_said_when_every_ref_failed_only_with_the_others() {
        let rejected = rejected_refs(REMOTE_REFUSED_OUT);
        assert_eq!(
            failure_reason(&rejected, REMOTE_REFUSED_ERR, Some(1)),
            "remote: error: cannot lock ref 'refs/heads/release/web1': 'refs/heads/release' \
             exists; cannot create 'refs/heads/release/web1'"
        );
    }

    #[test]
    fn a_hook_refusal_names_the_refs_once_and_keeps_the_hooks_words() {
        let out = "To host:config.git\n\
            !\trefs/tags/release/web1/t2:refs/tags/release/web1/t2\t[remote rejected] (pre-receive hook declined)\n\
            !\trefs/heads/release/web1:refs/heads/release/web1\t[remote rejected] (pre-receive hook declined)\n\
            Done\n";
        let err = "remote: policy: no releases on Fridays        \n\
            error: failed to push some refs to 'host:config.git'\n";
        assert_eq!(
            failure_reason(&rejected_refs(out), err, Some(1)),
            "release/web1/t2, release/web1 remote rejected (pre-receive hook declined); \
             remote: policy: no releases on Fridays"
        );
    }

    #[test]
    fn without_refused_refs_the_reason_is_gits_error_never_the_to_line() {
        let err = "fatal: 'nope' does not appear to be a git repository\n\
            fatal: Could not read from remote repository.\n\n\
            Please make sure you have the correct access rights\n";
        assert_eq!(
            failure_reason(&[], err, Some(128)),
            "fatal: 'nope' does not appear to be a git repository; \
             fatal: Could not read from remote repository."
        );
        assert_eq!(
            failure_reason(&[], "To host:config.git\nsomething else\n", Some(1)),
            "something else"
        );
        assert_eq!(
            failure_reason(&[], "", Some(1)),
            "git push exited with 1 and said nothing"
        );
    }
}
