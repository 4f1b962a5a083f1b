//! Selectors (`--host` names and globs, `--tag`, `--on` lists, `--wave`,
//! positional names) resolved against the inventory into the ordered groups
//! of hosts a command works on. Every pattern must match a host (see
//! [`super::pattern`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::diag::suggest;
use super::glob::{closest, glob_match, is_glob};
use super::model::{Inventory, MaxFailures};

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub hosts: Vec<String>,
    pub tags: Vec<String>,
    pub waves: Vec<String>,
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.tags.is_empty() && self.waves.is_empty()
    }
}

/// A group of hosts run together: a wave, or the ad-hoc group of hosts
/// picked by `--host`/`--tag` (which ignores waves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub hosts: Vec<String>,
    pub max_parallel: usize,
    pub max_failures: MaxFailures,
    #[serde(skip)]
    pub soak: Duration,
    /// True when the group is not a wave of the inventory.
    pub adhoc: bool,
}

/// The resolved selection, groups in the order they run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    pub groups: Vec<Group>,
}

impl Selection {
    /// Every selected host, in run order.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .flat_map(|g| g.hosts.iter().map(String::as_str))
    }

    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.hosts.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A selector naming something the inventory does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("no host named `{name}` in the inventory{}", closest_hint(.closest))]
    UnknownHost { name: String, closest: Vec<String> },
    #[error("no host matches `{pattern}`{}", closest_hint(.closest))]
    NoMatch {
        pattern: String,
        closest: Vec<String>,
    },
    #[error("no host has the tag `{name}`{}", closest_hint(.closest))]
    UnknownTag { name: String, closest: Vec<String> },
    #[error("no wave named `{name}` in the inventory{}", hint(.suggestion))]
    UnknownWave {
        name: String,
        suggestion: Option<String>,
    },
    /// A `--host`/`--tag` word that matches hosts, none of them in the
    /// `--wave`s given: it was dropped silently, the rest deployed.
    #[error(
        "{what} is in none of the wave(s) {waves}: select the wave(s) its hosts are in too, or leave --wave out"
    )]
    NotInWaves { what: String, waves: String },
    /// `--wave` names a wave of tags whose hosts other waves all have.
    #[error(
        "{why}. `--wave {wave}` selects nothing: select the wave(s) they are in, or give `{wave}` tags or hosts of its own in the inventory"
    )]
    EmptyWave { wave: String, why: String },
}

fn hint(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => " (run `nixgate hosts` to list what there is)".into(),
    }
}

fn closest_hint(c: &[String]) -> String {
    if c.is_empty() {
        return " (run `nixgate hosts` to list what there is)".into();
    }
    format!(
        " (closest: {}; `nixgate hosts` lists them all)",
        c.join(", ")
    )
}

/// How many names a "matches nothing" error offers.
const CLOSEST: usize = 3;

/// Name the group of `--host`/`--tag` selections.
pub const ADHOC_GROUP: &str = "selected";

impl Inventory {
    /// Resolve a selector. No selector: the whole fleet, wave by wave.
    pub fn select(&self, sel: &Selector) -> Result<Selection, SelectError> {
        let host_names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
        self.check_patterns(sel, &host_names)?;
        let by_host_or_tag = !sel.hosts.is_empty() || !sel.tags.is_empty();
        let picked = |name: &str| {
            !by_host_or_tag
                || sel.hosts.iter().any(|p| host_matches(p, name))
                || self
                    .host(name)
                    .is_some_and(|h| h.tags.iter().any(|t| sel.tags.contains(t)))
        };
        if sel.waves.is_empty() && by_host_or_tag {
            let hosts: Vec<String> = host_names
                .iter()
                .filter(|h| picked(h))
                .map(|h| h.to_string())
                .collect();
            return Ok(Selection {
                groups: vec![Group {
                    name: ADHOC_GROUP.into(),
                    max_failures: MaxFailures::Count(hosts.len()),
                    hosts,
                    max_parallel: self.max_parallel,
                    soak: Duration::ZERO,
                    adhoc: true,
                }],
            });
        }
        if by_host_or_tag {
            self.check_in_waves(sel)?;
        }
        // A wave soaks "before the next wave": the inventory's next, run
        // now or by a later run (`--wave canary` from cron, then `--wave
        // main`); the inventory's last wave has none. Before, the last
        // wave of the selection never soaked, so a scheduled canary run
        // certified and released its hosts unwatched.
        // The last wave with hosts (a tag wave whose hosts earlier waves
        // claimed has none).
        let last = (self.waves.iter())
            .rposition(|w| !w.hosts.is_empty())
            .unwrap_or(0);
        let groups: Vec<Group> = (self.waves.iter().enumerate())
            .filter(|(_, w)| sel.waves.is_empty() || sel.waves.contains(&w.name))
            .map(|(i, w)| Group {
                name: w.name.clone(),
                hosts: w.hosts.iter().filter(|h| picked(h)).cloned().collect(),
                max_parallel: w.max_parallel.min(self.max_parallel),
                max_failures: w.max_failures,
                soak: if i < last { w.soak } else { Duration::ZERO },
                adhoc: false,
            })
            .filter(|g| !g.hosts.is_empty())
            .collect();
        Ok(Selection { groups })
    }

    /// With `--wave`, every `--host` word and tag must match a host of
    /// those waves (never silently skipped, as an unknown name is not), so
    /// the selection is never empty.
    fn check_in_waves(&self, sel: &Selector) -> Result<(), SelectError> {
        let in_waves: Vec<&str> = (self.waves.iter())
            .filter(|w| sel.waves.contains(&w.name))
            .flat_map(|w| w.hosts.iter().map(String::as_str))
            .collect();
        let waves = || sel.waves.join(", ");
        for p in &sel.hosts {
            if !in_waves.iter().any(|h| host_matches(p, h)) {
                let what = if is_glob(p) { "pattern" } else { "host" };
                return Err(SelectError::NotInWaves {
                    what: format!("{what} `{p}`"),
                    waves: waves(),
                });
            }
        }
        for t in &sel.tags {
            let tagged = |h: &&str| self.host(h).is_some_and(|h| h.tags.contains(t));
            if !in_waves.iter().any(tagged) {
                return Err(SelectError::NotInWaves {
                    what: format!("the tag `{t}`"),
                    waves: waves(),
                });
            }
        }
        Ok(())
    }

    /// Every host pattern, tag and wave must match something (a wave left
    /// with no hosts matches nothing).
    fn check_patterns(&self, sel: &Selector, host_names: &[&str]) -> Result<(), SelectError> {
        for p in &sel.hosts {
            if host_names.iter().any(|h| host_matches(p, h)) {
                continue;
            }
            let closest = closest(p, host_names.iter().copied(), CLOSEST);
            return Err(if is_glob(p) {
                SelectError::NoMatch {
                    pattern: p.clone(),
                    closest,
                }
            } else {
                SelectError::UnknownHost {
                    name: p.clone(),
                    closest,
                }
            });
        }
        let tags = self.tags();
        for t in &sel.tags {
            if !tags.contains(&t.as_str()) {
                return Err(SelectError::UnknownTag {
                    name: t.clone(),
                    closest: closest(t, tags.iter().copied(), CLOSEST),
                });
            }
        }
        for w in &sel.waves {
            match self.wave(w) {
                None => {
                    return Err(SelectError::UnknownWave {
                        name: w.clone(),
                        suggestion: suggest(w, self.waves.iter().map(|w| w.name.as_str()))
                            .map(str::to_owned),
                    });
                }
                Some(wave) if wave.hosts.is_empty() => {
                    return Err(SelectError::EmptyWave {
                        wave: w.clone(),
                        why: wave.why_empty(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// A `--host` word: a glob when it has glob syntax, else an exact name.
fn host_matches(pattern: &str, name: &str) -> bool {
    if is_glob(pattern) {
        glob_match(pattern, name)
    } else {
        pattern == name
    }
}
