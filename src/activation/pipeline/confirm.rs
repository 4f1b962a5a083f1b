//! The pipeline's side of magic rollback (see [`crate::activation::deadman`]):
//! arm before the live switch, confirm over a new connection after it,
//! disarm; or, cut off, wait for the host's own revert and look.

use std::time::Duration;

use super::*;
use crate::activation::deadman::{self, Armed, Revert};
use crate::activation::reach;

// Between two attempts at a new connection (longer after a rejected
// login); a look's two reads over a new connection, once its handshake is
// done; logins rejected before no more are tried.
use crate::activation::reach::{MAX_REJECTED_LOGINS, READS_BOUND, RETRY, retry_wait};

/// How long after the controller counts it due a revert shows its mark at
/// the latest: the timer's accuracy (1 s), half a round trip of the arm,
/// the arm's wait for the job dir's lock (up to 10 s) and a busy D-Bus
/// behind `systemd-run`, the script's first line. Not seen by then, with
/// the link on what the host ran, it will not come (a disarm ran, its
/// answer lost); stopping one that was only late costs the host nothing
/// the controller's verified rollback does not redo.
const REVERT_FIRES_WITHIN: Duration = Duration::from_secs(30);

/// How long before its revert is due a disarm stops trying: the revert
/// must not start while the controller rolls back itself.
const DISARM_MARGIN: Duration = Duration::from_secs(15);

/// The first try at confirming, before the revert is shortened: a new
/// connection's handshake is 6-7 round trips (1.1 s at 150 ms RTT), the
/// confirm one more; on the test fleet a good host confirms 0.1-0.6 s
/// after its switch settled. At most a quarter of the window.
const FIRST_TRY: Duration = Duration::from_secs(5);

fn first_try_bound(window: Duration) -> Duration {
    FIRST_TRY.min(window / 4)
}

impl<R: Remote> Run<'_, R> {
    /// Before a live switch, with magic rollback on: arm the host's revert
    /// for the whole activation budget plus the confirm window. A host that
    /// cannot be armed is not switched. On Linux the fire arms it (once the
    /// switch lock is free, before anything else: see
    /// [`crate::activation::switch::FIRE_LINUX`]), each attempt for what is
    /// left until the one due time (a re-fire keeps an earlier attempt's
    /// timer, armed for the same); on Darwin a command of its own does.
    pub(super) async fn arm(&mut self, job: SwitchJob) -> Result<SwitchJob, HostOutcome> {
        let Some(confirm) = self.s.confirm_timeout else {
            return Ok(job);
        };
        let fires_after = self.s.activation_timeout.saturating_add(confirm);
        let armed = Armed::for_run(&self.req.run_id, self.s.os, &self.s.paths, fires_after);
        self.step(Step::ArmRevert {
            unit: armed.unit.clone(),
            after: fires_after,
        });
        let revert = self.revert_plan(&job);
        let at = tokio::time::Instant::now();
        if self.s.os == Os::Linux {
            let due = at + fires_after;
            let arm = deadman::fire_arm(&armed, &self.req.run_id, &self.s.paths, &revert, due);
            self.armed = Some((armed, due));
            return Ok(job.arming(arm));
        }
        match deadman::arm(
            self.remote,
            &armed,
            deadman::Arming::Fresh,
            &self.req.run_id,
            &self.s.paths,
            &revert,
            self.s.sudo,
        )
        .await
        {
            Ok(()) => {
                self.armed = Some((armed, at + fires_after));
                Ok(job)
            }
            Err(e) => {
                if self.profile_set {
                    self.self_correct_to_previous().await;
                }
                Err(self.fail_clean(Gate::LiveActivate, remote_err("arm the dead-man revert", e)))
            }
        }
    }

    /// The fire could not arm the revert (Linux): nothing fired, nothing
    /// is armed; the profile, counted set by the fire, is looked at.
    pub(super) async fn arm_failed(&mut self, error: String) -> HostOutcome {
        self.armed = None;
        if self.profile_set {
            self.self_correct_to_previous().await;
        }
        let reason = FailureReason::Remote {
            step: "arm the dead-man revert",
            error,
        };
        self.fail_clean(Gate::LiveActivate, reason)
    }

    /// What the host puts back: the system it ran, and the boot default it
    /// had when this deploy already moved it (goal `switch`).
    fn revert_plan(&self, job: &SwitchJob) -> Revert {
        Revert {
            previous: self.pre_current.clone(),
            candidate: self.req.candidate.clone(),
            profile: self.s.system_profile.clone(),
            boot_before: if self.profile_set || job.sets_profile.is_some() {
                self.pre_profile.clone()
            } else {
                None
            },
            // The first name: the revert stops it and each `-tryN` (a
            // re-arm after a re-fire got the attempt's name, and left the
            // first, refused yet maybe queued, alone).
            switch_unit: job.base_unit().to_owned(),
            switch_dir: job.job_dir.clone(),
        }
    }

    /// After the switch settled: prove a NEW connection reaches the host on
    /// the candidate, and disarm over it. The first try's handshake gets
    /// [`first_try_bound`]; only a host not confirmed by then has its revert
    /// shortened to `confirm_timeout` over the run's own session (the
    /// handshake goes on meanwhile), and is tried again until just before
    /// that is due. `Err`: the host is taken back (or lost). `job` is the
    /// switch that ran (its unit is stopped by a revert).
    ///
    /// Shortening only when needed (issue 21 item 3): the re-arm stopped a
    /// timer and started another on every host, 35 ms of a light host's
    /// CPU per push (`CHANGE=package scripts/bench-fleet hostcpu`, the
    /// largest of the dead-man's commands), for hosts whose first new
    /// connection confirms within 0.1-0.6 s of the switch settling. A host
    /// that locked SSH out is reverted [`first_try_bound`] later at most
    /// (none when it refuses connections: the first try fails at once;
    /// twice that when it completes a handshake and never answers).
    pub(super) async fn confirm(&mut self, job: &SwitchJob) -> Result<(), HostOutcome> {
        let Some((armed, due)) = self.armed.clone() else {
            return self.confirm_unarmed().await;
        };
        let window = self.s.confirm_timeout.unwrap_or_default();
        self.step(Step::ConfirmNewConnection { within: window });
        let revert = self.revert_plan(job);
        let first = self.first_try(&armed, &revert, window).await;
        let mut shortened = None;
        if let Some((sent, rearmed)) = first.shortened {
            shortened = Some(self.note_rearm(&armed, sent + window, rearmed, due));
        }
        match first.result {
            Ok(()) => {
                self.armed = None;
                Ok(())
            }
            Err(Confirm::RevertBegan) => Err(self.await_revert(CutOff::RevertBegan).await),
            Err(Confirm::NotOnCandidate(seen)) => {
                // The host reverts within the window, not the whole budget.
                if shortened.is_none() {
                    self.shorten(&armed, &revert, window, due).await;
                }
                Err(self.await_revert(CutOff::NotOnCandidate { seen }).await)
            }
            Err(Confirm::Failed {
                error,
                login_rejected,
                controllers_own,
            }) => {
                // A first try's disarm that went unanswered may still run
                // on the host: it stops nothing armed after it was sent
                // (the host's arming number, see `Armed::generation`).
                let shortened = match shortened {
                    Some(s) => s,
                    None => self.shorten(&armed, &revert, window, due).await,
                };
                match shortened {
                    Shortened::Due(due) => {
                        let armed = armed.shorter(window);
                        let first = (error, controllers_own);
                        let rejected = u32::from(login_rejected);
                        self.retry_confirm(&armed, due, first, rejected).await
                    }
                    Shortened::TooLate => Err(self.await_revert(CutOff::RevertBegan).await),
                }
            }
        }
    }

    /// The first try: a new connection's handshake within
    /// [`first_try_bound`], then the link's read and the guarded disarm
    /// within as long again. A handshake still under way by then goes on
    /// while the revert is shortened over the run's own session, and
    /// confirms within the shorter window.
    async fn first_try(&self, armed: &Armed, revert: &Revert, window: Duration) -> FirstTry {
        let bound = first_try_bound(window);
        let mut handshake = std::pin::pin!(self.fresh.fresh());
        if let Ok(fresh) = tokio::time::timeout(bound, &mut handshake).await {
            return match tokio::time::timeout(bound, self.confirm_once(fresh, armed)).await {
                Ok(result) => FirstTry {
                    result,
                    shortened: None,
                },
                Err(_) => FirstTry {
                    result: Err(Confirm::failed(format!(
                        "no answer over the new connection within {} s",
                        bound.as_secs_f64()
                    ))),
                    shortened: None,
                },
            };
        }
        let sent = tokio::time::Instant::now();
        let due = sent + window;
        let stop_at = due.checked_sub(RETRY).unwrap_or(due);
        let late = || "no confirmation before the host's revert was due".to_owned();
        let mut rearm = std::pin::pin!(self.rearm(armed, revert, window));
        let mut fresh = std::pin::pin!(tokio::time::timeout_at(stop_at, handshake));
        let (rearmed, fresh) = tokio::select! {
            rearmed = &mut rearm => {
                // Too late to shorten: the revert is under way, and no
                // handshake can confirm any more.
                if rearmed.as_ref().is_err_and(began) {
                    return FirstTry {
                        result: Err(Confirm::RevertBegan),
                        shortened: Some((sent, rearmed)),
                    };
                }
                (rearmed, fresh.await)
            }
            fresh = &mut fresh => (rearm.await, fresh),
        };
        let result = match fresh {
            Ok(fresh) => {
                tokio::time::timeout_at(stop_at, self.confirm_once(fresh, &armed.shorter(window)))
                    .await
                    .unwrap_or_else(|_| Err(Confirm::failed(late())))
            }
            Err(_) => Err(Confirm::failed(late())),
        };
        FirstTry {
            result,
            shortened: Some((sent, rearmed)),
        }
    }

    /// Re-arm the revert, due `window` after this is sent (the host counts
    /// from when it gets it), over the run's own session.
    async fn rearm(&self, armed: &Armed, revert: &Revert, window: Duration) -> anyhow::Result<()> {
        deadman::arm(
            self.remote,
            &armed.shorter(window),
            deadman::Arming::Replace,
            &self.req.run_id,
            &self.s.paths,
            revert,
            self.s.sudo,
        )
        .await
    }

    /// What a re-arm sent to be `due` leaves armed, and until when to try
    /// confirming. Refused after the earlier timer was stopped: nothing is
    /// armed (confirm within the window all the same, then look over the
    /// run's own session: no revert comes). Too late (the first timer's
    /// revert is under way, left to run): it is due now. Failed otherwise:
    /// the first timer, due `before`, still stands, or the answer was lost
    /// (either way, later disarms name the re-arm's number: the host may
    /// have it).
    fn note_rearm(
        &mut self,
        armed: &Armed,
        due: tokio::time::Instant,
        rearmed: anyhow::Result<()>,
        before: tokio::time::Instant,
    ) -> Shortened {
        let shorter = armed.shorter(due.saturating_duration_since(tokio::time::Instant::now()));
        match rearmed {
            Ok(()) => self.armed = Some((shorter, due)),
            Err(e) if e.downcast_ref::<deadman::NothingArmed>().is_some() => self.armed = None,
            Err(e) if began(&e) => {
                self.armed = Some((shorter, tokio::time::Instant::now()));
                return Shortened::TooLate;
            }
            Err(_) => {
                self.armed = Some((shorter, before));
                return Shortened::Due(before);
            }
        }
        Shortened::Due(due)
    }

    /// Shorten the revert to `window` over the run's own session (see
    /// [`Self::note_rearm`]; `before`: when it is due now).
    async fn shorten(
        &mut self,
        armed: &Armed,
        revert: &Revert,
        window: Duration,
        before: tokio::time::Instant,
    ) -> Shortened {
        let sent = tokio::time::Instant::now();
        let rearmed = self.rearm(armed, revert, window).await;
        self.note_rearm(armed, sent + window, rearmed, before)
    }

    /// Try new connections until a moment before the revert is due: every
    /// attempt, its handshake included, ends by then. One that lands late
    /// anyway is told so by the host (the revert has begun) and changes
    /// nothing. `first`: why the first try did not confirm, and whether
    /// that was this machine's own failure (the cut-off is, when every try
    /// was: a try that timed out is the host's); `rejected`: logins the
    /// host rejected so far (the first try's). After
    /// [`MAX_REJECTED_LOGINS`] of them no more are tried (each counts
    /// against this machine's address there), the host rejecting the key
    /// that logged the run in before its switch, and its revert is waited
    /// for; a try after a rejected one waits longer ([`retry_wait`]).
    async fn retry_confirm(
        &mut self,
        armed: &Armed,
        due: tokio::time::Instant,
        (first, mut own): (String, bool),
        mut rejected: u32,
    ) -> Result<(), HostOutcome> {
        let stop_at = due.checked_sub(RETRY).unwrap_or(due);
        let mut error = first;
        let mut wait = retry_wait(rejected > 0, RETRY);
        while rejected < MAX_REJECTED_LOGINS && tokio::time::Instant::now() + wait < stop_at {
            tokio::time::sleep(wait).await;
            let attempt = async {
                let fresh = self.fresh.fresh().await;
                self.confirm_once(fresh, armed).await
            };
            error = match tokio::time::timeout_at(stop_at, attempt).await {
                Ok(Ok(())) => {
                    self.armed = None;
                    return Ok(());
                }
                Ok(Err(Confirm::NotOnCandidate(seen))) => {
                    return Err(self.await_revert(CutOff::NotOnCandidate { seen }).await);
                }
                Ok(Err(Confirm::RevertBegan)) => {
                    return Err(self.await_revert(CutOff::RevertBegan).await);
                }
                Ok(Err(Confirm::Failed {
                    error,
                    login_rejected,
                    controllers_own,
                })) => {
                    rejected += u32::from(login_rejected);
                    own &= controllers_own;
                    wait = retry_wait(login_rejected, RETRY);
                    error
                }
                Err(_) => {
                    own = false;
                    "no confirmation before the host's revert was due".to_owned()
                }
            };
        }
        let cause = CutOff::NoNewConnection {
            error,
            controllers_own: own,
        };
        Err(self.await_revert_after(cause, rejected).await)
    }

    /// Magic rollback off: nothing is armed, but the proof is the same. A
    /// host no new connection reaches on the candidate is not working
    /// (sshd keeps established sessions: the run's own proves nothing), and
    /// was certified known-good, its boot default moved, when this returned
    /// at once. Tried every [`RETRY`] for `new_connection_within`; not
    /// confirmed, the controller rolls the host back over the run's own
    /// session (no revert is there to do it).
    async fn confirm_unarmed(&mut self) -> Result<(), HostOutcome> {
        match self.reach_within().await {
            Ok(()) => Ok(()),
            Err(cause) => Err(self.roll_back_unconfirmed(cause).await),
        }
    }

    /// A host that ran the candidate before this run: there is no switch
    /// of this run to confirm, but what is certified must take new
    /// connections all the same. An earlier run's switch (aborted by a
    /// second Ctrl-C, it finished on its own) or one outside nixgate may
    /// have locked SSH out after this run's session was opened, and that
    /// session goes on (sshd keeps established ones): the host was marked
    /// known-good over it. Tried as the unarmed confirm is; not reached,
    /// the reason (this run changed nothing: nothing to roll back).
    pub(super) async fn reach_current(&mut self) -> Result<(), FailureReason> {
        self.reach_within()
            .await
            .map_err(|cause| FailureReason::unconfirmed(&cause))
    }

    /// New connections tried for `new_connection_within`, until one reads
    /// the candidate as the running system (one that reads another system
    /// ends it at once): [`reach::new_connection`].
    async fn reach_within(&mut self) -> Result<(), CutOff> {
        let window = self.s.new_connection_within;
        self.step(Step::ConfirmNewConnection { within: window });
        let current_system = &self.s.paths.current_system;
        match reach::new_connection(self.fresh, current_system, window).await {
            Ok(now) if now.as_ref() == Some(&self.req.candidate) => Ok(()),
            Ok(seen) => Err(CutOff::NotOnCandidate { seen }),
            Err(u) => Err(CutOff::NoNewConnection {
                error: u.error,
                controllers_own: u.controllers_own,
            }),
        }
    }

    /// Confirm over `fresh`, a new connection (or why it could not be made).
    /// The link's read and the disarm go in one round trip: the disarm is
    /// guarded on the host by the same read, so it never runs on a host
    /// found off the candidate (one round trip fewer per host at any RTT).
    async fn confirm_once(&self, fresh: anyhow::Result<R>, armed: &Armed) -> Result<(), Confirm> {
        let fresh = fresh.map_err(|e| Confirm::Failed {
            login_rejected: reach::login_rejected(&e),
            controllers_own: crate::remote::patient::connect_error(&e)
                .is_some_and(crate::ssh::ConnectError::is_controllers_own),
            error: format!("{e:#}"),
        })?;
        let link = &self.s.paths.current_system;
        let cand = &self.req.candidate;
        let disarm = deadman::disarm_command(armed, self.s.sudo, Some((link, cand.as_str())));
        let ahead = prefetch(&fresh, vec![links::read_link_command(link), disarm.clone()]).await;
        let now = links::read_store_link(&ahead, link)
            .await
            .map_err(|e| Confirm::failed(format!("{e:#}")))?;
        if now.as_ref() != Some(cand) {
            return Err(Confirm::NotOnCandidate(now));
        }
        deadman::run_disarm(&ahead, armed, &disarm)
            .await
            .map_err(|e| match e.downcast_ref::<deadman::RevertBegan>() {
                Some(_) => Confirm::RevertBegan,
                None => Confirm::failed(format!("{e:#}")),
            })?;
        (self.emit)(ActivationEvent::Confirmed {
            unit: armed.unit.clone(),
        });
        Ok(())
    }

    /// Disarm over the existing session (the switch failed or needs a
    /// reboot: nixgate rolls back itself). True when disarmed (or nothing
    /// was armed). A lost connection is tried again until
    /// [`DISARM_MARGIN`] before the revert is due (disarming is idempotent:
    /// a timer a reboot took away is disarmed). Seen on the fault matrix (a
    /// host rebooted during the poll): one failed disarm made the
    /// controller wait out the 120 s revert window, 155 s in all, for a
    /// host that was back on its boot default 5 s after the reboot.
    pub(super) async fn disarm_here(&mut self) -> bool {
        let Some((armed, due)) = self.armed.clone() else {
            return true;
        };
        let patience = due
            .saturating_duration_since(tokio::time::Instant::now())
            .saturating_sub(DISARM_MARGIN);
        let patient = crate::remote::patient::Patient::new(self.remote, patience);
        if deadman::disarm(&patient, &armed, self.s.sudo).await.is_ok() {
            self.armed = None;
            return true;
        }
        false
    }

    /// Cut off after the switch: wait until the host's revert is due, then
    /// look again over new connections for as long as a switch may take.
    /// Reachable and back on what it ran: reverted by the host. Reachable
    /// but not reverted: the controller rolls it back itself, as soon as
    /// the host's record says its revert ran (its failure is known: no
    /// waiting out the rest). Never reached: unknown, and said so.
    pub(super) async fn await_revert(&mut self, cause: CutOff) -> HostOutcome {
        self.await_revert_after(cause, 0).await
    }

    /// [`Self::await_revert`], `rejected` logins the host rejected before
    /// (they count in the look: [`MAX_REJECTED_LOGINS`] in all).
    async fn await_revert_after(&mut self, cause: CutOff, rejected: u32) -> HostOutcome {
        let Some((armed, due)) = self.armed.take() else {
            return self.look_without_revert(cause).await;
        };
        (self.emit)(ActivationEvent::AwaitingRevert {
            unit: armed.unit.clone(),
            cause: cause.clone(),
        });
        tokio::time::sleep_until(due).await;
        let (reached, stuck) = match self.look_for_revert(&armed, rejected).await {
            Look::Back(record) => {
                return HostOutcome::RevertedByHost {
                    cause,
                    to: self.pre_current.clone(),
                    record,
                };
            }
            Look::Moved { now, record } => {
                return HostOutcome::MovedByOther {
                    cause,
                    now,
                    record: Some(record),
                };
            }
            // Known: no waiting on the run's own session either.
            Look::Failed { over } => {
                return self.stop_and_roll_back(cause, &armed, Some(over)).await;
            }
            Look::NotSeen { reached, stuck } => (reached, stuck),
        };
        // Not seen back over a new connection; the run's own session may
        // still answer (sshd keeps established sessions): what it says
        // runs. Lost: the last new connection that answered, if any.
        let Some((seen, now, over)) = self.final_look(&armed, reached, stuck).await else {
            return self.unreachable(cause, true);
        };
        // Back only by a revert that says it put everything back: a link on
        // what it ran with no record is a switch that never flipped it
        // (the profile, the boot default may be the candidate's), one whose
        // record says the boot default failed boots the candidate again.
        if now.as_ref() == Some(&self.pre_current)
            && let Some(record) = seen.record.as_ref().filter(|r| r.boot_back())
        {
            return self.reverted_by_host(cause, Some(record.clone())).await;
        }
        if let Some(record) = &seen.record
            && let Some(now) = self.moved_by_other(record, now.as_ref())
        {
            return HostOutcome::MovedByOther {
                cause,
                now,
                record: seen.record,
            };
        }
        // Still on the candidate (or elsewhere), or not wholly back: the
        // timer did not do it, the controller does.
        if let Some(record) = seen.record {
            (self.emit)(ActivationEvent::RevertFailed { record });
        }
        self.stop_and_roll_back(cause, &armed, over).await
    }

    /// Nothing of the revert may run with the controller's rollback (a
    /// stuck one, or a timer that fires late; one that ran and failed
    /// leaves nothing, and nothing to stop is stopped): stopped first, or
    /// nothing is switched. Over `over` when the run's own session is not
    /// the one to use.
    async fn stop_and_roll_back(
        &mut self,
        cause: CutOff,
        armed: &Armed,
        over: Option<R>,
    ) -> HostOutcome {
        let at = over.as_ref().unwrap_or(self.remote);
        if let Err(error) = stop_revert(at, armed, self.s.sudo).await {
            return self.revert_not_stopped(cause, armed, error);
        }
        match over {
            Some(fresh) => self.over(&fresh).roll_back_unconfirmed(cause).await,
            None => self.roll_back_unconfirmed(cause).await,
        }
    }

    /// The revert, then the link, over the run's own session, else over
    /// the last new connection that answered (and which one, then).
    async fn final_look(
        &self,
        armed: &Armed,
        reached: Option<R>,
        stuck: bool,
    ) -> Option<(deadman::RevertSeen, Option<StorePath>, Option<R>)> {
        if let Some((seen, now)) = self.revert_and_link(self.remote, armed, stuck).await {
            return Some((seen, now, None));
        }
        let fresh = reached?;
        let (seen, now) = self.revert_and_link(&fresh, armed, stuck).await?;
        Some((seen, now, Some(fresh)))
    }

    /// The revert is read before the link (its record is written last); one
    /// under way and not yet `stuck` is waited for, as long as a switch may
    /// take.
    async fn revert_and_link(
        &self,
        at: &R,
        armed: &Armed,
        stuck: bool,
    ) -> Option<(deadman::RevertSeen, Option<StorePath>)> {
        let mut seen = deadman::seen(at, armed).await.ok()?;
        let patience = tokio::time::Instant::now() + self.s.activation_timeout;
        while seen.under_way && !stuck && tokio::time::Instant::now() + RETRY < patience {
            tokio::time::sleep(RETRY).await;
            seen = deadman::seen(at, armed).await.ok()?;
        }
        let now = links::read_store_link(at, &self.s.paths.current_system).await;
        Some((seen, now.ok()?))
    }

    /// A revert under way that could not be stopped: the controller does
    /// not switch the host while it runs. The host needs a human.
    fn revert_not_stopped(&self, cause: CutOff, armed: &Armed, error: String) -> HostOutcome {
        let reason = FailureReason::unconfirmed(&cause);
        (self.emit)(ActivationEvent::GateFailed {
            gate: Gate::LiveActivate,
            reason: reason.clone(),
        });
        HostOutcome::RollbackFailed {
            gate: Gate::LiveActivate,
            reason,
            to: self.pre_current.clone(),
            rollback_error: crate::activation::reactivate::RollbackError::StopStuckRevert {
                unit: format!("{}.service", armed.unit),
                error,
            },
        }
    }

    /// New connections, every [`RETRY`], for as long as a switch may take,
    /// until one finds the host back on what it ran, its revert done.
    /// Stops early when the host's record says its revert ran and the host
    /// is not back (it failed: nothing more will come), or when the run's
    /// own session (read while no new connection is had) shows a record.
    /// The record is read before the link: the revert writes it last, so a
    /// link read after it is final. A revert seen under way (its mark made
    /// this boot, no record yet) is given as long again, until a look says
    /// otherwise (a look that fails says nothing): the controller does not
    /// switch a host its own revert is still switching; one still under way
    /// then is `stuck`. `rejected`: logins the host rejected so far (see
    /// [`Self::look_once`]).
    async fn look_for_revert(&self, armed: &Armed, mut rejected: u32) -> Look<R> {
        let now = tokio::time::Instant::now();
        let give_up = now + self.s.activation_timeout;
        let patience = give_up + self.s.activation_timeout;
        let fires_by = now + REVERT_FIRES_WITHIN.min(self.s.activation_timeout);
        let mut reached = None;
        let mut under_way = false;
        loop {
            let rejected_before = rejected;
            let (seen, fresh) = self.look_once(armed, &mut rejected).await;
            if let Some(s) = &seen {
                under_way = s.seen.under_way;
            }
            if let (Some(s), Some(_)) = (&seen, &fresh)
                && let Some(moved) = self.moved(s)
            {
                return moved;
            }
            match (seen, fresh) {
                (Some(s), Some(fresh)) => match (s.back, s.seen.record) {
                    (true, Some(record)) if record.boot_back() => {
                        return Look::Back(Some(record));
                    }
                    // Ran, and left the host (or its boot default) on the
                    // candidate: known, the controller takes it back.
                    (_, Some(record)) => {
                        (self.emit)(ActivationEvent::RevertFailed { record });
                        return Look::Failed { over: fresh };
                    }
                    // On what it ran, the revert not begun since it was
                    // due: it never flipped the link, and the profile (set
                    // by the fire) is the candidate's: the controller puts
                    // it back rather than wait out a revert that may never
                    // come (a disarm that ran, its answer lost).
                    (true, None) if !under_way && tokio::time::Instant::now() >= fires_by => {
                        return Look::Failed { over: fresh };
                    }
                    _ => reached = Some(fresh),
                },
                // Over the run's own session: done, the rest is read there.
                (Some(s), None) if s.seen.record.is_some() => break,
                _ => {}
            }
            let end = if under_way { patience } else { give_up };
            let wait = retry_wait(rejected > rejected_before, RETRY);
            if tokio::time::Instant::now() + wait >= end {
                break;
            }
            tokio::time::sleep(wait).await;
        }
        Look::NotSeen {
            reached,
            stuck: under_way,
        }
    }

    /// One look over a new connection (the revert, then the link), or, when
    /// none is had, at the revert over the run's own session. Once the
    /// host rejected [`MAX_REJECTED_LOGINS`] logins (`rejected`, counted
    /// here: its revert is still switching it back, or failed), the run's
    /// own session is read first, and a new connection tried only when it
    /// does not answer: a login every [`RETRY`] while a revert runs would
    /// get this machine blocked there, and its record, read there, says
    /// when it is done.
    async fn look_once(&self, armed: &Armed, rejected: &mut u32) -> (Option<Seen>, Option<R>) {
        if *rejected >= MAX_REJECTED_LOGINS
            && let Some(own) = self.look_over_own(armed).await
        {
            return (Some(own), None);
        }
        let fresh = match self.fresh.fresh().await {
            Ok(fresh) => fresh,
            Err(e) => {
                *rejected += u32::from(reach::login_rejected(&e));
                return (self.look_over_own(armed).await, None);
            }
        };
        // The handshake is bounded by the connection's own settings; the
        // reads after it here (`stuck`: no waiting on a revert under way).
        let reads = self.revert_and_link(&fresh, armed, true);
        match tokio::time::timeout(READS_BOUND, reads).await {
            Ok(Some((seen, now))) => {
                let back = now.as_ref() == Some(&self.pre_current);
                (Some(Seen { seen, back, now }), Some(fresh))
            }
            _ => (None, None),
        }
    }

    /// The revert, read over the run's own session: bounded, a session that
    /// hangs must not hold the look up.
    async fn look_over_own(&self, armed: &Armed) -> Option<Seen> {
        let own = tokio::time::timeout(RETRY * 2, deadman::seen(self.remote, armed)).await;
        let seen = own.ok().and_then(Result::ok)?;
        Some(Seen {
            seen,
            back: false,
            now: None,
        })
    }

    /// What the host runs when someone else moved it: its revert's record
    /// says it found the host on a third system and changed nothing
    /// (`host-moved`: a hand's `switch` before the revert came due), or
    /// that it put everything back, and the host runs anything but what it
    /// put back (it moved on after: a later run, a hand), the candidate
    /// included: the revert stops every attempt of this run's switch
    /// first, so only another run deploying the same commit puts it back.
    /// Nothing of theirs is taken back: no rollback of a host this run no
    /// longer owns (a controller suspended past its lock's lease comes
    /// back to a host another run has deployed since).
    fn moved_by_other(
        &self,
        record: &deadman::RevertRecord,
        now: Option<&StorePath>,
    ) -> Option<StorePath> {
        let now = now?;
        let put_back = record.result == "ok" && record.current == self.pre_current.as_str();
        (record.host_moved() || (put_back && now != &self.pre_current)).then(|| now.clone())
    }

    /// [`Run::moved_by_other`] of one look.
    fn moved(&self, s: &Seen) -> Option<Look<R>> {
        let record = s.seen.record.as_ref()?;
        let now = self.moved_by_other(record, s.now.as_ref())?;
        Some(Look::Moved {
            now,
            record: record.clone(),
        })
    }

    /// Cut off with no revert armed (the host refused the re-arm): what
    /// the run's own session says runs is rolled back by the controller;
    /// no answer is unknown, and no revert is due.
    async fn look_without_revert(&mut self, cause: CutOff) -> HostOutcome {
        match links::read_store_link(self.remote, &self.s.paths.current_system).await {
            Ok(_) => self.roll_back_unconfirmed(cause).await,
            Err(_) => self.unreachable(cause, false),
        }
    }

    /// Unconfirmed, reached over the run's own session: the controller
    /// rolls the host back itself (from a lockout, proven over a new
    /// connection after: [`super::lockout`]).
    async fn roll_back_unconfirmed(&mut self, cause: CutOff) -> HostOutcome {
        let reason = FailureReason::unconfirmed(&cause);
        self.lockout = super::lockout::is_lockout(&cause);
        // Not stopped before the revert, which failed: stopped now.
        let unstopped = self.unstopped.take();
        let stop = unstopped.as_ref().map(|(s, job)| (*s, job));
        self.fail_and_rollback(Gate::LiveActivate, reason, stop)
            .await
    }

    fn unreachable(&self, cause: CutOff, revert_due: bool) -> HostOutcome {
        HostOutcome::Unreachable {
            cause,
            last_seen: self.req.candidate.clone(),
            revert_due,
        }
    }
}

/// How the first try at confirming went, and whether it shortened the
/// revert (when the re-arm was sent, and its answer).
struct FirstTry {
    result: Result<(), Confirm>,
    shortened: Option<(tokio::time::Instant, anyhow::Result<()>)>,
}

/// Stop a revert stuck under way ([`deadman::stop_revert_command`]; it is
/// idempotent: a lost answer is asked again, for [`READS_BOUND`]).
async fn stop_revert<R: Remote>(at: &R, armed: &Armed, sudo: bool) -> Result<(), String> {
    let cmd = deadman::stop_revert_command(armed, sudo);
    let patient = crate::remote::patient::Patient::new(at, READS_BOUND);
    match patient.exec(&cmd).await {
        Ok(out) => out
            .check("stopping the host's revert")
            .map(|_| ())
            .map_err(|e| format!("{e:#}")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// A re-arm's error says the revert is under way ([`deadman::RevertBegan`]).
fn began(e: &anyhow::Error) -> bool {
    e.downcast_ref::<deadman::RevertBegan>().is_some()
}

/// What shortening the revert left: when it is due, or too late (the
/// revert was under way, and is looked at now).
enum Shortened {
    Due(tokio::time::Instant),
    TooLate,
}

/// One look at the host after its revert was due: what it shows of the
/// revert, and whether it runs what it ran before.
struct Seen {
    seen: deadman::RevertSeen,
    back: bool,
    /// What the host runs, read after the revert (over a new connection).
    now: Option<StorePath>,
}

/// What new connections found after the host's revert was due.
enum Look<R> {
    /// Back on what it ran, and the revert's record if it left one.
    Back(Option<deadman::RevertRecord>),
    /// The revert ran (its record written) and did not take the host
    /// back, as read over `over`.
    Failed { over: R },
    /// The host runs `now`, put there by someone else
    /// ([`Run::moved_by_other`]).
    Moved {
        now: StorePath,
        record: deadman::RevertRecord,
    },
    /// Never seen back; the last new connection that answered, if any;
    /// `stuck`: its revert still under way when the looking ended.
    NotSeen { reached: Option<R>, stuck: bool },
}

/// Why one confirmation attempt did not confirm.
enum Confirm {
    /// No confirmation: why; `login_rejected`: no new connection, the host
    /// rejected the login ([`reach::login_rejected`]); `controllers_own`:
    /// no new connection, for a reason of this machine's own
    /// ([`crate::ssh::ConnectError::is_controllers_own`]).
    Failed {
        error: String,
        login_rejected: bool,
        controllers_own: bool,
    },
    NotOnCandidate(Option<StorePath>),
    /// The host's revert had begun: too late to disarm.
    RevertBegan,
}

impl Confirm {
    /// A failure that is not a rejected login.
    fn failed(error: String) -> Confirm {
        Confirm::Failed {
            error,
            login_rejected: false,
            controllers_own: false,
        }
    }
}
