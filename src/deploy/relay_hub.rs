//! Groups relay copies that start together so every path leaves the builder
//! once per batch: the first host to arrive opens a batch, which stays open
//! while hosts keep arriving (each arrival extends it by the quiet period,
//! up to a cap); then one relay copies to all of them, each path to the hosts
//! that lack it (see [`crate::nix::fanout`]).
//!
//! A batch closes at once when no other host is on its way to it (staging,
//! not yet joined: [`RelayHub::coming`]): the quiet period only waits for
//! hosts known to be coming. It used to be waited out every time, twice
//! (the first look counted the opener as a newcomer): 160 ms before any
//! byte moved, per batch.
//!
//! A host counts as on its way from the start of its staging. Hosts staged
//! together start within microseconds of each other (the runner hands out
//! the slots in turn), and each asks its host what it lacks (two round
//! trips: the serve session that will add the paths, then its answer)
//! before it joins: so every one is counted before the first joins. That
//! order is what the count relies on: asking what the first hosts lack
//! during the diff gate instead (one round trip off the copy's path) let
//! a host join before the next had started, and push_e2e's fan-out check
//! failed (tried, not kept).
//!
//! Each member's result is passed on as soon as its host's copy ended
//! ([`fanout::relay_replying`]): one host whose import hung after its last
//! bytes held every result of its batch for its stall (5 min) and 5 s.
//! A member that stops waiting (the first Ctrl-C drops each host's copy)
//! is dropped from the copy, and once no member waits, the batch's relay
//! is dropped: it ran in its own task, which nothing cancelled, pushing
//! whole closures after the run had stopped.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::fleet::Fleet;
use crate::nix::StorePath;
use crate::nix::closure::PathInfo;
use crate::nix::copy::CopyProgress;
use crate::nix::fanout::{self, HostServe, Received, Target};

type Progress = Arc<dyn Fn(CopyProgress) + Send + Sync>;

struct Member<R> {
    target: R,
    closure: Arc<Vec<PathInfo>>,
    lacking: HashSet<StorePath>,
    session: Option<HostServe>,
    progress: Progress,
    stall: Duration,
    /// Taken when the batch runs.
    reply: Option<oneshot::Sender<anyhow::Result<Received>>>,
}

type Batch<R> = Arc<Mutex<Vec<Member<R>>>>;

/// The batches of one run's relay copies.
pub struct RelayHub<F: Fleet> {
    fleet: Arc<F>,
    quiet: Duration,
    cap: Duration,
    open: Mutex<Option<Batch<F::Remote>>>,
    /// Hosts staging that have not joined a batch yet.
    on_the_way: tokio::sync::watch::Sender<usize>,
}

/// A host on its way to a batch; dropped (joined, or not copying after
/// all) it no longer holds batches open.
pub struct Coming(tokio::sync::watch::Sender<usize>);

impl Drop for Coming {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl<F: Fleet> RelayHub<F> {
    /// A batch closes once no host joined for `quiet`, or `cap` after it opened.
    pub fn new(fleet: Arc<F>, quiet: Duration, cap: Duration) -> Arc<RelayHub<F>> {
        Arc::new(RelayHub {
            fleet,
            quiet,
            cap,
            open: Mutex::new(None),
            on_the_way: tokio::sync::watch::Sender::new(0),
        })
    }

    /// A host started staging and may join a batch: batches wait for it.
    pub fn coming(&self) -> Coming {
        self.on_the_way.send_modify(|n| *n += 1);
        Coming(self.on_the_way.clone())
    }

    /// Join the current batch (or open one) and wait for its relay to end.
    /// `lacking` is what the host lacks of `closure`, as `session` (the
    /// session that adds it) answered; `coming` is the host's own, let go
    /// once it joined; `stall` its `copy_stall_timeout`.
    pub async fn share(
        self: &Arc<Self>,
        coming: Option<Coming>,
        target: F::Remote,
        closure: Arc<Vec<PathInfo>>,
        (lacking, session): (HashSet<StorePath>, HostServe),
        progress: Progress,
        stall: Duration,
    ) -> anyhow::Result<Received> {
        let (tx, rx) = oneshot::channel();
        let member = Member {
            target,
            closure,
            lacking,
            session: Some(session),
            progress,
            stall,
            reply: Some(tx),
        };
        {
            let mut open = self
                .open
                .lock()
                .map_err(|_| anyhow::anyhow!("relay hub poisoned"))?;
            match open.as_ref() {
                Some(batch) => batch
                    .lock()
                    .map_err(|_| anyhow::anyhow!("relay batch poisoned"))?
                    .push(member),
                None => {
                    let batch = Arc::new(Mutex::new(vec![member]));
                    *open = Some(batch.clone());
                    let hub = self.clone();
                    tokio::spawn(async move {
                        hub.gather(&batch).await;
                        // Close the batch: later arrivals open the next one.
                        if let Ok(mut open) = hub.open.lock() {
                            *open = None;
                        }
                        let members: Option<Vec<Member<F::Remote>>> =
                            batch.lock().ok().map(|mut m| std::mem::take(&mut *m));
                        if let Some(members) = members {
                            hub.run(members).await;
                        }
                    });
                }
            }
        }
        drop(coming);
        rx.await
            .map_err(|_| anyhow::anyhow!("the shared copy stopped before it finished"))?
    }

    /// Keep `batch` open while hosts are on their way and keep joining
    /// within the quiet period, up to the cap.
    async fn gather(&self, batch: &Batch<F::Remote>) {
        let opened = tokio::time::Instant::now();
        let mut ways = self.on_the_way.subscribe();
        let mut seen = batch.lock().map(|m| m.len()).unwrap_or(0);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.quiet) => {
                    let now = batch.lock().map(|m| m.len()).unwrap_or(seen);
                    if now == seen || opened.elapsed() >= self.cap {
                        return;
                    }
                    seen = now;
                }
                _ = ways.wait_for(|n| *n == 0) => return,
            }
        }
    }

    async fn run(&self, members: Vec<Member<F::Remote>>) {
        let fail_all = |members: Vec<Member<F::Remote>>, msg: String| {
            for reply in members.into_iter().filter_map(|m| m.reply) {
                let _ = reply.send(Err(anyhow::anyhow!("{msg}")));
            }
        };
        let closures: Vec<&[PathInfo]> = members.iter().map(|m| m.closure.as_slice()).collect();
        let order = match fanout::union(&closures) {
            Ok(o) => o,
            Err(e) => return fail_all(members, format!("combining closures: {e:#}")),
        };
        let builder = match self.fleet.builder().await {
            Ok(b) => b,
            Err(e) => return fail_all(members, format!("connecting to the builder: {e:#}")),
        };
        let mut members = members;
        let sessions: Vec<Option<HostServe>> =
            members.iter_mut().map(|m| m.session.take()).collect();
        // Each result is passed on as soon as the relay has it.
        let (fan_replies, forwards): (Vec<fanout::Reply>, Vec<_>) = members
            .iter_mut()
            .map(|m| {
                let (tx, rx) = oneshot::channel();
                (tx, forward(rx, m.reply.take()))
            })
            .unzip();
        let targets: Vec<Target<F::Remote>> = members
            .iter()
            .zip(sessions)
            .map(|(m, session)| Target {
                remote: &m.target,
                lacking: &m.lacking,
                progress: m.progress.as_ref(),
                session,
                stall: m.stall,
            })
            .collect();
        let relay = fanout::relay_replying(&builder, targets, fan_replies, &order);
        until_answered(relay, forwards).await;
    }
}

/// What became of one member's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forwarded {
    /// Passed on as soon as its host's copy ended.
    Sent,
    /// Nobody waited for it any more: its run stopped (the first Ctrl-C
    /// drops a host's copy). Dropping `from` tells the relay to drop the
    /// host from the copy.
    Abandoned,
}

/// Pass the relay's result for one member on to the member, or give up
/// once the member no longer waits for it.
async fn forward(
    from: oneshot::Receiver<anyhow::Result<Received>>,
    to: Option<oneshot::Sender<anyhow::Result<Received>>>,
) -> Forwarded {
    let Some(mut to) = to else {
        return Forwarded::Abandoned;
    };
    tokio::select! {
        r = from => {
            let stopped = || anyhow::anyhow!("the shared copy stopped before it finished");
            match to.send(r.unwrap_or_else(|_| Err(stopped()))) {
                Ok(()) => Forwarded::Sent,
                Err(_) => Forwarded::Abandoned,
            }
        }
        () = to.closed() => Forwarded::Abandoned,
    }
}

/// Run `relay` until every member was answered or gave up waiting, then
/// drop it: it has nothing more for anyone. Before, the batch ran in its
/// own task to the end after the first Ctrl-C had dropped every host's
/// copy (nothing cancelled it): it pushed whole closures, and emitted
/// copy_progress for hosts already reported not started.
async fn until_answered(
    relay: impl std::future::Future<Output = ()>,
    forwards: Vec<impl std::future::Future<Output = Forwarded>>,
) {
    let forwards = futures_util::future::join_all(forwards);
    tokio::pin!(relay, forwards);
    tokio::select! {
        () = &mut relay => {
            // Every result is sent: pass them on.
            forwards.await;
        }
        outcomes = &mut forwards => {
            let gave_up = outcomes.iter().filter(|o| **o == Forwarded::Abandoned);
            let (gave_up, all) = (gave_up.count(), outcomes.len());
            tracing::debug!("relay batch dropped: {gave_up} of {all} hosts had stopped waiting");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::fake::{Build, FakeBuilder, FakeFleet};
    use tokio::time::Instant;

    fn hub() -> Arc<RelayHub<FakeFleet>> {
        let fleet = FakeFleet::new(&[], FakeBuilder::new(Build::Hangs));
        RelayHub::new(fleet, Duration::from_millis(80), Duration::from_secs(3))
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_closes_once_nobody_else_is_coming() {
        let hub = hub();
        let batch: Batch<_> = Arc::default();
        // Nobody on the way: no quiet period waited out.
        let t = Instant::now();
        hub.gather(&batch).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
        // A host on its way holds the batch until it joins (here: 30 ms).
        let coming = hub.coming();
        let t = Instant::now();
        tokio::join!(hub.gather(&batch), async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(coming);
        });
        assert_eq!(t.elapsed(), Duration::from_millis(30));
        // One that never comes is waited for one quiet period (the batch
        // did not grow), not forever.
        let _stuck = hub.coming();
        let t = Instant::now();
        hub.gather(&batch).await;
        assert_eq!(t.elapsed(), Duration::from_millis(80));
    }

    /// A relay standing in for fanout's: answers the members in `answers`
    /// at once, then runs on for an hour; `dropped` is set when it is.
    fn relay_of(
        mut replies: Vec<fanout::Reply>,
        answers: &[usize],
        dropped: Arc<std::sync::atomic::AtomicBool>,
    ) -> impl std::future::Future<Output = ()> {
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let answers = answers.to_vec();
        async move {
            let _flag = Flag(dropped);
            for i in answers.into_iter().rev() {
                let _ = replies.remove(i).send(Ok(Received::default()));
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(replies);
        }
    }

    /// Members and their receivers, and the relay's replies with each
    /// member's forward.
    #[allow(clippy::type_complexity)]
    fn members(
        n: usize,
    ) -> (
        Vec<oneshot::Receiver<anyhow::Result<Received>>>,
        Vec<fanout::Reply>,
        Vec<impl std::future::Future<Output = Forwarded>>,
    ) {
        let mut receivers = Vec::new();
        let mut replies = Vec::new();
        let mut forwards = Vec::new();
        for _ in 0..n {
            let (member_tx, member_rx) = oneshot::channel();
            let (tx, rx) = oneshot::channel();
            receivers.push(member_rx);
            replies.push(tx);
            forwards.push(forward(rx, Some(member_tx)));
        }
        (receivers, replies, forwards)
    }

    /// A member's result is passed on as soon as the relay has it, while
    /// the relay goes on for another host (before: once it returned); the
    /// relay is dropped once the last member is answered or gave up.
    #[tokio::test(start_paused = true)]
    async fn results_are_passed_on_as_they_come() {
        let (mut receivers, replies, forwards) = members(2);
        let dropped = Arc::default();
        let relay = relay_of(replies, &[0], Arc::clone(&dropped));
        let t = Instant::now();
        let second = receivers.pop().unwrap();
        let first = receivers.pop().unwrap();
        let answered = async {
            let got = first.await.expect("the first member is answered");
            assert!(got.is_ok());
            assert_eq!(t.elapsed(), Duration::ZERO);
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(second);
        };
        tokio::join!(until_answered(relay, forwards), answered);
        assert_eq!(t.elapsed(), Duration::from_secs(60));
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    }

    /// Once no member waits any more (the first Ctrl-C dropped every
    /// host's copy), the batch's relay is dropped at once (its streams with
    /// it), not run to its end in a task nothing cancels.
    #[tokio::test(start_paused = true)]
    async fn a_batch_nobody_waits_for_is_dropped() {
        let (receivers, replies, forwards) = members(3);
        let dropped = Arc::default();
        let relay = relay_of(replies, &[], Arc::clone(&dropped));
        let t = Instant::now();
        let stop = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(receivers);
        };
        tokio::join!(until_answered(relay, forwards), stop);
        assert_eq!(t.elapsed(), Duration::from_secs(5));
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    }
}
