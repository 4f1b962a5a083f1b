//! A rollback from a lockout, proven over a new connection.
//!
//! A candidate that locks SSH out (sshd stopped or reconfigured, a
//! firewall dropping new connections, the run's key dropped) leaves the
//! run's own session working: sshd keeps established sessions
//! (`KillMode=process`). The host's own revert, or the controller's
//! rollback, was then read over that session, or over a new connection
//! opened before the controller's rollback ran: proof that the links went
//! back, not that the host takes new connections again. A host the
//! rollback left locked out (a firewall rule or an sshd setting the old
//! system does not put back) was reported rolled back, or "taken back by
//! itself, verified over a new connection", as if healthy.
//!
//! So a rollback from a lockout ([`CutOff::NoNewConnection`]) counts as
//! verified only once a new connection at the host's own address
//! ([`Reconnect::fresh_as_before`]: the system it went back to answers
//! there, not at a `confirm_address`) reads it on its target, tried for
//! the host's new-connection window; none does: [`RollbackError::Unconfirmed`],
//! the host needs a person. A window whose every try failed on the
//! controller's side (no key to offer) says nothing of the host: a
//! warning, as after a soak. A host the look after its revert saw back
//! over a new connection is proven already, and every other rollback goes
//! without: no handshake more on the common path.

use super::*;
use crate::activation::CutOff;
use crate::activation::deadman::RevertRecord;
use crate::activation::reach;
use crate::activation::reactivate::RollbackError;

/// Is `cause` the host refusing new connections?
pub(super) fn is_lockout(cause: &CutOff) -> bool {
    matches!(cause, CutOff::NoNewConnection { .. })
}

impl<R: Remote> Run<'_, R> {
    /// New connections at the host's own address, for the host's window,
    /// until one reads the running system ([`reach::new_connection_after`]):
    /// `to`, or why not. The logins the host rejected earlier in the run
    /// (the confirm's, the look's) count: once it rejected
    /// [`reach::MAX_REJECTED_LOGINS`], one try is made, no more (a
    /// candidate that dropped the run's key, then 3 more logins here, got
    /// the controller banned by fail2ban).
    async fn reached_back(&self, to: &StorePath) -> Result<(), CutOff> {
        let window = self.s.new_connection_within;
        self.step(Step::ConfirmNewConnection { within: window });
        let current_system = &self.s.paths.current_system;
        let before = AsBefore(self.fresh);
        let rejected = self.fresh.rejected();
        match reach::new_connection_after(&before, current_system, window, rejected).await {
            Ok(now) if now.as_ref() == Some(to) => Ok(()),
            Ok(seen) => Err(CutOff::NotOnCandidate { seen }),
            Err(u) if u.controllers_own => {
                let warning = Warning::NewConnectionUnproven { error: u.error };
                (self.emit)(ActivationEvent::Warning { warning });
                Ok(())
            }
            Err(u) => Err(CutOff::NoNewConnection {
                error: u.error,
                controllers_own: false,
            }),
        }
    }

    /// The controller's rollback as it ended, proven over a new connection
    /// when it was from a lockout (`self.lockout`; a live one: a boot-only
    /// rollback changes nothing that runs).
    pub(super) async fn proven(&self, outcome: RollbackOutcome) -> RollbackOutcome {
        let RollbackOutcome::RolledBack { to, mode, .. } = &outcome else {
            return outcome;
        };
        if !self.lockout || !mode.changes_running_system() {
            return outcome;
        }
        match self.reached_back(to).await {
            Ok(()) => outcome,
            Err(cut) => RollbackOutcome::Failed {
                to: to.clone(),
                mode: *mode,
                error: RollbackError::Unconfirmed(cut),
            },
        }
    }

    /// The host took itself back to what it ran (its revert's `record`),
    /// as read over the run's own session or a connection opened before
    /// the revert ran: proven over a new connection first when `cause` is
    /// a lockout.
    pub(super) async fn reverted_by_host(
        &self,
        cause: CutOff,
        record: Option<RevertRecord>,
    ) -> HostOutcome {
        let to = self.pre_current.clone();
        if is_lockout(&cause)
            && let Err(cut) = self.reached_back(&to).await
        {
            let reason = FailureReason::unconfirmed(&cause);
            (self.emit)(ActivationEvent::GateFailed {
                gate: Gate::LiveActivate,
                reason: reason.clone(),
            });
            return HostOutcome::RollbackFailed {
                gate: Gate::LiveActivate,
                reason,
                to,
                rollback_error: RollbackError::Unconfirmed(cut),
            };
        }
        HostOutcome::RevertedByHost { cause, to, record }
    }
}

/// [`Reconnect::fresh_as_before`] as the [`Reconnect`] that
/// [`reach::new_connection`] takes.
struct AsBefore<'a, R>(&'a dyn Reconnect<R>);

impl<R> Reconnect<R> for AsBefore<'_, R> {
    fn fresh(&self) -> Pin<Box<dyn Future<Output = anyhow::Result<R>> + Send + '_>> {
        self.0.fresh_as_before()
    }
}
