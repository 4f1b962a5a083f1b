//! Does a NEW connection reach the host? sshd keeps the sessions it
//! already has when it is stopped or reconfigured (`KillMode=process`), and
//! a firewall may drop only new connections: the run's own session working
//! proves nothing about the next login. Tried every [`RETRY`] within a
//! window: a handshake refused while sshd restarts is not a lockout. A
//! login the host rejects is tried [`MAX_REJECTED_LOGINS`] times at most,
//! [`REJECTED_LOGIN_SPACING`] apart: more, or closer, would get this
//! machine blocked there.
//!
//! Used after a live switch (magic rollback's confirmation, see
//! [`super::pipeline`]) and after a wave's soak (a candidate that locks SSH
//! out later, a timer restarting sshd into a bad config, is caught there
//! and taken back, its known-good mark revoked).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::links;
use super::pipeline::Reconnect;
use crate::nix::StorePath;
use crate::remote::Remote;

/// Between two attempts at a new connection.
pub(crate) const RETRY: Duration = Duration::from_secs(2);

/// A new connection's read, once its handshake is done.
pub(crate) const READS_BOUND: Duration = Duration::from_secs(10);

pub use crate::remote::patient::{MAX_REJECTED_LOGINS, REJECTED_LOGIN_SPACING, retry_wait};

/// Why no new connection reached the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreached {
    /// The last try's error.
    pub error: String,
    /// Every try failed on the controller's side, not the host's
    /// ([`crate::ssh::ConnectError::is_controllers_own`]: no key to offer,
    /// an agent gone, a jump host unreachable): it says nothing of the host.
    /// Not tried again when it lasts (no key to offer); a jump host's
    /// timeout is. One try the host failed makes it the host's.
    pub controllers_own: bool,
}

/// New connections tried every [`RETRY`] for `within`, until one reads
/// the host's running system (`current_system`, the link): that is
/// returned. `Err`: why the last try failed (no connection, or no answer
/// over it), the controller's own only when every try failed on this side:
/// one bastion hiccup, then a login that hung until the window closed,
/// read as this side's, and the soak kept a locked-out host known-good.
/// [`MAX_REJECTED_LOGINS`] logins rejected end the window early; a try
/// after a rejected one waits [`REJECTED_LOGIN_SPACING`] ([`retry_wait`]).
pub async fn new_connection<R: Remote>(
    fresh: &dyn Reconnect<R>,
    current_system: &str,
    within: Duration,
) -> Result<Option<StorePath>, Unreached> {
    new_connection_after(fresh, current_system, within, 0).await
}

/// [`new_connection`] after `rejected` logins the host rejected earlier in
/// the same run ([`Counted`]): they count against [`MAX_REJECTED_LOGINS`],
/// but one try is always made (a rollback's proof after a confirm that
/// spent them: the revert usually gave the key back, and that login is
/// accepted). fail2ban counts every rejected login from an address (5
/// within 10 minutes by default): a confirm that spent its 3 and a proof
/// that then tried 3 more got the controller banned from exactly the host
/// that needed a person; one more is 4 at most, and sshd's penalties (5 s
/// each) have decayed over the confirm window by then.
pub async fn new_connection_after<R: Remote>(
    fresh: &dyn Reconnect<R>,
    current_system: &str,
    within: Duration,
    rejected: u32,
) -> Result<Option<StorePath>, Unreached> {
    let mut rejected = rejected.min(MAX_REJECTED_LOGINS - 1);
    let end = tokio::time::Instant::now() + within;
    let mut last: Option<Failed> = None;
    let mut hosts_part = false;
    loop {
        let failed = match once(fresh, current_system, end).await {
            Ok(running) => return Ok(running),
            Err(Some(f)) => f,
            Err(None) => return Err(cut_off(last, hosts_part)),
        };
        hosts_part |= !failed.unreached.controllers_own;
        rejected += u32::from(failed.login_rejected);
        let own_for_good = failed.unreached.controllers_own && failed.lasting;
        let enough = own_for_good || rejected >= MAX_REJECTED_LOGINS;
        let wait = retry_wait(failed.login_rejected, RETRY);
        if enough || tokio::time::Instant::now() + wait >= end {
            let mut unreached = failed.unreached;
            unreached.controllers_own = !hosts_part;
            return Err(unreached);
        }
        last = Some(failed);
        tokio::time::sleep(wait).await;
    }
}

/// The run's [`Reconnect`], counting the logins the host rejected over
/// it: every new connection of a host's run goes through it (the confirm,
/// the look for a revert, a rollback's proof), so the proof knows what the
/// confirm spent ([`new_connection_after`]). At the host's own address or
/// its `confirm_address` alike: a ban on either address is the
/// controller's, and the count errs towards fewer logins.
pub(crate) struct Counted<'a, R> {
    inner: &'a dyn Reconnect<R>,
    rejected: AtomicU32,
}

impl<'a, R> Counted<'a, R> {
    pub(crate) fn new(inner: &'a dyn Reconnect<R>) -> Self {
        Counted {
            inner,
            rejected: AtomicU32::new(0),
        }
    }

    /// Logins the host rejected so far in this run.
    pub(crate) fn rejected(&self) -> u32 {
        self.rejected.load(Ordering::SeqCst)
    }

    fn count<T>(&self, connected: &anyhow::Result<T>) {
        if let Err(e) = connected
            && login_rejected(e)
        {
            self.rejected.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl<R> Reconnect<R> for Counted<'_, R> {
    fn fresh(&self) -> Pin<Box<dyn Future<Output = anyhow::Result<R>> + Send + '_>> {
        Box::pin(async move {
            let connected = self.inner.fresh().await;
            self.count(&connected);
            connected
        })
    }

    fn fresh_as_before(&self) -> Pin<Box<dyn Future<Output = anyhow::Result<R>> + Send + '_>> {
        Box::pin(async move {
            let connected = self.inner.fresh_as_before().await;
            self.count(&connected);
            connected
        })
    }
}

/// Why no try got in when the window's end cut one short: the try before
/// says why if it hung too (a bastion timing out each try is still not
/// the host's); a try that hung after one that failed fast is the host's,
/// as is a window no try failed in.
fn cut_off(last: Option<Failed>, hosts_part: bool) -> Unreached {
    match last {
        Some(f) => Unreached {
            controllers_own: f.hung && !hosts_part,
            error: f.unreached.error,
        },
        None => Unreached {
            error: "no new connection within the window".to_owned(),
            controllers_own: false,
        },
    }
}

/// One try's failure.
struct Failed {
    unreached: Unreached,
    /// Waiting cannot change it ([`crate::ssh::ConnectError::is_lasting`]).
    lasting: bool,
    /// It waited out a timeout (nothing answered), rather than failing
    /// fast.
    hung: bool,
    /// A login refused ([`login_rejected`]).
    login_rejected: bool,
}

pub(crate) use crate::remote::patient::login_rejected;

/// One new connection, its handshake by `end` (a connection's own
/// `connect_timeout`, twice that through a jump host, would outlast the
/// window), and the link read over it (bounded by [`READS_BOUND`]).
/// `Err`: why not; `None` when the window ended first.
async fn once<R: Remote>(
    fresh: &dyn Reconnect<R>,
    current_system: &str,
    end: tokio::time::Instant,
) -> Result<Option<StorePath>, Option<Failed>> {
    let host = |error: String, hung| {
        let unreached = Unreached {
            error,
            controllers_own: false,
        };
        Some(Failed {
            unreached,
            lasting: false,
            hung,
            login_rejected: false,
        })
    };
    let remote = match tokio::time::timeout_at(end, fresh.fresh()).await {
        Ok(Ok(remote)) => remote,
        Ok(Err(e)) => {
            use crate::ssh::ConnectError;
            let ce = crate::remote::patient::connect_error(&e);
            let unreached = Unreached {
                error: format!("{e:#}"),
                controllers_own: ce.is_some_and(ConnectError::is_controllers_own),
            };
            return Err(Some(Failed {
                unreached,
                lasting: ce.is_some_and(ConnectError::is_lasting),
                hung: ce.is_some_and(ConnectError::is_timeout),
                login_rejected: login_rejected(&e),
            }));
        }
        Err(_) => return Err(None),
    };
    let read = links::read_store_link(&remote, current_system);
    match tokio::time::timeout(READS_BOUND, read).await {
        Ok(read) => read.map_err(|e| host(format!("{e:#}"), false)),
        Err(_) => Err(host(
            format!("a new connection's read took over {READS_BOUND:?}"),
            true,
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::remote::scripted::ScriptedRemote;
    use crate::ssh::{ConnectError, ConnectStage};

    /// Fails every new connection with `err()` after `takes`, counting the
    /// tries.
    struct Failing<F>(F, AtomicU32, Duration);

    impl<F: Fn() -> ConnectError + Send + Sync> Reconnect<ScriptedRemote> for Failing<F> {
        fn fresh(
            &self,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = anyhow::Result<ScriptedRemote>> + Send + '_>,
        > {
            self.1.fetch_add(1, Ordering::SeqCst);
            let (e, takes) = (anyhow::Error::new((self.0)()), self.2);
            Box::pin(async move {
                tokio::time::sleep(takes).await;
                Err(e)
            })
        }
    }

    /// Not the host's failure either way; no key to offer is not tried
    /// again (waiting cannot bring one), a jump host's timeout is, for the
    /// whole window (a bastion restarting must not end the look at once).
    #[tokio::test(start_paused = true)]
    async fn a_lasting_failure_of_our_own_ends_the_tries_a_passing_one_does_not() {
        let no_key = Failing(
            || ConnectError::AuthFailed {
                target: "web1".into(),
                user: "root".into(),
                tried: Vec::new(),
            },
            AtomicU32::new(0),
            Duration::ZERO,
        );
        let within = Duration::from_secs(10);
        let u = new_connection(&no_key, "/run/current-system", within)
            .await
            .unwrap_err();
        assert!(u.controllers_own);
        assert_eq!(no_key.1.load(Ordering::SeqCst), 1);
        // Each try times out after 5 s (a bastion not answering): the
        // window's end cuts the second short, and the failure before it
        // says why (it read as the host's when the cut-off try was taken).
        let bastion = Failing(
            || ConnectError::Jump {
                target: "web1".into(),
                source: Box::new(ConnectError::Timeout {
                    target: "bastion".into(),
                    addr: "10.0.0.9:22".into(),
                    stage: ConnectStage::Tcp,
                    timeout: Duration::from_secs(5),
                }),
            },
            AtomicU32::new(0),
            Duration::from_secs(5),
        );
        let u = new_connection(&bastion, "/run/current-system", within)
            .await
            .unwrap_err();
        assert!(u.controllers_own, "{u:?}");
        assert!(
            bastion.1.load(Ordering::SeqCst) >= 2,
            "tried again within the window"
        );
    }

    /// A host that rejects the key every time (its candidate dropped the
    /// user's authorized key): a few logins, not one every 2 s for the
    /// window (30 of them got this machine blocked by sshd's
    /// PerSourcePenalties and fail2ban), and the host's failure. The few
    /// span 10 s (5 s apart, not 2 s): a key lookup restarting (sssd, an
    /// `AuthorizedKeysCommand`) rejects the key that long, and the window
    /// ended 4 s in.
    #[tokio::test(start_paused = true)]
    async fn a_host_rejecting_the_login_is_tried_a_few_times_only() {
        let rejecting = Failing(
            || ConnectError::AuthFailed {
                target: "web1".into(),
                user: "deploy".into(),
                tried: vec!["agent key ed25519 (SHA256:x): rejected".into()],
            },
            AtomicU32::new(0),
            Duration::from_millis(300),
        );
        let started = tokio::time::Instant::now();
        let within = Duration::from_secs(60);
        let u = new_connection(&rejecting, "/run/current-system", within)
            .await
            .unwrap_err();
        assert!(!u.controllers_own, "{u:?}");
        assert!(u.error.contains("authentication as deploy failed"), "{u:?}");
        assert_eq!(rejecting.1.load(Ordering::SeqCst), MAX_REJECTED_LOGINS);
        // Three tries of 0.3 s, 5 s apart: ended at 10.9 s, not at 60 s.
        assert_eq!(started.elapsed(), Duration::from_millis(10_900));
    }

    /// Fails the first try with `first()`, at once; every later try with
    /// `then()`, or hangs when there is none.
    struct Sequence<A, B>(A, Option<B>, AtomicU32);

    impl<A, B> Reconnect<ScriptedRemote> for Sequence<A, B>
    where
        A: Fn() -> ConnectError + Send + Sync,
        B: Fn() -> ConnectError + Send + Sync,
    {
        fn fresh(
            &self,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = anyhow::Result<ScriptedRemote>> + Send + '_>,
        > {
            let n = self.2.fetch_add(1, Ordering::SeqCst);
            let e = match (n, &self.1) {
                (0, _) => Some((self.0)()),
                (_, Some(then)) => Some(then()),
                (_, None) => None,
            };
            Box::pin(async move {
                match e {
                    Some(e) => Err(anyhow::Error::new(e)),
                    None => std::future::pending().await,
                }
            })
        }
    }

    fn jump_refused() -> ConnectError {
        ConnectError::Jump {
            target: "web1".into(),
            source: Box::new(ConnectError::Unreachable {
                target: "bastion".into(),
                addr: "10.0.0.9:22".into(),
                source: std::io::ErrorKind::ConnectionRefused.into(),
            }),
        }
    }

    fn host_timeout() -> ConnectError {
        ConnectError::Timeout {
            target: "web1".into(),
            addr: "10.0.0.1:22".into(),
            stage: ConnectStage::Handshake,
            timeout: Duration::from_secs(1),
        }
    }

    /// The whole window is judged, not its last try: a bastion hiccup
    /// then a login hanging until the window closed read as this side's
    /// (the soak kept a locked-out host known-good); a host that failed a
    /// try, then a bastion that refused, too.
    #[tokio::test(start_paused = true)]
    async fn one_try_the_host_failed_makes_the_window_the_hosts() {
        let within = Duration::from_secs(10);
        let hiccup_then_hang = Sequence(
            jump_refused,
            None::<fn() -> ConnectError>,
            AtomicU32::new(0),
        );
        let u = new_connection(&hiccup_then_hang, "/run/current-system", within)
            .await
            .unwrap_err();
        assert!(!u.controllers_own, "{u:?}");
        let host_then_bastion = Sequence(host_timeout, Some(jump_refused), AtomicU32::new(0));
        let u = new_connection(&host_then_bastion, "/run/current-system", within)
            .await
            .unwrap_err();
        assert!(!u.controllers_own, "{u:?}");
        assert!(host_then_bastion.2.load(Ordering::SeqCst) >= 3);
        // Every try the bastion's: this side's, as before.
        let bastion = Sequence(jump_refused, Some(jump_refused), AtomicU32::new(0));
        let u = new_connection(&bastion, "/run/current-system", within)
            .await
            .unwrap_err();
        assert!(u.controllers_own, "{u:?}");
    }
}
