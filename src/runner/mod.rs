//! The fleet runner: turns per-host pipelines into waves.
//!
//! Waves run in order; inside a wave up to `max_parallel` hosts run at once;
//! a wave whose failures exceed its budget stops the run, and so does a
//! host ended by this machine's own failure ([`HostJob::controllers_own`]:
//! it would end every host after it, each switched and taken back, until
//! the budget ran out; or whose soak's re-check it marred: the run stops
//! before the next wave); a good wave soaks
//! (waits, then re-checks every finished host, up to `max_parallel` at once
//! like its activations, and the job takes back a host found unhealthy)
//! before the next starts. A first Ctrl-C during the soak's wait cuts it
//! short: the hosts are re-checked at once, then the run stops; a soaking
//! wave that stops the run (a first Ctrl-C during its activations, or its
//! failures over budget) re-checks its good hosts at once too. A host the
//! plan already ended (refused before the run) is counted in its wave when
//! the wave starts, exactly like a host that fails in it: a refused canary
//! stops the run; so is a host whose copy failed before its wave started,
//! and one whose copy fails in its wave ends then, with no activation
//! slot (every end known is counted before a slot is filled). Copies
//! (staging) run ahead of activations by one wave, taking their slots in
//! the order the waves will start the hosts (none for a wave the plan's
//! refusals or failed copies fail, nor after it), and a host starts as
//! soon as its copy is done and a slot is free (no slot waits for a copy
//! while a copied host waits for a slot); one whose copy ended before its
//! wave started is handed back to the job to keep until its turn
//! ([`HostJob::staged_ahead`]). The runner never prints: it
//! reports [`RunnerEvent`]s to a callback and returns typed results.
//!
//! A host the run will not touch again (it ended and its wave does not soak
//! it, or its wave's soak re-checked it, or its wave never ran) is let go
//! at once ([`HostJob::let_go`]: its lock, its connection), not at the end
//! of the run: every finished host's connection kept its SSH buffers and
//! state until the run ended, and letting go cut the controller's peak at
//! 500 hosts from 233 to 138 MB (the 19 MiB change; BENCHMARKS.md,
//! "Controller memory"). The run returns once every host is let go.

pub mod cancel;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::inventory::Selection;
use crate::inventory::select::Group;
use cancel::{CancelLevel, CancelWatch};

/// The per-host work the runner schedules.
pub trait HostJob: Send + Sync + 'static {
    /// What staging (building is done before; staging is the copy) yields.
    type Staged: Send + 'static;
    /// A finished host's result (compared: a re-check that changed it,
    /// failing or not, tells the new one to [`HostJob::ended`]).
    type Done: Send + Clone + PartialEq + 'static;

    /// Prepare a host without changing what it runs (copy its closure).
    fn stage(self: Arc<Self>, host: Arc<str>) -> impl Future<Output = Self::Staged> + Send;
    /// `host`'s staging ended before its turn: before its wave started (it
    /// was staged ahead, while an earlier wave ran or soaked), or as its
    /// wave ran with every slot taken: keep what it staged until its turn
    /// (the deploy roots the closure on the host, or the host's garbage
    /// collector may delete it meanwhile). Called after the staging's
    /// result is handed over, off every wave's path; not for a host that
    /// starts as its staging ends (its activation follows at once). It may
    /// come more than once for a host, and after the host started. A host
    /// let go meanwhile is the job's to mind. Nothing by default.
    fn staged_ahead(self: Arc<Self>, host: Arc<str>) -> impl Future<Output = ()> + Send {
        let _ = (self, host);
        std::future::ready(())
    }
    /// Take a staged host through its gates. Once it starts it is never
    /// abandoned: cancellation is the job's to honour between gates.
    fn run(
        self: Arc<Self>,
        host: Arc<str>,
        staged: Self::Staged,
    ) -> impl Future<Output = Self::Done> + Send;
    /// The result for a host whose work was cut short by the runner itself.
    fn interrupted(&self, host: &str, why: Interrupted) -> Self::Done;
    /// Whether a result counts against the wave's failure budget.
    fn is_failure(&self, done: &Self::Done) -> bool;
    /// Whether a host ended as it did because of this machine, not of the
    /// host or what it was given (no new connection could be made, for a
    /// reason of this machine's own: its resolver, its open files, its
    /// agent's key gone). It says nothing of the candidate and would end
    /// every host started after it the same way, each switched and taken
    /// back: the run starts no more hosts, as after a first Ctrl-C (what is
    /// in flight is finished and verified). Asked of a re-check's end too:
    /// one this machine's failure marred stops the run after its wave's
    /// re-checks, before the next wave. None by default.
    fn controllers_own(&self, done: &Self::Done) -> bool {
        let _ = done;
        false
    }
    /// Whether a soak re-checks a host that ended `done`: it ended well,
    /// and its end changed what the checks look at. A wave with none waits
    /// no soak.
    fn to_recheck(&self, done: &Self::Done) -> bool;
    /// The end of a host that ended before the run (the plan refused it);
    /// `None` for a host to run.
    fn planned_end(&self, host: &str) -> Option<Self::Done>;
    /// The end of a host its staging already ended (its copy failed);
    /// `None` for a host to run. Counted like a plan's refusal, as soon as
    /// the runner knows it: never started, with no activation slot.
    fn staged_end(&self, host: &str, staged: &Self::Staged) -> Option<Self::Done>;
    /// After a soak, re-check a host that ended well; its end afterwards
    /// (a host found unhealthy is taken back by the job). `cut`: the soak
    /// did not run its full time, and why: a host passing then passed a
    /// shorter soak than its wave asks for.
    fn recheck(
        self: Arc<Self>,
        host: Arc<str>,
        done: Self::Done,
        cut: Option<SoakCut>,
    ) -> impl Future<Output = Self::Done> + Send;
    /// A re-check the second Ctrl-C cut off: the host's end. `done` is the
    /// end it had, kept unless the job had begun changing the host (a
    /// take-back under way: then why it was cut off).
    fn recheck_cut(&self, host: &str, done: Self::Done) -> Self::Done;
    /// Told of every end the runner records, as it records it.
    fn ended(&self, host: &str, done: &Self::Done);
    /// The run will not touch `host` again: let go of what it holds for
    /// it. Called once per host; the run waits for it before it returns,
    /// unless the second Ctrl-C comes first.
    fn let_go(self: Arc<Self>, host: Arc<str>) -> impl Future<Output = ()> + Send;
}

/// Why the runner cut a host's work short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interrupted {
    /// Its staging task ended without a result (it panicked).
    StageLost,
    /// Its task panicked: a bug in nixgate, worth a report.
    Panicked,
    /// The second Ctrl-C aborted the controller mid-host; a detached switch
    /// may still be finishing on the host.
    Aborted,
}

/// Why a wave's soak did not run its full time (its hosts were re-checked
/// early).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SoakCut {
    /// A first Ctrl-C (or SIGTERM), during the wave's activations or the
    /// soak's wait.
    Cancelled,
    /// The wave went over its failure budget: the hosts that ended well
    /// were re-checked at once before the run stopped.
    WaveOverBudget,
    /// A host ended by this machine's own failure stopped the run
    /// ([`HostJob::controllers_own`]): the hosts that ended well were
    /// re-checked at once.
    ControllerFailed,
}

/// Why a selected host was never started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum NotStarted {
    /// Ctrl-C / SIGTERM asked to start nothing new.
    Cancelled,
    /// Its wave exceeded `max_failures`.
    WaveFailed { wave: String },
    /// An earlier wave failed (or failed its soak), so this one never started.
    EarlierWaveFailed { wave: String },
    /// `host` ended for a reason of this machine's own
    /// ([`HostJob::controllers_own`]): every host after it would too.
    ControllerFailed { host: String },
}

/// How one host ended, as the runner sees it.
#[derive(Debug)]
pub enum RunnerEnd<D> {
    Done(D),
    NotStarted(NotStarted),
}

/// One host's place in the run.
#[derive(Debug)]
pub struct HostResult<D> {
    pub host: String,
    pub wave: String,
    pub end: RunnerEnd<D>,
}

/// What the runner reports while it works (data only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunnerEvent {
    WaveStarted {
        wave: String,
        hosts: Vec<String>,
        max_parallel: usize,
    },
    HostNotStarted {
        host: String,
        wave: String,
        why: NotStarted,
    },
    /// A wave's end, after its soak: its failures count the hosts its
    /// soak found unhealthy.
    WaveFinished {
        wave: String,
        failures: usize,
        allowed: usize,
        /// Its failures stop the run (a run stopped by a cancel is not).
        stops_run: bool,
    },
    SoakStarted {
        wave: String,
        seconds: u64,
    },
    /// A host's re-check after its wave's soak ended (one that panicked
    /// did not: the host's end, told to the job, says so).
    SoakChecked {
        wave: String,
        host: String,
        healthy: bool,
    },
}

type Emit = dyn Fn(RunnerEvent) + Send + Sync;

/// A host's staging.
enum Staging<S> {
    /// Its result to come, and its task.
    UnderWay(oneshot::Receiver<S>, JoinHandle<()>),
    /// Its result, taken before its wave started (`None`: its task ended
    /// without one).
    Done(Option<S>),
}

impl<S> Staging<S> {
    /// Stop the staging's task, if it still runs.
    fn stop(self) {
        if let Staging::UnderWay(_, handle) = self {
            handle.abort();
        }
    }
}

/// Run every group of the selection in order.
pub async fn run<J: HostJob>(
    job: Arc<J>,
    selection: &Selection,
    cancel: CancelWatch,
    emit: impl Fn(RunnerEvent) + Send + Sync + 'static,
) -> Vec<HostResult<J::Done>> {
    let groups = &selection.groups;
    // Staging runs ahead by one wave, bounded like activations.
    let widest = groups.iter().map(|g| g.max_parallel).max().unwrap_or(1);
    let mut r = Runner {
        job,
        cancel,
        emit: Arc::new(emit),
        stage_slots: Arc::new(Semaphore::new(widest.max(1))),
        stage_turn: None,
        staged: HashMap::new(),
        ended_early: HashMap::new(),
        results: Vec::new(),
        letting_go: JoinSet::new(),
        gone: HashSet::new(),
    };
    // Each wave's start: a host staged before its wave's is staged ahead.
    let begun: Vec<Arc<AtomicBool>> = groups.iter().map(|_| Arc::default()).collect();
    let mut stop: Option<NotStarted> = None;
    for (gi, group) in groups.iter().enumerate() {
        begun[gi].store(true, Ordering::SeqCst);
        if stop.is_none() && *r.cancel.borrow() >= CancelLevel::StopStarting {
            stop = Some(NotStarted::Cancelled);
        }
        r.settle(group);
        if let Some(why) = &stop {
            r.skip_wave(group, why);
            continue;
        }
        // A wave the plan's refusals (or copies failed already) fail stops
        // the run as it starts: nothing of it, or of the wave after it, is
        // copied.
        let ahead: Vec<&Group> = groups[gi..]
            .iter()
            .take(2)
            .take_while(|g| !r.fails_before_start(g))
            .collect();
        for (g, begun) in ahead.into_iter().zip(&begun[gi..]) {
            r.stage_ahead(g, begun);
        }
        // The selection zeroes the inventory's last wave's soak.
        let soaks = !group.soak.is_zero();
        stop = r.wave(group, soaks).await;
    }
    for (_, staging) in r.staged.drain() {
        staging.stop();
    }
    r.letting_go().await;
    r.results
}

struct Runner<J: HostJob> {
    job: Arc<J>,
    cancel: CancelWatch,
    emit: Arc<Emit>,
    stage_slots: Arc<Semaphore>,
    /// When the next host spawned for staging may ask for its slot.
    stage_turn: Option<oneshot::Receiver<()>>,
    staged: HashMap<String, Staging<J::Staged>>,
    /// Hosts whose staging ended them (a failed copy) before their wave
    /// started: counted first when it starts, like the plan's refusals.
    ended_early: HashMap<String, J::Done>,
    results: Vec<HostResult<J::Done>>,
    /// Hosts being let go, and every host let go so far.
    letting_go: JoinSet<()>,
    gone: HashSet<String>,
}

/// A joined host task: its host and end, or why it has none.
type Joined<J> = Result<(tokio::task::Id, (String, <J as HostJob>::Done)), tokio::task::JoinError>;

/// A wave's hosts on their way: staging, staged and waiting for a slot,
/// started.
struct Flight<J: HostJob> {
    started: JoinSet<(String, J::Done)>,
    task_host: HashMap<tokio::task::Id, String>,
    staging: FuturesUnordered<BoxFuture<'static, (String, Option<J::Staged>)>>,
    /// Hosts not started yet, with their staging's task if it still runs.
    unstarted: Vec<(String, Option<JoinHandle<()>>)>,
    ready: VecDeque<(String, Option<J::Staged>)>,
}

/// One wave in progress.
struct WaveRun<'g, D> {
    group: &'g Group,
    allowed: usize,
    failures: usize,
    results: Vec<HostResult<D>>,
    /// Why the wave starts no more hosts.
    stop: Option<NotStarted>,
}

impl<D> WaveRun<'_, D> {
    /// A host's end; `controllers_own`: this machine's failure ended it
    /// ([`HostJob::controllers_own`]), and the wave starts no more hosts.
    fn record(&mut self, host: String, done: D, failed: bool, controllers_own: bool) {
        if controllers_own && self.stop.is_none() {
            self.stop = Some(NotStarted::ControllerFailed { host: host.clone() });
        }
        if failed {
            self.failures += 1;
            if self.failures > self.allowed && self.stop.is_none() {
                self.stop = Some(NotStarted::WaveFailed {
                    wave: self.group.name.clone(),
                });
            }
        }
        self.results.push(HostResult {
            host,
            wave: self.group.name.clone(),
            end: RunnerEnd::Done(done),
        });
    }
}

impl<J: HostJob> Runner<J> {
    fn not_started(&mut self, host: &str, wave: &str, why: &NotStarted) -> HostResult<J::Done> {
        (self.emit)(RunnerEvent::HostNotStarted {
            host: host.to_owned(),
            wave: wave.to_owned(),
            why: why.clone(),
        });
        HostResult {
            host: host.to_owned(),
            wave: wave.to_owned(),
            end: RunnerEnd::NotStarted(why.clone()),
        }
    }

    /// A wave after the run stopped: the plan's refusals stay, every other
    /// host never starts, its copy ahead failed or not. Whether a copy
    /// ahead had failed by the time the run stopped, or was still under
    /// way and is stopped here, is timing (a canary failing a second
    /// sooner, a relay batch ending later): its host ended `failed` at the
    /// copy gate or `not-started` for the same facts. The copy's failure
    /// was told when it failed (its gate's `gate_failed`); the host's end
    /// is its wave's, which never ran.
    fn skip_wave(&mut self, group: &Group, why: &NotStarted) {
        for h in &group.hosts {
            if let Some(staging) = self.staged.remove(h) {
                staging.stop();
            }
            self.ended_early.remove(h);
            self.let_go(h);
            let r = match self.job.planned_end(h) {
                Some(done) => {
                    self.job.ended(h, &done);
                    HostResult {
                        host: h.clone(),
                        wave: group.name.clone(),
                        end: RunnerEnd::Done(done),
                    }
                }
                None => self.not_started(h, &group.name, why),
            };
            self.results.push(r);
        }
    }

    /// Do the hosts the plan refused, or whose copy failed already, put
    /// `group` over its failure budget before any of its hosts starts?
    fn fails_before_start(&self, group: &Group) -> bool {
        let failed = group
            .hosts
            .iter()
            .filter_map(|h| (self.job.planned_end(h)).or_else(|| self.ended_early.get(h).cloned()))
            .filter(|done| self.job.is_failure(done))
            .count();
        failed > group.max_failures.allowed(group.hosts.len())
    }

    /// A host's end known before its wave started: the plan's refusal, or
    /// a failed copy (taken out: it is recorded once).
    fn known_end(&mut self, host: &str) -> Option<J::Done> {
        (self.job.planned_end(host)).or_else(|| self.ended_early.remove(host))
    }

    /// Take the results of `group`'s stagings already done (staged while
    /// an earlier wave ran): a host its copy ended is set aside with its
    /// end, to count as its wave starts.
    fn settle(&mut self, group: &Group) {
        for h in &group.hosts {
            let Some(Staging::UnderWay(rx, _)) = self.staged.get_mut(h) else {
                continue;
            };
            let staged = match rx.try_recv() {
                Ok(s) => Some(s),
                Err(oneshot::error::TryRecvError::Closed) => None,
                Err(oneshot::error::TryRecvError::Empty) => continue,
            };
            match staged.as_ref().and_then(|s| self.job.staged_end(h, s)) {
                Some(done) => {
                    self.staged.remove(h);
                    self.ended_early.insert(h.clone(), done);
                }
                None => {
                    self.staged.insert(h.clone(), Staging::Done(staged));
                }
            }
        }
    }

    /// Stage `group`'s hosts not staged yet; `begun`: `group` started.
    fn stage_ahead(&mut self, group: &Group, begun: &Arc<AtomicBool>) {
        for h in &group.hosts {
            let known = self.job.planned_end(h).is_some() || self.ended_early.contains_key(h);
            if !self.staged.contains_key(h) && !known {
                let turn = self.stage_turn.take();
                let slots = (self.stage_slots.clone(), turn, begun.clone());
                let (s, next) = spawn_stage(self.job.clone(), h, slots);
                self.stage_turn = Some(next);
                self.staged.insert(h.clone(), s);
            }
        }
    }

    /// Run one wave; `Some` when the run must stop after it.
    async fn wave(&mut self, group: &Group, soaks: bool) -> Option<NotStarted> {
        (self.emit)(RunnerEvent::WaveStarted {
            wave: group.name.clone(),
            hosts: group.hosts.clone(),
            max_parallel: group.max_parallel,
        });
        let mut w = WaveRun {
            group,
            allowed: group.max_failures.allowed(group.hosts.len()),
            failures: 0,
            results: Vec::new(),
            stop: None,
        };
        // Hosts the plan (or a failed copy) already ended count first: a
        // refused canary fails its wave before any of its hosts starts.
        // Let go as any end is: a failed copy's host (its lock and session
        // held) at once, not at the end of its wave's soak.
        let mut pending = Vec::new();
        for h in &group.hosts {
            match self.known_end(h) {
                Some(done) => self.end(&mut w, h.clone(), done, soaks),
                None => pending.push(h.clone()),
            }
        }
        self.activate(&mut w, pending, soaks).await;
        // The second Ctrl-C aborted the hosts in flight: they count against
        // the wave, but the cancel stops the run, not the wave. This
        // machine's own failure stops it whatever the budget says: that is
        // why the rest never start.
        let halted = matches!(w.stop, Some(NotStarted::ControllerFailed { .. }));
        let mut stop = if *self.cancel.borrow() >= CancelLevel::Abort {
            Some(NotStarted::Cancelled)
        } else if w.failures > w.allowed && !halted {
            Some(NotStarted::EarlierWaveFailed {
                wave: group.name.clone(),
            })
        } else {
            w.stop.take()
        };
        // A wave that stops the run still verifies the hosts that ended
        // well: its soak re-checks them at once, with no wait (it skipped
        // them, and they kept the known-good end and release the run had
        // given them): after a first Ctrl-C during its activations, or
        // when it went over its budget (hosts still in flight then ended
        // well, unwatched), and when this machine's own failure stopped
        // it, as a first Ctrl-C does. Over budget, or stopped by this
        // machine, the run stops whatever the re-checks find.
        let first_cancel = matches!(stop, Some(NotStarted::Cancelled))
            && *self.cancel.borrow() < CancelLevel::Abort;
        let over_budget = matches!(stop, Some(NotStarted::EarlierWaveFailed { .. }));
        let halted = matches!(stop, Some(NotStarted::ControllerFailed { .. }));
        if soaks && (stop.is_none() || first_cancel || over_budget || halted) {
            let cut = if over_budget {
                Some(SoakCut::WaveOverBudget)
            } else if halted {
                Some(SoakCut::ControllerFailed)
            } else {
                first_cancel.then_some(SoakCut::Cancelled)
            };
            let rechecked = self.soak(&mut w, cut).await;
            if !over_budget && !halted {
                stop = rechecked;
            }
        }
        let halted = matches!(stop, Some(NotStarted::ControllerFailed { .. }));
        // Once, after the soak: its counts are the wave's last word.
        (self.emit)(RunnerEvent::WaveFinished {
            wave: group.name.clone(),
            failures: w.failures,
            allowed: w.allowed,
            stops_run: matches!(stop, Some(NotStarted::EarlierWaveFailed { .. }))
                || (halted && w.failures > w.allowed),
        });
        for h in &group.hosts {
            self.let_go(h);
        }
        // Keep inventory order within the wave in the results.
        w.results
            .sort_by_key(|r| group.hosts.iter().position(|h| *h == r.host));
        self.results.extend(w.results);
        stop
    }

    /// Start the wave's hosts, up to `max_parallel` at once, each as soon
    /// as its staging ended (the first staged first: a host whose copy is
    /// done never waits for a slot held by one still copying), until they
    /// are done or the wave stops starting them; the rest never start and
    /// their staging stops. Every end already known (a host done, a copy
    /// failed) is counted before a slot is filled: a wave its failed copies
    /// put over budget starts nothing more (a failed copy waited for a
    /// slot, and its host's `run` to fail it, while other hosts started).
    async fn activate(&mut self, w: &mut WaveRun<'_, J::Done>, pending: Vec<String>, soaks: bool) {
        let group = w.group;
        let (mut f, never_staged) = self.board(pending);
        loop {
            self.take_known(w, &mut f, soaks);
            // A host that ends because of a cancel frees its slot at the
            // moment the cancel arrives: the level is read here, before a
            // slot is filled, not only when its change is taken below.
            if w.stop.is_none() && *self.cancel.borrow() >= CancelLevel::StopStarting {
                w.stop = Some(NotStarted::Cancelled);
            }
            while w.stop.is_none() && f.started.len() < group.max_parallel.max(1) {
                let Some((h, staged)) = f.ready.pop_front() else {
                    break;
                };
                f.unstarted.retain(|(u, _)| *u != h);
                let handle = f.started.spawn(self.start(Arc::from(h.as_str()), staged));
                f.task_host.insert(handle.id(), h);
            }
            let more = w.stop.is_none() && !(f.staging.is_empty() && f.ready.is_empty());
            if f.started.is_empty() && !more {
                break;
            }
            // Biased: an end is taken before a copy that makes a host ready.
            tokio::select! {
                biased;
                Some(joined) = f.started.join_next_with_id(), if !f.started.is_empty() => {
                    self.joined(w, &f, joined, soaks);
                }
                Some(staged) = f.staging.next(), if w.stop.is_none() && !f.staging.is_empty() => {
                    self.staged(w, &mut f, staged, soaks);
                }
                changed = self.cancel.changed() => {
                    if changed.is_ok() {
                        let level = *self.cancel.borrow();
                        if level >= CancelLevel::StopStarting && w.stop.is_none() {
                            w.stop = Some(NotStarted::Cancelled);
                        }
                        if level >= CancelLevel::Abort {
                            f.started.abort_all();
                        }
                    }
                }
            }
        }
        // A copy that failed before its staging is stopped is its host's end.
        self.take_known(w, &mut f, soaks);
        let why = w.stop.clone().unwrap_or(NotStarted::Cancelled);
        for (h, staging) in f.unstarted {
            if let Some(handle) = staging {
                handle.abort();
            }
            let r = self.not_started(&h, &group.name, &why);
            w.results.push(r);
        }
        for h in never_staged {
            let r = self.not_started(&h, &group.name, &why);
            w.results.push(r);
        }
    }

    /// The wave's hosts to run, on their way; and those never staged
    /// (their wave failed by the plan's refusals alone, so nothing of it
    /// was staged: they end not started; before, they were dropped from
    /// the results, with no end at all).
    fn board(&mut self, pending: Vec<String>) -> (Flight<J>, Vec<String>) {
        let mut f = Flight {
            started: JoinSet::new(),
            task_host: HashMap::new(),
            staging: FuturesUnordered::new(),
            unstarted: Vec::new(),
            ready: VecDeque::new(),
        };
        let mut never_staged = Vec::new();
        for h in pending {
            match self.staged.remove(&h) {
                None => never_staged.push(h),
                Some(Staging::Done(staged)) => {
                    f.unstarted.push((h.clone(), None));
                    f.staging.push(Box::pin(std::future::ready((h, staged))));
                }
                Some(Staging::UnderWay(rx, handle)) => {
                    f.unstarted.push((h.clone(), Some(handle)));
                    f.staging.push(Box::pin(async move { (h, rx.await.ok()) }));
                }
            }
        }
        (f, never_staged)
    }

    /// Take every end and staging already done, without waiting.
    fn take_known(&mut self, w: &mut WaveRun<'_, J::Done>, f: &mut Flight<J>, soaks: bool) {
        while let Some(joined) = f.started.try_join_next_with_id() {
            self.joined(w, f, joined, soaks);
        }
        while let Some(Some(staged)) = f.staging.next().now_or_never() {
            self.staged(w, f, staged, soaks);
        }
    }

    /// A started host's end (one whose task panicked or was aborted ends
    /// as the job says).
    fn joined(
        &mut self,
        w: &mut WaveRun<'_, J::Done>,
        f: &Flight<J>,
        joined: Joined<J>,
        soaks: bool,
    ) {
        let (host, done) = match joined {
            Ok((_, hd)) => hd,
            Err(e) => {
                let Some(host) = f.task_host.get(&e.id()).cloned() else {
                    return;
                };
                let why = if e.is_cancelled() {
                    Interrupted::Aborted
                } else {
                    Interrupted::Panicked
                };
                let done = self.job.interrupted(&host, why);
                (host, done)
            }
        };
        self.end(w, host, done, soaks);
    }

    /// A host's staging done: ready for a slot, or ended by it.
    fn staged(
        &mut self,
        w: &mut WaveRun<'_, J::Done>,
        f: &mut Flight<J>,
        (host, staged): (String, Option<J::Staged>),
        soaks: bool,
    ) {
        match staged.as_ref().and_then(|s| self.job.staged_end(&host, s)) {
            Some(done) => {
                f.unstarted.retain(|(u, _)| *u != host);
                self.end(w, host, done, soaks);
            }
            None => {
                // Ready with every slot taken: it waits for one, up to the
                // wave's whole length (200 hosts, 10 at a time), kept as
                // one staged ahead is (it went unrooted, and the host's GC
                // could take its closure before its turn).
                if staged.is_some() && f.started.len() >= w.group.max_parallel.max(1) {
                    tokio::spawn(self.job.clone().staged_ahead(Arc::from(host.as_str())));
                }
                f.ready.push_back((host, staged))
            }
        }
    }

    /// Record a host's end in its wave.
    fn end(&mut self, w: &mut WaveRun<'_, J::Done>, host: String, done: J::Done, soaks: bool) {
        self.job.ended(&host, &done);
        let failed = self.job.is_failure(&done);
        // A soak re-checks only the hosts that ended well.
        if failed || !soaks {
            self.let_go(&host);
        }
        let controllers_own = self.job.controllers_own(&done);
        w.record(host, done, failed, controllers_own);
    }

    /// A staged host's run (a staging that ended without a result is
    /// reported as lost).
    fn start(
        &self,
        host: Arc<str>,
        staged: Option<J::Staged>,
    ) -> impl Future<Output = (String, J::Done)> + Send + 'static {
        let job = self.job.clone();
        async move {
            let name = host.to_string();
            match staged {
                Some(s) => (name, job.run(host, s).await),
                None => {
                    let done = job.interrupted(&name, Interrupted::StageLost);
                    (name, done)
                }
            }
        }
    }

    /// Wait out the soak (unless it is `cut` already: a wave that stops
    /// the run re-checks at once), then re-check every host that finished
    /// well; the job takes back those found unhealthy, and is told whether
    /// the soak ran its full time. `Some` when the run must stop: the
    /// re-checks pushed the wave over its budget, or a cancel came.
    async fn soak(
        &mut self,
        w: &mut WaveRun<'_, J::Done>,
        mut cut: Option<SoakCut>,
    ) -> Option<NotStarted> {
        let group = w.group;
        // Nothing to re-check (every host refused or failed, within the
        // wave's budget, or none changed what it runs: `--goal boot`): no
        // wait (it was the whole soak, up to 7 days).
        let rechecks = (w.results.iter())
            .any(|r| matches!(&r.end, RunnerEnd::Done(d) if self.job.to_recheck(d)));
        if !rechecks {
            return (*self.cancel.borrow() >= CancelLevel::StopStarting)
                .then_some(NotStarted::Cancelled);
        }
        (self.emit)(RunnerEvent::SoakStarted {
            wave: group.name.clone(),
            seconds: if cut.is_none() {
                group.soak.as_secs()
            } else {
                0
            },
        });
        // The first Ctrl-C verifies what is in flight: it cuts the wait
        // short and the hosts are re-checked now (they were not, and kept
        // the known-good the run had marked), then the run stops.
        if cut.is_none() {
            tokio::select! {
                _ = tokio::time::sleep(group.soak) => {}
                _ = cancel::reached(&mut self.cancel, CancelLevel::StopStarting) => {
                    cut = Some(SoakCut::Cancelled);
                }
            }
        }
        if let Some(why) = self.recheck(w, cut).await {
            return Some(why);
        }
        // A re-check this machine's own failure ended (no new connection
        // it could make): the next wave's hosts would fail the same way.
        if let Some(stop) = w.stop.take() {
            return Some(stop);
        }
        // A run a Ctrl-C stopped is cancelled, not stopped by its wave.
        if *self.cancel.borrow() >= CancelLevel::StopStarting {
            return Some(NotStarted::Cancelled);
        }
        (w.failures > w.allowed).then(|| NotStarted::EarlierWaveFailed {
            wave: group.name.clone(),
        })
    }

    /// Re-check every host of the wave that ended well; each one's end
    /// afterwards is its end. `Some` when the second Ctrl-C ended the
    /// re-checks (and the take-backs they started): a host whose re-check
    /// was cut off ends as the job says ([`HostJob::recheck_cut`]: one
    /// whose take-back was under way kept its known-good end, and was
    /// released, while the take-back had revoked the mark and was
    /// switching it back); one re-checked already keeps its new end.
    async fn recheck(
        &mut self,
        w: &mut WaveRun<'_, J::Done>,
        cut: Option<SoakCut>,
    ) -> Option<NotStarted> {
        // A re-check may run health checks and take a host back: work on
        // the host, capped like the wave's activations.
        let slots = Arc::new(Semaphore::new(w.group.max_parallel.max(1)));
        let mut checks = JoinSet::new();
        let mut task_host: HashMap<tokio::task::Id, usize> = HashMap::new();
        for (i, r) in w.results.iter().enumerate() {
            if let RunnerEnd::Done(d) = &r.end
                && self.job.to_recheck(d)
            {
                let (job, done, slots) = (self.job.clone(), d.clone(), slots.clone());
                let host: Arc<str> = Arc::from(r.host.as_str());
                let handle = checks.spawn(async move {
                    // Never closed: an error cannot come, and would only
                    // lift the cap.
                    let _slot = slots.acquire_owned().await;
                    (i, job.recheck(host, done, cut).await)
                });
                task_host.insert(handle.id(), i);
            }
        }
        // `task_host` keeps the re-checks not joined yet.
        loop {
            // Biased: a re-check done when the second Ctrl-C comes is
            // joined first (its end is known; aborting it threw it away).
            let joined = tokio::select! {
                biased;
                joined = checks.join_next_with_id() => joined,
                _ = cancel::reached(&mut self.cancel, CancelLevel::Abort) => {
                    checks.abort_all();
                    for i in task_host.into_values() {
                        if let RunnerEnd::Done(had) = &w.results[i].end {
                            let done = self.job.recheck_cut(&w.results[i].host, had.clone());
                            self.rechecked(w, i, done);
                        }
                    }
                    return Some(NotStarted::Cancelled);
                }
            };
            let Some(joined) = joined else { break };
            match joined {
                Ok((id, (i, done))) => {
                    task_host.remove(&id);
                    (self.emit)(RunnerEvent::SoakChecked {
                        wave: w.group.name.clone(),
                        host: w.results[i].host.clone(),
                        healthy: !self.job.is_failure(&done),
                    });
                    self.rechecked(w, i, done);
                }
                // A re-check that panicked says nothing of the host's
                // health: it fails, like a host whose activation panicked.
                Err(e) => {
                    let Some(i) = task_host.remove(&e.id()) else {
                        continue;
                    };
                    let why = if e.is_panic() {
                        Interrupted::Panicked
                    } else {
                        Interrupted::Aborted
                    };
                    let done = self.job.interrupted(&w.results[i].host, why);
                    self.rechecked(w, i, done);
                }
            }
        }
        None
    }

    /// The `i`th host's end after its re-check: one that no longer ends
    /// well counts against the wave; any new end is told, failing or not
    /// (a soak cut short leaves a host known-good but failing the run:
    /// told only when it failed its wave, its `host_finished` still read
    /// a clean known-good); one this machine's own failure marred
    /// ([`HostJob::controllers_own`]) stops the run after the re-checks.
    fn rechecked(&mut self, w: &mut WaveRun<'_, J::Done>, i: usize, done: J::Done) {
        let failed = self.job.is_failure(&done);
        if failed {
            w.failures += 1;
        }
        let changed = !matches!(&w.results[i].end, RunnerEnd::Done(had) if *had == done);
        if failed || changed {
            self.job.ended(&w.results[i].host, &done);
        }
        if self.job.controllers_own(&done) && w.stop.is_none() {
            let host = w.results[i].host.clone();
            w.stop = Some(NotStarted::ControllerFailed { host });
        }
        w.results[i].end = RunnerEnd::Done(done);
    }
}

impl<J: HostJob> Runner<J> {
    /// Let `host` go, once.
    fn let_go(&mut self, host: &str) {
        if self.gone.insert(host.to_owned()) {
            let job = self.job.clone();
            self.letting_go.spawn(job.let_go(Arc::from(host)));
        }
    }

    /// Wait until every host is let go; the second Ctrl-C stops waiting.
    async fn letting_go(&mut self) {
        let mut set = std::mem::take(&mut self.letting_go);
        let cancel = &mut self.cancel;
        let aborted = async {
            // A dropped canceller never aborts.
            if cancel.wait_for(|l| *l >= CancelLevel::Abort).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = async { while set.join_next().await.is_some() {} } => {}
            _ = aborted => set.abort_all(),
        }
    }
}

/// Stage `host` once the host spawned before it has its slot (`turn`;
/// dropped, as by an aborted staging, counts as had), so hosts are staged
/// in the order the waves will start them: spawned tasks race for the
/// semaphore, and a 20-host push at 50 ms staged light18 before light10,
/// whose activation slot then waited 3.3 s for light10's copy. The
/// returned receiver is the next host's turn. A staging that ends before
/// its wave has `begun` is handed over, its slot freed, then the job
/// keeps what it staged ([`HostJob::staged_ahead`]).
fn spawn_stage<J: HostJob>(
    job: Arc<J>,
    host: &str,
    (slots, turn, begun): (
        Arc<Semaphore>,
        Option<oneshot::Receiver<()>>,
        Arc<AtomicBool>,
    ),
) -> (Staging<J::Staged>, oneshot::Receiver<()>) {
    let (tx, rx) = oneshot::channel();
    let (next_tx, next_rx) = oneshot::channel();
    let host: Arc<str> = Arc::from(host);
    let handle = tokio::spawn(async move {
        if let Some(turn) = turn {
            let _ = turn.await;
        }
        let Ok(permit) = slots.acquire_owned().await else {
            return;
        };
        let _ = next_tx.send(());
        let s = job.clone().stage(host.clone()).await;
        drop(permit);
        let ahead = !begun.load(Ordering::SeqCst);
        if tx.send(s).is_ok() && ahead {
            job.staged_ahead(host).await;
        }
    });
    (Staging::UnderWay(rx, handle), next_rx)
}

#[cfg(test)]
mod tests;
