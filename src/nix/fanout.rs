//! Relay copies, one builder read for any number of hosts: the builder
//! serves the NAR of every path some host of the batch lacks, once, in
//! dependency order, over one `nix-store --serve` (the serve protocol every
//! Nix and Lix speaks; `nix-store --export` would reorder the paths); the
//! controller finds where each NAR ends ([`NarScanner`]), checks it against
//! the builder's database (size and SHA-256), and forwards it, framed the way
//! `nix-store --import` reads it, to exactly the hosts that lack it. Each
//! host has one import stream, on its shared connection.
//!
//! Memory is bounded: one read buffer, plus at most that much queued per
//! host. The slowest host sets the pace. A host that fails is dropped and
//! the others go on; a builder that fails fails every host still receiving.

use std::collections::HashSet;

use anyhow::Context;
use futures_util::future::join_all;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::StorePath;
use super::closure::PathInfo;
use super::copy::CopyProgress;
use super::nar::{self, NarScanner};
use crate::remote::{Command, Remote, RemoteFinish, RemoteStdin};

/// The serve protocol's greeting words and the one command used.
const SERVE_MAGIC_1: u64 = 0x390c_9deb;
const SERVE_MAGIC_2: u64 = 0x5452_eecb;
/// Protocol 2.5 (Nix 2.3 and everything since); `DumpStorePath` is older still.
const SERVE_VERSION: u64 = 0x205;
const CMD_DUMP_STORE_PATH: u64 = 3;

/// Bytes read from the builder at a time; also the most queued per host.
const BUF: usize = 256 * 1024;

/// One host of a relay: where to send, what it lacks, whom to tell.
pub struct Target<'a, T> {
    pub remote: &'a T,
    pub lacking: &'a HashSet<StorePath>,
    pub progress: &'a (dyn Fn(CopyProgress) + Send + Sync),
}

/// The part of a host's copy that other hosts of its batch received from
/// the same builder read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Shared {
    /// Hosts copied together (1: no fan-out happened).
    pub hosts: usize,
    /// Of this host's paths, those sent to other hosts of the batch too.
    pub paths: u64,
    pub bytes: u64,
}

/// What one host received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Received {
    pub paths: u64,
    /// Import-stream bytes (NARs and their framing).
    pub bytes: u64,
    pub shared: Shared,
}

/// The union of several closures, dependencies first.
pub fn union(closures: &[&[PathInfo]]) -> anyhow::Result<Vec<PathInfo>> {
    let mut seen: HashSet<&StorePath> = HashSet::new();
    let mut all = Vec::new();
    for c in closures {
        for p in c.iter() {
            if seen.insert(&p.path) {
                all.push(p.clone());
            }
        }
    }
    super::closure::topo_sort(all)
}

/// The paths of `order` some target lacks, each with the targets lacking it.
/// A subsequence of a dependency order is one too, so every host imports
/// a path after the references it lacked.
fn plan<'a, T>(
    order: &'a [PathInfo],
    targets: &[Target<'_, T>],
) -> Vec<(&'a PathInfo, Vec<usize>)> {
    order
        .iter()
        .filter_map(|p| {
            let dests: Vec<usize> = (0..targets.len())
                .filter(|&i| targets[i].lacking.contains(&p.path))
                .collect();
            (!dests.is_empty()).then_some((p, dests))
        })
        .collect()
}

/// The serve-protocol requests: greeting, then one `DumpStorePath` a path.
fn requests(paths: &[(&PathInfo, Vec<usize>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + paths.len() * 96);
    out.extend_from_slice(&SERVE_MAGIC_1.to_le_bytes());
    out.extend_from_slice(&SERVE_VERSION.to_le_bytes());
    for (p, _) in paths {
        out.extend_from_slice(&CMD_DUMP_STORE_PATH.to_le_bytes());
        out.extend_from_slice(&nar::wire_string(p.path.as_str().as_bytes()));
    }
    out
}

/// One host's import stream and what it was sent.
struct Sink<'a> {
    name: String,
    stdin: Option<RemoteStdin>,
    finish: Option<RemoteFinish>,
    queued: Vec<u8>,
    got: Received,
    total_paths: u64,
    error: Option<anyhow::Error>,
    progress: &'a (dyn Fn(CopyProgress) + Send + Sync),
}

impl Sink<'_> {
    fn live(&self) -> bool {
        self.error.is_none()
    }

    fn fail(&mut self, e: anyhow::Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
        // Dropped without the end marker: the import stops at EOF, keeping
        // only whole paths.
        self.stdin = None;
        self.queued = Vec::new();
    }

    fn report(&self) {
        (self.progress)(CopyProgress {
            bytes: self.got.bytes,
            paths: self.got.paths,
            total_paths: self.total_paths,
        });
    }
}

/// Write every host's queue (concurrently); a failed write drops the host.
async fn flush(sinks: &mut [Sink<'_>]) {
    let writes = sinks
        .iter_mut()
        .filter(|s| s.live() && !s.queued.is_empty())
        .map(|s| async move {
            let Some(stdin) = s.stdin.as_mut() else {
                return;
            };
            match stdin.write_all(&s.queued).await {
                Ok(()) => {
                    s.got.bytes += s.queued.len() as u64;
                    s.queued.clear();
                }
                Err(e) => {
                    let e = anyhow::Error::new(e).context(format!("sending to {}", s.name));
                    s.fail(e);
                }
            }
        });
    join_all(writes).await;
}

/// Copy, from `builder`, every path of `order` (dependencies first) that a
/// target lacks to that target. Returns, per target in order, what it
/// received or why it failed. The caller checks each host's store after.
pub async fn relay<B: Remote, T: Remote>(
    builder: &B,
    targets: &[Target<'_, T>],
    order: &[PathInfo],
) -> Vec<anyhow::Result<Received>> {
    let paths = plan(order, targets);
    let mut totals = vec![0u64; targets.len()];
    let mut shared = vec![(0u64, 0u64); targets.len()];
    for (p, dests) in &paths {
        for &d in dests {
            totals[d] += 1;
            if dests.len() > 1 {
                shared[d].0 += 1;
                shared[d].1 += p.nar_size;
            }
        }
    }
    let import = Command::script("exec nix-store --import >/dev/null");
    let opened = join_all(targets.iter().map(|t| t.remote.exec_piped(&import))).await;
    let mut sinks: Vec<Sink> = targets
        .iter()
        .zip(opened)
        .zip(&totals)
        .map(|((t, s), &total_paths)| {
            let mut sink = Sink {
                name: t.remote.name().to_owned(),
                stdin: None,
                finish: None,
                queued: Vec::new(),
                got: Received::default(),
                total_paths,
                error: None,
                progress: t.progress,
            };
            match s {
                Ok(s) => {
                    sink.stdin = Some(s.stdin);
                    sink.finish = Some(s.finish);
                }
                Err(e) => sink.fail(e.context(format!(
                    "starting nix-store --import on {}",
                    t.remote.name()
                ))),
            }
            sink
        })
        .collect();
    let served = if paths.is_empty() || sinks.iter().all(|s| !s.live()) {
        Ok(())
    } else {
        serve(builder, &paths, &mut sinks).await
    };
    if let Err(e) = &served {
        let msg = format!("{e:#}");
        for s in sinks.iter_mut().filter(|s| s.live()) {
            s.fail(anyhow::anyhow!("{msg}"));
        }
    }
    for s in sinks.iter_mut().filter(|s| s.live()) {
        s.queued.extend_from_slice(&nar::END_OF_RECORDS);
    }
    flush(&mut sinks).await;
    let hosts = targets.len();
    let ends = sinks
        .into_iter()
        .zip(shared)
        .map(|(mut s, (sp, sb))| async move {
            if let Some(mut stdin) = s.stdin.take()
                && let Err(e) = stdin.shutdown().await
            {
                // The import may have exited on the end marker already: its
                // exit status is the verdict.
                tracing::debug!("{}: closing the import stream: {e}", s.name);
            }
            let imported = match s.finish.take() {
                Some(f) => Some(f.await),
                None => None,
            };
            if let Some(e) = s.error {
                return Err(e);
            }
            imported
                .context("no import stream")??
                .check(&format!("nix-store --import on {}", s.name))?;
            s.report();
            Ok(Received {
                shared: Shared {
                    hosts,
                    paths: sp,
                    bytes: sb,
                },
                ..s.got
            })
        });
    join_all(ends).await
}

/// [`relay`] to one host.
pub async fn relay_one<B: Remote, T: Remote>(
    builder: &B,
    target: Target<'_, T>,
    order: &[PathInfo],
) -> anyhow::Result<Received> {
    relay(builder, &[target], order)
        .await
        .pop()
        .context("the relay returned no result")?
}

/// Read every planned path from the builder once and route it.
async fn serve(
    builder: &impl Remote,
    paths: &[(&PathInfo, Vec<usize>)],
    sinks: &mut [Sink<'_>],
) -> anyhow::Result<()> {
    let src = builder
        .exec_stream(&Command::new("nix-store").arg("--serve"))
        .await
        .context("starting nix-store --serve on the builder")?;
    let reqs = requests(paths);
    let mut stdin = src.stdin;
    let writer = async move {
        stdin.write_all(&reqs).await?;
        stdin.shutdown().await
    };
    let mut stdout = src.stdout;
    let reader = route(&mut stdout, paths, sinks);
    let (written, routed) = tokio::join!(writer, reader);
    drop(stdout);
    let exit = src.finish.await;
    if let Err(e) = routed {
        // The builder's own words say more than a broken stream.
        let tail = exit.as_ref().map(|o| o.tail(5)).unwrap_or_default();
        if tail.is_empty() {
            return Err(e);
        }
        return Err(e.context(format!(
            "nix-store --serve on the builder: {}",
            tail.join(" / ")
        )));
    }
    written.context("sending requests to nix-store --serve on the builder")?;
    exit?.check("nix-store --serve on the builder")?;
    Ok(())
}

/// The buffered builder stream.
struct Input<'r, R> {
    src: &'r mut R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl<R: tokio::io::AsyncRead + Unpin> Input<'_, R> {
    /// Make sure unread bytes are buffered; false at the end of the stream.
    async fn fill(&mut self) -> anyhow::Result<bool> {
        if self.pos < self.end {
            return Ok(true);
        }
        let n = self
            .src
            .read(&mut self.buf)
            .await
            .context("reading from the builder")?;
        (self.pos, self.end) = (0, n);
        Ok(n > 0)
    }

    async fn read_u64(&mut self) -> anyhow::Result<u64> {
        let mut b = [0u8; 8];
        let mut got = 0;
        while got < 8 {
            anyhow::ensure!(self.fill().await?, "the builder's stream ended early");
            let take = (8 - got).min(self.end - self.pos);
            b[got..got + take].copy_from_slice(&self.buf[self.pos..self.pos + take]);
            (got, self.pos) = (got + take, self.pos + take);
        }
        Ok(u64::from_le_bytes(b))
    }
}

async fn route<R: tokio::io::AsyncRead + Unpin>(
    src: &mut R,
    paths: &[(&PathInfo, Vec<usize>)],
    sinks: &mut [Sink<'_>],
) -> anyhow::Result<()> {
    let mut input = Input {
        src,
        buf: vec![0u8; BUF],
        pos: 0,
        end: 0,
    };
    let magic = input.read_u64().await?;
    anyhow::ensure!(
        magic == SERVE_MAGIC_2,
        "nix-store --serve on the builder answered {magic:#x}, not the serve protocol"
    );
    let version = input.read_u64().await?;
    tracing::debug!(
        "builder serves protocol {}.{}",
        version >> 8,
        version & 0xff
    );
    let mut last = std::time::Instant::now();
    for (p, dests) in paths {
        for &d in dests {
            if sinks[d].live() {
                sinks[d].queued.extend_from_slice(&nar::RECORD_HEADER);
            }
        }
        let mut scanner = NarScanner::new();
        let mut hash = Sha256::new();
        loop {
            if input.pos == input.end {
                flush(sinks).await;
                anyhow::ensure!(
                    sinks.iter().any(Sink::live),
                    "every host of the copy failed"
                );
                anyhow::ensure!(
                    input.fill().await?,
                    "the builder's stream ended inside the NAR of {}",
                    p.path
                );
            }
            let avail = &input.buf[input.pos..input.end];
            let (piece, ended) = match scanner
                .feed(avail)
                .with_context(|| format!("the builder's NAR of {}", p.path))?
            {
                Some(n) => (&avail[..n], true),
                None => (avail, false),
            };
            hash.update(piece);
            for &d in dests {
                if sinks[d].live() {
                    sinks[d].queued.extend_from_slice(piece);
                }
            }
            input.pos += piece.len();
            if ended {
                break;
            }
        }
        let size = scanner.consumed();
        anyhow::ensure!(
            p.nar_size == 0 || size == p.nar_size,
            "the builder sent {size} bytes for {}, its database says {}",
            p.path,
            p.nar_size
        );
        if let Some(want) = p.nar_hash {
            let got: [u8; 32] = hash.finalize().into();
            anyhow::ensure!(
                got == want,
                "the NAR of {} the builder sent does not match its hash in the builder's database: \
                 the builder's store may be corrupt (nix-store --verify --check-contents)",
                p.path
            );
        }
        let trailer = nar::record_trailer(p);
        for &d in dests {
            let s = &mut sinks[d];
            if s.live() {
                s.queued.extend_from_slice(&trailer);
                s.got.paths += 1;
            }
        }
        if last.elapsed() >= std::time::Duration::from_millis(100) {
            last = std::time::Instant::now();
            for s in sinks.iter().filter(|s| s.live()) {
                s.report();
            }
        }
    }
    anyhow::ensure!(
        !input.fill().await?,
        "the builder sent more than the paths asked for"
    );
    Ok(())
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
            nar_hash: None,
            references: refs.iter().map(|r| sp(r)).collect(),
            deriver: None,
        }
    }

    #[test]
    fn each_path_goes_to_the_hosts_lacking_it_in_dependency_order() {
        let order = union(&[
            &[
                info("glibc", &[]),
                info("openssl", &["glibc"]),
                info("top-a", &["openssl"]),
            ],
            &[
                info("glibc", &[]),
                info("openssl", &["glibc"]),
                info("top-b", &["openssl"]),
            ],
        ])
        .unwrap();
        let set = |names: &[&str]| names.iter().map(|n| sp(n)).collect::<HashSet<_>>();
        let a = set(&["openssl", "top-a"]);
        let b = set(&["glibc", "openssl", "top-b"]);
        let noop = |_: CopyProgress| {};
        let remote =
            crate::remote::scripted::ScriptedRemote::new("h", |_| crate::remote::scripted::ok(""));
        let targets = [
            Target {
                remote: &remote,
                lacking: &a,
                progress: &noop,
            },
            Target {
                remote: &remote,
                lacking: &b,
                progress: &noop,
            },
        ];
        let p: Vec<(String, Vec<usize>)> = plan(&order, &targets)
            .into_iter()
            .map(|(p, d)| (p.path.name().to_owned(), d))
            .collect();
        let pos = |n: &str| p.iter().position(|(x, _)| x == n).unwrap();
        assert_eq!(p.len(), 4, "{p:?}");
        assert_eq!(p[pos("glibc")].1, [1]);
        assert_eq!(p[pos("openssl")].1, [0, 1]);
        assert_eq!(p[pos("top-a")].1, [0]);
        assert_eq!(p[pos("top-b")].1, [1]);
        assert!(pos("glibc") < pos("openssl") && pos("openssl") < pos("top-a"));
        // The requests: greeting, then one DumpStorePath per planned path.
        let plan = plan(&order, &targets);
        let r = requests(&plan);
        assert_eq!(&r[..8], &SERVE_MAGIC_1.to_le_bytes());
        assert_eq!(&r[16..24], &CMD_DUMP_STORE_PATH.to_le_bytes());
        let first = plan[0].0.path.as_str().as_bytes();
        assert_eq!(&r[32..32 + first.len()], first);
    }
}
