//! The plan of a `rollback`: for each host, the known-good closure to go
//! back to, read from the host's own known-good history. Never a revert of
//! history: the target is a closure that once passed every gate.
//!
//! The known-good profile's *current* generation is where the host stands.
//! A rollback to generation K re-selects K (it adds no generation), so a
//! second rollback goes on to the generation before K instead of flipping
//! back to the one the first rollback left.

use serde::Serialize;

use crate::activation::known_good::{self, KnownGoodGeneration};
use crate::activation::{HostPaths, links};
use crate::fleet::Fleet;
use crate::nix::StorePath;

use super::{Candidate, Planning, Refusal, Verdict};

/// Why a host has nothing to roll back to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NoTarget {
    /// No known-good generation on the host yet.
    NoKnownGood,
    /// The host runs its only known-good closure.
    NothingEarlier { generation: u64 },
    /// `--to N` names a generation the host does not have.
    NoSuchGeneration { generation: u64, have: Vec<u64> },
    /// The generation's closure is no longer in the host's store.
    Missing { generation: u64 },
    /// The host's history could not be read.
    Unreadable { error: String },
}

/// Where a host goes back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub closure: StorePath,
    /// The known-good generation it is.
    pub generation: u64,
    /// The commit its record names.
    pub commit: Option<String>,
}

fn usable(g: &KnownGoodGeneration) -> Option<Target> {
    match (&g.closure, g.present) {
        (Some(c), true) => Some(Target {
            closure: c.clone(),
            generation: g.generation,
            commit: g.record.as_ref().and_then(|r| r.commit.clone()),
        }),
        _ => None,
    }
}

/// Which known-good generation to go back to, given the host's history
/// (oldest first) and what it runs now.
pub fn choose_target(
    history: &[KnownGoodGeneration],
    running: Option<&StorePath>,
    to: Option<u64>,
) -> Result<Target, NoTarget> {
    if let Some(n) = to {
        let g = history.iter().find(|g| g.generation == n).ok_or_else(|| {
            NoTarget::NoSuchGeneration {
                generation: n,
                have: history.iter().map(|g| g.generation).collect(),
            }
        })?;
        return usable(g).ok_or(NoTarget::Missing { generation: n });
    }
    // Where the host stands: the profile's current generation (the newest
    // when the profile is unreadable).
    let stand = history
        .iter()
        .position(|g| g.current)
        .or_else(|| history.len().checked_sub(1))
        .ok_or(NoTarget::NoKnownGood)?;
    let here = &history[stand];
    if here.closure.as_ref() != running
        && let Some(t) = usable(here)
    {
        // Running something unvalidated: back to where it stood.
        return Ok(t);
    }
    let mut missing = None;
    for g in history[..stand].iter().rev() {
        if g.closure.is_some() && g.closure.as_ref() == here.closure.as_ref() {
            continue;
        }
        match usable(g) {
            Some(t) => return Ok(t),
            None => missing = missing.or(Some(g.generation)),
        }
    }
    Err(match missing {
        Some(generation) => NoTarget::Missing { generation },
        None => NoTarget::NothingEarlier {
            generation: here.generation,
        },
    })
}

/// The targets found, as verdicts.
pub struct Found {
    pub verdicts: std::collections::HashMap<String, Verdict>,
    pub cancelled: bool,
}

/// Find every host's target.
pub async fn find_all<F: Fleet>(p: &Planning<'_, F>, hosts: &[String], to: Option<u64>) -> Found {
    let lookups = futures_util::future::join_all(hosts.iter().map(|h| async move {
        let v = match target_for(p, h, to).await {
            Ok((t, running)) => Verdict::Ready {
                candidate: Candidate {
                    closure: t.closure,
                    earlier_gates: Vec::new(),
                    generation: Some(t.generation),
                    commit: t.commit,
                },
                running,
            },
            Err(refusal) => Verdict::Refused { refusal },
        };
        (h.clone(), v)
    }));
    tokio::select! {
        all = lookups => Found { verdicts: all.into_iter().collect(), cancelled: false },
        _ = p.stop.cancelled() => Found { verdicts: Default::default(), cancelled: true },
    }
}

async fn target_for<F: Fleet>(
    p: &Planning<'_, F>,
    host: &str,
    to: Option<u64>,
) -> Result<(Target, Option<StorePath>), Refusal> {
    let h = p.inventory.host(host).ok_or_else(|| Refusal::Unreachable {
        error: format!("{host} is not in the inventory"),
    })?;
    let remote = p.fleet.host(host).await.map_err(|e| Refusal::Unreachable {
        error: e.to_string(),
    })?;
    let unreadable = |e: anyhow::Error| Refusal::NoRollbackTarget {
        why: NoTarget::Unreadable {
            error: format!("{e:#}"),
        },
    };
    let paths = HostPaths::for_os(h.os);
    let history = known_good::history(&remote, &paths)
        .await
        .map_err(unreadable)?;
    let running = links::read_store_link(&remote, &paths.current_system)
        .await
        .map_err(unreadable)?;
    let target = choose_target(&history, running.as_ref(), to)
        .map_err(|why| Refusal::NoRollbackTarget { why })?;
    Ok((target, running))
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

    /// Generations 1.. of these closures; the current one is `current` (1-based).
    fn hist(closures: &[char], current: usize) -> Vec<KnownGoodGeneration> {
        closures
            .iter()
            .enumerate()
            .map(|(i, c)| KnownGoodGeneration {
                generation: i as u64 + 1,
                closure: Some(sp(*c)),
                present: true,
                record: None,
                current: i + 1 == current,
            })
            .collect()
    }

    fn to(closure: char, generation: u64) -> Result<Target, NoTarget> {
        Ok(Target {
            closure: sp(closure),
            generation,
            commit: None,
        })
    }

    #[test]
    fn back_from_where_the_host_stands() {
        let h = hist(&['a', 'b', 'c'], 3);
        // on the current known-good: the one before it
        assert_eq!(choose_target(&h, Some(&sp('c')), None), to('b', 2));
        // on something unvalidated: the current known-good
        assert_eq!(choose_target(&h, Some(&sp('d')), None), to('c', 3));
        // a named generation
        assert_eq!(choose_target(&h, Some(&sp('c')), Some(1)), to('a', 1));
        assert_eq!(
            choose_target(&h, None, Some(9)),
            Err(NoTarget::NoSuchGeneration {
                generation: 9,
                have: vec![1, 2, 3]
            })
        );
        // the same closure marked twice in a row: skip to a different one
        let h = hist(&['a', 'b', 'b'], 3);
        assert_eq!(choose_target(&h, Some(&sp('b')), None), to('a', 1));
        assert_eq!(
            choose_target(&hist(&['a'], 1), Some(&sp('a')), None),
            Err(NoTarget::NothingEarlier { generation: 1 })
        );
        assert_eq!(choose_target(&[], None, None), Err(NoTarget::NoKnownGood));
    }

    #[test]
    fn a_second_rollback_goes_further_back() {
        // The first rollback re-selected generation 2: the host stands there.
        let h = hist(&['a', 'b', 'c'], 2);
        assert_eq!(choose_target(&h, Some(&sp('b')), None), to('a', 1));
    }

    #[test]
    fn a_closure_gone_from_the_store_is_skipped_and_named() {
        let mut h = hist(&['a', 'b', 'c'], 3);
        h[1].present = false;
        assert_eq!(choose_target(&h, Some(&sp('c')), None), to('a', 1));
        h[0].present = false;
        assert_eq!(
            choose_target(&h, Some(&sp('c')), None),
            Err(NoTarget::Missing { generation: 2 })
        );
        assert_eq!(
            choose_target(&h, Some(&sp('c')), Some(2)),
            Err(NoTarget::Missing { generation: 2 })
        );
    }
}
