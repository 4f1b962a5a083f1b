//! Copying closures to hosts, by copy mode: relay (builder -> controller ->
//! host, only the missing paths, streamed with bounded memory; see
//! [`super::fanout`]), builder
//! (the builder copies straight to the host), substitute (the host fetches
//! from its own substituters). Every mode verifies the result on the host.

use std::collections::HashSet;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::StorePath;
use super::closure::{PathInfo, missing};
use crate::remote::{Command, Remote};

/// Progress of one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CopyProgress {
    pub bytes: u64,
    pub paths: u64,
    pub total_paths: u64,
}

/// How a copy ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CopyOutcome {
    /// The host already had the whole closure: nothing was sent.
    AlreadyPresent,
    /// These many paths and stream bytes were sent; `fanout` is
    /// the part other hosts copied with it got from the same builder read.
    Copied {
        paths: u64,
        bytes: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        fanout: Option<super::fanout::Shared>,
    },
    /// The host realised the closure itself.
    Substituted,
}

/// What `target` lacks of `closure` (one query).
pub async fn lacking<T: Remote>(
    target: &T,
    closure: &[PathInfo],
) -> anyhow::Result<HashSet<StorePath>> {
    let all: Vec<StorePath> = closure.iter().map(|p| p.path.clone()).collect();
    Ok(missing(target, &all).await?.into_iter().collect())
}

/// After a copy: every path of `closure` is valid on `target`.
pub async fn verify_complete<T: Remote>(target: &T, closure: &[PathInfo]) -> anyhow::Result<()> {
    let still = lacking(target, closure).await?;
    if let Some(first) = still.iter().next() {
        anyhow::bail!(
            "after the copy {} still lacks {} path(s), e.g. {first}",
            target.name(),
            still.len()
        );
    }
    Ok(())
}

/// The outcome of a relay copy that sent something.
pub fn copied(r: super::fanout::Received) -> CopyOutcome {
    CopyOutcome::Copied {
        paths: r.paths,
        bytes: r.bytes,
        fanout: (r.shared.hosts > 1).then_some(r.shared),
    }
}

pub fn copy_closure_command(dest: &str, port: u16, toplevel: &StorePath) -> Command {
    Command::new("nix-copy-closure")
        .env("NIX_SSHOPTS", format!("-p {port}"))
        .args(["--to", dest, toplevel.as_str()])
}

/// The builder copies straight to the host (it must be able to reach it).
pub async fn copy_from_builder<B: Remote, T: Remote>(
    builder: &B,
    target: &T,
    dest: &str,
    port: u16,
    toplevel: &StorePath,
) -> anyhow::Result<CopyOutcome> {
    if missing(target, std::slice::from_ref(toplevel))
        .await?
        .is_empty()
    {
        return Ok(CopyOutcome::AlreadyPresent);
    }
    builder
        .exec(&copy_closure_command(dest, port, toplevel))
        .await
        .context("running nix-copy-closure on the builder")?
        .check(&format!("nix-copy-closure from the builder to {dest}"))?;
    anyhow::ensure!(
        missing(target, std::slice::from_ref(toplevel))
            .await?
            .is_empty(),
        "{} still lacks {toplevel} after nix-copy-closure",
        target.name()
    );
    Ok(CopyOutcome::Copied {
        paths: 0,
        bytes: 0,
        fanout: None,
    })
}

/// The host realises the closure from its own substituters.
pub async fn copy_substitute<T: Remote>(
    target: &T,
    toplevel: &StorePath,
) -> anyhow::Result<CopyOutcome> {
    if missing(target, std::slice::from_ref(toplevel))
        .await?
        .is_empty()
    {
        return Ok(CopyOutcome::AlreadyPresent);
    }
    target
        .exec(&Command::new("nix-store").args(["--realise", toplevel.as_str()]))
        .await
        .with_context(|| format!("realising on {}", target.name()))?
        .check(&format!(
            "substituting {} on {}",
            toplevel.name(),
            target.name()
        ))?;
    Ok(CopyOutcome::Substituted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_mode_command() {
        let t =
            StorePath::parse("/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-a").unwrap();
        let c = copy_closure_command("root@10.0.0.1", 2222, &t);
        assert_eq!(
            c.render(),
            format!("env NIX_SSHOPTS='-p 2222' nix-copy-closure --to root@10.0.0.1 {t}")
        );
    }
}
