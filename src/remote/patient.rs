//! A command that must survive a lost connection: the host rebooted, its
//! sshd restarted, the network blinked. [`Patient`] runs it again once the
//! connection is back (the session reconnects on demand), with backoff,
//! until a deadline. Only for commands that are safe to run twice: reads,
//! `nix-env --set` of a closure the profile may already point at, a record
//! written whole. A command whose exit status came back is never run again:
//! it ran, and its answer stands.
//!
//! Why: the fault matrix (tests/fault_matrix_e2e.rs) rebooted a host while
//! its candidate was being marked known-good. The mark's `nix-env --set`
//! lost its connection, the deploy rolled back, and the rollback's first
//! read of `/run/current-system` failed at once (the host was still down):
//! `rollback-failed`, "needs a person", for a host that came back 5 s later
//! on a system it could have been told about.

use std::time::Duration;

use tokio::time::Instant;

use super::{Command, Exit, Output, Remote, Streaming};

/// Waits between attempts: 1 s, 2 s, 4 s, 8 s, then 15 s.
pub fn backoff(attempt: u32) -> Duration {
    const SECS: [u64; 5] = [1, 2, 4, 8, 15];
    Duration::from_secs(SECS[(attempt as usize).min(SECS.len() - 1)])
}

/// `inner`, with `exec` run again while the connection is lost, until
/// `deadline`. Streams pass through (they cannot be replayed).
pub struct Patient<'a, R> {
    inner: &'a R,
    deadline: Instant,
}

impl<'a, R: Remote> Patient<'a, R> {
    /// Patient for `patience` from now.
    pub fn new(inner: &'a R, patience: Duration) -> Self {
        Patient {
            inner,
            deadline: Instant::now() + patience,
        }
    }
}

/// Did the command lose its connection (no exit status came back)? Not a
/// reconnect refused for good (its host key changed, no key to offer):
/// that answer stands (it was tried again with backoff until the deadline,
/// up to the activation timeout, before it was said). A login the host
/// refused with a key offered is lost, and tried again: sshd refuses
/// logins while `/run/nologin` exists (pam_nologin, any user but root), as
/// it does on a host going down or booting. Said at once, it stopped the
/// known-good mark's command when the host rebooted under it, and the
/// mark's undo after it, minutes before the host was back.
fn lost(r: &anyhow::Result<Output>) -> bool {
    match r {
        Err(e) => !refused_for_good(e),
        Ok(out) => out.exit == Exit::ConnectionLost,
    }
}

/// Logins rejected (a key offered and refused) after which a window tries
/// no more new connections: the host rejects the key that logged the run
/// in before its switch, and trying again every [`crate::activation::reach::RETRY`] would get this
/// machine's address blocked from new connections to it. OpenSSH 9.8+
/// enables PerSourcePenalties by default: each failed authentication adds
/// 5 s (`authfail:5`) to a penalty that runs down in real time, and an
/// address whose penalty passes 15 s (`min:15`) is refused new
/// connections, for up to 600 s (`max:600`); fail2ban's sshd jail bans
/// after 5 failures (`maxretry`) for 10 minutes. Three rejections
/// [`REJECTED_LOGIN_SPACING`] apart stay under both. The run's own session
/// survives a block; the confirm after a revert, and the next run, need
/// new ones. Other failures (a refused TCP connection while sshd
/// restarts, a timeout) are tried for the whole window as before.
pub const MAX_REJECTED_LOGINS: u32 = 3;

/// The least wait after a rejected login before the next try, wherever
/// logins are retried (a new-connection window, the confirm, a [`Patient`]
/// command): [`MAX_REJECTED_LOGINS`] tries then span 10 s. A host whose
/// key lookup restarts during a switch (`AuthorizedKeysCommand`, sssd:
/// 5-10 s) rejects the key meanwhile; tried 1 s and 2 s apart, the three
/// were spent in 3 s, and a good host was reverted. 5 s apart, each
/// rejection's 5 s penalty has run out before the next is added: the
/// address's penalty never passes 5 s, a third of `min:15`; fail2ban
/// counts 3 of its 5.
pub const REJECTED_LOGIN_SPACING: Duration = Duration::from_secs(5);

/// The wait before the next try after one that failed: `otherwise`, but
/// at least [`REJECTED_LOGIN_SPACING`] after a login the host rejected
/// (`rejected`).
pub fn retry_wait(rejected: bool, otherwise: Duration) -> Duration {
    if rejected {
        otherwise.max(REJECTED_LOGIN_SPACING)
    } else {
        otherwise
    }
}

/// Is `e` a login sshd refused, the key offered rejected
/// ([`crate::ssh::ConnectError::is_login_rejected`])?
pub fn login_rejected(e: &anyhow::Error) -> bool {
    connect_error(e).is_some_and(crate::ssh::ConnectError::is_login_rejected)
}

/// Is `e` a refusal that waiting cannot change
/// ([`crate::ssh::ConnectError::is_lasting`])? A caller that retries
/// failures of its own over a long budget stops at it.
pub fn refused_for_good(e: &anyhow::Error) -> bool {
    connect_error(e).is_some_and(crate::ssh::ConnectError::is_lasting)
}

/// The SSH connect error behind `e`, if it is one (as it is, or shared).
pub fn connect_error(e: &anyhow::Error) -> Option<&crate::ssh::ConnectError> {
    use crate::ssh::ConnectError;
    e.chain().find_map(|c| {
        (c.downcast_ref::<ConnectError>()).or_else(|| {
            c.downcast_ref::<std::sync::Arc<ConnectError>>()
                .map(|a| &**a)
        })
    })
}

/// Run `attempt` until it did not lose its connection, or until `deadline`
/// (then its last result). A login the host refused is tried again at
/// most [`MAX_REJECTED_LOGINS`] times in all,
/// as a new-connection window is (sshd's `PerSourcePenalties` and
/// fail2ban block an address that keeps failing logins: tried until the
/// deadline, 300 s, that was some 20 logins), [`retry_wait`] apart.
async fn retried<F, Fut>(name: &str, deadline: Instant, mut attempt: F) -> anyhow::Result<Output>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Output>>,
{
    let (mut n, mut rejected) = (0, 0);
    loop {
        let r = attempt().await;
        if !lost(&r) {
            return r;
        }
        let now_rejected = r.as_ref().is_err_and(login_rejected);
        rejected += u32::from(now_rejected);
        if rejected >= MAX_REJECTED_LOGINS {
            return r;
        }
        let wait = retry_wait(now_rejected, backoff(n));
        n += 1;
        if Instant::now() + wait >= deadline {
            return r;
        }
        tracing::info!(host = %name, attempt = n, "connection lost; trying again in {wait:?}");
        tokio::time::sleep(wait).await;
    }
}

impl<R: Remote> Remote for Patient<'_, R> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn exec(&self, cmd: &Command) -> anyhow::Result<Output> {
        retried(self.inner.name(), self.deadline, || self.inner.exec(cmd)).await
    }

    async fn exec_stream(&self, cmd: &Command) -> anyhow::Result<Streaming> {
        self.inner.exec_stream(cmd).await
    }

    async fn exec_piped(&self, cmd: &Command) -> anyhow::Result<Streaming> {
        self.inner.exec_piped(cmd).await
    }

    fn prepare_stream(&self) {
        self.inner.prepare_stream()
    }

    async fn connection_watch(&self) -> Option<super::ConnectionWatch> {
        self.inner.connection_watch().await
    }

    async fn exec_batch(&self, cmds: &[Command]) -> Vec<Output> {
        self.inner.exec_batch(cmds).await
    }
}

impl<R: Remote> Patient<'_, R> {
    /// [`Remote::exec_small_input`] (so never a secret), sending the input
    /// again after a lost connection.
    pub async fn exec_small_input(&self, cmd: &Command, input: &[u8]) -> anyhow::Result<Output> {
        retried(self.inner.name(), self.deadline, || {
            self.inner.exec_small_input(cmd, input)
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod refusing {
    use std::sync::atomic::{AtomicU32, Ordering};

    use crate::remote::{Command, Output, Remote, Streaming};

    /// A host whose every reconnect is refused (its key changed): counts
    /// the commands asked.
    pub(crate) struct Refusing(pub(crate) AtomicU32);
    impl Remote for Refusing {
        fn name(&self) -> &str {
            "web1"
        }
        async fn exec(&self, _: &Command) -> anyhow::Result<Output> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(
                anyhow::Error::new(crate::ssh::ConnectError::HostKeyChanged {
                    target: "web1".into(),
                    host: "web1".into(),
                    addr: "10.0.0.1:22".into(),
                    expected: vec![],
                    offered: "SHA256:x".into(),
                })
                .context("reconnecting"),
            )
        }
        async fn exec_stream(&self, _: &Command) -> anyhow::Result<Streaming> {
            anyhow::bail!("no streams")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::refusing::Refusing;
    use super::*;
    use crate::remote::scripted::{ScriptedRemote, fail, ok};

    fn lost_then(n: u32, then: Output) -> ScriptedRemote {
        let calls = AtomicU32::new(0);
        ScriptedRemote::new("web1", move |_| {
            if calls.fetch_add(1, Ordering::SeqCst) < n {
                Output::new(Exit::ConnectionLost, "", "")
            } else {
                then.clone()
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_is_tried_again_until_it_answers() {
        let r = lost_then(3, ok("/nix/store/x\n"));
        let p = Patient::new(&r, Duration::from_secs(60));
        let out = p.exec(&Command::new("readlink")).await.unwrap();
        assert!(out.success());
        assert_eq!(r.argvs().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_that_answered_is_not_run_again() {
        let r = lost_then(0, fail(1, "no such profile"));
        let p = Patient::new(&r, Duration::from_secs(60));
        let out = p.exec(&Command::new("nix-env")).await.unwrap();
        assert_eq!(out.exit, Exit::Code { code: 1 });
        assert_eq!(r.argvs().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn it_gives_up_at_the_deadline_with_the_last_answer() {
        let r = lost_then(u32::MAX, ok(""));
        let started = Instant::now();
        let p = Patient::new(&r, Duration::from_secs(20));
        let out = p.exec(&Command::new("readlink")).await.unwrap();
        assert_eq!(out.exit, Exit::ConnectionLost);
        // 1 + 2 + 4 + 8 s waited; the next wait (15 s) would pass 20 s.
        assert_eq!(started.elapsed(), Duration::from_secs(15));
        assert_eq!(r.argvs().len(), 5);
    }

    /// A host going down (or booting) refuses logins while `/run/nologin`
    /// exists: the key offered is rejected, then the host answers. Tried
    /// again with backoff, as a lost connection is; before, the first
    /// rejection was the answer.
    #[tokio::test(start_paused = true)]
    async fn a_login_refused_with_a_key_offered_is_tried_again() {
        let r = NoLoginThen(AtomicU32::new(0), 2);
        let started = Instant::now();
        let p = Patient::new(&r, Duration::from_secs(60));
        let out = p.exec(&Command::new("nix-env")).await.unwrap();
        assert!(out.success());
        assert_eq!(r.0.load(Ordering::SeqCst), 3);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // Refused on: the rejection is said at the third login, not after
        // a login every backoff until the deadline (sshd's
        // PerSourcePenalties, fail2ban block such an address); the three
        // 5 s apart, not 1 s and 2 s: they span 10 s, the restart of a key
        // lookup (sssd, an AuthorizedKeysCommand) that rejects the key
        // meanwhile.
        let r = NoLoginThen(AtomicU32::new(0), u32::MAX);
        let started = Instant::now();
        let p = Patient::new(&r, Duration::from_secs(300));
        let e = p.exec(&Command::new("nix-env")).await.unwrap_err();
        assert!(format!("{e:#}").contains("authentication as deploy failed"));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(r.0.load(Ordering::SeqCst), 3);
    }

    /// Refuses the login (the key offered rejected) for its first `.1`
    /// commands, then answers.
    struct NoLoginThen(AtomicU32, u32);
    impl Remote for NoLoginThen {
        fn name(&self) -> &str {
            "web1"
        }
        async fn exec(&self, _: &Command) -> anyhow::Result<Output> {
            if self.0.fetch_add(1, Ordering::SeqCst) >= self.1 {
                return Ok(ok(""));
            }
            Err(anyhow::Error::new(crate::ssh::ConnectError::AuthFailed {
                target: "web1".into(),
                user: "deploy".into(),
                tried: vec!["agent key ed25519 (SHA256:x): rejected".into()],
            })
            .context("reconnecting"))
        }
        async fn exec_stream(&self, _: &Command) -> anyhow::Result<Streaming> {
            anyhow::bail!("no streams")
        }
    }

    /// A reconnect refused by the host (its key changed after a reinstall,
    /// or a man in the middle): said at once, not tried until the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_refused_reconnect_is_not_tried_again() {
        let r = Refusing(AtomicU32::new(0));
        let started = Instant::now();
        let p = Patient::new(&r, Duration::from_secs(60));
        let e = p.exec(&Command::new("readlink")).await.unwrap_err();
        assert!(format!("{e:#}").contains("HOST KEY CHANGED"), "{e:#}");
        assert_eq!(r.0.load(Ordering::SeqCst), 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
