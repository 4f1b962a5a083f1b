//! One host's network link, in user space: every byte a connection carries
//! arrives half a round trip after it was sent, and, with a rate, no sooner
//! than the link could have serialised it. The benchmark fleet runs on
//! loopback and this kernel has no `sch_netem`, so `scripts/bench-fleet`
//! (`RTT=50ms`) puts this between every client and every host's sshd.
//!
//! The model, per accepted connection:
//! - the TCP handshake costs one round trip: the upstream connection opens
//!   1.5 RTT after the accept (SYN there, SYN-ACK back, ACK there), so the
//!   server's first bytes reach the client 2 RTT after its `connect`, as
//!   on a real link of that RTT;
//! - each chunk read from one side is written to the other RTT/2 after it
//!   was read (after it left the link's wire, with a rate);
//! - with a rate, each direction of a host's link is one wire shared by all
//!   that host's connections: a chunk leaves it `len / rate` after the one
//!   before it (or after it was read, if the wire was idle);
//! - at most `limit` bytes per direction per connection are read and not
//!   yet written; beyond that the proxy stops reading, so the sender's TCP
//!   pushes back (the link's buffer; without a rate it bounds a
//!   connection to `limit` per RTT/2, as a TCP window would).
//!
//! Timing: tokio's timer wakes up to 2 ms late (it rounds each deadline up
//! to its millisecond tick, then the tick up again for epoll): 53 ms echoes
//! for 50. So the waits go to one thread of our own that sleeps to the
//! deadline with the kernel's high-resolution timer and wakes the task; the
//! proxy still never delivers before a chunk is due.
//!
//! Turns (sequential round trips), counted per connection where the proxy
//! reads bytes, before it delays them: the TCP handshake is turn 1; after
//! it, a turn is counted when bytes from the server are read, bytes from
//! the client were read since the server's previous bytes (the direction
//! flipped), and the client has been quiet for at least `gap` (default
//! RTT/4). A reply can reach the proxy no sooner than RTT/2 after the
//! request it answers was read (the proxy held the request that long), so
//! every request/response exchange passes the gap; a bulk stream does not
//! (the other side's window updates are followed within milliseconds by
//! more data), nor does a client that keeps sending while it reads.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Bytes read from a socket at a time.
const CHUNK: usize = 64 * 1024;

/// What every link of one proxy does.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub rtt: Duration,
    /// Bytes per second per direction of a host's link; `None`: unpaced.
    pub rate: Option<f64>,
    /// Bytes per direction per connection read and not yet written.
    pub limit: usize,
    /// How long the client must have been quiet for a reply to be a turn.
    pub gap: Duration,
}

impl Spec {
    /// Defaults for the rest: with a rate, a buffer of one bandwidth-delay
    /// product (a full link queues at most RTT/2 more); without, 4 MiB
    /// (one connection carries at most 4 MiB per RTT/2, more than an SSH
    /// channel window of 2 MiB per RTT). The gap is RTT/4.
    pub fn new(rtt: Duration, rate: Option<f64>) -> Spec {
        let limit = match rate {
            Some(r) => ((r * rtt.as_secs_f64()) as usize).max(4 * CHUNK),
            None => 4 << 20,
        };
        Spec {
            rtt,
            rate,
            limit,
            gap: rtt / 4,
        }
    }
}

/// `50ms`, `0.15s`, `1s`, `0`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = split_unit(s);
    let v: f64 = num
        .parse()
        .with_context(|| format!("`{s}`: not a duration like 50ms or 0.15s"))?;
    let secs = match unit {
        "ms" => v / 1e3,
        "us" => v / 1e6,
        "s" => v,
        "" if v == 0.0 => 0.0,
        _ => bail!("`{s}`: give a unit, ms or s"),
    };
    if !(0.0..3600.0).contains(&secs) {
        bail!("`{s}`: out of range");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `100mbit`, `1gbit`, `512kbit` (as `tc` writes them) -> bytes per second.
pub fn parse_rate(s: &str) -> anyhow::Result<f64> {
    let (num, unit) = split_unit(s);
    let v: f64 = num
        .parse()
        .with_context(|| format!("`{s}`: not a rate like 100mbit"))?;
    let bits = match unit.to_ascii_lowercase().as_str() {
        "bit" => v,
        "kbit" => v * 1e3,
        "mbit" => v * 1e6,
        "gbit" => v * 1e9,
        _ => bail!("`{s}`: give a unit, kbit, mbit or gbit"),
    };
    if bits.is_nan() || bits < 8e3 {
        bail!("`{s}`: at least 8kbit");
    }
    Ok(bits / 8.0)
}

fn split_unit(s: &str) -> (&str, &str) {
    let at = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..at], &s[at..])
}

/// The proxy's log: one tab-separated line per event, wall-clock stamped
/// (seconds since the epoch, microseconds), so it lines up with other logs.
///   open  TIME HOST CONN
///   turn  TIME HOST CONN N connect|reply QUIET_MS
///   close TIME HOST CONN TURNS BYTES_TO_SERVER BYTES_TO_CLIENT SECONDS
#[derive(Clone)]
pub struct Log {
    out: Option<Arc<Mutex<std::fs::File>>>,
    anchor: (Instant, SystemTime),
}

impl Log {
    pub fn new(out: Option<std::fs::File>) -> Log {
        Log {
            out: out.map(|f| Arc::new(Mutex::new(f))),
            anchor: (Instant::now(), SystemTime::now()),
        }
    }

    fn stamp(&self, at: Instant) -> f64 {
        let wall = self.anchor.1 + at.saturating_duration_since(self.anchor.0);
        wall.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    }

    fn line(&self, kind: &str, at: Instant, rest: std::fmt::Arguments) {
        let Some(out) = &self.out else { return };
        let line = format!("{kind}\t{:.6}\t{rest}\n", self.stamp(at));
        // One write per line (the file is opened for appending).
        if let Ok(mut f) = out.lock() {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// One direction of a host's link: with a rate, chunks leave one after
/// another.
#[derive(Default)]
struct Wire {
    free_at: Mutex<Option<Instant>>,
}

impl Wire {
    /// When a chunk of `len` bytes read at `now` has left the wire.
    fn depart(&self, now: Instant, len: usize, rate: Option<f64>) -> Instant {
        let Some(rate) = rate else { return now };
        let mut free = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
        let start = free.map_or(now, |f| f.max(now));
        let end = start + Duration::from_secs_f64(len as f64 / rate);
        *free = Some(end);
        end
    }
}

/// One host's link: where its server listens, the two wires, the log.
pub struct Link {
    pub name: String,
    pub upstream: SocketAddr,
    spec: Spec,
    to_server: Wire,
    to_client: Wire,
    log: Log,
    conns: Arc<AtomicU64>,
}

impl Link {
    pub fn new(
        name: &str,
        upstream: SocketAddr,
        spec: Spec,
        log: Log,
        conns: Arc<AtomicU64>,
    ) -> Link {
        Link {
            name: name.to_string(),
            upstream,
            spec,
            to_server: Wire::default(),
            to_client: Wire::default(),
            log,
            conns,
        }
    }

    /// Accept connections on `listener` for as long as it lives.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((client, _)) => {
                    let link = self.clone();
                    tokio::spawn(async move { link.carry(client).await });
                }
                Err(e) => {
                    eprintln!("delay_proxy: {}: accept: {e}", self.name);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn carry(self: Arc<Self>, client: TcpStream) {
        let accepted = Instant::now();
        let id = self.conns.fetch_add(1, Ordering::Relaxed) + 1;
        let name = &self.name;
        self.log
            .line("open", accepted, format_args!("{name}\t{id}"));
        let turns = Mutex::new(Turns::new(accepted, self.spec.gap));
        let _ = client.set_nodelay(true);
        let (cr, cw) = client.into_split();
        // The handshake: SYN there, SYN-ACK back, ACK there. What the client
        // sends meanwhile is read now and reaches the server with the ACK at
        // the earliest (a real client would send it once its connect returns,
        // 1 RTT after the SYN, so it would arrive then too).
        let established = accepted + self.spec.rtt * 3 / 2;
        let (tx, rx) = mpsc::unbounded_channel();
        let up = self.read_side(cr, tx, Dir::ToServer, &turns, id, established);
        let rest = async {
            sleep_until(established).await;
            let server = match TcpStream::connect(self.upstream).await {
                Ok(s) => s,
                Err(e) => {
                    // Dropping the client's write half and rx ends the client.
                    eprintln!("delay_proxy: {name}: connecting to {}: {e}", self.upstream);
                    return 0;
                }
            };
            let n = lock(&turns).connected();
            self.log.line(
                "turn",
                Instant::now(),
                format_args!("{name}\t{id}\t{n}\tconnect\t0"),
            );
            let _ = server.set_nodelay(true);
            let (sr, sw) = server.into_split();
            let down = self.pump(sr, cw, Dir::ToClient, &turns, id);
            let ((), carried) = tokio::join!(write_side(sw, rx), down);
            carried
        };
        let (to_server, to_client) = tokio::join!(up, rest);
        let n = lock(&turns).count;
        let secs = accepted.elapsed().as_secs_f64();
        self.log.line(
            "close",
            Instant::now(),
            format_args!("{name}\t{id}\t{n}\t{to_server}\t{to_client}\t{secs:.3}"),
        );
    }

    /// One direction of a connection until its end: returns the bytes carried.
    async fn pump(
        &self,
        from: OwnedReadHalf,
        to: OwnedWriteHalf,
        dir: Dir,
        turns: &Mutex<Turns>,
        id: u64,
    ) -> u64 {
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = self.read_side(from, tx, dir, turns, id, Instant::now());
        let (carried, ()) = tokio::join!(reader, write_side(to, rx));
        carried
    }

    async fn read_side(
        &self,
        mut from: OwnedReadHalf,
        tx: mpsc::UnboundedSender<Chunk>,
        dir: Dir,
        turns: &Mutex<Turns>,
        id: u64,
        not_before: Instant,
    ) -> u64 {
        let half = self.spec.rtt / 2;
        let room = Arc::new(Semaphore::new(self.spec.limit));
        let wire = match dir {
            Dir::ToServer => &self.to_server,
            Dir::ToClient => &self.to_client,
        };
        let mut buf = vec![0u8; CHUNK];
        let mut carried = 0u64;
        let mut last_due = not_before;
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let read_at = Instant::now();
            if n == 0 {
                // The end (or an error) travels too: the peer sees it last.
                let _ = tx.send(Chunk::end(last_due.max(read_at + half)));
                return carried;
            }
            if let Some((count, quiet)) = lock(turns).read(dir, read_at) {
                let name = &self.name;
                let ms = quiet.as_secs_f64() * 1e3;
                self.log.line(
                    "turn",
                    read_at,
                    format_args!("{name}\t{id}\t{count}\treply\t{ms:.1}"),
                );
            }
            let Ok(permit) = room.clone().acquire_many_owned(n as u32).await else {
                return carried;
            };
            let due = (wire.depart(Instant::now(), n, self.spec.rate) + half).max(not_before);
            last_due = due;
            carried += n as u64;
            let chunk = Chunk {
                due,
                data: Some((buf[..n].to_vec(), permit)),
            };
            if tx.send(chunk).is_err() {
                return carried; // the other side is gone
            }
        }
    }
}

/// Writes each chunk when it is due; ends the write side after the last.
async fn write_side(mut to: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Chunk>) {
    while let Some(chunk) = rx.recv().await {
        sleep_until(chunk.due).await;
        match chunk.data {
            Some((data, _permit)) => {
                if to.write_all(&data).await.is_err() {
                    return; // dropping rx ends the reader at its next chunk
                }
            }
            None => {
                let _ = to.shutdown().await;
                return;
            }
        }
    }
}

struct Chunk {
    due: Instant,
    /// The bytes and their room in the connection's buffer; `None`: the end.
    data: Option<(Vec<u8>, OwnedSemaphorePermit)>,
}

impl Chunk {
    fn end(due: Instant) -> Chunk {
        Chunk { due, data: None }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dir {
    ToServer,
    ToClient,
}

/// The turn counter of one connection (see the module doc).
#[derive(Debug)]
pub struct Turns {
    gap: Duration,
    /// When the client's last bytes were read (the accept, at first).
    client_at: Instant,
    /// Client bytes were read since the server's last bytes.
    flipped: bool,
    pub count: u64,
}

impl Turns {
    pub fn new(accepted: Instant, gap: Duration) -> Turns {
        Turns {
            gap,
            client_at: accepted,
            flipped: true,
            count: 0,
        }
    }

    /// The TCP handshake is done: turn 1.
    pub fn connected(&mut self) -> u64 {
        self.count += 1;
        self.count
    }

    /// Bytes read at `at` going `dir`: `Some((turn, client's quiet time))`
    /// when they start a turn.
    pub fn read(&mut self, dir: Dir, at: Instant) -> Option<(u64, Duration)> {
        match dir {
            Dir::ToServer => {
                self.client_at = at;
                self.flipped = true;
                None
            }
            Dir::ToClient => {
                let quiet = at.saturating_duration_since(self.client_at);
                let turn = self.flipped && quiet >= self.gap;
                self.flipped = false;
                turn.then(|| {
                    self.count += 1;
                    (self.count, quiet)
                })
            }
        }
    }
}

fn lock(t: &Mutex<Turns>) -> std::sync::MutexGuard<'_, Turns> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves at `due` (not before; about 0.1 ms after on an idle machine).
pub async fn sleep_until(due: Instant) {
    if due <= Instant::now() {
        return;
    }
    let (tx, rx) = oneshot::channel();
    let timer = TIMER.get_or_init(Timer::start);
    if timer.0.send(Wake { due, tx }).is_ok() {
        let _ = rx.await;
    } else {
        tokio::time::sleep_until(due.into()).await; // no timer thread: coarser
    }
}

static TIMER: OnceLock<Timer> = OnceLock::new();

/// The timer thread: a heap of deadlines, slept to one after another.
struct Timer(std::sync::mpsc::Sender<Wake>);

struct Wake {
    due: Instant,
    tx: oneshot::Sender<()>,
}

impl Timer {
    fn start() -> Timer {
        let (tx, rx) = std::sync::mpsc::channel::<Wake>();
        let spawned = std::thread::Builder::new()
            .name("delay-timer".into())
            .spawn(move || {
                let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
                let mut waiting = std::collections::HashMap::new();
                let mut seq = 0u64;
                loop {
                    let now = Instant::now();
                    while let Some(&Reverse((due, id))) = heap.peek() {
                        if due > now {
                            break;
                        }
                        heap.pop();
                        if let Some(tx) = waiting.remove(&id) {
                            let _ = oneshot::Sender::send(tx, ());
                        }
                    }
                    let next = match heap.peek() {
                        Some(&Reverse((due, _))) => rx.recv_timeout(due - now),
                        None => rx
                            .recv()
                            .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
                    };
                    match next {
                        Ok(w) => {
                            seq += 1;
                            heap.push(Reverse((w.due, seq)));
                            waiting.insert(seq, w.tx);
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("delay_proxy: no timer thread ({e}); using tokio's timer");
        }
        Timer(tx)
    }
}
