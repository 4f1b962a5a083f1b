//! The cache push of the plan (`[cache] push_to`): after the build and the
//! diff gate, before any host is locked or touched, the builder signs
//! (`[cache] signing_key`) and copies every ready host's closure to the
//! binary cache, in one `nix copy`. Hosts with `copy = "substitute"` then
//! fetch from there themselves, and a cache that did not get the closure
//! must not be found out by the first host that pulls: a push that fails
//! refuses every ready host ([`Refusal::CachePush`]), so nothing changes
//! anywhere. Ctrl-C ends the copy on the builder and the plan is cancelled.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use anyhow::Context;

use crate::fleet::Fleet;
use crate::nix::{self, StorePath};
use crate::report::Event;

use super::{Planning, Refusal, Verdict};

/// How the push ended, for the plan.
pub enum Pushed {
    /// No `[cache]`, or no host ready: nothing to push.
    Nothing,
    Done,
    /// Ctrl-C.
    Cancelled,
}

/// Push every ready host's closure to `[cache] push_to`; a failure refuses
/// every ready host.
pub async fn run<F: Fleet>(p: &Planning<'_, F>, verdicts: &mut HashMap<String, Verdict>) -> Pushed {
    let Some(cache) = &p.inventory.cache else {
        return Pushed::Nothing;
    };
    let mut hosts: Vec<String> = Vec::new();
    let mut tops = BTreeSet::new();
    for (h, v) in verdicts.iter() {
        if let Verdict::Ready { candidate, .. } = v {
            hosts.push(h.clone());
            tops.insert(candidate.closure.clone());
        }
    }
    if tops.is_empty() {
        return Pushed::Nothing;
    }
    hosts.sort();
    let tops: Vec<StorePath> = tops.into_iter().collect();
    let store = cache.push_to.clone();
    p.sink.emit(Event::CachePushStarted {
        store: store.clone(),
        hosts: hosts.clone(),
        closures: tops.len(),
    });
    let started = Instant::now();
    match push(p, &tops).await {
        Ok(done) => {
            p.sink.emit(Event::CachePushFinished {
                store,
                paths: done.paths,
                bytes: done.bytes,
                seconds: started.elapsed().as_secs_f64(),
            });
            Pushed::Done
        }
        Err(e) if nix::build::was_cancelled(&e) => Pushed::Cancelled,
        Err(e) => {
            let error = format!("{e:#}");
            p.sink.emit(Event::CachePushFailed {
                store: store.clone(),
                error: error.clone(),
            });
            for h in hosts {
                let refusal = Refusal::CachePush {
                    store: store.clone(),
                    error: error.clone(),
                };
                verdicts.insert(h, Verdict::Refused { refusal });
            }
            Pushed::Done
        }
    }
}

async fn push<F: Fleet>(
    p: &Planning<'_, F>,
    tops: &[StorePath],
) -> anyhow::Result<nix::cache::PushProgress> {
    let Some(cache) = &p.inventory.cache else {
        anyhow::bail!("no [cache] in the inventory");
    };
    let builder = p
        .fleet
        .builder()
        .await
        .context("connecting to the builder")?;
    if let Some(key) = &cache.signing_key {
        nix::sign::sign(&builder, key, tops)
            .await
            .context("signing the built systems for the cache")?;
    }
    let sink = p.sink.clone();
    let store = cache.push_to.clone();
    let progress = move |pr: nix::cache::PushProgress| {
        sink.emit(Event::CachePushProgress {
            store: store.clone(),
            paths: pr.paths,
            total_paths: pr.total_paths,
            bytes: pr.bytes,
        })
    };
    nix::cache::push(&builder, &cache.push_to, tops, &progress, p.stop).await
}
