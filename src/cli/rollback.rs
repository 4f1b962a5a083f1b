//! `nixgate rollback`: redeploy, through the same gated and verified
//! pipeline, the known-good closure before the one a host runs now (a host on
//! an unvalidated closure goes back to its last known-good), or the named
//! known-good generation. Never by reverting history.

use std::collections::HashMap;

use crate::activation::known_good::{self, KnownGoodGeneration};
use crate::activation::{HostPaths, links};
use crate::deploy::{self, AlreadyThere, Candidate, RunContext};
use crate::gates::Goal;
use crate::inventory::{Inventory, Selection};
use crate::nix::StorePath;
use crate::report::{Event, HostSummary};

use super::session::RunSession;
use super::{Global, Outcome};

/// Which closure to go back to, given the host's known-good history (oldest
/// first) and what it runs now.
pub fn choose_target(
    history: &[KnownGoodGeneration],
    current: Option<&StorePath>,
    to: Option<u64>,
) -> Result<StorePath, String> {
    if let Some(n) = to {
        return history
            .iter()
            .find(|g| g.generation == n)
            .and_then(|g| g.closure.clone())
            .ok_or_else(|| format!("no known-good generation {n} (have: {})", gens(history)));
    }
    let latest = history.iter().rev().find_map(|g| g.closure.clone());
    let Some(latest) = latest else {
        return Err(
            "no known-good generation on the host yet: nothing proven to go back to".into(),
        );
    };
    if current != Some(&latest) {
        // Running something unvalidated (or an older known-good): back to the latest.
        return Ok(latest);
    }
    history
        .iter()
        .rev()
        .filter_map(|g| g.closure.clone())
        .find(|c| *c != latest)
        .ok_or_else(|| {
            format!(
                "the host runs its only known-good closure ({}); there is nothing earlier",
                latest.name()
            )
        })
}

fn gens(history: &[KnownGoodGeneration]) -> String {
    let v: Vec<String> = history.iter().map(|g| g.generation.to_string()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

async fn target_for(
    run: &RunSession,
    inv: &Inventory,
    host: &str,
    to: Option<u64>,
) -> Result<StorePath, String> {
    let h = inv.host(host).ok_or("not in the inventory")?;
    let session = run.sessions.get(host).await.map_err(|e| e.to_string())?;
    let paths = HostPaths::for_os(h.os);
    let history = known_good::history(&session, &paths)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let current = links::read_store_link(&session, &paths.current_system)
        .await
        .map_err(|e| format!("{e:#}"))?;
    choose_target(&history, current.as_ref(), to)
}

pub async fn run(
    g: &Global,
    inv: Inventory,
    sel: Selection,
    to: Option<u64>,
    allow_reboot: bool,
) -> anyhow::Result<Outcome> {
    let inv = std::sync::Arc::new(inv);
    let run = RunSession::start(g, &inv, "rollback")?;
    let hosts: Vec<String> = sel.hosts().map(str::to_owned).collect();
    run.sink.emit(Event::RunStarted {
        run_id: run.run_id.to_string(),
        command: "rollback".into(),
        goal: Goal::Gated,
        commit: None,
        dirty: false,
        hosts: hosts.clone(),
        at: deploy::now(),
    });
    let lookups =
        futures_util::future::join_all(hosts.iter().map(|h| target_for(&run, &inv, h, to))).await;
    let mut candidates = HashMap::new();
    let mut refused: Vec<HostSummary> = Vec::new();
    for (host, target) in hosts.iter().zip(lookups) {
        match target {
            Ok(closure) => {
                candidates.insert(
                    host.clone(),
                    Candidate {
                        closure,
                        earlier_gates: Vec::new(),
                    },
                );
            }
            Err(reason) => {
                let s = deploy::failed_before_run(
                    &inv,
                    host,
                    None,
                    format!("rollback: {reason}"),
                    serde_json::json!({"kind": "no_rollback_target", "reason": reason}),
                );
                run.sink.emit(Event::HostFinished(s.clone()));
                refused.push(s);
            }
        }
    }
    let mut sel = sel;
    for g in &mut sel.groups {
        g.hosts.retain(|h| candidates.contains_key(h));
    }
    let ctx = RunContext {
        inventory: inv.clone(),
        sessions: run.sessions.clone(),
        goal: Goal::Gated,
        run_id: run.run_id.clone(),
        commit: None,
        allow_reboot,
        sink: run.sink.clone(),
    };
    let mut summaries = deploy::run(ctx, &sel, candidates, AlreadyThere, run.cancel.clone()).await;
    summaries.extend(refused);
    run.finish(Goal::Gated, None, false, summaries).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(c: char) -> StorePath {
        StorePath::parse(&format!(
            "/nix/store/{}-nixos-system-x",
            c.to_string().repeat(32)
        ))
        .unwrap()
    }

    fn hist(closures: &[char]) -> Vec<KnownGoodGeneration> {
        closures
            .iter()
            .enumerate()
            .map(|(i, c)| KnownGoodGeneration {
                generation: i as u64 + 1,
                closure: Some(sp(*c)),
                record: None,
                current: i + 1 == closures.len(),
            })
            .collect()
    }

    #[test]
    fn targets() {
        let h = hist(&['a', 'b', 'c']);
        // on the latest known-good: the one before it
        assert_eq!(choose_target(&h, Some(&sp('c')), None), Ok(sp('b')));
        // on something unvalidated: the latest known-good
        assert_eq!(choose_target(&h, Some(&sp('d')), None), Ok(sp('c')));
        // a named generation
        assert_eq!(choose_target(&h, Some(&sp('c')), Some(1)), Ok(sp('a')));
        assert!(
            choose_target(&h, None, Some(9))
                .unwrap_err()
                .contains("no known-good generation 9")
        );
        // re-marked same closure twice in a row: skip to a different one
        let h = hist(&['a', 'b', 'b']);
        assert_eq!(choose_target(&h, Some(&sp('b')), None), Ok(sp('a')));
        assert!(
            choose_target(&hist(&['a']), Some(&sp('a')), None)
                .unwrap_err()
                .contains("nothing earlier")
        );
        assert!(
            choose_target(&[], None, None)
                .unwrap_err()
                .contains("no known-good")
        );
    }
}
