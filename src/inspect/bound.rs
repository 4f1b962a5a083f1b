//! How long a reached host's reads may take in all, for the commands that
//! only look (`status`, `status --history`, `check`): a host whose commands
//! hang (a wedged `/nix` under `df` or `readlink`, a stuck sshd session)
//! held the whole command, with no output for any host. Past the bound the
//! host is said to hang, naming the read that did not answer, and the
//! others are shown. One bound for all of a host's reads, not one each: a
//! host that hangs costs the command 30 s, not 30 s a read. A rollback's
//! reads before its prompt (each host's target, its re-check after the
//! lock, the preview) are bounded alike: the host is refused, or shown
//! without its diff, and the rest of the fleet goes on.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How long one host's reads may take in all, once it is reached.
pub const READS_WITHIN: Duration = Duration::from_secs(30);

/// When a host reached now must have answered all its reads.
pub fn deadline() -> Instant {
    Instant::now() + READS_WITHIN
}

/// `read`, unless `by` passes first: then an error saying `what` did not
/// answer (and every read after it fails at once: a host's reads share
/// the bound).
pub async fn bounded<T>(
    by: Instant,
    what: &str,
    read: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout_at(by, read).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!(
            "{what}: no answer within {} s (the host's commands hang: look on the host for what blocks them, such as a wedged /nix)",
            READS_WITHIN.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read that hangs is given up when the host's bound passes, said
    /// with what it was; the reads after it fail at once (one bound for
    /// the host, not one per read).
    #[tokio::test(start_paused = true)]
    async fn a_hanging_read_is_given_up_and_said() {
        let started = Instant::now();
        let by = started + READS_WITHIN;
        let pending = std::future::pending::<anyhow::Result<()>>;
        let hung = bounded(by, "reading the links", pending()).await;
        let e = format!("{:#}", hung.unwrap_err());
        assert!(
            e.contains("reading the links: no answer within 30 s"),
            "{e}"
        );
        assert_eq!(started.elapsed(), READS_WITHIN);
        let next = bounded(by, "reading the records", pending()).await;
        assert!(next.is_err());
        assert_eq!(started.elapsed(), READS_WITHIN);
        let quick = bounded(started + READS_WITHIN * 2, "-", async { Ok(7) }).await;
        assert_eq!(quick.unwrap(), 7);
    }
}
