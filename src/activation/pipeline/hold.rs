//! The run's hold on its host, as the pipeline sees it: the per-host lock
//! ([`crate::activation::host_lock`]) is asked before every step that
//! changes the host.
//!
//! The lock rides the host's shared SSH connection. A controller suspended
//! past the lock's lease (a laptop's lid closed: its clock stops, the
//! host's does not), or cut off by a partition as long, loses it, and the
//! session reconnects by itself for the next command: without a look here,
//! a run back hours later went on where it was, over a host another run
//! had taken since (that run's `settle` ran this one's armed revert,
//! deployed its own candidate and marked it), and persisted this run's
//! candidate as the boot default under it, marked it known-good, or rolled
//! the host back. Now a lost lock is taken again, and the host read, before
//! the step: held by another run, or moved since this run left it, the
//! host is left as it is.
//!
//! A held lock costs nothing (a flag the lock's keeper sets): the common
//! path has no round trip more (issue 21 counts every one); a lock lost
//! and taken again costs one read of the three links the run started from.

use std::future::Future;
use std::pin::Pin;

use super::*;

/// The run's hold on the host being activated.
pub trait HostHold: Send + Sync {
    /// Is the host's lock still held? Answered without a round trip.
    fn held(&self) -> bool;

    /// The lock was lost: take it again (waiting out this run's own lock
    /// command while its lease runs, if it holds on). `Err`: not taken.
    fn take_again(&self) -> Pin<Box<dyn Future<Output = Result<(), NotTaken>> + Send + '_>>;
}

/// Why a lost lock was not taken again: another run holds it (`holder`),
/// or the lock command failed (`error`: the host unreachable still).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotTaken {
    pub holder: Option<String>,
    pub error: Option<String>,
}

/// No lock to keep (a run made without locks: library use, the end-to-end
/// tests, a rollback the caller serialises by other means).
pub struct Unlocked;

impl HostHold for Unlocked {
    fn held(&self) -> bool {
        true
    }

    fn take_again(&self) -> Pin<Box<dyn Future<Output = Result<(), NotTaken>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }
}

/// What the next step needs of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// A step on the straight line (the fire, a persist, the mark, a
    /// profile correction, keys, a reboot): the host exactly as this run
    /// left it.
    Change,
    /// A rollback after a failure: the switch that failed may or may not
    /// have flipped the links, so each may be where this run found it or
    /// on the candidate; anything else was put there by someone else.
    RollBack,
}

/// Why the run leaves the host alone.
enum Leave {
    /// The lock could not be taken again.
    NotTaken(NotTaken),
    /// Taken again; the host runs `now` and is not as this run left it.
    Moved(Option<StorePath>),
}

/// How many times a lock lost again while the host was read (a link that
/// keeps dropping) is taken again before the host is left alone.
const TRIES: usize = 3;

impl<R: Remote> Run<'_, R> {
    /// Before a step that changes the host: is it still this run's? The
    /// lock held, yes at once. Lost, it is taken again and the host's
    /// links read: as this run left them (see [`Next`]), yes. Else the
    /// host's end (nothing more is done to it, no rollback); `gate`: the
    /// gate that fails when the run had not changed the host yet.
    pub(super) async fn still_ours(&mut self, gate: Gate, next: Next) -> Result<(), HostOutcome> {
        if self.hold.held() {
            return Ok(());
        }
        for _ in 0..TRIES {
            self.step(Step::TakeLockAgain);
            let leave = match self.hold.take_again().await {
                Err(not) => Leave::NotTaken(not),
                Ok(()) => match self.read_links().await {
                    // Held still after the read: a drop during it let go
                    // again (taken again, read again).
                    Ok(l) if self.as_left(&l, next) && self.hold.held() => return Ok(()),
                    Ok(l) if self.as_left(&l, next) => continue,
                    // Taken again, the host on states of this run's own
                    // (what it found, its candidate) but not as the step
                    // needs: it went back by itself (a reboot onto its
                    // boot default lost the lock with its connection), not
                    // someone else's doing. Rolled back, which verifies
                    // where it is (it read `moved-by-other`, "needs a
                    // person", in the fault matrix).
                    Ok(l) if next == Next::Change && self.as_left(&l, Next::RollBack) => {
                        let reason = FailureReason::Remote {
                            step: "take the host's lock again",
                            error: format!(
                                "the host runs {}, not as this run left it (rebooted?)",
                                l[0].as_ref().map_or("nothing readable", |p| p.as_str())
                            ),
                        };
                        return Err(Box::pin(self.fail_and_rollback(gate, reason, None)).await);
                    }
                    Ok([now, ..]) => Leave::Moved(now),
                    Err(e) => Leave::NotTaken(NotTaken {
                        holder: None,
                        error: Some(format!("{e:#}")),
                    }),
                },
            };
            return Err(self.leave(gate, leave).await);
        }
        let again = NotTaken {
            holder: None,
            error: Some(format!("lost again each of {TRIES} times it was taken")),
        };
        Err(self.leave(gate, Leave::NotTaken(again)).await)
    }

    /// The three links the run started from, in one command.
    async fn read_links(&self) -> anyhow::Result<[Option<StorePath>; 3]> {
        let (links, cmd) = (self.start_links(), self.start_read());
        let read = links::read_store_links_by(self.remote, &cmd, &links);
        let read = bounded("read the host's links", STEP_LIMIT, read).await?;
        read.try_into()
            .map_err(|_| anyhow::anyhow!("reading three links gave another count"))
    }

    /// Are `[current, profile, known_good]` where this run left them?
    fn as_left(&self, [current, profile, known_good]: &[Option<StorePath>; 3], next: Next) -> bool {
        let cand = Some(&self.req.candidate);
        let (current, profile, known_good) = (current.as_ref(), profile.as_ref(), known_good);
        let before = Some(&self.pre_current);
        let live = if self.live_changed { cand } else { before };
        let boot = if self.profile_set {
            cand
        } else {
            self.pre_profile.as_ref()
        };
        match next {
            Next::Change => current == live && profile == boot && *known_good == self.known_good,
            Next::RollBack => {
                (current == before || current == cand)
                    && (profile == self.pre_profile.as_ref() || profile == cand)
                    && (*known_good == self.known_good || known_good.as_ref() == cand)
            }
        }
    }

    /// The host's end when the run leaves it alone. Before this run changed
    /// it: `gate` failed, nothing changed. After: another run has it, or
    /// moved it (`moved-by-other`, with what it runs), or that could not be
    /// told (`unreachable`: the lock not taken again, or the host unread).
    async fn leave(&mut self, gate: Gate, leave: Leave) -> HostOutcome {
        let (holder, error, now) = match leave {
            Leave::NotTaken(NotTaken { holder, error }) => (holder, error, None),
            Leave::Moved(now) => (None, None, now),
        };
        if !(self.live_changed || self.boot_changed || self.profile_set) {
            return self.fail_clean(gate, FailureReason::LockLost { holder, error });
        }
        // Held by another run: what it runs, read (a read changes nothing).
        let now = match (&holder, now) {
            (Some(_), _) => self.read_links().await.ok().and_then(|[now, ..]| now),
            (None, now) => now,
        };
        let cause = CutOff::LockLost { holder, error };
        match now {
            Some(now) => HostOutcome::MovedByOther {
                cause,
                now,
                record: None,
            },
            None => HostOutcome::Unreachable {
                cause,
                last_seen: if self.live_changed {
                    self.req.candidate.clone()
                } else {
                    self.pre_current.clone()
                },
                revert_due: self.armed.is_some(),
            },
        }
    }
}
