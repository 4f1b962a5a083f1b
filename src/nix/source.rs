//! Shipping the configuration to the builder: a tar of the commit (or of the
//! work tree, when dirty builds are allowed), streamed over SSH into a
//! directory keyed by what it holds, reused when already there.

use std::path::Path;
use std::process::Stdio;

use anyhow::Context;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::remote::{Command, Remote};

/// Where the source landed on the builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShippedSource {
    pub commit: String,
    pub dir: String,
    pub reused: bool,
}

const BASE: &str = "/var/tmp/nixgate/src";

const PRESENT: &str = r#"test -d "$1" && echo present || echo absent"#;
const EXTRACT: &str = r#"set -e; tmp="$1.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"; tar -x -C "$tmp"; mv -T "$tmp" "$1" 2>/dev/null || { rm -rf "$tmp"; test -d "$1"; }"#;

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A tar of the commit, or of the work tree's tracked and untracked (not
/// ignored) files.
async fn make_tar(repo: &Path, commit: &str, dirty: bool) -> anyhow::Result<Vec<u8>> {
    let out = if dirty {
        let files = work_tree_files(repo).await?;
        let mut tar = tokio::process::Command::new("tar")
            .args(["--null", "-T", "-", "-cf", "-"])
            .current_dir(repo)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running tar in {}", repo.display()))?;
        let mut stdin = tar.stdin.take().context("tar's stdin")?;
        let list = async move {
            stdin.write_all(&files).await?;
            stdin.shutdown().await
        };
        let (written, out) = tokio::join!(list, tar.wait_with_output());
        let out = out.with_context(|| format!("running tar in {}", repo.display()))?;
        // A tar that failed early closes its input: its own error says why.
        if out.status.success() {
            written.context("giving tar the list of files")?;
        }
        Ok(out)
    } else {
        git(repo, &["archive", "--format=tar", commit]).await
    }?;
    anyhow::ensure!(
        out.status.success(),
        "archiving {} failed: {}",
        repo.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

async fn git(repo: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    tokio::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("running git in {}", repo.display()))
}

/// The work tree's files for the dirty tar, NUL-separated as `tar --null
/// -T -` reads them: tracked and untracked (not ignored), less the tracked
/// files deleted without staging (tar cannot archive what is not there).
async fn work_tree_files(repo: &Path) -> anyhow::Result<Vec<u8>> {
    let listed = git(repo, &["ls-files", "-co", "--exclude-standard", "-z"]).await?;
    let deleted = git(repo, &["ls-files", "--deleted", "-z"]).await?;
    for out in [&listed, &deleted] {
        anyhow::ensure!(
            out.status.success(),
            "listing the files of {} failed: {}",
            repo.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(present(&listed.stdout, &deleted.stdout))
}

/// The NUL-separated names of `listed` that are not in `deleted`.
fn present(listed: &[u8], deleted: &[u8]) -> Vec<u8> {
    let gone: std::collections::HashSet<&[u8]> = deleted.split(|&b| b == 0).collect();
    let mut out = Vec::with_capacity(listed.len());
    for name in listed.split(|&b| b == 0) {
        if !name.is_empty() && !gone.contains(name) {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out
}

fn short_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Ship `repo` at `commit` (or its dirty work tree) to the builder.
pub async fn ship_source<R: Remote>(
    builder: &R,
    repo: &Path,
    commit: &str,
    dirty: bool,
) -> anyhow::Result<ShippedSource> {
    anyhow::ensure!(is_hex(commit), "{commit:?} is not a commit id");
    let tar = if dirty {
        Some(make_tar(repo, commit, true).await?)
    } else {
        None
    };
    let dir = match &tar {
        Some(t) => format!("{BASE}/{commit}-dirty-{}", short_sha256(t)),
        None => format!("{BASE}/{commit}"),
    };
    let present = builder
        .exec(&Command::script(PRESENT).arg(&dir))
        .await
        .context("asking the builder for the source")?
        .check("asking the builder for the source")?;
    if present.stdout_str().trim() == "present" {
        return Ok(ShippedSource {
            commit: commit.to_owned(),
            dir,
            reused: true,
        });
    }
    let tar = match tar {
        Some(t) => t,
        None => make_tar(repo, commit, false).await?,
    };
    let mut s = builder
        .exec_stream(&Command::script(EXTRACT).arg(&dir))
        .await
        .context("shipping the source")?;
    let sent = async {
        s.stdin.write_all(&tar).await?;
        s.stdin.shutdown().await
    };
    let mut sink = tokio::io::sink();
    let (w, r) = tokio::join!(sent, tokio::io::copy(&mut s.stdout, &mut sink));
    w.context("sending the source tar")?;
    r.context("reading the extractor's output")?;
    s.finish
        .await?
        .check(&format!("extracting the source into {dir} on the builder"))?;
    Ok(ShippedSource {
        commit: commit.to_owned(),
        dir,
        reused: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        crate::release::test_git(dir, args);
    }

    fn tar_names(tar: &[u8]) -> Vec<String> {
        use std::io::Write;
        let mut t = std::process::Command::new("tar")
            .arg("-tf")
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        t.stdin.take().unwrap().write_all(tar).unwrap();
        let out = t.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn dirty_tar_leaves_out_a_tracked_file_deleted_without_staging() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        git(dir, &["init", "-q"]);
        std::fs::write(dir.join("a"), "a\n").unwrap();
        std::fs::write(dir.join("b"), "b\n").unwrap();
        git(dir, &["add", "a", "b"]);
        git(dir, &["commit", "-q", "-m", "a and b"]);
        std::fs::remove_file(dir.join("b")).unwrap();

        let tar = make_tar(dir, "HEAD", true).await.expect("dirty tar");
        assert_eq!(tar_names(&tar), vec!["a".to_owned()]);
    }
}
