//! The controller's state directory: the controller lock, run reports and the
//! controller's copy of every known-good record.
//!
//! Layout under `$XDG_STATE_HOME/nixgate` (or `--state-dir`):
//! `lock`, `runs/<run-id>.json`, `latest.json`, `known-good/<host>/<generation>.json`.

pub mod clock;
pub mod lock;
pub mod run_report;

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use lock::{ControllerLock, LockHeld};

/// The state directory to use: the flag, else `$XDG_STATE_HOME/nixgate`,
/// else `~/.local/state/nixgate`.
pub fn resolve_dir(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("nixgate"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither --state-dir, $XDG_STATE_HOME nor $HOME is set: pass --state-dir DIR")?;
    Ok(PathBuf::from(home).join(".local/state/nixgate"))
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
        anyhow::Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}
