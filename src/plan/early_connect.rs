//! Connecting to the hosts while the builder builds.
//!
//! A host's SSH handshake is about 6 round trips (TCP, key exchange,
//! authentication, the first channel): 0.3 s at 50 ms, 0.9 s at 150 ms.
//! Made after the build, by the diff gate's first read, it was pure waiting
//! (BENCHMARKS.md, "The round trips of one gated push": the host's
//! connection opened at 1.0 s, after the build). [`start`] opens every
//! selected host's session with the builder's (after it, for fleets of
//! [`MAX_CONNECTING`] hosts or more), so the handshakes overlap the
//! source shipping and the build; [`settle`] then
//! refuses a host that could not be reached once, with the error of that
//! one attempt (or its sudo's refusal of the run's password): a host is never made to time out twice.
//!
//! The relay's builder stream is a connection of its own too (a slow host
//! must not stall the builder's commands): [`relay_stream`] starts it
//! once the build is done, so its handshake overlaps the diff gate instead
//! of the copy (one host at 50 ms: 6 of the builder's round trips left the
//! copy's critical path, BENCHMARKS.md).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::join_all;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Planning, Refusal, Verdict};
use crate::fleet::{Fleet, MAX_CONNECTING, SessionError};
use crate::inventory::CopyMode;
use crate::remote::Remote;

/// The connections being made: each host's failure, if it had one.
pub struct Connecting(JoinHandle<HashMap<String, SessionError>>);

/// Start connecting to `hosts`: alongside the builder when they are fewer
/// than [`MAX_CONNECTING`] (the builder's handshake, which the build waits
/// for, cannot queue behind theirs then), else after it. One host at 50 ms
/// after a quick build: its handshake, started once the builder's was
/// done, was the critical path until 0.32 s (BENCHMARKS.md, "Scheduling,
/// and more round trips off the path").
pub fn start<F: Fleet>(fleet: &Arc<F>, hosts: &[String]) -> Connecting {
    let fleet = fleet.clone();
    let hosts = hosts.to_vec();
    Connecting(tokio::spawn(async move {
        // The build reports a builder that cannot be reached; the hosts are
        // connected either way.
        if hosts.len() >= MAX_CONNECTING {
            let _ = fleet.builder().await;
        }
        let tried = join_all(hosts.iter().map(|h| {
            let fleet = &fleet;
            async move { (h.clone(), fleet.host(h).await.err()) }
        }))
        .await;
        tried
            .into_iter()
            .filter_map(|(h, e)| e.map(|e| (h, e)))
            .collect()
    }))
}

impl Connecting {
    /// Wait for the connections and refuse every still-ready host that
    /// could not be reached. True when Ctrl-C came first (the connects
    /// are abandoned; nothing is refused).
    pub async fn settle(
        self,
        verdicts: &mut HashMap<String, Verdict>,
        stop: &CancellationToken,
    ) -> bool {
        let mut handle = self.0;
        let failed = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                handle.abort();
                return true;
            }
            joined = &mut handle => joined.unwrap_or_default(),
        };
        for (host, error) in failed {
            if let Some(v @ Verdict::Ready { .. }) = verdicts.get_mut(&host) {
                *v = Verdict::Refused {
                    refusal: Refusal::no_session(&error),
                };
            }
        }
        false
    }

    /// Stop connecting (the plan ended before it needed the hosts).
    pub fn abandon(self) {
        self.0.abort();
    }
}

/// Start the builder's connection for the relay's stream when a ready host
/// will have its closure relayed; a builder that cannot be had is the
/// copy's to report.
pub async fn relay_stream<F: Fleet>(p: &Planning<'_, F>, verdicts: &HashMap<String, Verdict>) {
    let relays = verdicts.iter().any(|(h, v)| {
        matches!(v, Verdict::Ready { .. })
            && p.inventory
                .host(h)
                .is_some_and(|x| x.copy == CopyMode::Relay)
    });
    if !relays {
        return;
    }
    if let Ok(builder) = p.fleet.builder().await {
        builder.prepare_stream();
    }
}
