//! Relay fan-out: when several hosts lack the same paths, the builder exports
//! them once and the controller tees the one stream into every host's
//! `nix-store --import`, at the pace of the slowest (bounded memory: one
//! buffer, whatever the number of hosts). A host that fails mid-stream is
//! dropped from the tee; the others go on.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::StorePath;
use super::closure::PathInfo;
use super::copy::CopyProgress;
use crate::remote::{Command, Remote, RemoteStdin, Streaming};

/// What a host received through a shared stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Default)]
pub struct Shared {
    /// Hosts the stream was teed to (1: no fan-out happened).
    pub hosts: usize,
    pub paths: u64,
    pub bytes: u64,
}

const BUF: usize = 256 * 1024;
/// Paths per export stream (far below ARG_MAX).
const CHUNK: usize = 4000;

/// The paths every target lacks that can be imported first everywhere: each
/// one's references are, on every target, present already or earlier in
/// the result. `order` is the union of the targets' closures, dependencies
/// first; the result keeps that order.
pub fn shared_paths<'a>(
    order: &'a [PathInfo],
    lacking: &[&HashSet<StorePath>],
) -> Vec<&'a PathInfo> {
    if lacking.is_empty() {
        return Vec::new();
    }
    let lacking_anywhere: HashSet<&StorePath> = lacking.iter().flat_map(|s| s.iter()).collect();
    let mut shared: HashSet<&StorePath> = HashSet::new();
    let mut out = Vec::new();
    for p in order {
        let everywhere = lacking.iter().all(|s| s.contains(&p.path));
        let refs_ok = p
            .references
            .iter()
            .all(|r| *r == p.path || shared.contains(r) || !lacking_anywhere.contains(r));
        if everywhere && refs_ok {
            shared.insert(&p.path);
            out.push(p);
        }
    }
    out
}

/// The union of several closures, dependencies first.
pub fn union(closures: &[&[PathInfo]]) -> anyhow::Result<Vec<PathInfo>> {
    let mut seen: HashMap<&StorePath, ()> = HashMap::new();
    let mut all = Vec::new();
    for c in closures {
        for p in c.iter() {
            if seen.insert(&p.path, ()).is_none() {
                all.push(p.clone());
            }
        }
    }
    super::closure::topo_sort(all)
}

/// One target of a broadcast and what it was sent.
struct Sink<'a> {
    name: String,
    stdin: Option<RemoteStdin>,
    stream: Option<Streaming>,
    sent: u64,
    error: Option<anyhow::Error>,
    progress: &'a (dyn Fn(CopyProgress) + Send + Sync),
}

/// Export `paths` from the builder once and import them into every target.
/// Returns, per target in order, the bytes it received, or why it failed.
pub async fn broadcast<B: Remote, T: Remote>(
    builder: &B,
    targets: &[(&T, &(dyn Fn(CopyProgress) + Send + Sync))],
    paths: &[&PathInfo],
) -> Vec<anyhow::Result<u64>> {
    let total_paths = paths.len() as u64;
    let mut sent_total = vec![0u64; targets.len()];
    let mut failed: Vec<Option<anyhow::Error>> = (0..targets.len()).map(|_| None).collect();
    let mut done_paths = 0u64;
    for chunk in paths.chunks(CHUNK) {
        if failed.iter().all(Option::is_some) {
            break;
        }
        let live: Vec<usize> = (0..targets.len())
            .filter(|i| failed[*i].is_none())
            .collect();
        let sinks: Vec<(&T, &(dyn Fn(CopyProgress) + Send + Sync))> =
            live.iter().map(|i| targets[*i]).collect();
        let results = broadcast_chunk(
            builder,
            &sinks,
            chunk,
            &live.iter().map(|i| sent_total[*i]).collect::<Vec<_>>(),
            done_paths,
            total_paths,
        )
        .await;
        for (i, r) in live.into_iter().zip(results) {
            match r {
                Ok(n) => sent_total[i] += n,
                Err(e) => failed[i] = Some(e),
            }
        }
        done_paths += chunk.len() as u64;
    }
    sent_total
        .into_iter()
        .zip(failed)
        .map(|(n, f)| match f {
            Some(e) => Err(e),
            None => Ok(n),
        })
        .collect()
}

async fn broadcast_chunk<B: Remote, T: Remote>(
    builder: &B,
    targets: &[(&T, &(dyn Fn(CopyProgress) + Send + Sync))],
    chunk: &[&PathInfo],
    bytes_before: &[u64],
    paths_before: u64,
    total_paths: u64,
) -> Vec<anyhow::Result<u64>> {
    let import = Command::new("nix-store").arg("--import");
    let mut sinks: Vec<Sink> = Vec::with_capacity(targets.len());
    for (t, progress) in targets {
        let mut sink = Sink {
            name: t.name().to_owned(),
            stdin: None,
            stream: None,
            sent: 0,
            error: None,
            progress: *progress,
        };
        match t.exec_stream(&import).await {
            Ok(mut s) => {
                let stdin = std::mem::replace(&mut s.stdin, Box::pin(tokio::io::sink()));
                sink.stdin = Some(stdin);
                sink.stream = Some(s);
            }
            Err(e) => {
                sink.error = Some(e.context(format!("starting nix-store --import on {}", t.name())))
            }
        }
        sinks.push(sink);
    }
    let export = Command::new("nix-store")
        .arg("--export")
        .args(chunk.iter().map(|p| p.path.as_str()));
    let mut src = match builder.exec_stream(&export).await {
        Ok(s) => s,
        Err(e) => {
            return sinks
                .into_iter()
                .map(|_| {
                    Err(anyhow::anyhow!(
                        "starting nix-store --export on the builder: {e:#}"
                    ))
                })
                .collect();
        }
    };
    let mut buf = vec![0u8; BUF];
    let mut read_error = None;
    let mut last = std::time::Instant::now();
    loop {
        let n = match src.stdout.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                read_error = Some(e);
                break;
            }
        };
        let data = &buf[..n];
        let writes = sinks
            .iter_mut()
            .filter(|s| s.error.is_none())
            .map(|s| async move {
                let Some(stdin) = s.stdin.as_mut() else {
                    return;
                };
                match stdin.write_all(data).await {
                    Ok(()) => s.sent += data.len() as u64,
                    Err(e) => {
                        s.error =
                            Some(anyhow::Error::new(e).context(format!("writing to {}", s.name)));
                        s.stdin = None;
                    }
                }
            });
        join_all(writes).await;
        if sinks.iter().all(|s| s.error.is_some()) {
            break;
        }
        if last.elapsed() >= std::time::Duration::from_millis(100) {
            last = std::time::Instant::now();
            for (s, before) in sinks.iter().zip(bytes_before) {
                (s.progress)(CopyProgress {
                    bytes: before + s.sent,
                    paths: paths_before,
                    total_paths,
                });
            }
        }
    }
    // Close every import, then collect how each ended. `nix-store --import`
    // exits once it has read the stream's end marker, so the channel may be
    // closed already: the import's exit status (and the caller's check of
    // the host's store) is the verdict, not the EOF.
    let closes = sinks.iter_mut().map(|s| async move {
        if let Some(mut stdin) = s.stdin.take()
            && let Err(e) = stdin.shutdown().await
        {
            tracing::debug!("{}: closing the import stream: {e}", s.name);
        }
    });
    join_all(closes).await;
    let exported = src.finish.await;
    let export_failed = match (&read_error, exported) {
        (Some(e), _) => Some(format!("reading the export stream: {e}")),
        (None, Err(e)) => Some(format!("{e:#}")),
        (None, Ok(out)) => out
            .check("nix-store --export on the builder")
            .err()
            .map(|e| format!("{e:#}")),
    };
    let export_failed = export_failed.as_deref();
    let finishes = sinks.into_iter().map(|s| async move {
        let Sink {
            name,
            stream,
            sent,
            error,
            ..
        } = s;
        let Some(mut stream) = stream else {
            return Err(error.unwrap_or_else(|| anyhow::anyhow!("no import stream on {name}")));
        };
        let mut rest = Vec::new();
        let _ = stream.stdout.read_to_end(&mut rest).await;
        let imported = stream.finish.await;
        if let Some(e) = error {
            return Err(e);
        }
        if let Some(e) = export_failed {
            anyhow::bail!("{e}");
        }
        imported?
            .check(&format!("nix-store --import on {name}"))
            .map(|_| sent)
    });
    join_all(finishes)
        .await
        .into_iter()
        .map(|r| r.context("fan-out copy"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(name: &str) -> StorePath {
        let hash: String = name
            .bytes()
            .cycle()
            .take(32)
            .map(|b| b"0123456789abcdfghijklmnpqrsvwxyz"[(b % 32) as usize] as char)
            .collect();
        StorePath::parse(&format!("/nix/store/{hash}-{name}")).unwrap()
    }

    fn info(name: &str, refs: &[&str]) -> PathInfo {
        PathInfo {
            path: sp(name),
            nar_size: 100,
            references: refs.iter().map(|r| sp(r)).collect(),
            deriver: None,
        }
    }

    #[test]
    fn shared_paths_are_importable_first_everywhere() {
        // glibc <- openssl <- nginx <- sw <- top-a / top-b
        let order = union(&[
            &[
                info("glibc", &[]),
                info("openssl", &["glibc"]),
                info("nginx", &["openssl", "glibc"]),
                info("sw", &["nginx"]),
                info("top-a", &["sw"]),
            ],
            &[
                info("glibc", &[]),
                info("openssl", &["glibc"]),
                info("nginx", &["openssl", "glibc"]),
                info("sw", &["nginx"]),
                info("top-b", &["sw"]),
            ],
        ])
        .unwrap();
        let set = |names: &[&str]| names.iter().map(|n| sp(n)).collect::<HashSet<_>>();
        // a has glibc; b lacks everything.
        let a = set(&["openssl", "nginx", "sw", "top-a"]);
        let b = set(&["glibc", "openssl", "nginx", "sw", "top-b"]);
        let shared: Vec<String> = shared_paths(&order, &[&a, &b])
            .iter()
            .map(|p| p.path.name().to_owned())
            .collect();
        // openssl needs glibc, which b lacks and is not shared: nothing
        // above glibc can go first on b.
        assert!(shared.is_empty(), "{shared:?}");

        // Both have glibc: openssl, nginx and sw are shared, in order.
        let b = set(&["openssl", "nginx", "sw", "top-b"]);
        let shared: Vec<String> = shared_paths(&order, &[&a, &b])
            .iter()
            .map(|p| p.path.name().to_owned())
            .collect();
        assert_eq!(shared, ["openssl", "nginx", "sw"]);
        // A single target shares everything it lacks.
        assert_eq!(shared_paths(&order, &[&a]).len(), 4);
    }
}
