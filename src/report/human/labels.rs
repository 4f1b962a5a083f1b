//! Closures as people tell them apart. A system's store name stays the same
//! from one generation to the next (`nixos-system-web1-24.05...`), so a
//! closure is shown with its hash, its known-good generation and the commit
//! it was built from, as far as the run's events tell them: the run's
//! commit for its candidates, the plan's rollback targets, the marks made,
//! the hosts' known-good histories, `status` and the release tags.

use std::collections::HashMap;

use crate::activation::HostOutcome;
use crate::deploy::HostEnd;
use crate::nix::StorePath;
use crate::plan::Verdict;
use crate::report::event::{CommandName, Event};

use super::words::short_closure;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Known {
    generation: Option<u64>,
    commit: Option<String>,
}

/// What is known of each closure seen.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    known: HashMap<StorePath, Known>,
    /// The commit a push builds its candidates from.
    run_commit: Option<String>,
}

/// The first 7 characters of a commit id, as git shows it.
pub fn short_commit(c: &str) -> &str {
    c.get(..7).unwrap_or(c)
}

impl Labels {
    /// Learn that `closure` is known-good `generation` and/or from `commit`.
    pub fn learn(&mut self, closure: &StorePath, generation: Option<u64>, commit: Option<&str>) {
        let k = self.known.entry(closure.clone()).or_default();
        if generation.is_some() {
            k.generation = generation;
        }
        if let Some(c) = commit {
            k.commit = Some(c.to_owned());
        }
    }

    /// Learn what an event says of closures.
    pub fn take(&mut self, ev: &Event) {
        match ev {
            Event::RunStarted {
                command, commit, ..
            } if *command == CommandName::Push => self.run_commit = commit.clone(),
            Event::PlanReady { waves, .. } => {
                for h in waves.iter().flat_map(|w| &w.planned) {
                    if let Verdict::Ready { candidate, .. } = &h.verdict {
                        let commit = candidate.commit.clone().or(self.run_commit.clone());
                        self.learn(&candidate.closure, candidate.generation, commit.as_deref());
                    }
                }
            }
            Event::HostFinished(s) => {
                if let HostEnd::Activation { activation } = &s.end
                    && let HostOutcome::KnownGood { mark }
                    | HostOutcome::AlreadyCurrent {
                        mark: Some(mark), ..
                    } = activation.as_ref()
                {
                    let r = &mark.record;
                    self.learn(&r.closure, Some(mark.generation), r.commit.as_deref());
                }
            }
            Event::History { generations, .. } => {
                for g in generations {
                    if let Some(c) = &g.closure {
                        self.learn(c, Some(g.generation), g.commit.as_deref());
                    }
                }
            }
            Event::Status(s) => {
                if let Some(k) = &s.known_good {
                    self.learn(k, s.known_good_generation, s.known_good_commit.as_deref());
                }
            }
            Event::Release { release } => {
                self.learn(&release.closure, None, Some(&release.commit));
            }
            _ => {}
        }
    }

    fn get(&self, p: &StorePath) -> Known {
        self.known.get(p).cloned().unwrap_or_default()
    }

    /// For a table cell: `#3 8d257f5 3mfwqcxc-nixos-system-web1-...` (what
    /// is known of generation and commit, then `hash8-name`).
    pub fn cell(&self, p: &StorePath) -> String {
        let k = self.get(p);
        let mut parts = Vec::new();
        if let Some(g) = k.generation {
            parts.push(format!("#{g}"));
        }
        if let Some(c) = &k.commit {
            parts.push(short_commit(c).to_owned());
        }
        parts.push(short_closure(p));
        parts.join(" ")
    }

    /// For a sentence: `generation 3 (commit 8d257f5, 3mfwqcxc)`.
    pub fn words(&self, p: &StorePath) -> String {
        let k = self.get(p);
        let hash = p.hash().get(..8).unwrap_or(p.hash()).to_owned();
        match (k.generation, &k.commit) {
            (Some(g), Some(c)) => format!("generation {g} (commit {}, {hash})", short_commit(c)),
            (Some(g), None) => format!("generation {g} ({hash})"),
            (None, Some(c)) => format!("{hash} (commit {})", short_commit(c)),
            (None, None) => short_closure(p),
        }
    }

    /// The known-good generation of a closure, if known.
    pub fn generation(&self, p: &StorePath) -> Option<u64> {
        self.get(p).generation
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

    #[test]
    fn closures_are_told_apart_by_hash_generation_and_commit() {
        let mut l = Labels::default();
        assert_eq!(l.words(&sp('a')), "aaaaaaaa-nixos-system-x");
        l.learn(&sp('a'), Some(3), Some("8d257f595f33aa"));
        l.learn(&sp('b'), None, Some("1e4b7a5ffff"));
        assert_eq!(l.words(&sp('a')), "generation 3 (commit 8d257f5, aaaaaaaa)");
        assert_eq!(l.cell(&sp('a')), "#3 8d257f5 aaaaaaaa-nixos-system-x");
        assert_eq!(l.words(&sp('b')), "bbbbbbbb (commit 1e4b7a5)");
        // Learning more keeps what was known.
        l.learn(&sp('b'), Some(4), None);
        assert_eq!(l.cell(&sp('b')), "#4 1e4b7a5 bbbbbbbb-nixos-system-x");
    }
}
