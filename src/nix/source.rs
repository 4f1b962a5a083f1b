//! Shipping the configuration to the builder: a tar of the commit (or of the
//! work tree, when dirty builds are allowed), streamed over SSH into a
//! directory keyed by what it holds, reused when already there whole.
//!
//! Whole: the builder's `/var/tmp` is aged by systemd-tmpfiles (NixOS: 30
//! days), which deletes the files no evaluation read in that time and
//! leaves the rest. A directory that merely existed was reused, and the
//! hosts whose files had gone failed to evaluate ("file not found"),
//! pointing at the configuration, until a new commit was pushed. So the
//! extraction records how many entries it made (`<dir>.entries`, beside
//! the directory: a file inside would change a flake's source and so its
//! systems), a directory is reused only when it still has that many, and
//! an extraction replaces a directory that does not.

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

/// `present` when `$1` is there whole (as many entries as its extraction
/// made), else `absent`.
const PRESENT: &str = r#"whole() { test -d "$1" && test -f "$1.entries" && test "$(find "$1" | wc -l)" = "$(cat "$1.entries")"; }
if whole "$1"; then touch "$1.entries"; echo present; else echo absent; fi"#;

/// Extract the tar on stdin into `$1`: beside it first, its entry count
/// recorded, then moved into place. Another run's extraction that got
/// there first is kept when whole; a directory left partial is moved
/// aside (never deleted in place: another run may be reading it) and
/// replaced, unless a concurrent extraction replaced it first.
///
/// `rn` renames a directory, never into another (`rename(2)`, refused when
/// the target is a directory not empty): GNU `mv -T`, else Perl's
/// `rename`. A macOS builder's BSD `mv` has no `-T`: every extraction
/// there failed, saying nothing (its errors were silenced), and every push
/// with it. (macOS ships Perl; a NixOS builder's `mv` is GNU.)
const EXTRACT: &str = r#"set -e
whole() { test -d "$1" && test -f "$1.entries" && test "$(find "$1" | wc -l)" = "$(cat "$1.entries")"; }
rn() { mv -T "$1" "$2" 2>/dev/null || perl -e 'rename($ARGV[0], $ARGV[1]) or exit 1' "$1" "$2" 2>/dev/null; }
tmp="$1.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"; tar -x -C "$tmp"
find "$tmp" | wc -l > "$tmp.entries"; mv "$tmp.entries" "$1.entries"
rn "$tmp" "$1" && exit 0
if whole "$1"; then rm -rf "$tmp"; exit 0; fi
old="$1.old.$$"; rn "$1" "$old" || :
if ! rn "$tmp" "$1"; then
  rm -rf "$tmp"
  whole "$1" || { rm -rf "$old"; echo "nixgate: could not move the extracted source into $1 (GNU mv -T or perl needed)" >&2; exit 1; }
fi
rm -rf "$old""#;

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

    /// A source directory aged by tmpfiles (a file gone) is not reused,
    /// and the next extraction makes it whole again.
    #[test]
    fn a_source_missing_files_is_shipped_again() {
        a_source_missing_files_is_shipped_again_with(None);
    }

    /// The same with a BSD `mv`, which has no `-T` (a macOS builder): a
    /// shim refusing `-T` as BSD's does, ahead of the real one on PATH.
    #[test]
    fn a_source_is_extracted_with_a_mv_that_has_no_dash_t() {
        let shims = tempfile::tempdir().unwrap();
        let mv = shims.path().join("mv");
        // The real mv from PATH: the Nix build sandbox has no /bin/mv.
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        let real = std::env::split_paths(&path_var)
            .map(|d| d.join("mv"))
            .find(|p| p.is_file())
            .expect("an mv on PATH");
        let script = format!(
            "#!/bin/sh\nfor a; do case $a in -T) echo \"mv: illegal option -- T\" >&2; exit 64 ;; esac; done\nexec '{}' \"$@\"\n",
            real.display()
        );
        std::fs::write(&mv, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&mv, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            shims.path().display(),
            std::env::var("PATH").unwrap()
        );
        a_source_missing_files_is_shipped_again_with(Some(&path));
    }

    fn a_source_missing_files_is_shipped_again_with(path: Option<&str>) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("repo");
        std::fs::create_dir_all(src.join("hosts")).unwrap();
        std::fs::write(src.join("flake.nix"), "{}\n").unwrap();
        std::fs::write(src.join("hosts/web1.nix"), "{}\n").unwrap();
        let tar = std::process::Command::new("tar")
            .args(["-cf", "-", "-C"])
            .arg(&src)
            .arg(".")
            .output()
            .unwrap()
            .stdout;
        let dir = tmp.path().join("src/abc");
        std::fs::create_dir_all(tmp.path().join("src")).unwrap();
        let dir = dir.to_str().unwrap();
        let run = |script: &str, input: &[u8]| {
            use std::io::Write;
            let mut c = std::process::Command::new("sh");
            if let Some(path) = path {
                c.env("PATH", path);
            }
            let mut c = c
                .args(["-c", script, "nixgate", dir])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(input).unwrap();
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        assert_eq!(run(PRESENT, b""), "absent");
        run(EXTRACT, &tar);
        assert_eq!(run(PRESENT, b""), "present");
        // Another run extracting the same source beside it: kept, whole.
        run(EXTRACT, &tar);
        assert_eq!(run(PRESENT, b""), "present");
        // tmpfiles aged out a file no evaluation read.
        std::fs::remove_file(format!("{dir}/hosts/web1.nix")).unwrap();
        assert_eq!(run(PRESENT, b""), "absent");
        run(EXTRACT, &tar);
        assert_eq!(run(PRESENT, b""), "present");
        assert!(std::path::Path::new(&format!("{dir}/hosts/web1.nix")).exists());
        // A directory from before the count (or its count aged out).
        std::fs::remove_file(format!("{dir}.entries")).unwrap();
        assert_eq!(run(PRESENT, b""), "absent");
        let leftovers: Vec<String> = std::fs::read_dir(tmp.path().join("src"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp.") || n.contains(".old."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
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
