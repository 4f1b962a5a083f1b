//! Pushing built closures to a binary cache from the builder (`[cache]
//! push_to`): one `nix copy --to STORE top...` for every candidate at once,
//! so paths the hosts share are considered once, and Nix skips what the
//! cache already has. Any store URI the builder's Nix accepts works
//! (`file://`, `s3://`, `ssh://`, `http(s)://` with an upload endpoint);
//! options such as `?compression=zstd` ride on the URI.
//!
//! Signatures travel with the paths: signed in the builder's store first
//! (`[cache] signing_key`, [`super::sign`]), they land in the narinfo
//! files of a binary cache (`Sig:`) or the remote store's database.
//!
//! Progress: Nix 2.8's `nix copy` to a binary cache logs each path's copy
//! activity but no byte counts (2.26 does), so the bytes are the NAR sizes
//! of the paths copied, from the builder's database (read before the copy,
//! one query for every closure). Cancellation and the log are the build's
//! ([`super::build::run_logged`]): Ctrl-C ends `nix copy` on the builder.

use std::collections::HashMap;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::StorePath;
use super::buildlog::Logged;
use crate::remote::{Command, Remote};

/// How far a push is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PushProgress {
    /// Paths copied so far, of `total_paths` the cache lacked.
    pub paths: u64,
    pub total_paths: u64,
    /// NAR bytes of the paths copied so far.
    pub bytes: u64,
}

/// `nix copy --to STORE tops...`.
pub fn push_command(store: &str, tops: &[StorePath]) -> Command {
    Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--to",
            store,
        ])
        .args(tops.iter().map(|t| t.as_str()))
}

/// Why a push failed: Nix's words, or the builder could not run it.
#[derive(Debug, thiserror::Error)]
#[error("nix copy --to {store} failed:\n  {}", log_tail.join("\n  "))]
pub struct PushFailed {
    pub store: String,
    pub log_tail: Vec<String>,
}

/// Copy the closures of `tops` from the builder to `store`, reporting
/// progress; `stop` ends it ([`super::build::was_cancelled`] on the error).
pub async fn push<R: Remote>(
    builder: &R,
    store: &str,
    tops: &[StorePath],
    progress: &(dyn Fn(PushProgress) + Send + Sync),
    stop: &CancellationToken,
) -> anyhow::Result<PushProgress> {
    let sizes: HashMap<String, u64> = super::closure::closures(builder, tops)
        .await
        .context("reading the closures' sizes on the builder")?
        .into_values()
        .flatten()
        .map(|p| (p.path.as_str().to_owned(), p.nar_size))
        .collect();
    let state = std::sync::Mutex::new(PushProgress {
        paths: 0,
        total_paths: 0,
        bytes: 0,
    });
    let told = |t: Logged| {
        let Ok(mut s) = state.lock() else { return };
        match t {
            Logged::CopyPlanned { paths } => s.total_paths += paths,
            Logged::Copied { path } => {
                s.paths += 1;
                s.bytes += sizes.get(&path).copied().unwrap_or(0);
            }
            Logged::Progress(_) | Logged::Building { .. } => return,
        }
        progress(*s);
    };
    let out = super::build::run_logged(builder, &push_command(store, tops), &told, stop)
        .await
        .with_context(|| format!("running nix copy --to {store} on the builder"))?;
    if !out.success() {
        return Err(PushFailed {
            store: store.to_owned(),
            log_tail: out.tail(20),
        }
        .into());
    }
    let done = *state
        .lock()
        .map_err(|_| anyhow::anyhow!("push progress poisoned"))?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::scripted::{ScriptedRemote, ok};

    const TOP: &str = "/nix/store/irk0jw9bd4r75gjl6vw4v2pclc9czdbn-nixos-system-light1-24.05";
    const DEP: &str = "/nix/store/yzh6yan0a7zj7klyjg151nj376mjwgja-hello-2.12.10";

    #[test]
    fn command() {
        let c = push_command(
            "file:///srv/cache?compression=zstd",
            &[StorePath::parse(TOP).unwrap()],
        );
        assert_eq!(
            c.argv(),
            [
                "nix",
                "--extra-experimental-features",
                "nix-command",
                "copy",
                "--to",
                "file:///srv/cache?compression=zstd",
                TOP
            ]
        );
    }

    #[tokio::test]
    async fn bytes_are_the_nar_sizes_of_the_paths_copied() {
        // The closure query (dump-db), then nix copy's log as Nix 2.8
        // prints it for a file:// cache: no byte counts.
        let r = ScriptedRemote::new("builder", |c| {
            if c.render().contains("dump-db") {
                ok(&format!(
                    "{TOP}\nsha256:1\n1000\n\n1\n{DEP}\n{DEP}\nsha256:2\n234\n\n0\n"
                ))
            } else {
                ok(&format!(
                    "@nix {{\"action\":\"start\",\"id\":5,\"level\":3,\"text\":\"copying 2 paths\",\"type\":103}}\n\
                     @nix {{\"action\":\"start\",\"fields\":[\"{DEP}\",\"local\",\"file:///c\"],\"id\":6,\"level\":3,\"text\":\"\",\"type\":100}}\n\
                     @nix {{\"action\":\"stop\",\"id\":6}}\n\
                     @nix {{\"action\":\"start\",\"fields\":[\"{TOP}\",\"local\",\"file:///c\"],\"id\":7,\"level\":3,\"text\":\"\",\"type\":100}}\n\
                     @nix {{\"action\":\"stop\",\"id\":7}}\n"
                ))
            }
        });
        let seen = std::sync::Mutex::new(Vec::new());
        let progress = |p: PushProgress| seen.lock().unwrap().push(p);
        let done = push(
            &r,
            "file:///c",
            &[StorePath::parse(TOP).unwrap()],
            &progress,
            &CancellationToken::new(),
        )
        .await;
        let seen = seen.into_inner().unwrap();
        let done = done.unwrap_or_else(|e| panic!("{e:#}: {:?}", r.argvs()));
        assert_eq!(
            done,
            PushProgress {
                paths: 2,
                total_paths: 2,
                bytes: 1234
            }
        );
        assert_eq!(seen.len(), 3);
    }
}
