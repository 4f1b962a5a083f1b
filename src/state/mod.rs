//! The controller's state directory: the controller lock and run reports.
//! Known-good records live on the hosts only (see
//! `activation::known_good`): a run's report shows the marks that run made,
//! and the controller keeps no known-good history of its own.
//!
//! Layout under `$XDG_STATE_HOME/nixgate` (or `--state-dir`):
//! `lock`, `runs/<run-id>.json`, `latest.json`.

pub mod clock;
pub mod lock;
pub mod run_report;
pub mod runs;

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use lock::{ControllerLock, LockHeld};

/// The state directory to use: the flag, else `$XDG_STATE_HOME/nixgate`,
/// else `~/.local/state/nixgate`. A path that is a file, or lies under one,
/// is refused here: every error of this function is a usage error (exit 2)
/// for the caller, while a state directory that fails later is exit 1.
pub fn resolve_dir(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let (dir, from) = if let Some(p) = flag {
        (p.to_path_buf(), "--state-dir")
    } else if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        (PathBuf::from(x).join("nixgate"), "$XDG_STATE_HOME/nixgate")
    } else {
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).context(
            "neither --state-dir, $XDG_STATE_HOME nor $HOME is set: pass --state-dir DIR",
        )?;
        (
            PathBuf::from(home).join(".local/state/nixgate"),
            "~/.local/state/nixgate",
        )
    };
    check_usable(&dir, from)?;
    Ok(dir)
}

/// `dir` is a directory, or can be created: its nearest existing ancestor
/// is a directory. Other problems (permissions) are left to the creation,
/// which names them.
fn check_usable(dir: &Path, from: &str) -> anyhow::Result<()> {
    let mut p = dir;
    loop {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => {
                let what = if p == dir {
                    "is not a directory".to_owned()
                } else {
                    format!("lies under {}, which is not a directory", p.display())
                };
                anyhow::bail!(
                    "the state directory {} ({from}) {what}: pass --state-dir DIR with a directory (created if missing)",
                    dir.display()
                );
            }
            // ENOTDIR: some ancestor is a file; the walk up finds which.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match p.parent() {
                    Some(parent) => p = parent,
                    None => return Ok(()),
                }
            }
            Err(_) => return Ok(()),
        }
    }
}

/// Write `bytes` to `path` atomically (temp file + rename in the same dir).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes).map_err(Into::into))
}

/// Like [`write_atomic`], the content written by `fill` through a buffer
/// (a large run report never sits in memory whole).
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn std::io::Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = path.parent().context("path has no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let written = (|| {
        let file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w)?;
        std::io::Write::flush(&mut w).with_context(|| format!("writing {}", tmp.display()))?;
        // On disk before the rename: a crash or power loss after it left
        // a run report (or latest.json) renamed into place but empty.
        let file = w.into_inner().map_err(std::io::IntoInnerError::into_error);
        file.and_then(|f| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        anyhow::Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    // The rename itself, best effort: the file is whole either way.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_that_is_or_lies_under_a_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let e = resolve_dir(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        assert!(e.contains("(--state-dir)"), "{e}");
        let under = file.join("a/b");
        let e = resolve_dir(Some(&under)).unwrap_err().to_string();
        assert!(e.contains(&format!("lies under {}", file.display())), "{e}");
        // A directory, and one still to be created under it, are fine.
        assert_eq!(resolve_dir(Some(tmp.path())).unwrap(), tmp.path());
        let new = tmp.path().join("new/state");
        assert_eq!(resolve_dir(Some(&new)).unwrap(), new);
        assert_eq!(
            resolve_dir(Some(Path::new("relative/state"))).unwrap(),
            Path::new("relative/state")
        );
    }
}
