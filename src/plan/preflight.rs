//! The last step of a deploying plan, after the host locks: each ready
//! host's keys are read on the controller (a key whose file or command
//! fails refuses its host: a host must not get a new system without the
//! secrets it expects), then the host's `pre_checks` run on it (one that
//! fails refuses the host, with its output). Both come before the prompt
//! and before anything on any host changes, so a refused host is shown in
//! the plan and counts against its wave like any other refusal. The keys
//! read here are the ones the pipeline writes, so every host of a run gets
//! the same content and the command runs once per key and host.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Planning, Refusal, Verdict};
use crate::activation::health::{self, HealthCheck};
use crate::fleet::Fleet;
use crate::gates::Goal;
use crate::keys::{self, ResolvedKey};

/// The keys read for each ready host.
pub type HostKeys = HashMap<String, Arc<Vec<ResolvedKey>>>;

/// Read keys and run pre-checks for every ready host; refuse those that
/// fail. `None` when cancelled on the way.
pub async fn run<F: Fleet>(
    p: &Planning<'_, F>,
    verdicts: &mut HashMap<String, Verdict>,
    goal: Goal,
) -> Option<HostKeys> {
    let ready: Vec<String> = verdicts
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Ready { .. }))
        .map(|(h, _)| h.clone())
        .collect();
    let all = futures_util::future::join_all(ready.iter().map(|h| host(p, h, goal)));
    let results = tokio::select! {
        r = all => r,
        _ = p.stop.cancelled() => return None,
    };
    let mut keys = HashMap::new();
    for (h, r) in ready.into_iter().zip(results) {
        match r {
            Ok(k) => {
                keys.insert(h, Arc::new(k));
            }
            Err(refusal) => {
                verdicts.insert(h, Verdict::Refused { refusal });
            }
        }
    }
    Some(keys)
}

async fn host<F: Fleet>(
    p: &Planning<'_, F>,
    name: &str,
    goal: Goal,
) -> Result<Vec<ResolvedKey>, Refusal> {
    let Some(h) = p.inventory.host(name) else {
        return Ok(Vec::new());
    };
    let keys = if goal.writes_keys() {
        keys::resolve_all(&h.keys)
            .await
            .map_err(|error| Refusal::KeySource { error })?
    } else {
        Vec::new()
    };
    if h.pre_checks.is_empty() {
        return Ok(keys);
    }
    let remote = p
        .fleet
        .host(name)
        .await
        .map_err(|e| Refusal::no_session(&e))?;
    let checks: Vec<HealthCheck> = h
        .pre_checks
        .iter()
        .map(|c| HealthCheck {
            command: c.command.clone(),
            timeout: c.timeout,
            retries: c.retries,
        })
        .collect();
    let reports = health::run_health_checks(&remote, &checks, h.os).await;
    if reports.iter().all(health::HealthReport::passed) {
        Ok(keys)
    } else {
        Err(Refusal::PreChecks { reports })
    }
}
