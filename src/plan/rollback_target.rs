//! The plan of a `rollback`: for each host, the known-good closure to go
//! back to, read from the host's own known-good history. Never a revert of
//! history: the target is a closure that once passed every gate.
//!
//! The known-good profile's *current* generation is where the host stands.
//! A rollback to generation K re-selects K (it adds no generation), so a
//! second rollback goes on to the generation before K instead of flipping
//! back to the one the first rollback left.
//!
//! Back from where the host stands is where the profile was when that
//! generation was marked (its record's `replaced`), when that is an older
//! generation, and on from there: after a rollback to K and a push that
//! marked N on top of it, back from N is K, never the generations after K
//! the rollback moved away from (going by number alone went there). A
//! rollback's re-selection of K replaced a newer generation: its record
//! keeps where K was first marked on (`lineage`), so a second rollback
//! from K after a push on it and a rollback to that push goes there too. A
//! record with neither older (written before they were recorded, a
//! re-mark of the same closure) goes by number.
//! `--to N` is by number. A host running the closure of another known-good
//! generation than the one the profile stands on (switched back by hand,
//! or by a soak's take-back whose revoke failed) stands on that one (the
//! newest of that closure).
//!
//! The history is read before the host's lock is taken (the plan locks
//! every ready host at once, after their targets), so another run may mark
//! a generation in between. After the lock the history is read again
//! ([`recheck`]): a host whose profile no longer stands where it did is
//! refused ([`NoTarget::Moved`]), to be rolled back again from where it
//! stands, not sent to a target chosen from where it stood.
//!
//! A known-good generation without a record is a mark that never finished
//! (the host went down between `nix-env --set` and the record: the
//! candidate the run counted failed), never a target, when
//! - the host still holds the `.pending-<run>.replaced` that mark left,
//!   naming a generation before it ([`KnownGoodGeneration::cut_off`]), or
//! - it is newer than the oldest recorded generation: such a mark makes the
//!   newest generation, so one older than every record predates the
//!   records (their directory lost, or not kept across boots, then a
//!   deploy recorded afresh) and counts as known-good, as every
//!   generation does on a host with no record at all.
//!
//! Both, because neither is enough alone: the leftover file is the direct
//! evidence, but it is not synced, goes with the records' directory, and is
//! gone after a mark whose record could not be written; the position
//! misses a cut-off mark older than every record (the first mark ever, or
//! the first after the records were lost).
//!
//! When the profile's current generation is such a mark, the host stands
//! where the profile was before it: the generation the mark's leftover
//! names, else the newest known-good generation of the closure the host
//! runs (the run that lost the mark took the host back to it; after a
//! rollback re-selected an older generation, that is not the newest one),
//! and back goes on from there as always. Where neither is known, back is
//! the newest known-good generation before the mark whose closure is not
//! what the host runs.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::activation::known_good::{self, Baseline, KnownGoodGeneration};
use crate::activation::{HostPaths, links};
use crate::fleet::Fleet;
use crate::inspect::bound;
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
    /// known-good), so it is no proof of anything. `usable`: the
    /// generations `--to` would take instead (not what the host runs).
    Unrecorded {
        generation: u64,
        #[serde(default)]
        usable: Vec<u64>,
    },
    /// The generation's mark waits for a soak that never passed (its
    /// record says `soak_pending`: the run that marked it was stopped or
    /// killed mid-soak, or its soak's word never reached the host): it
    /// was never proven. `usable`: the generations `--to` would take
    /// instead (not what the host runs).
    SoakPending {
        generation: u64,
        #[serde(default)]
        usable: Vec<u64>,
    },
    /// The host's history could not be read.
    Unreadable { error: String },
    /// The known-good profile moved between reading the history and taking
    /// the host's lock (another run marked a generation meanwhile): the
    /// target was chosen from where the host no longer stands. Run the
    /// rollback again. `None`: no profile.
    Moved { was: Option<u64>, now: Option<u64> },
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

/// Which generations' marks never finished (see the module doc).
pub(crate) struct Unfinished {
    oldest_recorded: Option<u64>,
}

impl Unfinished {
    pub(crate) fn of(history: &[KnownGoodGeneration]) -> Unfinished {
        Unfinished {
            oldest_recorded: history
                .iter()
                .filter(|g| g.recorded)
                .map(|g| g.generation)
                .min(),
        }
    }

    pub(crate) fn is(&self, g: &KnownGoodGeneration) -> bool {
        !g.recorded && (g.cut_off || self.oldest_recorded.is_some_and(|o| g.generation > o))
    }
}

/// Does a mark of `closure` prove it: one that finished ([`Unfinished`])
/// and is final (its soak passed, or none followed)? A later mark of the
/// same closure left soak pending takes nothing from an earlier final one.
pub(crate) fn proven(history: &[KnownGoodGeneration], closure: &StorePath) -> bool {
    let unfinished = Unfinished::of(history);
    (history.iter())
        .any(|g| g.closure.as_ref() == Some(closure) && !unfinished.is(g) && !g.soak_pending())
}

/// `g` as a target, or why it is none. `unfinished`: its mark never
/// finished (the fault matrix left one: a host that went down as it was
/// marked, rolled back, its known-good profile on the failed candidate and
/// no record; going "back" there would redeploy what just failed). One
/// whose soak never passed is none either.
fn usable(g: &KnownGoodGeneration, unfinished: bool) -> Result<Target, NoTarget> {
    let generation = g.generation;
    match (&g.closure, g.present) {
        (Some(_), _) if unfinished => Err(NoTarget::Unrecorded {
            generation,
            usable: Vec::new(),
        }),
        (Some(_), _) if g.soak_pending() => Err(NoTarget::SoakPending {
            generation,
            usable: Vec::new(),
        }),
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
    match choose_known_good(history, running, to, baseline.map(|b| &b.closure)) {
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
    baseline: Option<&StorePath>,
) -> Result<Target, NoTarget> {
    let unfinished = Unfinished::of(history);
    let found = match to {
        Some(n) => {
            let g = history.iter().find(|g| g.generation == n).ok_or_else(|| {
                NoTarget::NoSuchGeneration {
                    generation: n,
                    have: history.iter().map(|g| g.generation).collect(),
                }
            })?;
            usable(g, unfinished.is(g))
        }
        None => back(history, running, &unfinished, baseline),
    };
    // Refused for a mark that never finished, or never soaked: say what
    // `--to` would take.
    let others = || {
        history
            .iter()
            .filter(|g| g.closure.as_ref() != running)
            .filter(|g| usable(g, unfinished.is(g)).is_ok())
            .map(|g| g.generation)
            .collect()
    };
    found.map_err(|why| match why {
        NoTarget::Unrecorded { generation, .. } => NoTarget::Unrecorded {
            generation,
            usable: others(),
        },
        NoTarget::SoakPending { generation, .. } => NoTarget::SoakPending {
            generation,
            usable: others(),
        },
        other => other,
    })
}

/// Back from where the host stands (`baseline`: the system it ran before
/// nixgate's first deploy, if known).
fn back(
    history: &[KnownGoodGeneration],
    running: Option<&StorePath>,
    unfinished: &Unfinished,
    baseline: Option<&StorePath>,
) -> Result<Target, NoTarget> {
    // Where the host stands: the profile's current generation (the newest
    // when the profile is unreadable).
    let mut stand = history
        .iter()
        .position(|g| g.current)
        .or_else(|| history.len().checked_sub(1))
        .ok_or(NoTarget::NoKnownGood)?;
    let on_unfinished = unfinished.is(&history[stand]);
    if on_unfinished {
        match stood(history, stand, running, unfinished) {
            Some(i) => stand = i,
            None => return back_past_unfinished(&history[..stand], running, unfinished),
        }
    }
    if history[stand].closure.as_ref() != running {
        // Running another known-good generation's closure (switched back
        // by hand, or by a soak's take-back whose revoke failed): the host
        // stands there. Before, back was the profile's generation, which
        // could be the candidate the soak had just found unhealthy. Not
        // when the profile is on a mark that never finished: where the
        // host stood is known from that mark (see `stood`).
        // An older one only: a newer one is one a rollback left (deployed
        // again by a goal that does not mark), back is from the profile's.
        let runs = history[..stand].iter().rposition(|g| {
            g.closure.is_some() && g.closure.as_ref() == running && !unfinished.is(g)
        });
        match runs.filter(|_| !on_unfinished) {
            // Standing on the baseline (a rollback went there and marked
            // it): nothing further back, as in `choose_target`.
            Some(i) if baseline.is_some() && running == baseline => {
                return Err(NoTarget::NothingEarlier {
                    generation: history[i].generation,
                });
            }
            Some(i) => stand = i,
            // Running something unvalidated: back to where it stood.
            None => {
                if let Ok(t) = usable(&history[stand], false) {
                    return Ok(t);
                }
            }
        }
    }
    let here = &history[stand];
    let mut skipped = None;
    for g in history[..walk_from(history, stand)].iter().rev() {
        if g.closure.is_some() && g.closure.as_ref() == here.closure.as_ref() {
            continue;
        }
        match usable(g, unfinished.is(g)) {
            Ok(t) => return Ok(t),
            Err(why) => skipped = skipped.or(Some(why)),
        }
    }
    Err(skipped.unwrap_or(NoTarget::NothingEarlier {
        generation: here.generation,
    }))
}

/// Where the walk back from `history[at]` starts (it takes the generations
/// before the returned index, newest first): at the generation its record
/// says it replaced (where the profile was when it was marked), when that
/// is an older one; after a rollback re-selected an older generation, the
/// generations between it and the mark made on top of it are what the
/// rollback moved away from. That generation gone, the newest one before
/// it. A rollback's re-selection back replaced a newer generation: its
/// `lineage` says where the profile was when it was first marked (a
/// second rollback from it went by number, to a generation the first one
/// had left); one forward (`--to` a newer one) replaced an older one,
/// where the profile came from, and goes there. Without either older than it (a record from before they
/// were written; a mark that re-marked what the profile was on): by
/// number, the generations before it.
fn walk_from(history: &[KnownGoodGeneration], at: usize) -> usize {
    let here = &history[at];
    let older = |g: &Option<u64>| g.filter(|&g| g < here.generation);
    let rec = here.record.as_ref();
    match rec.and_then(|r| older(&r.replaced).or(older(&r.lineage))) {
        Some(r) => history[..at].partition_point(|g| g.generation <= r),
        None => at,
    }
}

/// Where the host stood before the mark of `history[at]` that never
/// finished: the generation that mark's leftover names, else the newest
/// known-good generation before it of the closure the host runs (the run
/// that lost the mark took the host back to what the profile was on).
/// `None`: neither is known.
fn stood(
    history: &[KnownGoodGeneration],
    at: usize,
    running: Option<&StorePath>,
    unfinished: &Unfinished,
) -> Option<usize> {
    let before = &history[..at];
    let done = |g: &KnownGoodGeneration| g.closure.is_some() && !unfinished.is(g);
    if let Some(r) = history[at].stood {
        return before.iter().position(|g| g.generation == r && done(g));
    }
    before
        .iter()
        .rposition(|g| done(g) && g.closure.as_ref() == running)
}

/// Back from a generation whose mark never finished (`before`: the
/// generations before it): the newest known-good one whose closure is not
/// what the host runs.
fn back_past_unfinished(
    before: &[KnownGoodGeneration],
    running: Option<&StorePath>,
    unfinished: &Unfinished,
) -> Result<Target, NoTarget> {
    let mut skipped = None;
    // The newest known-good generation of what the host runs.
    let mut runs = None;
    for g in before.iter().rev() {
        let done = !unfinished.is(g);
        if g.closure.is_some() && g.closure.as_ref() == running {
            runs = runs.or(done.then_some(g.generation));
            continue;
        }
        match usable(g, !done) {
            Ok(t) => return Ok(t),
            Err(why) => skipped = skipped.or(Some(why)),
        }
    }
    Err(skipped
        .or(runs.map(|generation| NoTarget::NothingEarlier { generation }))
        .unwrap_or(NoTarget::NoKnownGood))
}

/// The targets found, as verdicts.
pub struct Found {
    pub verdicts: HashMap<String, Verdict>,
    /// Where each ready host's known-good profile stood (its current
    /// generation) when its target was chosen, for [`recheck`].
    pub stood: HashMap<String, Option<u64>>,
    pub cancelled: bool,
}

/// Find every host's target.
pub async fn find_all<F: Fleet>(p: &Planning<'_, F>, hosts: &[String], to: Option<u64>) -> Found {
    let lookups = futures_util::future::join_all(hosts.iter().map(|h| async move {
        let (v, stood) = match target_for(p, h, to).await {
            Ok(Chosen {
                target: t,
                running,
                stood,
            }) => {
                let candidate = Candidate {
                    closure: t.closure,
                    earlier_gates: Vec::new(),
                    generation: t.generation,
                    never_validated: t.never_validated,
                    commit: t.commit,
                };
                // `--to N` names its target outright: nothing to re-check
                // once the lock is taken (it was refused as `Moved`).
                let stood = to.is_none().then_some(stood);
                (Verdict::Ready { candidate, running }, stood)
            }
            Err(refusal) => (Verdict::Refused { refusal }, None),
        };
        (h.clone(), v, stood)
    }));
    let all = tokio::select! {
        all = lookups => all,
        _ = p.stop.cancelled() => {
            return Found { verdicts: HashMap::new(), stood: HashMap::new(), cancelled: true };
        }
    };
    let mut found = Found {
        verdicts: HashMap::new(),
        stood: HashMap::new(),
        cancelled: false,
    };
    for (h, v, stood) in all {
        if let Some(stood) = stood {
            found.stood.insert(h.clone(), stood);
        }
        found.verdicts.insert(h, v);
    }
    found
}

/// A host's target, what it ran and where its profile stood.
struct Chosen {
    target: Target,
    running: Option<StorePath>,
    stood: Option<u64>,
}

async fn target_for<F: Fleet>(
    p: &Planning<'_, F>,
    host: &str,
    to: Option<u64>,
) -> Result<Chosen, Refusal> {
    let Read {
        remote,
        paths,
        by,
        history,
    } = read_history(p, host).await?;
    let running = links::read_store_link(&remote, &paths.current_system);
    let running = bound::bounded(by, "reading what it runs", running)
        .await
        .map_err(unreadable)?;
    let baseline = known_good::baseline(&remote, &paths);
    let baseline = bound::bounded(by, "reading the system it ran before nixgate", baseline)
        .await
        .map_err(unreadable)?;
    let target = choose_target(&history, running.as_ref(), to, baseline.as_ref())
        .map_err(|why| Refusal::NoRollbackTarget { why })?;
    Ok(Chosen {
        target,
        running,
        stood: standing(&history),
    })
}

/// A host reached and its known-good history read.
struct Read<R> {
    remote: R,
    paths: HostPaths,
    /// When the host's reads must have answered, all of them.
    by: Instant,
    history: Vec<KnownGoodGeneration>,
}

/// The host's session, paths and known-good history. Once the host is
/// reached its reads are bounded ([`bound`]): a wedged host (a stuck
/// nix-daemon, a hung `/nix` under the history's `[ -e ]`) held the whole
/// rollback before its prompt, and after the locks (the re-check) held
/// every other host's lock with it, until Ctrl-C.
async fn read_history<F: Fleet>(
    p: &Planning<'_, F>,
    host: &str,
) -> Result<Read<F::Remote>, Refusal> {
    let h = p.inventory.host(host).ok_or_else(|| Refusal::Unreachable {
        error: format!("{host} is not in the inventory"),
    })?;
    let remote = p
        .fleet
        .host(host)
        .await
        .map_err(|e| Refusal::no_session(&e))?;
    let paths = HostPaths::for_os(h.os);
    let by = bound::deadline();
    let history = known_good::history(&remote, &paths);
    let history = bound::bounded(by, "reading its known-good history", history)
        .await
        .map_err(unreadable)?;
    Ok(Read {
        remote,
        paths,
        by,
        history,
    })
}

fn unreadable(e: anyhow::Error) -> Refusal {
    Refusal::NoRollbackTarget {
        why: NoTarget::Unreadable {
            error: format!("{e:#}"),
        },
    }
}

/// The known-good profile's current generation (`None`: no profile).
fn standing(history: &[KnownGoodGeneration]) -> Option<u64> {
    history.iter().find(|g| g.current).map(|g| g.generation)
}

/// After the host locks: each ready host whose known-good profile no
/// longer stands where it did when its target was chosen (`stood`) is
/// refused ([`NoTarget::Moved`]). The history is read before the lock, so
/// another run could mark a generation in between; the target chosen from
/// it would then go back from where the host no longer stands. True when
/// cancelled on the way.
pub async fn recheck<F: Fleet>(
    p: &Planning<'_, F>,
    stood: &HashMap<String, Option<u64>>,
    verdicts: &mut HashMap<String, Verdict>,
) -> bool {
    let ready = stood
        .iter()
        .filter(|(h, _)| matches!(verdicts.get(*h), Some(Verdict::Ready { .. })));
    let checks = futures_util::future::join_all(ready.map(|(h, was)| async move {
        let still = match read_history(p, h).await {
            Ok(read) => unmoved(*was, &read.history),
            Err(refusal) => Err(refusal),
        };
        (h.clone(), still)
    }));
    let all = tokio::select! {
        all = checks => all,
        _ = p.stop.cancelled() => return true,
    };
    for (h, still) in all {
        if let Err(refusal) = still {
            verdicts.insert(h, Verdict::Refused { refusal });
        }
    }
    false
}

/// The profile still stands at `was`, or why not.
fn unmoved(was: Option<u64>, history: &[KnownGoodGeneration]) -> Result<(), Refusal> {
    match standing(history) {
        now if now == was => Ok(()),
        now => Err(Refusal::NoRollbackTarget {
            why: NoTarget::Moved { was, now },
        }),
    }
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
                recorded: true,
                current: i + 1 == current,
                cut_off: false,
                stood: None,
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
            created: None,
            lineage: None,
            soak_pending: false,
            marked_on_host: None,
            rolled_back_from: None,
        }
    }

    /// A generation whose soak never passed (its record says
    /// `soak_pending`: the run that marked it was killed mid-soak) is no
    /// target: not when the host runs something unvalidated (before: back
    /// to it, as proven), not on the way back, not by number; from it, back
    /// is the one its record says it replaced, as from any other.
    #[test]
    fn a_generation_whose_soak_never_passed_is_no_target() {
        let mut h = hist(&['a', 'b', 'c'], 3);
        h[2].record.as_mut().unwrap().soak_pending = true;
        assert_eq!(choose_target(&h, Some(&sp('d')), None, None), to('b', 2));
        assert_eq!(choose_target(&h, Some(&sp('c')), None, None), to('b', 2));
        assert_eq!(
            choose_target(&h, Some(&sp('a')), Some(3), None),
            Err(NoTarget::SoakPending {
                generation: 3,
                usable: vec![2]
            })
        );
        // Standing on b, c's pending mark newer: back goes past it anyway.
        h[1].record.as_mut().unwrap().soak_pending = true;
        h[2].current = false;
        h[1].current = true;
        assert_eq!(choose_target(&h, Some(&sp('d')), None, None), to('a', 1));
    }

    /// A generation whose mark never finished (no record, where the others
    /// have theirs) is no target: not where the host stands, not on the
    /// way back, not by number. The fault matrix's case: marked, went down
    /// before the record, rolled back to what it ran (`b`): the host stands
    /// on `b`, and back is the one before it, never the failed `c`.
    #[test]
    fn a_generation_whose_mark_never_finished_is_no_target() {
        let mut h = hist(&['a', 'b', 'c'], 3);
        (h[2].record, h[2].recorded) = (None, false);
        assert_eq!(choose_target(&h, Some(&sp('b')), None, None), to('a', 1));
        assert_eq!(
            choose_target(&h, Some(&sp('b')), Some(3), None),
            Err(NoTarget::Unrecorded {
                generation: 3,
                usable: vec![1]
            })
        );
        // Running the failed candidate still: back to what the run had.
        assert_eq!(choose_target(&h, Some(&sp('c')), None, None), to('b', 2));
        // Running something unvalidated: back to where the profile stood.
        assert_eq!(choose_target(&h, Some(&sp('d')), None, None), to('b', 2));
        (h[1].record, h[1].recorded) = (None, false);
        assert_eq!(choose_target(&h, Some(&sp('c')), None, None), to('a', 1));
        // Cut off before a record that came later: the leftover says so.
        let mut only = hist(&['a', 'b'], 2);
        (only[0].record, only[0].recorded) = (None, false);
        only[0].cut_off = true;
        assert_eq!(
            choose_target(&only, Some(&sp('b')), None, None),
            Err(NoTarget::Unrecorded {
                generation: 1,
                usable: vec![]
            })
        );
        // No record anywhere (the records' directory lost): as they are.
        let mut none = hist(&['a', 'b'], 2);
        for g in &mut none {
            (g.record, g.recorded) = (None, false);
        }
        assert_eq!(choose_target(&none, Some(&sp('b')), None, None), to('a', 1));
    }

    /// Standing on a mark that never finished, the host stands where that
    /// mark's leftover says the profile was (here: 2, then 3), even when an
    /// older generation has the closure it runs; without the leftover, on
    /// the newest known-good generation of what it runs (the run took it
    /// back there: the rollback e2e's case, after a rollback re-selected an
    /// older generation); where neither is known, back is the newest
    /// known-good generation before the mark not of what it runs.
    #[test]
    fn back_from_an_unfinished_mark_of_an_older_closure() {
        let cut = |h: &mut Vec<KnownGoodGeneration>, i: usize, stood: u64| {
            (h[i].record, h[i].recorded) = (None, false);
            h[i].cut_off = true;
            h[i].stood = Some(stood);
        };
        let mut h = hist(&['a', 'b', 'a'], 3);
        cut(&mut h, 2, 2);
        assert_eq!(choose_target(&h, Some(&sp('a')), None, None), to('b', 2));
        let mut h = hist(&['a', 'b', 'c', 'b'], 4);
        cut(&mut h, 3, 3);
        assert_eq!(choose_target(&h, Some(&sp('b')), None, None), to('c', 3));
        // No leftover; generation 2 re-selected before the mark made 4.
        let mut h = hist(&['a', 'b', 'z', 'c'], 4);
        (h[3].record, h[3].recorded) = (None, false);
        assert_eq!(choose_target(&h, Some(&sp('b')), None, None), to('a', 1));
        // No leftover, running nothing known-good: past the mark.
        assert_eq!(choose_target(&h, Some(&sp('y')), None, None), to('z', 3));
        // Nothing known-good before it but what the host runs.
        let mut h = hist(&['a', 'b'], 2);
        (h[1].record, h[1].recorded) = (None, false);
        assert_eq!(
            choose_target(&h, Some(&sp('a')), None, None),
            Err(NoTarget::NothingEarlier { generation: 1 })
        );
    }

    /// Generations older than every record predate the records (their
    /// directory lost, then a deploy recorded afresh): known-good, back and
    /// by number. A mark that never finished is the newest generation when
    /// it happens, so one after the records is still refused.
    #[test]
    fn generations_older_than_every_record_count() {
        let mut h = hist(&['a', 'b', 'c', 'd', 'f'], 4);
        let later = h.pop();
        for g in &mut h[..3] {
            (g.record, g.recorded) = (None, false);
        }
        assert_eq!(choose_target(&h, Some(&sp('d')), None, None), to('c', 3));
        assert_eq!(choose_target(&h, Some(&sp('d')), Some(1), None), to('a', 1));
        // Then a mark that never finished, and the run rolled back to `d`.
        h[3].current = false;
        h.extend(later.map(|g| KnownGoodGeneration {
            record: None,
            recorded: false,
            current: true,
            ..g
        }));
        assert_eq!(choose_target(&h, Some(&sp('d')), None, None), to('c', 3));
        assert_eq!(
            choose_target(&h, Some(&sp('d')), Some(5), None),
            Err(NoTarget::Unrecorded {
                generation: 5,
                usable: vec![1, 2, 3]
            })
        );
    }

    /// A first mark cut off before its record, the host's leftover naming
    /// no profile before it: no known-good, so back is the baseline.
    #[test]
    fn a_first_mark_cut_off_is_no_target() {
        let base = Baseline {
            closure: sp('z'),
            recorded_at: "2026-12-01T00:00:00Z".into(),
            run_id: "r0".into(),
        };
        let mut h = hist(&['a'], 1);
        (h[0].record, h[0].recorded) = (None, false);
        h[0].cut_off = true;
        assert_eq!(
            choose_target(&h, Some(&sp('a')), None, Some(&base)).map(|t| t.closure),
            Ok(sp('z'))
        );
        assert_eq!(
            choose_target(&h, Some(&sp('z')), None, Some(&base)),
            Err(NoTarget::NoKnownGood)
        );
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
        // on an earlier known-good (switched back by hand, or by a soak's
        // take-back whose revoke failed): back from there, never to the
        // profile's generation it left
        assert_eq!(choose_target(&h, Some(&sp('b')), None, None), to('a', 1));
        assert_eq!(
            choose_target(&h, Some(&sp('a')), None, None),
            Err(NoTarget::NothingEarlier { generation: 1 })
        );
        // on a known-good newer than the profile's (rolled back from it,
        // then deployed again by a goal that does not mark): back to the
        // profile's, never to one a rollback left
        let mut rolled = hist(&['a', 'b', 'c', 'd'], 2);
        rolled[1].record.as_mut().unwrap().replaced = Some(3);
        assert_eq!(
            choose_target(&rolled, Some(&sp('d')), None, None),
            to('b', 2)
        );
        // on the baseline a rollback marked (2), the profile on a later
        // push (3) whose take-back could not revoke it: nothing further back
        let base = Baseline {
            closure: sp('z'),
            recorded_at: "2026-12-01T00:00:00Z".into(),
            run_id: "r0".into(),
        };
        let on_base = hist(&['a', 'z', 'b'], 3);
        assert_eq!(
            choose_target(&on_base, Some(&sp('z')), None, Some(&base)),
            Err(NoTarget::NothingEarlier { generation: 2 })
        );
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

    /// After a rollback and a push, back is where the push's mark found
    /// the profile, not the generation the rollback moved away from: a(1),
    /// b(2), c(3); c was bad and a rollback re-selected 2 (its record now
    /// says it replaced 3); then `push d` made 4 (replaced 2), and d is bad.
    #[test]
    fn after_a_rollback_and_a_push_back_is_what_the_push_replaced() {
        let mut h = hist(&['a', 'b', 'c', 'd'], 4);
        h[1].record.as_mut().unwrap().replaced = Some(3);
        h[3].record.as_mut().unwrap().replaced = Some(2);
        assert_eq!(choose_target(&h, Some(&sp('d')), None, None), to('b', 2));
        // Rolled back to 2 (its record now says it replaced 4): on to 1.
        let mut on2 = h.clone();
        on2[3].current = false;
        on2[1].current = true;
        on2[1].record.as_mut().unwrap().replaced = Some(4);
        assert_eq!(choose_target(&on2, Some(&sp('b')), None, None), to('a', 1));
        // What it replaced gone from the store: on back from there, never
        // to what the rollback moved away from.
        let mut gone = h.clone();
        gone[1].present = false;
        assert_eq!(choose_target(&gone, Some(&sp('d')), None, None), to('a', 1));
        gone[0].present = false;
        assert_eq!(
            choose_target(&gone, Some(&sp('d')), None, None),
            Err(NoTarget::Missing { generation: 2 })
        );
        // Its generation deleted: the newest one before it.
        let mut deleted = h.clone();
        deleted.remove(1);
        assert_eq!(
            choose_target(&deleted, Some(&sp('d')), None, None),
            to('a', 1)
        );
        // A mark that never finished is no target there either.
        let mut unfinished = h.clone();
        (unfinished[1].record, unfinished[1].recorded) = (None, false);
        unfinished[1].cut_off = true;
        assert_eq!(
            choose_target(&unfinished, Some(&sp('d')), None, None),
            to('a', 1)
        );
        // `--to` is by number, as always.
        assert_eq!(choose_target(&h, Some(&sp('d')), Some(3), None), to('c', 3));
    }

    /// Rolled back twice with a push between (found by a bug hunt): a(1)
    /// b(2) c(3); back to 2; pushes d(4) f(5) on it; back to 4; back again
    /// is 2, where the profile was when 4 was first marked, never 3, which
    /// the first rollback left. Each re-selection's record names the
    /// generation it left (`replaced`) and keeps where its generation was
    /// first marked on (`lineage`, as MARK writes it).
    #[test]
    fn a_second_rollback_after_a_push_goes_where_the_push_was_made() {
        let mut h = hist(&['a', 'b', 'c', 'd', 'f'], 4);
        let mut set = |i: usize, replaced: u64, lineage: Option<u64>| {
            let r = h[i].record.as_mut().unwrap();
            (r.replaced, r.lineage) = (Some(replaced), lineage);
        };
        set(1, 3, Some(1));
        set(2, 2, None);
        set(3, 5, Some(2));
        set(4, 4, None);
        assert_eq!(choose_target(&h, Some(&sp('d')), None, None), to('b', 2));
        // Standing on 2 again: its lineage goes on to 1.
        h[3].current = false;
        h[1].current = true;
        assert_eq!(choose_target(&h, Some(&sp('b')), None, None), to('a', 1));
        // A re-selection forward (`--to 3` from 1) replaced an older one,
        // where the profile came from: back goes there, not to its lineage.
        let mut fwd = hist(&['a', 'b', 'c'], 3);
        let r = fwd[2].record.as_mut().unwrap();
        (r.replaced, r.lineage) = (Some(1), Some(2));
        assert_eq!(choose_target(&fwd, Some(&sp('c')), None, None), to('a', 1));
    }

    /// Without a usable `replaced`, back is by number: a record from before
    /// it was written, one of a mark that re-marked the closure the profile
    /// was on (it replaced itself), one of a rollback's re-selection (it
    /// replaced a newer generation).
    #[test]
    fn without_what_it_replaced_back_is_by_number() {
        let h = hist(&['a', 'b', 'c'], 3);
        assert_eq!(choose_target(&h, Some(&sp('c')), None, None), to('b', 2));
        let mut itself = h.clone();
        itself[2].record.as_mut().unwrap().replaced = Some(3);
        assert_eq!(
            choose_target(&itself, Some(&sp('c')), None, None),
            to('b', 2)
        );
        let mut newer = hist(&['a', 'b', 'c'], 2);
        newer[1].record.as_mut().unwrap().replaced = Some(3);
        assert_eq!(
            choose_target(&newer, Some(&sp('b')), None, None),
            to('a', 1)
        );
    }

    /// Where the profile stood when the target was chosen, against where it
    /// stands after the lock: any other generation (or none) is a move.
    #[test]
    fn a_profile_that_moved_is_refused() {
        let moved = |was, now| {
            Err(Refusal::NoRollbackTarget {
                why: NoTarget::Moved { was, now },
            })
        };
        let h = hist(&['a', 'b', 'c'], 2);
        assert_eq!(unmoved(Some(2), &h), Ok(()));
        assert_eq!(unmoved(Some(3), &h), moved(Some(3), Some(2)));
        assert_eq!(unmoved(None, &h), moved(None, Some(2)));
        assert_eq!(unmoved(Some(1), &[]), moved(Some(1), None));
        assert_eq!(unmoved(None, &[]), Ok(()));
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
