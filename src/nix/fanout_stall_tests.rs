//! A relay whose host or builder stops moving: bounded by the host's
//! `copy_stall_timeout`, the others going on. Each far side (a host's
//! `nix-store --serve --write`, the builder's `nix-store --serve`) is played
//! by the test over in-memory pipes, in paused time.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::StorePath;
use super::closure::{PathInfo, PathRecord};
use super::fanout::tests::sp;
use super::fanout::{Received, Target, relay, relay_replying};
use super::nar::wire_string;
use super::serve::{self, Trust};
use crate::nix::copy::CopyProgress;
use crate::remote::{Command, Exit, Output, Remote, Stop, Stopping, Streaming};

const STALL: Duration = Duration::from_secs(120);

/// The far side of one stream: what nixgate writes, where it reads, how
/// the command ends.
pub(in crate::nix) struct Far {
    pub(in crate::nix) input: DuplexStream,
    pub(in crate::nix) output: DuplexStream,
    pub(in crate::nix) exit: oneshot::Sender<Output>,
    /// Resolves once nixgate asked to end the stream ([`crate::remote::Stop`]).
    pub(in crate::nix) stopping: Stopping,
}

/// A stream over small in-memory pipes (a far side that stops reading
/// stops the writer soon), and its far side for the test to play.
pub(in crate::nix) fn far_stream() -> (Streaming, Far) {
    far_stream_of(4096)
}

/// [`far_stream`] over pipes of `size` bytes.
fn far_stream_of(size: usize) -> (Streaming, Far) {
    let (stdin, input) = tokio::io::duplex(size);
    let (output, stdout) = tokio::io::duplex(size);
    let (exit, finish) = oneshot::channel();
    let (stop, stopping) = Stop::new();
    let s = Streaming {
        stdin: Box::pin(stdin),
        stdout: Box::pin(stdout),
        finish: Box::pin(async move {
            finish
                .await
                .map_err(|_| anyhow::anyhow!("the far side went away"))
        }),
        stop,
    };
    let far = Far {
        input,
        output,
        exit,
        stopping,
    };
    (s, far)
}

/// A remote whose every stream is handed to the test to play.
struct Pipes {
    name: String,
    ends: Mutex<mpsc::UnboundedSender<Far>>,
    size: usize,
}

impl Pipes {
    fn new(name: &str) -> (Pipes, mpsc::UnboundedReceiver<Far>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let p = Pipes {
            name: name.to_owned(),
            ends: Mutex::new(tx),
            size: 4096,
        };
        (p, rx)
    }

    /// The builder's: a read takes what a fast builder's SSH stream holds,
    /// up to the relay's buffer (small pieces are then queued for a host
    /// and written together).
    fn builder() -> (Pipes, mpsc::UnboundedReceiver<Far>) {
        let (mut p, rx) = Pipes::new("builder");
        p.size = 256 * 1024;
        (p, rx)
    }
}

impl Remote for Pipes {
    fn name(&self) -> &str {
        &self.name
    }

    async fn exec(&self, cmd: &Command) -> anyhow::Result<Output> {
        panic!("{}: unexpected command {:?}", self.name, cmd.argv())
    }

    async fn exec_stream(&self, _: &Command) -> anyhow::Result<Streaming> {
        let (s, far) = far_stream_of(self.size);
        self.ends.lock().unwrap().send(far).unwrap();
        Ok(s)
    }
}

/// A one-file NAR holding `contents`.
fn nar(contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
    ] {
        out.extend(wire_string(s));
    }
    out.extend(wire_string(contents));
    out.extend(wire_string(b")"));
    out
}

fn info(name: &str, nar: &[u8]) -> PathInfo {
    PathInfo::from(PathRecord {
        path: sp(name),
        nar_size: nar.len() as u64,
        nar_hash: Some([7; 32]),
        references: vec![],
        deriver: None,
    })
}

fn word(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

/// The builder: answers the greeting and, per path, its registration and
/// its NAR; then ends at EOF. `stop_after` paths, it falls silent for good.
async fn builder(mut far: Far, paths: Vec<(PathInfo, Vec<u8>)>, stop_after: usize) {
    let mut out = Vec::new();
    out.extend(word(serve::MAGIC_SERVER));
    out.extend(word(serve::VERSION));
    far.output.write_all(&out).await.unwrap();
    for (i, (p, nar)) in paths.iter().enumerate() {
        if i == stop_after {
            std::future::pending::<()>().await;
        }
        let mut a = path_info_answer(p);
        a.extend(nar);
        if far.output.write_all(&a).await.is_err() {
            return; // Nobody reads any more: the copy failed.
        }
    }
    let mut rest = Vec::new();
    far.input.read_to_end(&mut rest).await.unwrap();
    drop(far.output);
    let _ = far.exit.send(ok());
}

/// The builder's answer to a `QueryPathInfos` of `p` alone.
fn path_info_answer(p: &PathInfo) -> Vec<u8> {
    let mut a = wire_string(p.path.as_str().as_bytes());
    a.extend(wire_string(b"")); // deriver
    a.extend(word(0)); // references
    a.extend(word(0)); // download size
    a.extend(word(p.nar_size));
    a.extend(wire_string(b"sha256:x")); // NAR hash
    a.extend(wire_string(b"")); // content address
    a.extend(word(0)); // signatures
    a.extend(wire_string(b"")); // end of the answer
    a
}

fn ok() -> Output {
    Output::new(Exit::Code { code: 0 }, "", "")
}

/// How a played host behaves.
#[derive(Clone, Copy)]
enum Host {
    /// Reads each path and acknowledges it; ends at EOF.
    Imports,
    /// Reads nothing, ever.
    Stuck,
    /// Reads everything, acknowledges nothing, never ends.
    SilentAfterReading,
    /// Adds this many paths, then dies of a full disk.
    DiesAfter(usize),
    /// Reads every path and the EOF, adds all but the last, then dies of
    /// a full disk.
    FullAtTheEnd,
    /// Takes every byte at once, adds one path every `each` (a slow SD
    /// card); acknowledges none after the first `stops_after`, if given.
    SlowAdding {
        each: Duration,
        stops_after: Option<usize>,
    },
}

/// A host adding `paths` (each its header, then its NAR) sent after the
/// client's greeting, as `how` says.
async fn host(mut far: Far, paths: Vec<(PathInfo, Vec<u8>)>, how: Host) {
    match how {
        Host::Stuck => std::future::pending::<()>().await,
        Host::SilentAfterReading => {
            let mut all = Vec::new();
            let _ = far.input.read_to_end(&mut all).await;
            std::future::pending::<()>().await
        }
        Host::SlowAdding { each, stops_after } => {
            return slow_host(far, paths, each, stops_after).await;
        }
        Host::Imports | Host::DiesAfter(_) | Host::FullAtTheEnd => {}
    }
    let mut out = Vec::new();
    out.extend(word(serve::MAGIC_SERVER));
    out.extend(word(serve::VERSION));
    far.output.write_all(&out).await.unwrap();
    let mut greeting = [0u8; 16];
    far.input.read_exact(&mut greeting).await.unwrap();
    for (i, (p, nar)) in paths.iter().enumerate() {
        if let Host::DiesAfter(n) = how
            && i == n
        {
            let full = "error: writing to file: No space left on device";
            let _ = far.exit.send(Output::new(Exit::Code { code: 1 }, "", full));
            return;
        }
        let header = serve::add_to_store_nar(p, &Trust::default()).unwrap();
        let mut got = vec![0u8; header.len() + nar.len()];
        if far.input.read_exact(&mut got).await.is_err() {
            // Cut off mid-path (the copy failed): Nix keeps whole paths only.
            let _ = far.exit.send(Output::new(
                Exit::Code { code: 1 },
                "",
                "unexpected end-of-file",
            ));
            return;
        }
        assert_eq!(&got[..header.len()], &header[..]);
        assert_eq!(&got[header.len()..], &nar[..]);
        if matches!(how, Host::FullAtTheEnd) && i + 1 == paths.len() {
            let mut rest = Vec::new();
            far.input.read_to_end(&mut rest).await.unwrap();
            drop(far.output);
            let full = "error: writing to file: No space left on device";
            let _ = far.exit.send(Output::new(Exit::Code { code: 1 }, "", full));
            return;
        }
        far.output.write_all(&word(1)).await.unwrap();
    }
    let mut rest = Vec::new();
    far.input.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "more than the paths: {} bytes", rest.len());
    drop(far.output);
    let _ = far.exit.send(ok());
}

/// [`Host::SlowAdding`]: reading runs ahead, as in sshd's buffers and
/// Nix's, while the paths are added one by one.
async fn slow_host(
    far: Far,
    paths: Vec<(PathInfo, Vec<u8>)>,
    each: Duration,
    stops_after: Option<usize>,
) {
    let Far {
        mut input,
        mut output,
        exit,
        ..
    } = far;
    output.write_all(&word(serve::MAGIC_SERVER)).await.unwrap();
    output.write_all(&word(serve::VERSION)).await.unwrap();
    let (read_tx, mut read_rx) = mpsc::unbounded_channel();
    let reading = async move {
        let mut greeting = [0u8; 16];
        input.read_exact(&mut greeting).await.unwrap();
        for (p, nar) in &paths {
            let header = serve::add_to_store_nar(p, &Trust::default()).unwrap();
            let mut got = vec![0u8; header.len() + nar.len()];
            if input.read_exact(&mut got).await.is_err() {
                // Cut off (the copy failed it): it goes on adding.
                return;
            }
            read_tx.send(()).unwrap();
        }
        drop(read_tx);
        let mut rest = Vec::new();
        input.read_to_end(&mut rest).await.unwrap();
    };
    let adding = async move {
        let mut added = 0;
        while read_rx.recv().await.is_some() {
            if stops_after == Some(added) {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(each).await;
            if output.write_all(&word(1)).await.is_err() {
                return; // The copy failed it.
            }
            added += 1;
        }
    };
    tokio::join!(reading, adding);
    let _ = exit.send(ok());
}

/// What a relay of [`run`] gave: each host's result and every progress it
/// reported, and how long it took.
struct Ran {
    results: Vec<anyhow::Result<Received>>,
    progress: Vec<Vec<CopyProgress>>,
    took: Duration,
}

impl Ran {
    /// The idle seconds host `i` was reported with, in order.
    fn idle(&self, i: usize) -> Vec<u64> {
        self.progress[i]
            .iter()
            .filter(|p| p.idle_secs > 0)
            .map(|p| p.idle_secs)
            .collect()
    }
}

/// A played builder (silent after `builder_stops_after` paths) and hosts
/// played as `hows`, each adding `paths`.
fn played(
    paths: &[(PathInfo, Vec<u8>)],
    hows: &[Host],
    builder_stops_after: usize,
) -> (Pipes, Vec<Pipes>) {
    let (b, mut b_ends) = Pipes::builder();
    let plays = paths.to_vec();
    tokio::spawn(async move {
        let far = b_ends.recv().await.unwrap();
        builder(far, plays, builder_stops_after).await
    });
    let mut remotes = Vec::new();
    for (i, &how) in hows.iter().enumerate() {
        let (h, mut ends) = Pipes::new(&format!("h{}", i + 1));
        let plays = paths.to_vec();
        tokio::spawn(async move {
            let far = ends.recv().await.unwrap();
            host(far, plays, how).await
        });
        remotes.push(h);
    }
    (b, remotes)
}

/// Relay `paths` from a played builder to hosts played as `hows`, each
/// lacking every path; the results and when they came.
async fn run(paths: Vec<(PathInfo, Vec<u8>)>, hows: &[Host], builder_stops_after: usize) -> Ran {
    let (b, remotes) = played(&paths, hows, builder_stops_after);
    let lacking: HashSet<StorePath> = paths.iter().map(|(p, _)| p.path.clone()).collect();
    let order: Vec<PathInfo> = paths.iter().map(|(p, _)| p.clone()).collect();
    let seen: Vec<Mutex<Vec<CopyProgress>>> = hows.iter().map(|_| Mutex::default()).collect();
    let reporters: Vec<_> = seen
        .iter()
        .map(|s| move |p: CopyProgress| s.lock().unwrap().push(p))
        .collect();
    let targets = remotes
        .iter()
        .zip(&reporters)
        .map(|(r, progress)| Target {
            remote: r,
            lacking: &lacking,
            progress,
            session: None,
            stall: STALL,
        })
        .collect();
    let started = Instant::now();
    // Bounded, so a relay that hangs fails the test instead of holding it.
    let results = tokio::time::timeout(Duration::from_secs(3600), relay(&b, targets, &order))
        .await
        .expect("the relay ended");
    let took = started.elapsed();
    let progress = seen.into_iter().map(|s| s.into_inner().unwrap()).collect();
    Ran {
        results,
        progress,
        took,
    }
}

/// Paths big enough to fill the pipes: a stuck host stops the writer.
fn paths(n: usize) -> Vec<(PathInfo, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let nar = nar(&vec![b'a' + i as u8; 40_000]);
            (info(&format!("p{i}"), &nar), nar)
        })
        .collect()
}

fn err(r: &anyhow::Result<Received>) -> String {
    match r {
        Ok(got) => panic!("succeeded: {got:?}"),
        Err(e) => format!("{e:#}"),
    }
}

/// A host whose `nix-store` takes nothing fails after its stall limit
/// (and the 5 s its own words are waited for); the host copied with it
/// gets every path, checked and acknowledged. While the batch waits on
/// it, the stuck host (and it alone) is said to be idle every 10 s.
#[tokio::test(start_paused = true)]
async fn a_stuck_host_fails_after_its_stall_limit_and_the_others_get_their_paths() {
    let ran = run(paths(3), &[Host::Imports, Host::Stuck], 3).await;
    assert_eq!(ran.idle(1), (1..12).map(|k| k * 10).collect::<Vec<_>>());
    assert_eq!(ran.idle(0), Vec::<u64>::new());
    assert!(ran.progress[0].last().is_some_and(|p| p.paths == 3));
    let Ran { results, took, .. } = ran;
    let got = results[0].as_ref().expect("h1 was copied");
    assert_eq!((got.paths, got.shared.hosts), (3, 2));
    let e = err(&results[1]);
    assert!(
        e.contains("h2 took no bytes and added no path for 120 s"),
        "{e}"
    );
    assert!(e.contains("copy_stall_timeout"), "{e}");
    assert!(e.contains("the hosts copied with it went on"), "{e}");
    assert_eq!(took, STALL + Duration::from_secs(5));
}

/// Copied alone, a stuck host fails the same way, naming no others.
#[tokio::test(start_paused = true)]
async fn a_stuck_host_copied_alone_fails_after_its_stall_limit() {
    let Ran { results, took, .. } = run(paths(3), &[Host::Stuck], 3).await;
    let e = err(&results[0]);
    assert!(
        e.contains("h1 took no bytes and added no path for 120 s"),
        "{e}"
    );
    assert!(!e.contains("went on"), "{e}");
    assert_eq!(took, STALL + Duration::from_secs(5));
}

/// A host that reads every path but never acknowledges them (nor ends)
/// fails once none came for its stall limit.
#[tokio::test(start_paused = true)]
async fn a_host_that_never_acknowledges_fails_after_its_stall_limit() {
    let ran = run(paths(2), &[Host::SilentAfterReading, Host::Imports], 2).await;
    assert_eq!(ran.idle(0), (1..12).map(|k| k * 10).collect::<Vec<_>>());
    let Ran { results, took, .. } = ran;
    let e = err(&results[0]);
    assert!(e.contains("after its last paths were sent"), "{e}");
    assert_eq!(results[1].as_ref().expect("h2 was copied").paths, 2);
    assert_eq!(took, STALL + Duration::from_secs(5));
}

/// A builder that falls silent fails every host after the stall limit,
/// naming the builder; the hosts keep the whole paths they added.
#[tokio::test(start_paused = true)]
async fn a_silent_builder_fails_the_copy_after_the_stall_limit() {
    let Ran { results, took, .. } = run(paths(3), &[Host::Imports, Host::Imports], 1).await;
    for r in &results {
        let e = err(r);
        assert!(
            e.contains("the builder's nix-store --serve sent nothing for 120 s"),
            "{e}"
        );
    }
    // The builder, stuck too, is given 5 s to say why.
    assert_eq!(took, STALL + Duration::from_secs(5));
}

/// The unbounded case still ends at once: hosts that import, a builder
/// that answers.
#[tokio::test(start_paused = true)]
async fn a_working_relay_takes_no_stall_time() {
    let ran = run(paths(3), &[Host::Imports, Host::Imports], 3).await;
    for (i, r) in ran.results.iter().enumerate() {
        assert_eq!(r.as_ref().expect("copied").paths, 3);
        assert_eq!(ran.idle(i), Vec::<u64>::new());
    }
    assert_eq!(ran.took, Duration::ZERO);
}

/// A builder that sends every path it is asked for until nixgate ends its
/// stream; how many it sent by then, and when it was told.
async fn builder_until_stopped(far: Far, paths: Vec<(PathInfo, Vec<u8>)>) -> (usize, Instant) {
    let Far {
        mut output,
        stopping,
        ..
    } = far;
    let mut sent = 0;
    let sending = async {
        let mut out = Vec::new();
        out.extend(word(serve::MAGIC_SERVER));
        out.extend(word(serve::VERSION));
        for (p, nar) in &paths {
            out.extend(path_info_answer(p));
            out.extend(nar);
            // Nobody reading: it waits here, as on a full SSH window.
            if output.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
            sent += 1;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = sending => unreachable!(),
        () = stopping.requested() => {}
    }
    (sent, Instant::now())
}

/// A copy whose every host failed ends the builder's stream at once: its
/// `nix-store --serve`, which has every request, does not go on sending
/// the rest of the closure over its connection (it did, to its end: GBs
/// on a first install whose only host's disk filled at path 10).
#[tokio::test(start_paused = true)]
async fn a_copy_whose_hosts_all_failed_ends_the_builders_stream() {
    let paths = paths(40);
    let (b, mut b_ends) = Pipes::new("builder");
    let plays = paths.clone();
    let builder = tokio::spawn(async move {
        let far = b_ends.recv().await.unwrap();
        builder_until_stopped(far, plays).await
    });
    let (h, mut ends) = Pipes::new("h1");
    let plays = paths.clone();
    tokio::spawn(async move { host(ends.recv().await.unwrap(), plays, Host::DiesAfter(2)).await });
    let lacking: HashSet<StorePath> = paths.iter().map(|(p, _)| p.path.clone()).collect();
    let order: Vec<PathInfo> = paths.iter().map(|(p, _)| p.clone()).collect();
    let noop = |_: CopyProgress| {};
    let target = Target {
        remote: &h,
        lacking: &lacking,
        progress: &noop,
        session: None,
        stall: STALL,
    };
    let started = Instant::now();
    let results = relay(&b, vec![target], &order).await;
    let e = err(&results[0]);
    assert!(e.contains("No space left on device"), "{e}");
    let (sent, told) = tokio::time::timeout(Duration::from_secs(1), builder)
        .await
        .expect("the builder's stream was ended")
        .unwrap();
    // No wait for the builder's last words: no host is left to tell them.
    assert_eq!(told, started);
    assert!(sent < 10, "the builder sent {sent} of 40 paths");
}

/// Small paths: 1336 bytes of stream each with their registration.
fn small_paths(n: usize) -> Vec<(PathInfo, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let nar = nar(&vec![b'a' + (i % 26) as u8; 1024]);
            (info(&format!("s{i}"), &nar), nar)
        })
        .collect()
}

/// A host that adds a small path every second is not stalled while it
/// does, however many paths the next write waits for (a 256 KiB write
/// waits for some 200 of them here, 200 s against a 120 s limit: it
/// failed, "took no bytes and added no path for 120 s", having added
/// hundreds); one that stops adding, the window full (1100 paths, 1.4 MB
/// unacknowledged), fails 120 s after its last path.
#[tokio::test(start_paused = true)]
async fn a_host_adding_small_paths_slowly_is_not_stalled() {
    let each = Duration::from_secs(1);
    let adding = Host::SlowAdding {
        each,
        stops_after: None,
    };
    let ran = run(small_paths(1200), &[adding], 1200).await;
    let got = ran.results[0].as_ref().expect("h1 was copied");
    assert_eq!(got.paths, 1200);
    assert_eq!(ran.took, 1200 * each);
    let stops = Host::SlowAdding {
        each,
        stops_after: Some(100),
    };
    let Ran { results, took, .. } = run(small_paths(1200), &[stops], 1200).await;
    let e = err(&results[0]);
    assert!(
        e.contains("h1 took no bytes and added no path for 120 s while paths were sent"),
        "{e}"
    );
    // Its last path at 100 s, the limit, and 5 s for its own words.
    assert_eq!(took, 100 * each + STALL + Duration::from_secs(5));
}

/// Relay `paths` to `remotes` with [`relay_replying`]; `receive` gets the
/// result receivers (in target order) and runs beside the relay.
async fn replying<F: std::future::Future<Output = R>, R>(
    b: &Pipes,
    remotes: &[Pipes],
    paths: &[(PathInfo, Vec<u8>)],
    receive: impl FnOnce(Vec<oneshot::Receiver<anyhow::Result<Received>>>) -> F,
) -> R {
    let lacking: HashSet<StorePath> = paths.iter().map(|(p, _)| p.path.clone()).collect();
    let order: Vec<PathInfo> = paths.iter().map(|(p, _)| p.clone()).collect();
    let noop = |_: CopyProgress| {};
    let targets = remotes
        .iter()
        .map(|r| Target {
            remote: r,
            lacking: &lacking,
            progress: &noop,
            session: None,
            stall: STALL,
        })
        .collect();
    let (replies, results): (Vec<_>, Vec<_>) = remotes.iter().map(|_| oneshot::channel()).unzip();
    let relay = relay_replying(b, targets, replies, &order);
    let relay = tokio::time::timeout(Duration::from_secs(3600), relay);
    let (relayed, got) = tokio::join!(relay, receive(results));
    relayed.expect("the relay ended");
    got
}

/// Each host's result comes as soon as its own copy ended: the host that
/// added everything is answered at once, not when the host whose import
/// hangs after its last bytes fails (its stall and 5 s later).
#[tokio::test(start_paused = true)]
async fn each_result_comes_as_its_hosts_copy_ends() {
    let paths = paths(3);
    let hows = [Host::Imports, Host::SilentAfterReading];
    let (b, remotes) = played(&paths, &hows, 3);
    let started = Instant::now();
    let arrivals = replying(&b, &remotes, &paths, |results| {
        join_all(results.into_iter().map(|r| async move {
            let got = r.await.expect("a result");
            (got.map(|g| g.paths).ok(), started.elapsed())
        }))
    })
    .await;
    let failed_at = STALL + Duration::from_secs(5);
    assert_eq!(
        arrivals,
        [(Some(3), Duration::ZERO), (None, failed_at)],
        "(paths added, when answered) per host"
    );
}

/// A host nobody waits for any more (its run stopped: its reply closed)
/// is dropped from the copy at the next write, keeping the whole paths it
/// added; alone, its relay ends then, not when all 1200 paths are added.
#[tokio::test(start_paused = true)]
async fn a_host_nobody_waits_for_is_dropped_from_the_copy() {
    let paths = small_paths(1200);
    let each = Duration::from_secs(1);
    let slow = Host::SlowAdding {
        each,
        stops_after: None,
    };
    let (b, remotes) = played(&paths, &[slow], 1200);
    let started = Instant::now();
    replying(&b, &remotes, &paths, |results| async move {
        tokio::time::sleep(Duration::from_secs(100)).await;
        drop(results);
    })
    .await;
    // Dropped at the next path it added (its window was full: before, at
    // the next write, 72 s later), not after the 1100 s of the rest; it
    // ends once it finds no one reads its acknowledgements.
    assert_eq!(started.elapsed(), Duration::from_secs(100) + each);
}

/// A host whose disk fills with the last path, after it was sent every
/// byte (nothing failed while sending), is told what to do too.
#[tokio::test(start_paused = true)]
async fn a_host_full_after_receiving_everything_is_told_to_free_space() {
    for hows in [
        &[Host::FullAtTheEnd][..],
        &[Host::FullAtTheEnd, Host::Imports],
    ] {
        let Ran { results, .. } = run(paths(3), hows, 3).await;
        let e = err(&results[0]);
        assert!(e.contains("No space left on device"), "{e}");
        assert!(
            e.contains(
                "the Nix store (/nix) on h1 is full: free space there (nix-collect-garbage)"
            ),
            "{e}"
        );
    }
}
