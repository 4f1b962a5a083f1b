//! Copying closures to hosts, by copy mode: relay (builder -> controller ->
//! host, only the missing paths, streamed with bounded memory), builder
//! (the builder copies straight to the host), substitute (the host fetches
//! from its own substituters). Every mode verifies the result on the host.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CopyOutcome {
    /// The host already had the whole closure: nothing was sent.
    AlreadyPresent,
    /// These many paths and stream bytes were sent (totals); `fanout` is
    /// the part that came through a stream shared with other hosts.
    Copied {
        paths: u64,
        bytes: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        fanout: Option<super::fanout::Shared>,
    },
    /// The host realised the closure itself.
    Substituted,
}

/// Paths per export stream: keeps every command line far below ARG_MAX.
const CHUNK: usize = 4000;
const BUF: usize = 256 * 1024;

/// Relay the paths of `closure` (dependencies first) that `target` lacks.
pub async fn copy_relay<B: Remote, T: Remote>(
    builder: &B,
    target: &T,
    closure: &[PathInfo],
    progress: &(dyn Fn(CopyProgress) + Send + Sync),
) -> anyhow::Result<CopyOutcome> {
    let all: Vec<StorePath> = closure.iter().map(|p| p.path.clone()).collect();
    let lacking: HashSet<StorePath> = missing(target, &all).await?.into_iter().collect();
    if lacking.is_empty() {
        return Ok(CopyOutcome::AlreadyPresent);
    }
    let order: Vec<&PathInfo> = closure
        .iter()
        .filter(|p| lacking.contains(&p.path))
        .collect();
    let total_paths = order.len() as u64;
    let mut bytes = 0u64;
    let mut done_paths = 0u64;
    for chunk in order.chunks(CHUNK) {
        bytes += relay_chunk(
            builder,
            target,
            chunk,
            bytes,
            done_paths,
            total_paths,
            progress,
        )
        .await?;
        done_paths += chunk.len() as u64;
    }
    progress(CopyProgress {
        bytes,
        paths: total_paths,
        total_paths,
    });
    let still = missing(target, &all).await?;
    anyhow::ensure!(
        still.is_empty(),
        "after the copy {} still lacks {} path(s), e.g. {}",
        target.name(),
        still.len(),
        still[0]
    );
    Ok(CopyOutcome::Copied {
        paths: total_paths,
        bytes,
        fanout: None,
    })
}

async fn relay_chunk<B: Remote, T: Remote>(
    builder: &B,
    target: &T,
    chunk: &[&PathInfo],
    bytes_before: u64,
    paths_before: u64,
    total_paths: u64,
    progress: &(dyn Fn(CopyProgress) + Send + Sync),
) -> anyhow::Result<u64> {
    let export = Command::new("nix-store")
        .arg("--export")
        .args(chunk.iter().map(|p| p.path.as_str()));
    let mut src = builder
        .exec_stream(&export)
        .await
        .context("starting nix-store --export on the builder")?;
    let mut dst = target
        .exec_stream(&Command::new("nix-store").arg("--import"))
        .await
        .with_context(|| format!("starting nix-store --import on {}", target.name()))?;
    // Path boundaries are not visible in the stream: count a path as sent
    // once the bytes passed its NAR size (close enough for progress).
    let mut sizes = chunk.iter().map(|p| p.nar_size);
    let mut next_boundary = sizes.next().unwrap_or(u64::MAX);
    let mut sent_paths = 0u64;
    let mut buf = vec![0u8; BUF];
    let mut sent = 0u64;
    let mut last = Instant::now();
    let pump: anyhow::Result<()> = async {
        loop {
            let n = src
                .stdout
                .read(&mut buf)
                .await
                .context("reading the export stream")?;
            if n == 0 {
                break;
            }
            dst.stdin
                .write_all(&buf[..n])
                .await
                .with_context(|| format!("writing to {}", target.name()))?;
            sent += n as u64;
            while sent >= next_boundary && sent_paths < chunk.len() as u64 {
                sent_paths += 1;
                next_boundary = next_boundary.saturating_add(sizes.next().unwrap_or(u64::MAX));
            }
            if last.elapsed() >= Duration::from_millis(100) {
                last = Instant::now();
                progress(CopyProgress {
                    bytes: bytes_before + sent,
                    paths: paths_before + sent_paths,
                    total_paths,
                });
            }
        }
        // The import may have exited already on the end marker: its exit
        // status, checked below, is the verdict.
        if let Err(e) = dst.stdin.shutdown().await {
            tracing::debug!("{}: closing the import stream: {e}", target.name());
        }
        Ok(())
    }
    .await;
    let mut rest = Vec::new();
    let _ = dst.stdout.read_to_end(&mut rest).await;
    let exported = src.finish.await?;
    let imported = dst.finish.await?;
    pump?;
    exported.check("nix-store --export on the builder")?;
    imported.check(&format!("nix-store --import on {}", target.name()))?;
    Ok(sent)
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
