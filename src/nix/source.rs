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
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg("git ls-files -co --exclude-standard -z | tar --null -T - -cf -")
            .current_dir(repo)
            .stderr(Stdio::piped())
            .output()
            .await
    } else {
        tokio::process::Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["archive", "--format=tar", commit])
            .stderr(Stdio::piped())
            .output()
            .await
    }
    .with_context(|| format!("running git in {}", repo.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "archiving {} failed: {}",
        repo.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
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
