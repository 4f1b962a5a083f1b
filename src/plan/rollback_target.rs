//! The plan of a `rollback`: for each host, the known-good closure to go
//! back to, read from the host's own known-good history. Never a revert of
//! history: the target is a closure that once passed every gate.
//!
//! The known-good profile's *current* generation is where the host stands.
//! A rollback to generation K re-selects K (it adds no generation), so a
//! second rollback goes on to the generation before K instead of flipping
//! back to the one the first rollback left.

use serde::{Deserialize, Serialize};

use crate::activation::known_good::{self, Baseline, KnownGoodGeneration};
use crate::activation::{HostPaths, links};
use crate::fleet::Fleet;
use crate::nix::StorePath;

use super::{Candidate, Planning, Refusal, Verdict};

/// Why a host has nothing to roll back to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The generation has no known-good record while the others have
    /// theirs: its mark never finished (the host went down between setting
    /// the profile and writing the record, and the run did not count it
    /// known-good), so it is no proof of anything.
    Unrecorded { generation: u64 },
    /// The host's history could not be read.
    Unreadable { error: String },
}

/// Where a host goes back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub closure: StorePath,
    /// The known-good generation it is; `None` for the baseline.
    pub generation: Option<u64>,
    /// The system the host ran before nixgate's first deploy: it never
    /// passed nixgate's gates (the rollback now takes it through them).
    pub never_validated: bool,
    /// The commit its record names.
    pub commit: Option<String>,
}

/// `g` as a target, or why it is none. `recorded`: the host keeps records
/// (some generation has one), so one without a record is a mark that
/// never finished (the fault matrix left one: a host that went down as it
/// was marked, rolled back, its known-good profile on the failed candidate
/// and no record; going "back" there would redeploy what just failed).
/// Where no generation has a record (the records' directory, under
/// /var/lib, not kept across boots), the generations count as they are.
fn usable(g: &KnownGoodGeneration, recorded: bool) -> Result<Target, NoTarget> {
    let generation = g.generation;
    match (&g.closure, g.present) {
        (Some(_), _) if recorded && g.record.is_none() => Err(NoTarget::Unrecorded { generation }),
        (Some(c), true) => Ok(Target {
            closure: c.clone(),
            generation: Some(generation),
            never_validated: false,
            commit: g.record.as_ref().and_then(|r| r.commit.clone()),
        }),
        _ => Err(NoTarget::Missing { generation }),
    }
}

/// Which known-good generation to go back to, given the host's history
/// (oldest first) and what it runs now; with nothing earlier, the system
/// it ran before nixgate's first deploy (`baseline`), never validated.
pub fn choose_target(
    history: &[KnownGoodGeneration],
    running: Option<&StorePath>,
    to: Option<u64>,
    baseline: Option<&Baseline>,
) -> Result<Target, NoTarget> {
    // Standing on the baseline (a rollback went there and marked it):
    // there is nothing further back, whatever generation number it got.
    if to.is_none()
        && let Some(b) = baseline
        && let Some(here) = history.iter().find(|g| g.current)
        && here.closure.as_ref() == Some(&b.closure)
        && running == Some(&b.closure)
    {
        return Err(NoTarget::NothingEarlier {
            generation: here.generation,
        });
    }
    match choose_known_good(history, running, to) {
        Err(NoTarget::NoKnownGood | NoTarget::NothingEarlier { .. })
            if to.is_none()
                && let Some(b) = baseline.filter(|b| Some(&b.closure) != running) =>
        {
            Ok(Target {
                closure: b.closure.clone(),
                generation: None,
                never_validated: true,
                commit: None,
            })
        }
        other => other,
    }
}

fn choose_known_good(
    history: &[KnownGoodGeneration],
    running: Option<&StorePath>,
    to: Option<u64>,
) -> Result<Target, NoTarget> {
    let recorded = history.iter().any(|g| g.record.is_some());
    if let Some(n) = to {
        let g = history.iter().find(|g| g.generation == n).ok_or_else(|| {
            NoTarget::NoSuchGeneration {
                generation: n,
                have: history.iter().map(|g| g.generation).collect(),
            }
        })?;
        return usable(g, recorded);
    }
    // Where the host stands: the profile's current generation (the newest
    // when the profile is unreadable).
    let mut stand = history
        .iter()
        .position(|g| g.current)
        .or_else(|| history.len().checked_sub(1))
        .ok_or(NoTarget::NoKnownGood)?;
    if recorded && history[stand].record.is_none() {
        // A mark that never finished moved the profile: the host stands on
        // the newest recorded generation of what it runs, else the newest
        // recorded one before (what the profile was on).
        let before = &history[..stand];
        stand = before
            .iter()
            .rposition(|g| g.record.is_some() && g.closure.as_ref() == running)
            .or_else(|| before.iter().rposition(|g| g.record.is_some()))
            .ok_or(NoTarget::Unrecorded {
                generation: history[stand].generation,
            })?;
    }
    let here = &history[stand];
    if here.closure.as_ref() != running
        && let Ok(t) = usable(here, recorded)
    {
        // Running something unvalidated: back to where it stood.
        return Ok(t);
    }
    let mut skipped = None;
    for g in history[..stand].iter().rev() {
        if g.closure.is_some() && g.closure.as_ref() == here.closure.as_ref() {
            continue;
        }
        match usable(g, recorded) {
            Ok(t) => return Ok(t),
            Err(why) => skipped = skipped.or(Some(why)),
        }
    }
    Err(skipped.unwrap_or(NoTarget::NothingEarlier {
        generation: here.generation,
    }))
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
                    generation: t.generation,
                    never_validated: t.never_validated,
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
    let remote = p
        .fleet
        .host(host)
        .await
        .map_err(|e| Refusal::no_session(&e))?;
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
    let baseline = known_good::baseline(&remote, &paths)
        .await
        .map_err(unreadable)?;
    let target = choose_target(&history, running.as_ref(), to, baseline.as_ref())
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

    /// Generations 1.. of these closures, each with its record; the
    /// current one is `current` (1-based).
    fn hist(closures: &[char], current: usize) -> Vec<KnownGoodGeneration> {
        closures
            .iter()
            .enumerate()
            .map(|(i, c)| KnownGoodGeneration {
                generation: i as u64 + 1,
                closure: Some(sp(*c)),
                present: true,
                record: Some(record(i as u64 + 1, *c)),
                current: i + 1 == current,
            })
            .collect()
    }

    fn record(generation: u64, c: char) -> known_good::KnownGoodRecord {
        known_good::KnownGoodRecord {
            version: 1,
            host: "x".into(),
            generation,
            closure: sp(c),
            marked_at: "2026-12-01T00:00:00Z".into(),
            commit: None,
            run_id: crate::activation::RunId::parse("r1").unwrap(),
            gates: Vec::new(),
            replaced: None,
        }
    }

    /// A generation whose mark never finished (no record, where the others
    /// have theirs) is no target: not where the host stands, not on the
    /// way back, not by number. The fault matrix's case: marked, went down
    /// before the record, rolled back to what it ran (`b`): the host stands
    /// on `b`, and back is the one before it, never the failed `c`.
    #[test]
    fn a_generation_whose_mark_never_finished_is_no_target() {
        let mut h = hist(&['a', 'b', 'c'], 3);
        h[2].record = None;
        assert_eq!(choose_target(&h, Some(&sp('b')), None, None), to('a', 1));
        assert_eq!(
            choose_target(&h, Some(&sp('b')), Some(3), None),
            Err(NoTarget::Unrecorded { generation: 3 })
        );
        // Running something unvalidated: back to where the profile stood.
        assert_eq!(choose_target(&h, Some(&sp('d')), None, None), to('b', 2));
        h[1].record = None;
        assert_eq!(choose_target(&h, Some(&sp('c')), None, None), to('a', 1));
        let mut only = hist(&['a', 'b'], 2);
        only[0].record = None;
        assert_eq!(
            choose_target(&only, Some(&sp('b')), None, None),
            Err(NoTarget::Unrecorded { generation: 1 })
        );
        // No record anywhere (the records' directory lost): as they are.
        let mut none = hist(&['a', 'b'], 2);
        for g in &mut none {
            g.record = None;
        }
        assert_eq!(choose_target(&none, Some(&sp('b')), None, None), to('a', 1));
    }

    fn to(closure: char, generation: u64) -> Result<Target, NoTarget> {
        Ok(Target {
            closure: sp(closure),
            generation: Some(generation),
            never_validated: false,
            commit: None,
        })
    }

    #[test]
    fn back_from_where_the_host_stands() {
        let h = hist(&['a', 'b', 'c'], 3);
        // on the current known-good: the one before it
        assert_eq!(choose_target(&h, Some(&sp('c')), None, None), to('b', 2));
        // on something unvalidated: the current known-good
        assert_eq!(choose_target(&h, Some(&sp('d')), None, None), to('c', 3));
        // a named generation
        assert_eq!(choose_target(&h, Some(&sp('c')), Some(1), None), to('a', 1));
        assert_eq!(
            choose_target(&h, None, Some(9), None),
            Err(NoTarget::NoSuchGeneration {
                generation: 9,
                have: vec![1, 2, 3]
            })
        );
        // the same closure marked twice in a row: skip to a different one
        let h = hist(&['a', 'b', 'b'], 3);
        assert_eq!(choose_target(&h, Some(&sp('b')), None, None), to('a', 1));
        assert_eq!(
            choose_target(&hist(&['a'], 1), Some(&sp('a')), None, None),
            Err(NoTarget::NothingEarlier { generation: 1 })
        );
        assert_eq!(
            choose_target(&[], None, None, None),
            Err(NoTarget::NoKnownGood)
        );
    }

    #[test]
    fn after_the_first_deploy_the_system_before_it_is_offered_never_validated() {
        let base = Baseline {
            closure: sp('z'),
            recorded_at: "2026-12-01T00:00:00Z".into(),
            run_id: "r0".into(),
        };
        let h = hist(&['a'], 1);
        assert_eq!(
            choose_target(&h, Some(&sp('a')), None, Some(&base)),
            Ok(Target {
                closure: sp('z'),
                generation: None,
                never_validated: true,
                commit: None,
            })
        );
        // Never instead of a known-good, never for a named generation, and
        // not when the host runs it already.
        assert_eq!(
            choose_target(&hist(&['a', 'b'], 2), Some(&sp('b')), None, Some(&base)),
            to('a', 1)
        );
        assert!(choose_target(&h, Some(&sp('a')), Some(7), Some(&base)).is_err());
        assert_eq!(
            choose_target(&h, Some(&sp('z')), None, Some(&base)),
            to('a', 1),
            "running the baseline (unvalidated): back to the known-good"
        );
        // Gone back to the baseline and marked it (generation 2): nothing
        // further back, not forward to `a`.
        let h = hist(&['a', 'z'], 2);
        assert_eq!(
            choose_target(&h, Some(&sp('z')), None, Some(&base)),
            Err(NoTarget::NothingEarlier { generation: 2 })
        );
    }

    #[test]
    fn a_second_rollback_goes_further_back() {
        // The first rollback re-selected generation 2: the host stands there.
        let h = hist(&['a', 'b', 'c'], 2);
        assert_eq!(choose_target(&h, Some(&sp('b')), None, None), to('a', 1));
    }

    #[test]
    fn a_closure_gone_from_the_store_is_skipped_and_named() {
        let mut h = hist(&['a', 'b', 'c'], 3);
        h[1].present = false;
        assert_eq!(choose_target(&h, Some(&sp('c')), None, None), to('a', 1));
        h[0].present = false;
        assert_eq!(
            choose_target(&h, Some(&sp('c')), None, None),
            Err(NoTarget::Missing { generation: 2 })
        );
        assert_eq!(
            choose_target(&h, Some(&sp('c')), Some(2), None),
            Err(NoTarget::Missing { generation: 2 })
        );
    }
}
