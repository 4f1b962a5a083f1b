//! The per-host lock: two controllers never work on the same host at once.
//!
//! The lock is an `flock` held by a command on the host for as long as the
//! controller keeps it alive: the controller writes a heartbeat byte to the
//! command's stdin every [`HEARTBEAT`], and the command lets go when none
//! came for [`LEASE`], or at EOF (the controller finished, dropped the lock,
//! or died and its TCP connection closed). So a controller that vanishes
//! without closing TCP (a power cut, a network partition) holds a host for a
//! minute, not until TCP keepalive gives up hours later; the kernel releases
//! the lock with the command, so a dead holder never leaves it stale.
//!
//! The lock rides the host's shared SSH connection. When that connection is
//! lost the command ends and the lock is gone; the session reconnects for
//! later commands, but the lock does not come back by itself:
//! [`HostLock::is_lost`] says so, and the run takes it again before it
//! changes the host (or leaves the host alone if another run has it now).
//! It says so from the moment the connection closed, or was replaced
//! ([`crate::remote::ConnectionWatch`]), not once the lock command's end
//! has reached its keeper: that comes two tasks after the close (the
//! channel's reader, then the keeper), while the session reconnects for
//! the next command as soon as it sees the close, and a step asked "still
//! held?" in between ran on the new connection without the lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::activation::Os;
use crate::remote::{Command, Exit, Remote, Streaming};

/// Exit code of the lock command when another holder has the lock.
pub(crate) const HELD: u32 = 75;

/// How often the controller says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// How long the host keeps the lock without a heartbeat: a few heartbeats
/// (a busy controller, a slow link), short enough that a vanished
/// controller frees its hosts within a minute.
pub const LEASE: Duration = Duration::from_secs(60);

/// `$1` lock file, `$2` holder, `$3` lease seconds. Each heartbeat is one
/// byte read by `dd` under `timeout`: no byte within the lease, or EOF,
/// ends the loop and the lock. The holder's name is readable by all: a
/// run that finds the lock taken reads it without sudo, and sudo keeps a
/// user's umask of 077 (it read "holder unknown").
pub(crate) const LINUX: &str = r#"{ [ -d "${1%/*}" ] || mkdir -p "${1%/*}"; } && exec flock --nonblock --conflict-exit-code 75 "$1" sh -c '(umask 022; printf "%s\n" "$2" > "$1.holder"); echo locked
while [ "$(timeout "$3" dd bs=1 count=1 2>/dev/null | wc -c)" -eq 1 ]; do :; done' nixgate-lock "$1" "$2" "$3""#;

const DARWIN: &str = r#"{ [ -d "${1%/*}" ] || mkdir -p "${1%/*}"; } && exec perl -MFcntl=:flock -e 'open(my $f, ">>", $ARGV[0]) or exit 1; flock($f, LOCK_EX|LOCK_NB) or exit 75; umask 022; open(my $h, ">", "$ARGV[0].holder"); print $h "$ARGV[1]\n"; close $h; $|=1; print "locked\n"; $SIG{ALRM} = sub { exit 0 }; alarm($ARGV[2]); while (sysread(STDIN, my $b, 1)) { alarm($ARGV[2]) }' "$1" "$2" "$3""#;

/// How long the lock command has to answer: to start and say `locked`
/// (or end); then, when it did not take the lock, to end; and the
/// holder's name to be read. Every step is bounded (a wedged host, a lock
/// file on a hung filesystem, a command that ignores its EOF): an
/// unanswered lock fails its host, it never holds up the run. 30 s: a
/// shell and `flock` start in milliseconds; a connection that answers
/// nothing for 30 s is dead to SSH's keepalives by then too.
pub const ANSWER: Duration = Duration::from_secs(30);

/// How long the lock command may take to start: the session reconnects
/// first when its connection was lost, bounded by the host's own
/// `connect_timeout`, which may be minutes on a slow link (a satellite
/// hop's handshake); [`ANSWER`] counts once it started. Bounded all the
/// same, by a generous 4 x [`ANSWER`]: a channel that never opens fails
/// the host, it never holds up the run.
pub const START: Duration = Duration::from_secs(120);

/// Where the lock lives on a host.
pub fn path(paths: &crate::activation::HostPaths) -> String {
    format!("{}/host.lock", paths.job_dir)
}

/// Who holds a lock this run takes: the run, this process, this controller.
pub fn holder(run_id: &crate::activation::RunId) -> String {
    let controller = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "controller".into());
    format!("run {run_id} pid {} on {controller}", std::process::id())
}

/// Held until dropped (the heartbeat stops, the host lets go).
pub struct HostLock {
    lost: Arc<AtomicBool>,
    /// The connection the lock command rides (`None`: a remote without
    /// one, the flag alone says).
    rides: Option<crate::remote::ConnectionWatch>,
    release: Option<tokio::sync::oneshot::Sender<()>>,
    keeper: tokio::task::JoinHandle<()>,
}

impl HostLock {
    /// The lock command ended, or the connection it rides closed or was
    /// replaced: the host may be locked by another run now.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst) || self.rides.as_ref().is_some_and(|c| !c.stands())
    }

    /// Let go and wait until the host's lock command has ended, so the
    /// lock is free when this returns (dropping lets go without waiting);
    /// at most a lease, after which the host has let go by itself.
    pub async fn release(mut self) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.keeper).await;
    }

    /// Wait until the lock command ends by itself (the lease ran out, the
    /// connection was lost): [`HostLock::is_lost`] is true after it.
    pub async fn ended(&mut self) {
        let _ = (&mut self.keeper).await;
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        // Dropping the stream closes its stdin: EOF, the host lets go.
        self.keeper.abort();
    }
}

#[cfg(test)]
impl HostLock {
    /// A lock held by nothing on a host, and the switch that marks it lost
    /// (its connection dropped past the lease): for runs on fake hosts.
    pub fn standing() -> (HostLock, Arc<AtomicBool>) {
        let lost = Arc::new(AtomicBool::new(false));
        let lock = HostLock {
            lost: lost.clone(),
            rides: None,
            release: None,
            keeper: tokio::spawn(async {}),
        };
        (lock, lost)
    }
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum HostLockError {
    #[error(
        "another nixgate run holds the lock on this host ({holder}); wait for it or check `nixgate status`"
    )]
    Held { holder: String },
    #[error("could not take the host lock: {0:#}")]
    Failed(anyhow::Error),
}

/// Keep the lock alive: a heartbeat every `every`; note when the command
/// ends or the heartbeat cannot be written. `rides`: its connection.
fn keep(
    stream: Streaming,
    every: Duration,
    lease: Duration,
    rides: Option<crate::remote::ConnectionWatch>,
) -> HostLock {
    let lost = Arc::new(AtomicBool::new(false));
    let flag = lost.clone();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let keeper = tokio::spawn(async move {
        let Streaming {
            mut stdin, finish, ..
        } = stream;
        let mut finish = std::pin::pin!(finish);
        let beat = async {
            loop {
                tokio::time::sleep(every).await;
                if stdin.write_all(b"\n").await.is_err() || stdin.flush().await.is_err() {
                    return;
                }
            }
        };
        let released = tokio::select! {
            _ = beat => false,
            _ = &mut finish => false,
            Ok(()) = released => true,
        };
        if released {
            // EOF on the command's stdin: the host lets go, and the
            // command's end says when it has (a link gone silent: the
            // lease frees the host by then anyway).
            drop(stdin);
            let _ = tokio::time::timeout(lease, finish).await;
            return;
        }
        flag.store(true, Ordering::SeqCst);
    });
    HostLock {
        lost,
        rides,
        release: Some(release),
        keeper,
    }
}

/// Take the lock at `path` on the host, naming this run as the holder.
pub async fn acquire<R: Remote>(
    remote: &R,
    os: Os,
    path: &str,
    holder: &str,
    sudo: bool,
) -> Result<HostLock, HostLockError> {
    acquire_with(remote, os, path, holder, sudo, HEARTBEAT, LEASE).await
}

/// [`acquire`] with its timings (tests).
pub async fn acquire_with<R: Remote>(
    remote: &R,
    os: Os,
    path: &str,
    holder: &str,
    sudo: bool,
    heartbeat: Duration,
    lease: Duration,
) -> Result<HostLock, HostLockError> {
    let script = match os {
        Os::Linux => LINUX,
        Os::Darwin => DARWIN,
    };
    let cmd = Command::script(script)
        .arg(path)
        .arg(holder)
        .arg(lease.as_secs().max(1).to_string())
        .sudo(sudo);
    let mut stream = tokio::time::timeout(START, remote.exec_piped(&cmd))
        .await
        .map_err(|_| unanswered("did not start", START))?
        .map_err(HostLockError::Failed)?;
    let by = tokio::time::Instant::now() + ANSWER;
    let mut first = [0u8; 7];
    let read = tokio::time::timeout_at(by, stream.stdout.read_exact(&mut first)).await;
    match read {
        // The connection the command rides (a reconnect after it started
        // replaced only a dead one: the command's end says so then).
        Ok(Ok(_)) if &first == b"locked\n" => {
            let rides = remote.connection_watch().await;
            Ok(keep(stream, heartbeat, lease, rides))
        }
        _ => {
            drop(stream.stdin);
            let out = tokio::time::timeout(ANSWER, stream.finish)
                .await
                .map_err(|_| unanswered("took no lock and did not end", ANSWER))?
                .map_err(HostLockError::Failed)?;
            if out.exit == (Exit::Code { code: HELD }) {
                let cat = Command::new("cat").arg(format!("{path}.holder"));
                let who = tokio::time::timeout(ANSWER, remote.exec(&cat))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .filter(|o| o.success())
                    .map(|o| o.stdout_str().trim().to_owned())
                    .unwrap_or_else(|| "holder unknown".into());
                return Err(HostLockError::Held { holder: who });
            }
            let err = match out.check("taking the host lock") {
                Ok(_) => anyhow::anyhow!("the host lock command ended without taking the lock"),
                Err(e) => e,
            };
            Err(HostLockError::Failed(err))
        }
    }
}

/// A lock command that did not answer within [`ANSWER`].
fn unanswered(what: &str, within: Duration) -> HostLockError {
    HostLockError::Failed(anyhow::anyhow!(
        "the host lock command {what} within {}s (a wedged host, or a hung filesystem under the lock file?); check the host over SSH, then run again",
        within.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::local::LocalRemote;

    /// A host whose lock command says nothing and never ends, even at EOF
    /// (a lock file on a hung filesystem).
    struct Stuck;

    impl Remote for Stuck {
        fn name(&self) -> &str {
            "stuck"
        }

        async fn exec(&self, _: &Command) -> anyhow::Result<crate::remote::Output> {
            std::future::pending().await
        }

        async fn exec_stream(&self, _: &Command) -> anyhow::Result<Streaming> {
            Ok(Streaming {
                stdin: Box::pin(tokio::io::sink()),
                stdout: Box::pin(tokio::io::empty()),
                finish: Box::pin(std::future::pending()),
                stop: crate::remote::Stop::none(),
            })
        }
    }

    /// A lock command that took no lock and never ends fails the host's
    /// lock after [`ANSWER`], saying what to do (it was waited for without
    /// end: the host's activation, and the run, with it).
    #[tokio::test(start_paused = true)]
    async fn a_lock_command_that_never_ends_fails_in_time() {
        let taking = acquire(&Stuck, Os::Linux, "/x/host.lock", "a", false);
        let r = tokio::time::timeout(ANSWER * 3, taking)
            .await
            .expect("waited for the lock command without end");
        match r {
            Err(HostLockError::Failed(e)) => {
                let e = format!("{e:#}");
                assert!(e.contains("did not end within 30s"), "{e}");
                assert!(e.contains("check the host"), "{e}");
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    /// A host whose session reconnects first, its handshake taking 60 s
    /// (a slow link; `connect_timeout` allows it): its lock is taken (the
    /// answer's 30 s counted from the start failed it, and a canary so
    /// failed stopped the run).
    #[tokio::test(start_paused = true)]
    async fn a_slow_reconnect_before_the_lock_command_is_waited_for() {
        struct SlowLink;
        impl Remote for SlowLink {
            fn name(&self) -> &str {
                "slow"
            }
            async fn exec(&self, _: &Command) -> anyhow::Result<crate::remote::Output> {
                std::future::pending().await
            }
            async fn exec_stream(&self, _: &Command) -> anyhow::Result<Streaming> {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Streaming {
                    stdin: Box::pin(tokio::io::sink()),
                    stdout: Box::pin(std::io::Cursor::new(b"locked\n".to_vec())),
                    finish: Box::pin(std::future::pending()),
                    stop: crate::remote::Stop::none(),
                })
            }
        }
        let taken = acquire(&SlowLink, Os::Linux, "/x/host.lock", "a", false).await;
        assert!(taken.is_ok(), "{:?}", taken.map(|_| ()));
    }

    /// The connection the lock rides closes (or the session replaces it):
    /// the lock is lost at once, though its command's end has not reached
    /// the keeper (here it never does). Before, only the keeper's flag
    /// said so, two tasks after the close, while the session's next
    /// command reconnected as soon as it saw it: a step asked "still
    /// held?" in between ran on a new connection without the lock.
    #[tokio::test(start_paused = true)]
    async fn a_lock_is_lost_when_its_connection_closes_not_when_the_keeper_hears() {
        use std::sync::atomic::AtomicBool;
        struct Riding(Arc<AtomicBool>);
        impl Remote for Riding {
            fn name(&self) -> &str {
                "web1"
            }
            async fn exec(&self, _: &Command) -> anyhow::Result<crate::remote::Output> {
                std::future::pending().await
            }
            async fn exec_stream(&self, _: &Command) -> anyhow::Result<Streaming> {
                Ok(Streaming {
                    stdin: Box::pin(tokio::io::sink()),
                    stdout: Box::pin(std::io::Cursor::new(b"locked\n".to_vec())),
                    finish: Box::pin(std::future::pending()),
                    stop: crate::remote::Stop::none(),
                })
            }
            async fn connection_watch(&self) -> Option<crate::remote::ConnectionWatch> {
                let up = self.0.clone();
                Some(crate::remote::ConnectionWatch::new(move || {
                    up.load(Ordering::SeqCst)
                }))
            }
        }
        let up = Arc::new(AtomicBool::new(true));
        let lock = acquire(&Riding(up.clone()), Os::Linux, "/x/host.lock", "a", false)
            .await
            .unwrap();
        tokio::time::sleep(HEARTBEAT * 3).await;
        assert!(!lock.is_lost(), "held while its connection stands");
        up.store(false, Ordering::SeqCst);
        assert!(lock.is_lost(), "lost with its connection");
    }

    /// Under a umask of 077 (sudo keeps a user's), the holder's name is
    /// still written readable by all: the run that finds the lock taken
    /// reads it without sudo.
    #[test]
    fn the_holder_is_readable_under_a_umask_of_077() {
        use std::os::unix::fs::PermissionsExt;
        if !crate::activation::deadman::tests::have("flock") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.lock").display().to_string();
        // stdin at EOF: locked, then let go at once.
        let out = std::process::Command::new("sh")
            .args(["-c", "umask 077; exec sh -c \"$0\" nixgate \"$@\"", LINUX])
            .args([&path, "run-a", "5"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "locked\n", "{out:?}");
        let holder = format!("{path}.holder");
        assert_eq!(std::fs::read_to_string(&holder).unwrap(), "run-a\n");
        let mode = std::fs::metadata(&holder).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    /// Real flock on this machine: a live holder keeps the lock past the
    /// lease with its heartbeat; a holder that goes silent loses it after
    /// the lease; a released lock is free at once. Each step waits for the
    /// host command's end, never a fixed delay (a fixed 300 ms after a drop
    /// failed once at load 35 on 2 cores).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lease_ends_without_a_heartbeat() {
        if !crate::activation::deadman::tests::have("flock") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.lock").display().to_string();
        let r = LocalRemote::new("local");
        let lease = Duration::from_secs(1);
        let beat = Duration::from_millis(200);
        let a = acquire_with(&r, Os::Linux, &path, "a", false, beat, lease)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!a.is_lost(), "the heartbeat kept it");
        match acquire_with(&r, Os::Linux, &path, "b", false, beat, lease).await {
            Err(HostLockError::Held { holder }) => assert_eq!(holder, "a"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        // Released: free once the host's command has ended, not after a
        // guessed delay.
        a.release().await;
        let b = acquire_with(&r, Os::Linux, &path, "b", false, beat, lease)
            .await
            .expect("free once released");
        b.release().await;
        // A holder whose heartbeats stop (a vanished controller) keeps the
        // lock for the lease, then loses it.
        let silent = Duration::from_secs(3600);
        let started = std::time::Instant::now();
        let mut c = acquire_with(&r, Os::Linux, &path, "c", false, silent, lease)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), c.ended())
            .await
            .expect("the host never let go");
        assert!(c.is_lost(), "the host let go after the lease");
        assert!(
            started.elapsed() >= lease,
            "not before the lease: {:?}",
            started.elapsed()
        );
        let _d = acquire_with(&r, Os::Linux, &path, "d", false, beat, lease)
            .await
            .expect("free after the lease");
    }
}
