//! Relay copies, one builder read for any number of hosts: the builder
//! serves the NAR of every path some host of the batch lacks, once, in
//! dependency order (`nix-store --serve`, `DumpStorePath`; `nix-store
//! --export` would reorder the paths); the controller finds where each NAR
//! ends ([`NarScanner`]) and forwards it to exactly the hosts that lack it,
//! each with its registration (`nix-store --serve --write`, `AddToStoreNar`:
//! the host checks the NAR's size and SHA-256 against the builder's database
//! as it adds it, like `nix-copy-closure`). Each host has one stream, on its
//! shared connection, and acknowledges every path it added. That stream is
//! where it was first asked which paths it lacks ([`ask_lacking`],
//! `QueryValidPaths`): one Nix process per host for both.
//!
//! The registration carries the builder's signatures and content address,
//! so a host that requires signatures accepts what the builder signed: the
//! builder is asked for each path's (`QueryPathInfos` of that path alone)
//! just before its NAR, in the same pipelined request stream, so they
//! arrive in order with nothing held. Measured (`push --goal copy` to one
//! light host, copy gate, medians, old relay / this one, same loaded
//! 2-core machine): 502 paths of 4 KiB, 0.634 / 0.632 s over 9 rounds
//! (+104 bytes a path, 2% more stream); 42 paths, 200 MiB, 2.18 / 2.17 s
//! over 3 rounds; the final code, 5 rounds of the 502 paths at twice the
//! load: 1.19 / 1.08 s. No difference beyond the rounds' spread (0.46-2.8 s).
//!
//! Memory is bounded: one read buffer, plus at most that much queued per
//! host. The slowest host sets the pace. A host that fails is dropped and
//! the others go on; a builder that fails fails every host still receiving.
//! So is a host that moves nothing for its `copy_stall_timeout` (5 min:
//! takes no bytes, acknowledges no path, does not answer the question),
//! and the builder the longest of its hosts' limits. Before, nothing bounded
//! the copy: a host's `nix-store` waiting on a path lock another Nix process
//! holds kept every host of its batch waiting until the lock was let go
//! (tests: `fanout_stall_tests`; `push_e2e` holds such a lock on a real host).
//!
//! A host is sent at most [`IN_FLIGHT`] bytes of whole paths it has not
//! acknowledged yet. Without that, everything the SSH window allows piles
//! up in the host's sshd while its nix-store imports: OpenSSH grows that
//! buffer by copying it whole for every 32 KiB message, and on a 19 MiB
//! closure of 64 KiB paths the host's sshd spent 0.32 s of CPU (0.10 s
//! with `nix-copy-closure`, whose sender is slower).
//!
//! 1 MiB, not 2 MiB (OpenSSH's session window), at a distance too (issue
//! 21): one host, the 19 MiB change, RTT 50 ms, medians of 3 rounds, two
//! runs back to back (`RTT=50ms ROUNDS=3 SKIP_SEQ=1 scripts/bench-fleet
//! push 1`, 2026-12-02): with 2 MiB the builder's link counted the same
//! turns (42 gated / 43 switch; that stream is paced by russh's channel
//! window, not by this one), the host's link 48 / 45 against 56 / 41 (the
//! copy's turns move with the load, 7 against 13), host CPU 0.78 / 0.73 s
//! against 0.87 / 0.80 s at that lower load; against the export loop of
//! its own run, gated was 2.55x (2 MiB) and 2.28x (1 MiB). Nothing gained
//! that the rounds' spread does not cover, so the smaller buffer stays.

use std::collections::{HashSet, VecDeque};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use super::StorePath;
use super::closure::PathInfo;
use super::copy::CopyProgress;
use super::nar::NarScanner;
use super::serve;
use crate::remote::{Command, Remote, RemoteFinish, RemoteStdin, RemoteStdout, Stop, Streaming};

/// Bytes read from the builder at a time; also the most queued per host.
const BUF: usize = 256 * 1024;

/// The most bytes of whole, unacknowledged paths sent to one host before
/// the next write waits for its acknowledgements. A path is never held
/// back for its own size: with every sent path acknowledged, the next
/// is sent whatever it weighs. (Half of OpenSSH's 2 MiB session window,
/// which bounds what is in flight anyway.)
const IN_FLIGHT: u64 = 1024 * 1024;

/// One host of a relay: where to send, what it lacks, whom to tell, and
/// the session that asked it what it lacks ([`ask_lacking`]), which then
/// adds the paths (without one the relay starts a session).
pub struct Target<'a, T> {
    pub remote: &'a T,
    pub lacking: &'a HashSet<StorePath>,
    pub progress: &'a (dyn Fn(CopyProgress) + Send + Sync),
    pub session: Option<HostServe>,
    /// How long the host may take nothing and add nothing before its copy
    /// fails (`copy_stall_timeout`), the others going on.
    pub stall: Duration,
}

/// A host's `nix-store --serve --write`, greeted, that answered which
/// paths it has: the relay adds what it lacks in the same session.
/// Dropped unused, it ends (EOF ends the host's serve loop).
pub struct HostServe {
    stream: Streaming,
}

/// How long a host that failed, or the builder after its last byte, is
/// given to end and say why (a stuck `nix-store` does not end at EOF).
pub(super) const LAST_WORDS: Duration = Duration::from_secs(5);

/// What a host's import that takes nothing is stuck on, and where to look.
pub(super) const STUCK_IMPORT: &str = "its nix-store --serve --write is stuck (a lock \
     another Nix process holds, a garbage collection, a disk that stopped answering: \
     `ps -ef | grep nix` there tells)";

/// How often a host the copy waits on, taking nothing, is said to be idle
/// ([`CopyProgress::idle_secs`]): the whole batch waits for it, and this
/// names it minutes before its `copy_stall_timeout` fails it.
const IDLE_REPORT: Duration = Duration::from_secs(10);

/// What adds paths on a host.
fn add_command() -> Command {
    Command::new("nix-store").args(["--serve", "--write"])
}

/// Which paths of `closure` `remote` lacks, asked in the `nix-store
/// --serve --write` session the copy then adds them with: one Nix process
/// on the host for both, where a separate `nix-store --check-validity`
/// cost the host 30-35 ms of CPU (a Nix process's start) on each push.
/// Two round trips where that query took one (sshd opens a session's
/// window only once it has the exec request), but the relay's own start
/// of the session, a round trip too, is gone. A host that has not
/// answered after `stall` fails (a query of its database: 2000 paths take
/// 30 ms of CPU, `scripts/bench-serve-ask`; the fault matrix's stalled
/// `nix-store` once held a run for good here).
pub async fn ask_lacking<T: Remote>(
    remote: &T,
    closure: &[PathInfo],
    stall: Duration,
) -> anyhow::Result<(HashSet<StorePath>, HostServe)> {
    let name = remote.name();
    let mut stream = remote
        .exec_piped(&add_command())
        .await
        .with_context(|| format!("starting nix-store --serve --write on {name}"))?;
    let paths: Vec<&StorePath> = closure.iter().map(|p| &p.path).collect();
    let mut ask = serve::greeting();
    serve::query_valid_paths(&mut ask, &paths);
    let asked = async {
        stream.stdin.write_all(&ask).await?;
        stream.stdin.flush().await?;
        let mut r = serve::Stream(&mut stream.stdout);
        let magic = serve::WireRead::word(&mut r).await?;
        let version = serve::WireRead::word(&mut r).await?;
        serve::check_greeting(magic, version, name)?;
        serve::read_valid_paths(&mut r, paths.len(), name).await
    };
    let answered = tokio::time::timeout(stall, asked)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "no answer in {} s (copy_stall_timeout): is its store busy (a garbage \
                 collection, another Nix process holding its database)? `nix-store \
                 --check-validity` of one path there tells",
                stall.as_secs()
            ))
        });
    let valid = match answered {
        Ok(v) => v,
        Err(e) => {
            let Streaming { stdin, finish, .. } = stream;
            drop(stdin);
            let e =
                with_last_words(e, finish, &format!("nix-store --serve --write on {name}")).await;
            return Err(e.context(format!("asking {name} which paths it lacks")));
        }
    };
    let valid: HashSet<StorePath> = valid.into_iter().collect();
    let lacking = closure
        .iter()
        .filter(|p| !valid.contains(&p.path))
        .map(|p| p.path.clone())
        .collect();
    Ok((lacking, HostServe { stream }))
}

/// `e`, preceded by the command's own words (its stderr, its exit) when
/// it ends within [`LAST_WORDS`] (a stuck one does not: not waited for).
async fn with_last_words(e: anyhow::Error, finish: RemoteFinish, what: &str) -> anyhow::Error {
    match tokio::time::timeout(LAST_WORDS, finish).await {
        Ok(Ok(out)) => match out.check(what) {
            Err(own) => own.context(format!("{e:#}")),
            Ok(_) => e,
        },
        _ => e,
    }
}

/// Why a host's copy failed when it stopped taking anything (`alone`: no
/// other host was copied with it).
fn stalled(name: &str, stall: Duration, when: &str, alone: bool) -> anyhow::Error {
    let others = if alone {
        ""
    } else {
        "; the hosts copied with it went on"
    };
    anyhow::anyhow!(
        "{name} took no bytes and added no path for {} s {when} (copy_stall_timeout): \
         {STUCK_IMPORT}{others}",
        stall.as_secs()
    )
}

/// How long the builder may send nothing, or take to end once it sent
/// everything: the longest of its hosts' `copy_stall_timeout` (it has none
/// of its own).
fn builder_stall(sinks: &[Sink<'_>]) -> Duration {
    sinks.iter().map(|s| s.stall).max().unwrap_or(LAST_WORDS)
}

/// The part of a host's copy that other hosts of its batch received from
/// the same builder read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
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

/// The builder's requests: greeting, then per path a `QueryPathInfos` of
/// it alone (its signatures) and its `DumpStorePath`. Each answer comes
/// just before its NAR, so nothing is held for later paths.
fn requests(paths: &[(&PathInfo, Vec<usize>)]) -> Vec<u8> {
    let mut out = serve::greeting();
    out.reserve(paths.len() * 208);
    for (p, _) in paths {
        serve::query_path_info(&mut out, p);
        serve::dump_store_path(&mut out, p);
    }
    out
}

/// One host's stream and what it was sent.
struct Sink<'a> {
    name: String,
    stdin: Option<RemoteStdin>,
    finish: Option<RemoteFinish>,
    /// Reads the host's greeting and one acknowledgement per added path.
    acks: Option<JoinHandle<anyhow::Result<u64>>>,
    acked: Arc<AtomicU64>,
    /// Set by the acknowledgement reader as it ends, before its last wake-up.
    acks_ended: Arc<AtomicBool>,
    /// Woken on every acknowledgement, and when the reader ends.
    ack_signal: Arc<Notify>,
    /// Stream offsets where the sent, not yet acknowledged paths end.
    path_ends: VecDeque<u64>,
    /// Where the last acknowledged path ended.
    acked_bytes: u64,
    queued: Vec<u8>,
    got: Received,
    total_paths: u64,
    error: Option<anyhow::Error>,
    progress: &'a (dyn Fn(CopyProgress) + Send + Sync),
    /// The host's `copy_stall_timeout`.
    stall: Duration,
    /// Where its result goes; taken as its copy ends.
    reply: Option<Reply>,
}

impl Sink<'_> {
    fn live(&self) -> bool {
        self.error.is_none()
    }

    /// Nobody waits for its result any more (its run stopped).
    fn abandoned(&self) -> bool {
        self.reply.as_ref().is_some_and(|r| r.is_closed())
    }

    /// Drop the host from the copy if nobody waits for it any more: it
    /// stops at the EOF, keeping the whole paths it added.
    fn drop_if_abandoned(&mut self) -> bool {
        let dropped = self.live() && self.abandoned();
        if dropped {
            let e = anyhow::anyhow!("nobody waits for {}'s copy any more", self.name);
            self.fail(e);
        }
        dropped
    }

    fn fail(&mut self, e: anyhow::Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
        // Dropped mid-path: the host stops at EOF, keeping only whole paths.
        self.stdin = None;
        self.queued = Vec::new();
    }

    /// Whether the host may be sent more now: its unacknowledged whole
    /// paths are under [`IN_FLIGHT`], or its acknowledgement reader has
    /// ended (the write that follows then finds out why).
    fn window_open(&mut self) -> bool {
        // Paths sent, less those still waiting: the ones already popped.
        let acked = self.acked.load(Ordering::Acquire);
        while self.got.paths - (self.path_ends.len() as u64) < acked {
            let Some(end) = self.path_ends.pop_front() else {
                break;
            };
            self.acked_bytes = end;
        }
        // Only a path written whole can be acknowledged; the oldest
        // unacknowledged one may still end in the queue.
        let waitable = self.path_ends.front().is_some_and(|&e| e <= self.got.bytes);
        !waitable || self.got.bytes - self.acked_bytes < IN_FLIGHT || self.acks_gone()
    }

    /// The host's acknowledgement reader has ended (or never started).
    fn acks_gone(&self) -> bool {
        // Not `JoinHandle::is_finished`: the reader wakes us before its
        // task counts as finished, and no wake-up follows, so a host
        // that dies while we wait for its acknowledgements hung the
        // relay. Nix 2.8 fails an AddToStoreNar it cannot lock before
        // reading the NAR (the host dies before it is owed an
        // acknowledgement); Nix 2.26 reads the whole NAR first, so a
        // failing 2.26 host dies while we wait (relay_e2e hung in 3 of
        // 35 runs with 2.26 hosts, 0 of 20 on 2.8).
        self.acks.is_none() || self.acks_ended.load(Ordering::Acquire)
    }

    /// Wait until `ready` (checked again at every acknowledgement) as long
    /// as the host keeps acknowledging paths: each one restarts its stall
    /// clock. Says the host idle every [`IDLE_REPORT`] meanwhile.
    async fn while_acking(&mut self, mut ready: impl FnMut(&mut Self) -> bool) -> Pace {
        let mut since = tokio::time::Instant::now();
        loop {
            // Registered before checking, so an ack in between is not lost.
            let signal = self.ack_signal.clone();
            let woken = signal.notified();
            if ready(self) {
                return Pace::Moving;
            }
            let left = self.stall.saturating_sub(since.elapsed());
            if left.is_zero() {
                return Pace::Stalled;
            }
            match tokio::time::timeout(left.min(IDLE_REPORT), woken).await {
                Ok(()) => since = tokio::time::Instant::now(),
                Err(_) if since.elapsed() >= self.stall => return Pace::Stalled,
                Err(_) => (self.progress)(self.progress_now(since.elapsed().as_secs())),
            }
        }
    }

    /// A path's last byte was queued or sent: where it ends in the stream.
    fn path_sent(&mut self) {
        self.got.paths += 1;
        self.path_ends
            .push_back(self.got.bytes + self.queued.len() as u64);
    }

    /// Progress: bytes sent, paths the host acknowledged.
    fn report(&self) {
        (self.progress)(self.progress_now(0));
    }

    fn progress_now(&self, idle_secs: u64) -> CopyProgress {
        CopyProgress {
            bytes: self.got.bytes,
            paths: self.acked.load(Ordering::Relaxed),
            total_paths: self.total_paths,
            idle_secs,
        }
    }
}

/// Read a host's serve greeting (unless it was read when the session
/// answered what the host lacks), then count its acknowledgements (one
/// `1` per path added) until it closes its output.
async fn count_acks(
    out: RemoteStdout,
    greeted: bool,
    name: String,
    acked: Arc<AtomicU64>,
    ended: Arc<AtomicBool>,
    signal: Arc<Notify>,
) -> anyhow::Result<u64> {
    let result = read_acks(out, greeted, name, acked, &signal).await;
    ended.store(true, Ordering::Release);
    signal.notify_one();
    result
}

async fn read_acks(
    mut out: RemoteStdout,
    greeted: bool,
    name: String,
    acked: Arc<AtomicU64>,
    signal: &Notify,
) -> anyhow::Result<u64> {
    let mut word = [0u8; 8];
    let mut read_word = async |out: &mut RemoteStdout| -> std::io::Result<Option<u64>> {
        match out.read_exact(&mut word).await {
            Ok(_) => Ok(Some(u64::from_le_bytes(word))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    };
    if !greeted {
        let magic = read_word(&mut out).await?.unwrap_or(0);
        let version = read_word(&mut out).await?.unwrap_or(0);
        serve::check_greeting(magic, version, &name)?;
    }
    while let Some(w) = read_word(&mut out).await? {
        anyhow::ensure!(w == 1, "{name} answered {w} to a path it was sent, not 1");
        acked.fetch_add(1, Ordering::Release);
        signal.notify_one();
    }
    Ok(acked.load(Ordering::Relaxed))
}

/// Write every host's queue and, to the hosts in `dests` (sorted), `piece`
/// after it, concurrently; a failed write drops the host, and so does one
/// that takes nothing for its `stall` (a piece and a queue are a read each,
/// 256 KiB, so a host that moves anything at all makes it in time), or
/// acknowledges no path for it while its window is full; one nobody waits
/// for any more is dropped.
async fn deliver(sinks: &mut [Sink<'_>], dests: &[usize], piece: &[u8]) {
    for s in sinks.iter_mut() {
        s.drop_if_abandoned();
    }
    let alone = sinks.len() == 1;
    let writes = sinks
        .iter_mut()
        .enumerate()
        .filter(|(i, s)| {
            s.live()
                && (!s.queued.is_empty() || (!piece.is_empty() && dests.binary_search(i).is_ok()))
        })
        .map(|(i, s)| async move {
            let piece = if dests.binary_search(&i).is_ok() {
                piece
            } else {
                &[]
            };
            if s.send(piece).await == Pace::Stalled {
                let e = stalled(&s.name, s.stall, "while paths were sent", alone);
                s.fail(e);
            }
        });
    join_all(writes).await;
}

/// Whether a host kept moving while it was waited on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    Moving,
    /// It took no bytes, or acknowledged no path, for its `stall`.
    Stalled,
}

impl Sink<'_> {
    /// Write the queue and `piece` once the host's window allows. The wait
    /// for the window lasts as long as paths keep being acknowledged (the
    /// host adding small paths slowly, one a second on an SD card, needed
    /// hundreds before a write, and its stall clock ran over all of them:
    /// it failed while adding); the write itself is bounded by the stall.
    async fn send(&mut self, piece: &[u8]) -> Pace {
        // Abandoned, it is dropped at the next acknowledgement, or idle
        // report, not after a window's worth of them.
        let ready = |s: &mut Self| s.window_open() || s.abandoned();
        if self.while_acking(ready).await == Pace::Stalled {
            return Pace::Stalled;
        }
        if self.drop_if_abandoned() {
            return Pace::Moving;
        }
        let (progress, before) = (self.progress, self.progress_now(0));
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval_at(started + IDLE_REPORT, IDLE_REPORT);
        let written = tokio::time::timeout(self.stall, self.write(piece));
        tokio::pin!(written);
        loop {
            tokio::select! {
                // The end first: at the stall limit, fail, not idle.
                biased;
                r = &mut written => {
                    return if r.is_err() { Pace::Stalled } else { Pace::Moving };
                }
                _ = tick.tick() => progress(CopyProgress {
                    idle_secs: started.elapsed().as_secs(),
                    ..before
                }),
            }
        }
    }

    /// Write the queue and `piece`; a failed write fails the host.
    async fn write(&mut self, piece: &[u8]) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        let queued = &self.queued;
        let written = async {
            stdin.write_all(queued).await?;
            stdin.write_all(piece).await
        };
        // A host whose nix-store exited (its output closed) reads no
        // more: a write waiting for SSH window space would wait forever
        // (the fault matrix's disk-full host: nix-store died of ENOSPC
        // and the push hung until killed at 300 s).
        let gone = host_gone(self.acks_ended.clone(), self.ack_signal.clone());
        let written = tokio::select! {
            r = written => r,
            () = gone => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the host's nix-store --serve --write stopped reading",
            )),
        };
        match written {
            Ok(()) => {
                self.got.bytes += (self.queued.len() + piece.len()) as u64;
                self.queued.clear();
            }
            Err(e) => {
                let e = anyhow::Error::new(e).context(format!("sending to {}", self.name));
                self.fail(e);
            }
        }
    }

    /// Wait for the host's acknowledgement reader to end (its nix-store
    /// exited after the EOF), as long as paths keep being acknowledged.
    async fn acks_done(&mut self) -> Pace {
        self.while_acking(|s| s.acks_gone()).await
    }
}

/// Resolves once the host's acknowledgement reader has ended (its
/// nix-store closed its output: it exited).
async fn host_gone(ended: Arc<AtomicBool>, signal: Arc<Notify>) {
    loop {
        let woken = signal.notified();
        if ended.load(Ordering::Acquire) {
            // Pass the wake-up on: `window` may wait on it next.
            signal.notify_one();
            return;
        }
        woken.await;
    }
}

/// Write every host's queue.
async fn flush(sinks: &mut [Sink<'_>]) {
    deliver(sinks, &[], &[]).await
}

/// Pieces at least this big go straight to the hosts; smaller ones are
/// queued and coalesced (many small paths, registrations).
const DIRECT: usize = 32 * 1024;

/// Copy, from `builder`, every path of `order` (dependencies first) that a
/// target lacks to that target. Returns, per target in order, what it
/// received (every path of it checked and acknowledged by the host) or why
/// it failed.
pub async fn relay<B: Remote, T: Remote>(
    builder: &B,
    targets: Vec<Target<'_, T>>,
    order: &[PathInfo],
) -> Vec<anyhow::Result<Received>> {
    relay_collected(builder, None, targets, order).await
}

/// Where a target's result goes, as soon as its own copy ended.
pub type Reply = oneshot::Sender<anyhow::Result<Received>>;

/// [`relay`], each target's result sent on its reply (in the same order)
/// as soon as its host's copy ended, not once the slowest host's did: one
/// host whose import hangs held every result of its batch for its whole
/// stall (5 min) and 5 s. A target whose reply is closed (nobody waits for
/// it: its run stopped) is dropped from the copy, its host keeping the
/// whole paths it added.
pub async fn relay_replying<B: Remote, T: Remote>(
    builder: &B,
    targets: Vec<Target<'_, T>>,
    replies: Vec<Reply>,
    order: &[PathInfo],
) {
    relay_from(builder, None, targets, replies, order).await
}

/// [`relay_from`], its results collected in order.
async fn relay_collected<B: Remote, T: Remote>(
    builder: &B,
    started: Option<anyhow::Result<Streaming>>,
    targets: Vec<Target<'_, T>>,
    order: &[PathInfo],
) -> Vec<anyhow::Result<Received>> {
    let (replies, results): (Vec<Reply>, Vec<_>) =
        targets.iter().map(|_| oneshot::channel()).unzip();
    relay_from(builder, started, targets, replies, order).await;
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        out.push(r.await.unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the relay ended without this host's result (a bug: report it)"
            ))
        }));
    }
    out
}

/// The builder's `nix-store --serve`, which a relay reads every path from.
pub async fn serve_builder<B: Remote>(builder: &B) -> anyhow::Result<Streaming> {
    builder
        .exec_stream(&Command::new("nix-store").arg("--serve"))
        .await
        .context("starting nix-store --serve on the builder")
}

/// [`relay_replying`], reading from `started` (the builder's
/// [`serve_builder`], started ahead) when given.
async fn relay_from<B: Remote, T: Remote>(
    builder: &B,
    started: Option<anyhow::Result<Streaming>>,
    mut targets: Vec<Target<'_, T>>,
    replies: Vec<Reply>,
    order: &[PathInfo],
) {
    let sessions: Vec<Option<HostServe>> = targets.iter_mut().map(|t| t.session.take()).collect();
    let paths = plan(order, &targets);
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
    let add = add_command();
    // The builder's stream (a connection of its own: a handshake, 3 round
    // trips and more) is opened while the hosts open theirs, not after.
    let serving = async {
        if paths.is_empty() {
            return None;
        }
        Some(match started {
            Some(s) => s,
            None => serve_builder(builder).await,
        })
    };
    // A host that answered what it lacks is greeted already, in the
    // session it answered in.
    let add = &add;
    let opening = targets.iter().zip(sessions).map(|(t, session)| {
        let remote = t.remote;
        async move {
            match session {
                Some(s) => Ok((s.stream, true)),
                None => remote.exec_piped(add).await.map(|s| (s, false)),
            }
        }
    });
    let (opened, src) = tokio::join!(join_all(opening), serving);
    let mut sinks: Vec<Sink> = targets
        .iter()
        .zip(opened)
        .zip(totals.iter().zip(replies))
        .map(|((t, s), (&total_paths, reply))| sink(t, s, total_paths, reply))
        .collect();
    let served = match src {
        Some(src) if sinks.iter().any(|s| s.live()) => serve(src, &paths, &mut sinks).await,
        _ => Ok(()),
    };
    if let Err(e) = &served {
        let msg = format!("{e:#}");
        for s in sinks.iter_mut().filter(|s| s.live()) {
            s.fail(FromBuilder(msg.clone()).into());
        }
    }
    flush(&mut sinks).await;
    end_all(sinks, shared).await;
}

/// A host's sink over its opened stream (`greeted`: in the session that
/// answered what it lacks), or failed with why it did not open.
fn sink<'a, T: Remote>(
    t: &Target<'a, T>,
    opened: anyhow::Result<(Streaming, bool)>,
    total_paths: u64,
    reply: Reply,
) -> Sink<'a> {
    let mut sink = Sink {
        name: t.remote.name().to_owned(),
        stdin: None,
        finish: None,
        acks: None,
        acked: Arc::default(),
        acks_ended: Arc::default(),
        ack_signal: Arc::default(),
        path_ends: VecDeque::new(),
        acked_bytes: 0,
        queued: Vec::new(),
        got: Received::default(),
        total_paths,
        error: None,
        progress: t.progress,
        stall: t.stall,
        reply: Some(reply),
    };
    match opened {
        Ok((s, greeted)) => {
            if !greeted {
                sink.queued = serve::greeting();
            }
            sink.stdin = Some(s.stdin);
            sink.finish = Some(s.finish);
            sink.acks = Some(tokio::spawn(count_acks(
                s.stdout,
                greeted,
                sink.name.clone(),
                sink.acked.clone(),
                sink.acks_ended.clone(),
                sink.ack_signal.clone(),
            )));
        }
        Err(e) => sink.fail(e.context(format!(
            "starting nix-store --serve --write on {}",
            t.remote.name()
        ))),
    }
    sink
}

/// End every host's copy, each result sent as soon as its own is known.
async fn end_all(sinks: Vec<Sink<'_>>, shared: Vec<(u64, u64)>) {
    let hosts = sinks.len();
    let ends = sinks
        .into_iter()
        .zip(shared)
        .map(|(mut s, (paths, bytes))| {
            let reply = s.reply.take();
            async move {
                let shared = Shared {
                    hosts,
                    paths,
                    bytes,
                };
                let received = s.end(shared).await;
                if let Some(reply) = reply {
                    let _ = reply.send(received);
                }
            }
        });
    join_all(ends).await;
}

impl Sink<'_> {
    /// End the host's stream (EOF ends its serve loop), wait for it to add
    /// what it was sent, and say what it received, or why it failed (the
    /// host's own word first: No space left on device, and then what to do
    /// about it, whenever the host says so: also after it was sent every
    /// byte, failing only as it added the last path).
    async fn end(self, shared: Shared) -> anyhow::Result<Received> {
        let name = self.name.clone();
        // Known before its last words replace the error (they keep the
        // builder's as text only).
        let builders = self.error.as_ref().is_some_and(from_builder);
        self.ended(shared)
            .await
            .map_err(|e| if builders { e } else { if_full(e, &name) })
    }

    async fn ended(mut self, shared: Shared) -> anyhow::Result<Received> {
        if let Some(mut stdin) = self.stdin.take() {
            match tokio::time::timeout(self.stall, stdin.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("{}: closing the stream: {e}", self.name),
                Err(_) => {
                    let when = "when its stream was to end";
                    let e = stalled(&self.name, self.stall, when, shared.hosts == 1);
                    self.fail(e);
                }
            }
        }
        if self.error.is_none() && self.acks_done().await == Pace::Stalled {
            let alone = shared.hosts == 1;
            let e = stalled(
                &self.name,
                self.stall,
                "after its last paths were sent",
                alone,
            );
            self.fail(e);
        }
        let what = format!("adding paths on {} (nix-store --serve --write)", self.name);
        if let Some(e) = self.error.take() {
            if let Some(acks) = self.acks.take() {
                acks.abort();
            }
            return Err(match self.finish.take() {
                Some(f) => with_last_words(e, f, &what).await,
                None => e,
            });
        }
        // Its output closed: the host's nix-store has ended or is ending.
        let finish = self.finish.take().context("no stream")?;
        let added = tokio::time::timeout(self.stall, finish)
            .await
            .map_err(|_| {
                let when = "after it closed its output";
                stalled(&self.name, self.stall, when, shared.hosts == 1)
            })?;
        added?.check(&what)?;
        let acked = self
            .acks
            .take()
            .context("no acknowledgements")?
            .await
            .context("the acknowledgement reader failed")??;
        anyhow::ensure!(
            acked == self.got.paths,
            "{} acknowledged {acked} of the {} paths it was sent",
            self.name,
            self.got.paths
        );
        self.report();
        Ok(Received { shared, ..self.got })
    }
}

/// `e`, and what to do when it says the host's store is full.
fn if_full(e: anyhow::Error, name: &str) -> anyhow::Error {
    if !format!("{e:#}").contains("No space left on device") {
        return e;
    }
    e.context(format!(
        "the Nix store (/nix) on {name} is full: free space there \
         (nix-collect-garbage) and push again; the paths it took are whole"
    ))
}

/// Is `e` the builder's failure ([`FromBuilder`])?
fn from_builder(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<FromBuilder>())
}

/// The builder's side of the copy failed (every host still copying is
/// failed with it): its words, which say nothing of a host's store (a
/// builder out of space was told to every host as its own full store).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FromBuilder(String);

/// [`relay`] to one host, reading from `started` (the builder's
/// [`serve_builder`], started while the host was asked what it lacks:
/// a round trip off the copy's path) when given.
pub async fn relay_one<B: Remote, T: Remote>(
    builder: &B,
    started: Option<anyhow::Result<Streaming>>,
    target: Target<'_, T>,
    order: &[PathInfo],
) -> anyhow::Result<Received> {
    relay_collected(builder, started, vec![target], order)
        .await
        .pop()
        .context("the relay returned no result")?
}

/// Read every planned path from the builder once and route it.
///
/// The builder has every request early (a few hundred bytes a path), so
/// its stream is ended ([`EndsOnDrop`]) when the relay lets go of it, or
/// its `nix-store --serve` sends the rest of the closure, over its own
/// connection, to nobody: after one host of one failed at path 10 of 2000
/// (its disk full), gigabytes on a first install.
async fn serve(
    src: anyhow::Result<Streaming>,
    paths: &[(&PathInfo, Vec<usize>)],
    sinks: &mut [Sink<'_>],
) -> anyhow::Result<()> {
    let Streaming {
        mut stdin,
        mut stdout,
        finish,
        stop,
    } = src?;
    let _ends = EndsOnDrop(Some(stop));
    let reqs = requests(paths);
    // Its own task: a builder that stops reading must not hold the reader's
    // error (or the relay) behind a write waiting for window space.
    let writer = tokio::spawn(async move {
        stdin.write_all(&reqs).await?;
        stdin.shutdown().await
    });
    let routed = route(&mut stdout, paths, sinks).await;
    drop(stdout);
    let what = "nix-store --serve on the builder";
    if let Err(e) = routed {
        writer.abort();
        if !sinks.iter().any(Sink::live) {
            // No host is left to tell why: nothing to wait for.
            return Err(e);
        }
        // The builder's own words say more than a broken stream.
        return Err(with_last_words(e, finish, what).await);
    }
    let written = writer.await.context("the request writer failed")?;
    written.context("sending requests to nix-store --serve on the builder")?;
    // It sent all it was asked: it ends at the EOF it was sent.
    let exit = tokio::time::timeout(builder_stall(sinks), finish)
        .await
        .map_err(|_| anyhow::anyhow!("{what} sent everything but did not end"))?;
    exit?.check(what)?;
    Ok(())
}

/// Ends the builder's stream when dropped: the relay done, failed, or
/// itself dropped (the run stopped).
struct EndsOnDrop(Option<Stop>);

impl Drop for EndsOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            stop.now();
        }
    }
}

/// The buffered builder stream.
struct Input<'r, R> {
    src: &'r mut R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// How long the builder may send nothing: the longest of the hosts'
    /// `copy_stall_timeout` (the builder has none of its own).
    stall: Duration,
}

impl<R: tokio::io::AsyncRead + Unpin> Input<'_, R> {
    /// Make sure unread bytes are buffered; false at the end of the stream.
    async fn fill(&mut self) -> anyhow::Result<bool> {
        if self.pos < self.end {
            return Ok(true);
        }
        let n = tokio::time::timeout(self.stall, self.src.read(&mut self.buf))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the builder's nix-store --serve sent nothing for {} s (the hosts' \
                     copy_stall_timeout): is its store busy (a garbage collection, a lock \
                     another Nix process holds)?",
                    self.stall.as_secs()
                )
            })?
            .context("reading from the builder")?;
        (self.pos, self.end) = (0, n);
        Ok(n > 0)
    }

    /// Exactly `out.len()` bytes. Before waiting for the builder, the
    /// hosts' queues are written (as inside a NAR): what was read is never
    /// held back while nixgate waits, and no queue outgrows a read.
    async fn read_exact(&mut self, out: &mut [u8], sinks: &mut [Sink<'_>]) -> anyhow::Result<()> {
        let mut got = 0;
        while got < out.len() {
            if self.pos == self.end {
                flush(sinks).await;
            }
            anyhow::ensure!(self.fill().await?, "the builder's stream ended early");
            let take = (out.len() - got).min(self.end - self.pos);
            out[got..got + take].copy_from_slice(&self.buf[self.pos..self.pos + take]);
            (got, self.pos) = (got + take, self.pos + take);
        }
        Ok(())
    }

    async fn read_u64(&mut self, sinks: &mut [Sink<'_>]) -> anyhow::Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b, sinks).await?;
        Ok(u64::from_le_bytes(b))
    }
}

/// The builder's stream between NARs (greeting, path-info answers), read
/// as [`Input`] does, the hosts' queues written before any wait.
struct Between<'a, 'r, 's, R> {
    input: &'a mut Input<'r, R>,
    sinks: &'a mut [Sink<'s>],
}

impl<R: tokio::io::AsyncRead + Unpin> serve::WireRead for Between<'_, '_, '_, R> {
    async fn word(&mut self) -> anyhow::Result<u64> {
        self.input.read_u64(self.sinks).await
    }

    async fn bytes(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        let mut out = vec![0u8; n.div_ceil(8) * 8];
        self.input.read_exact(&mut out, self.sinks).await?;
        out.truncate(n);
        Ok(out)
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
        stall: builder_stall(sinks),
    };
    let magic = input.read_u64(sinks).await?;
    let version = input.read_u64(sinks).await?;
    serve::check_greeting(magic, version, "the builder")?;
    let mut last = std::time::Instant::now();
    for (p, dests) in paths {
        let mut between = Between {
            input: &mut input,
            sinks,
        };
        let trust = serve::read_path_info(&mut between, p, version).await?;
        let header = serve::add_to_store_nar(p, &trust)?;
        for &d in dests {
            if sinks[d].live() {
                sinks[d].queued.extend_from_slice(&header);
            }
        }
        let mut scanner = NarScanner::new();
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
            if piece.len() >= DIRECT {
                deliver(sinks, dests, piece).await;
            } else {
                for &d in dests {
                    if sinks[d].live() {
                        sinks[d].queued.extend_from_slice(piece);
                    }
                }
            }
            input.pos += piece.len();
            if ended {
                break;
            }
        }
        // The host checks size and hash too; this names the builder as the culprit.
        let size = scanner.consumed();
        anyhow::ensure!(
            size == p.nar_size,
            "the builder sent {size} bytes for {}, its database says {}: \
             the builder's store may be corrupt (nix-store --verify --check-contents)",
            p.path,
            p.nar_size
        );
        for &d in dests {
            if sinks[d].live() {
                sinks[d].path_sent();
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
pub(super) mod tests {
    use super::*;
    use crate::nix::closure::PathRecord;
    use crate::remote::scripted::{ScriptedRemote, ok};

    /// The host answers the question in the session: what it lacks is the
    /// closure less what it named, and the session is kept for the copy.
    #[tokio::test]
    async fn the_question_is_asked_in_the_session_and_its_answer_read() {
        let closure = [info("glibc", &[]), info("top", &["glibc"])];
        let mut answer = Vec::new();
        answer.extend_from_slice(&serve::MAGIC_SERVER.to_le_bytes());
        answer.extend_from_slice(&0x207u64.to_le_bytes());
        answer.extend_from_slice(&1u64.to_le_bytes());
        answer.extend_from_slice(&crate::nix::nar::wire_string(
            sp("glibc").as_str().as_bytes(),
        ));
        let host = ScriptedRemote::new("h", move |c| {
            assert_eq!(c.argv(), ["nix-store", "--serve", "--write"]);
            let exit = crate::remote::Exit::Code { code: 0 };
            crate::remote::Output::new(exit, answer.clone(), "")
        });
        let (lacking, _session) = ask_lacking(&host, &closure, STALL).await.unwrap();
        assert_eq!(lacking, HashSet::from([sp("top")]));
    }

    const STALL: Duration = Duration::from_secs(120);

    /// A host that never answers fails its copy after its stall limit, with
    /// what to look at, instead of holding the run.
    #[tokio::test(start_paused = true)]
    async fn a_host_that_never_answers_the_question_fails_in_time() {
        let closure = [info("top", &[])];
        // Answers only once its stdin is closed, which the question never does.
        let host = ScriptedRemote::with_stdin("h", |_, _| ok(""));
        let started = tokio::time::Instant::now();
        let err = format!(
            "{:#}",
            ask_lacking(&host, &closure, STALL).await.err().unwrap()
        );
        assert_eq!(started.elapsed(), STALL);
        assert!(err.contains("asking h which paths it lacks"), "{err}");
        assert!(err.contains("no answer in 120 s"), "{err}");
    }

    /// A store path named `name`, its hash made of the name's letters.
    pub(in crate::nix) fn sp(name: &str) -> StorePath {
        let hash: String = name
            .bytes()
            .cycle()
            .take(32)
            .map(|b| b"0123456789abcdfghijklmnpqrsvwxyz"[(b % 32) as usize] as char)
            .collect();
        StorePath::parse(&format!("/nix/store/{hash}-{name}")).unwrap()
    }

    fn info(name: &str, refs: &[&str]) -> PathInfo {
        PathInfo::from(PathRecord {
            path: sp(name),
            nar_size: 100,
            nar_hash: None,
            references: refs.iter().map(|r| sp(r)).collect(),
            deriver: None,
        })
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
                session: None,
                stall: STALL,
            },
            Target {
                remote: &remote,
                lacking: &b,
                progress: &noop,
                session: None,
                stall: STALL,
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
        // The requests: greeting, then per planned path QueryPathInfos of
        // it alone and DumpStorePath.
        let plan = plan(&order, &targets);
        let r = requests(&plan);
        assert_eq!(&r[..8], &serve::MAGIC_CLIENT.to_le_bytes());
        let mut expected = serve::greeting();
        for (p, _) in &plan {
            serve::query_path_info(&mut expected, p);
            serve::dump_store_path(&mut expected, p);
        }
        assert_eq!(r, expected);
        assert_eq!(&r[16..24], &2u64.to_le_bytes());
        assert_eq!(&r[24..32], &1u64.to_le_bytes(), "a set of one path");
        let first = plan[0].0.path.as_str().as_bytes();
        assert_eq!(&r[40..40 + first.len()], first);
    }

    /// A host's own "No space left" says its store is full; the builder's,
    /// passed to every host still copying, does not.
    #[test]
    fn only_a_hosts_own_full_disk_is_its_full_store() {
        let own = if_full(
            anyhow::anyhow!("error: writing to file: No space left on device"),
            "h1",
        );
        assert!(format!("{own:#}").contains("on h1 is full"), "{own:#}");
        // The builder's failure, as every host still copying is failed
        // with it, is told apart; its text kept.
        let builders: anyhow::Error =
            FromBuilder("the builder: error: writing to file: No space left on device".into())
                .into();
        assert!(from_builder(&builders.context("copying to h1")));
        let own = anyhow::anyhow!("No space left on device");
        assert!(!from_builder(&own));
    }
}
