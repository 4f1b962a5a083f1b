//! The fleet runner: turns per-host pipelines into waves.
//!
//! Waves run in order; inside a wave up to `max_parallel` hosts run at once;
//! a wave whose failures exceed its budget stops the run; a good wave soaks
//! (waits, then re-checks every finished host) before the next starts. Copies
//! (staging) run ahead of activations by one wave. The runner never prints:
//! it reports [`RunnerEvent`]s to a callback and returns typed results.

pub mod cancel;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::inventory::Selection;
use cancel::{CancelLevel, CancelWatch};

/// The per-host work the runner schedules.
pub trait HostJob: Send + Sync + 'static {
    /// What staging (building is done before; staging is the copy) yields.
    type Staged: Send + 'static;
    /// A finished host's result.
    type Done: Send + 'static;

    /// Prepare a host without changing what it runs (copy its closure).
    fn stage(self: Arc<Self>, host: Arc<str>) -> impl Future<Output = Self::Staged> + Send;
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
    /// Re-run a finished host's health checks after a soak: true when healthy.
    fn recheck(self: Arc<Self>, host: Arc<str>) -> impl Future<Output = bool> + Send;
}

/// Why the runner cut a host's work short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// Why a selected host was never started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum NotStarted {
    /// Ctrl-C / SIGTERM asked to start nothing new.
    Cancelled,
    /// Its wave exceeded `max_failures`.
    WaveFailed { wave: String },
    /// An earlier wave failed (or failed its soak), so this one never started.
    EarlierWaveFailed { wave: String },
}

/// How one host ended.
#[derive(Debug)]
pub enum HostEnd<D> {
    Done(D),
    NotStarted(NotStarted),
}

/// One host's place in the run.
#[derive(Debug)]
pub struct HostResult<D> {
    pub host: String,
    pub wave: String,
    pub end: HostEnd<D>,
    /// The post-soak health re-check, when the wave soaked.
    pub soak_healthy: Option<bool>,
}

/// What the runner reports while it works (data only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    WaveFinished {
        wave: String,
        failures: usize,
        allowed: usize,
        stops_run: bool,
    },
    SoakStarted {
        wave: String,
        seconds: u64,
    },
    SoakChecked {
        wave: String,
        host: String,
        healthy: bool,
    },
    CancelRequested {
        level: CancelLevel,
    },
}

/// Run every group of the selection in order.
pub async fn run<J: HostJob>(
    job: Arc<J>,
    selection: &Selection,
    mut cancel: CancelWatch,
    emit: impl Fn(RunnerEvent) + Send + Sync + 'static,
) -> Vec<HostResult<J::Done>> {
    let emit = Arc::new(emit);
    let groups = &selection.groups;
    let mut results: Vec<HostResult<J::Done>> = Vec::new();
    // Staging runs ahead by one wave, bounded like activations.
    let stage_slots = Arc::new(Semaphore::new(
        groups
            .iter()
            .map(|g| g.max_parallel)
            .max()
            .unwrap_or(1)
            .max(1),
    ));
    let mut staged: HashMap<String, (oneshot::Receiver<J::Staged>, JoinHandle<()>)> =
        HashMap::new();
    let mut stop: Option<NotStarted> = None;

    for (gi, group) in groups.iter().enumerate() {
        if stop.is_none() && *cancel.borrow() >= CancelLevel::StopStarting {
            stop = Some(NotStarted::Cancelled);
        }
        if let Some(why) = &stop {
            for h in &group.hosts {
                emit(RunnerEvent::HostNotStarted {
                    host: h.clone(),
                    wave: group.name.clone(),
                    why: why.clone(),
                });
                results.push(HostResult {
                    host: h.clone(),
                    wave: group.name.clone(),
                    end: HostEnd::NotStarted(why.clone()),
                    soak_healthy: None,
                });
            }
            continue;
        }
        for g in groups.iter().skip(gi).take(2) {
            for h in &g.hosts {
                if !staged.contains_key(h) {
                    staged.insert(h.clone(), spawn_stage(job.clone(), h, stage_slots.clone()));
                }
            }
        }
        emit(RunnerEvent::WaveStarted {
            wave: group.name.clone(),
            hosts: group.hosts.clone(),
            max_parallel: group.max_parallel,
        });
        let allowed = group.max_failures.allowed(group.hosts.len());
        let mut failures = 0usize;
        let mut wave_results: Vec<HostResult<J::Done>> = Vec::new();
        let mut set: JoinSet<(String, J::Done)> = JoinSet::new();
        let mut task_host: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut pending = group.hosts.iter();
        let mut wave_stop: Option<NotStarted> = None;
        loop {
            while wave_stop.is_none() && set.len() < group.max_parallel.max(1) {
                let Some(h) = pending.next() else { break };
                let Some((rx, _handle)) = staged.remove(h) else {
                    continue;
                };
                let job = job.clone();
                let host: Arc<str> = Arc::from(h.as_str());
                let handle = set.spawn(async move {
                    let name = host.to_string();
                    match rx.await {
                        Ok(s) => (name, job.run(host, s).await),
                        Err(_) => {
                            let done = job.interrupted(&name, Interrupted::StageLost);
                            (name, done)
                        }
                    }
                });
                task_host.insert(handle.id(), h.clone());
            }
            if set.is_empty() {
                break;
            }
            tokio::select! {
                joined = set.join_next_with_id() => {
                    let Some(joined) = joined else { break };
                    let (host, done) = match joined {
                        Ok((_, hd)) => hd,
                        Err(e) => {
                            let Some(host) = task_host.get(&e.id()).cloned() else { continue };
                            let why = if e.is_cancelled() { Interrupted::Aborted } else { Interrupted::Panicked };
                            let done = job.interrupted(&host, why);
                            (host, done)
                        }
                    };
                    if job.is_failure(&done) {
                        failures += 1;
                        if failures > allowed && wave_stop.is_none() {
                            wave_stop = Some(NotStarted::WaveFailed { wave: group.name.clone() });
                        }
                    }
                    wave_results.push(HostResult { host, wave: group.name.clone(), end: HostEnd::Done(done), soak_healthy: None });
                }
                changed = cancel.changed() => {
                    if changed.is_ok() {
                        let level = *cancel.borrow();
                        emit(RunnerEvent::CancelRequested { level });
                        if level >= CancelLevel::StopStarting && wave_stop.is_none() {
                            wave_stop = Some(NotStarted::Cancelled);
                        }
                        if level >= CancelLevel::Abort {
                            set.abort_all();
                        }
                    }
                }
            }
        }
        for h in pending {
            let why = wave_stop.clone().unwrap_or(NotStarted::Cancelled);
            emit(RunnerEvent::HostNotStarted {
                host: h.clone(),
                wave: group.name.clone(),
                why: why.clone(),
            });
            wave_results.push(HostResult {
                host: h.clone(),
                wave: group.name.clone(),
                end: HostEnd::NotStarted(why),
                soak_healthy: None,
            });
        }
        let stops_run = failures > allowed;
        emit(RunnerEvent::WaveFinished {
            wave: group.name.clone(),
            failures,
            allowed,
            stops_run,
        });
        if stops_run {
            stop = Some(NotStarted::EarlierWaveFailed {
                wave: group.name.clone(),
            });
        } else if let Some(why) = wave_stop {
            stop = Some(why);
        } else if !group.soak.is_zero() && gi + 1 < groups.len() {
            if !soak(
                &job,
                group,
                &mut wave_results,
                &mut cancel,
                allowed,
                failures,
                emit.as_ref(),
            )
            .await
            {
                stop = Some(NotStarted::EarlierWaveFailed {
                    wave: group.name.clone(),
                });
            }
            if stop.is_none() && *cancel.borrow() >= CancelLevel::StopStarting {
                stop = Some(NotStarted::Cancelled);
            }
        }
        // Keep inventory order within the wave in the results.
        wave_results.sort_by_key(|r| group.hosts.iter().position(|h| *h == r.host));
        results.extend(wave_results);
    }
    for (_, (_, handle)) in staged {
        handle.abort();
    }
    results
}

fn spawn_stage<J: HostJob>(
    job: Arc<J>,
    host: &str,
    slots: Arc<Semaphore>,
) -> (oneshot::Receiver<J::Staged>, JoinHandle<()>) {
    let (tx, rx) = oneshot::channel();
    let host: Arc<str> = Arc::from(host);
    let handle = tokio::spawn(async move {
        let Ok(_permit) = slots.acquire_owned().await else {
            return;
        };
        let s = job.stage(host).await;
        let _ = tx.send(s);
    });
    (rx, handle)
}

/// Wait out the soak, then re-check every host that finished well. Returns
/// false when the re-checks push the wave over its failure budget.
async fn soak<J: HostJob>(
    job: &Arc<J>,
    group: &crate::inventory::select::Group,
    results: &mut [HostResult<J::Done>],
    cancel: &mut CancelWatch,
    allowed: usize,
    mut failures: usize,
    emit: &(dyn Fn(RunnerEvent) + Send + Sync),
) -> bool {
    emit(RunnerEvent::SoakStarted {
        wave: group.name.clone(),
        seconds: group.soak.as_secs(),
    });
    tokio::select! {
        _ = tokio::time::sleep(group.soak) => {}
        _ = cancel::reached(cancel, CancelLevel::StopStarting) => return true,
    }
    let mut checks = JoinSet::new();
    for (i, r) in results.iter().enumerate() {
        if let HostEnd::Done(d) = &r.end
            && !job.is_failure(d)
        {
            let job = job.clone();
            let host: Arc<str> = Arc::from(r.host.as_str());
            checks.spawn(async move { (i, job.recheck(host).await) });
        }
    }
    while let Some(Ok((i, healthy))) = checks.join_next().await {
        results[i].soak_healthy = Some(healthy);
        emit(RunnerEvent::SoakChecked {
            wave: group.name.clone(),
            host: results[i].host.clone(),
            healthy,
        });
        if !healthy {
            failures += 1;
        }
    }
    failures <= allowed
}

#[cfg(test)]
mod tests;
