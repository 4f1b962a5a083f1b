//! `copy = "builder"`: the builder's `nix-copy-closure` copies straight to
//! the host, so the controller carries no closure bytes, and sees none.
//!
//! A host whose import stops (a path lock another Nix process holds, a
//! garbage collection, a disk that stopped answering) stops reading; its
//! sshd's window fills, then the builder's `ssh`, then the pipe from
//! `nix-copy-closure`, which blocks in a write. TCP is alive and keepalives
//! are answered, so nothing ends it: the push hung until someone looked.
//! The relay bounds that with the host's `copy_stall_timeout`; this mode now
//! does too, by watching what `nix-copy-closure` wrote. Nix 2.8 logs no byte
//! progress for this copy (its JSON log has only the path's start and
//! stop, checked), but Linux counts every byte a process writes
//! (`/proc/PID/io`, `wchar`): the builder-side wrapper says that count every
//! tick, and a count that stands still for the host's limit fails the copy
//! and stops `nix-copy-closure`. A builder without that file (not Linux)
//! says so and its copies keep no stall bound, as before.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::StorePath;
use super::closure::{PathInfo, missing};
use super::copy::{CopyOutcome, CopyProgress};
use super::fanout::{LAST_WORDS, STUCK_IMPORT};
use crate::remote::{Command, Output, Remote, Streaming};

/// Runs `"$@"` (the copy: stdin empty, its output kept in a temporary
/// file and passed on to stderr when it ends) and every `$1` seconds
/// prints `wrote N P`: N the bytes it has written so far (`-` where `/proc`
/// cannot tell), P the paths it has started (`nix-copy-closure` says
/// `copying path '...'` as it starts each one, Nix 2.8 and 2.26 alike; 0
/// without a temporary file, whose output then goes straight to stderr).
/// Ends it with SIGTERM when its own stdin closes (the watcher reads a copy
/// of stdin on fd 3, as the build's wrapper does), or when the wrapper is
/// told to end. The ticker's `sleep` holds no output: it outlives the
/// ticker (killed at the end) by up to a tick, and would hold it open.
const WATCHED: &str = r#"tick=$1; shift
exec 3<&0 </dev/null
log=$(mktemp 2>/dev/null) || log=
if [ -n "$log" ]; then "$@" 3<&- >"$log" 2>&1 & else "$@" 3<&- >&2 & fi
copy=$!
trap '[ -z "$log" ] || rm -f "$log"' EXIT
trap 'kill -TERM "$copy" 2>/dev/null; exit 143' HUP TERM
{ cat <&3; kill -TERM "$copy"; } >/dev/null 2>&1 &
watch=$!
exec 3<&-
while sleep "$tick" >/dev/null 2>&1; do
  w=$(sed -n 's/^wchar: //p' "/proc/$copy/io" 2>/dev/null)
  p=0; [ -z "$log" ] || p=$(grep -c "^copying path '" "$log" 2>/dev/null)
  echo "wrote ${w:--} ${p:-0}"
done &
tell=$!
wait "$copy"; code=$?
kill "$watch" "$tell" 2>/dev/null
[ -z "$log" ] || cat "$log" >&2
exit "$code""#;

/// `nix-copy-closure` on the builder, its `ssh` to the host told what
/// nixgate's own connections do: give up on a connection that has not come
/// up in `connect_timeout`, count one dead after three keepalives (15 s
/// apart) go unanswered (without them a host that vanished mid-copy held
/// the copy until TCP gave up: some 15 minutes of retransmissions while
/// bytes were in flight, the kernel's 2-hour keepalive while none were),
/// and never prompt (there is no one to answer: fail instead).
pub fn copy_closure_command(
    dest: &str,
    port: u16,
    connect_timeout: Duration,
    toplevel: &StorePath,
) -> Command {
    use crate::ssh::{KEEPALIVE_INTERVAL, KEEPALIVE_MAX};
    let opts = format!(
        "-p {port} -o ConnectTimeout={} -o ServerAliveInterval={} -o ServerAliveCountMax={KEEPALIVE_MAX} -o BatchMode=yes",
        connect_timeout.as_secs().max(1),
        KEEPALIVE_INTERVAL.as_secs(),
    );
    Command::new("nix-copy-closure")
        .env("NIX_SSHOPTS", opts)
        .args(["--to", dest, toplevel.as_str()])
}

/// [`copy_closure_command`] under [`WATCHED`], telling every `tick`.
pub fn watched_command(copy: &Command, tick: Duration) -> Command {
    let mut c = Command::script(WATCHED)
        .arg(tick.as_secs().max(1).to_string())
        .args(copy.argv().iter().cloned());
    for (k, v) in copy.env_vars() {
        c = c.env(k.clone(), v.clone());
    }
    c
}

/// How often the builder says how far the copy got: often enough that a
/// stall is seen within a quarter of its limit, at most every 10 s.
pub fn tick_for(stall: Duration) -> Duration {
    (stall / 4).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// Where one host is to be copied to, from the builder.
pub struct Destination<'a> {
    /// `user@host` as the builder's ssh takes it.
    pub dest: &'a str,
    pub port: u16,
    pub connect_timeout: Duration,
    /// The host's `copy_stall_timeout`.
    pub stall: Duration,
}

/// The builder copies straight to the host (it must be able to reach it)
/// the paths `lacking` of `toplevel`'s closure (the host's answer, asked
/// by the caller; `nix-copy-closure` asks again and sends the same ones).
/// Each tick of the copy is a `progress`: the bytes written, the paths
/// started, how long it has stood still.
pub async fn copy_from_builder<B: Remote, T: Remote>(
    builder: &B,
    target: &T,
    to: Destination<'_>,
    toplevel: &StorePath,
    lacking: &[&PathInfo],
    progress: &(dyn Fn(CopyProgress) + Send + Sync),
) -> anyhow::Result<CopyOutcome> {
    if lacking.is_empty() {
        return Ok(CopyOutcome::AlreadyPresent);
    }
    let copy = copy_closure_command(to.dest, to.port, to.connect_timeout, toplevel);
    let tick = tick_for(to.stall);
    let s = builder
        .exec_piped(&watched_command(&copy, tick))
        .await
        .context("running nix-copy-closure on the builder")?;
    let watching = Watching {
        host: target.name(),
        stall: to.stall,
        tick,
        total_paths: lacking.len() as u64,
        progress,
    };
    watching
        .watch(s)
        .await?
        .check(&format!("nix-copy-closure from the builder to {}", to.dest))?;
    anyhow::ensure!(
        missing(target, std::slice::from_ref(toplevel))
            .await?
            .is_empty(),
        "{} still lacks {toplevel} after nix-copy-closure",
        target.name()
    );
    // What the host lacked is what was sent: their NARs (the stream's
    // framing aside).
    Ok(CopyOutcome::Copied {
        paths: lacking.len() as u64,
        bytes: lacking.iter().map(|p| p.nar_size).sum(),
        fanout: None,
    })
}

/// What one line of the wrapper told: the bytes written (`None`: the
/// builder cannot count them, no `/proc/PID/io`, so no bound), the paths
/// started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Told {
    wrote: Option<u64>,
    paths: u64,
}

fn told(line: &str) -> Option<Told> {
    let mut words = line.trim_end().strip_prefix("wrote ")?.split(' ');
    let wrote = match words.next()? {
        "-" => None,
        n => Some(n.parse().ok()?),
    };
    let paths = match words.next() {
        Some(p) => p.parse().ok()?,
        None => 0,
    };
    Some(Told { wrote, paths })
}

/// One watched copy: whose, its bounds, where its progress goes.
struct Watching<'a> {
    host: &'a str,
    stall: Duration,
    tick: Duration,
    total_paths: u64,
    progress: &'a (dyn Fn(CopyProgress) + Send + Sync),
}

impl Watching<'_> {
    /// Follow the watched copy to its end, reporting each tick; a copy
    /// whose byte count stands still for `stall` (or a builder silent that
    /// long and a tick more) is stopped and fails, naming the host.
    async fn watch(&self, s: Streaming) -> anyhow::Result<Output> {
        let Streaming {
            mut stdin,
            stdout,
            finish,
            ..
        } = s;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut wrote: Option<u64> = None;
        let mut moved = Instant::now();
        let limit = self.stall + self.tick;
        let builder_silent = loop {
            let line = match tokio::time::timeout(limit, lines.next_line()).await {
                Err(_) => break true,
                Ok(line) => line.context("reading the builder's copy")?,
            };
            let Some(line) = line else {
                return finish.await;
            };
            let Some(t) = told(&line) else { continue };
            if t.wrote.is_none() || t.wrote != wrote {
                wrote = t.wrote;
                moved = Instant::now();
            }
            let still = moved.elapsed();
            (self.progress)(CopyProgress {
                bytes: wrote.unwrap_or(0),
                paths: t.paths.min(self.total_paths),
                total_paths: self.total_paths,
                // Whole seconds, to the nearest: the ticks come a few
                // milliseconds either side of their second.
                idle_secs: (still + Duration::from_millis(500)).as_secs(),
            });
            if still >= self.stall {
                break false;
            }
        };
        // EOF on the wrapper's stdin: it stops the copy.
        let _ = tokio::time::timeout(LAST_WORDS, stdin.shutdown()).await;
        let _ = tokio::time::timeout(LAST_WORDS, finish).await;
        Err(self.stopped(builder_silent))
    }

    fn stopped(&self, builder_silent: bool) -> anyhow::Error {
        let (host, secs) = (self.host, self.stall.as_secs());
        if builder_silent {
            return anyhow::anyhow!(
                "the builder said nothing for {secs} s while copying to {host} (copy_stall_timeout): \
                 its connection or its shell is stuck; the copy was stopped"
            );
        }
        anyhow::anyhow!(
            "{host} took no bytes from the builder for {secs} s (copy_stall_timeout): \
             {STUCK_IMPORT}; the builder's nix-copy-closure was stopped"
        )
    }
}

#[cfg(test)]
mod tests;
