//! Signing built closures on the builder, so hosts that require signatures
//! accept only what the builder signed.

use anyhow::Context;

use super::StorePath;
use crate::remote::{Command, Remote};

/// `nix store sign --recursive` of the toplevel: an output path, which Nix
/// 2.8 and 2.26 both sign as given (a `.drv` installable differs: 2.8
/// builds it, 2.26 signs the derivation file itself).
pub fn sign_command(key_file: &str, toplevel: &StorePath) -> Command {
    Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "store",
            "sign",
            "--key-file",
            key_file,
            "--recursive",
        ])
        .arg(toplevel.as_str())
}

pub async fn sign<R: Remote>(
    builder: &R,
    key_file: &str,
    toplevel: &StorePath,
) -> anyhow::Result<()> {
    builder
        .exec(&sign_command(key_file, toplevel))
        .await
        .context("signing on the builder")?
        .check(&format!("signing {} with {key_file}", toplevel.name()))?;
    Ok(())
}
