//! The package-version diff between two closures: upgraded, downgraded,
//! changed, added, removed, and rebuilt at the same version (what nvd and dix
//! miss), each marked as directly selected (in the system's `sw`) or not,
//! plus the closure size delta.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use super::names::{compare_versions, split_name};
use crate::nix::StorePath;
use crate::nix::closure::PathInfo;

/// How one package changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Upgraded {
        from: String,
        to: String,
    },
    Downgraded {
        from: String,
        to: String,
    },
    /// Several versions, or versions that do not compare as a move.
    Changed {
        from: Vec<String>,
        to: Vec<String>,
    },
    Added {
        versions: Vec<String>,
    },
    Removed {
        versions: Vec<String>,
    },
    /// Same name and version, different store path.
    Rebuilt {
        version: Option<String>,
        old: Vec<StorePath>,
        new: Vec<StorePath>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageChange {
    pub name: String,
    pub change: Change,
    /// In the system's `sw` (a system package), not only a dependency.
    pub selected: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SizeDelta {
    pub paths_added: usize,
    pub paths_removed: usize,
    pub bytes_added: u64,
    pub bytes_removed: u64,
    pub old_total: u64,
    pub new_total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageDiff {
    pub changes: Vec<PackageChange>,
    pub size: SizeDelta,
}

impl PackageDiff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

type Versions = BTreeMap<String, (BTreeSet<String>, BTreeSet<StorePath>)>;

/// Packages by name; the root (the system toplevel, which changes with
/// every change) and derivations are left out.
fn group(closure: &[PathInfo], root: &StorePath) -> Versions {
    let mut out: Versions = BTreeMap::new();
    for p in closure
        .iter()
        .filter(|p| !p.path.is_derivation() && p.path != *root)
    {
        let (name, version) = split_name(p.path.name());
        let e = out.entry(name).or_default();
        if let Some(v) = version {
            e.0.insert(v);
        }
        e.1.insert(p.path.clone());
    }
    out
}

/// Package names directly in the system's `sw` (the root's `system-path`
/// reference, or the root itself when there is none).
fn selected(closure: &[PathInfo], root: &StorePath) -> HashSet<String> {
    let by_path: BTreeMap<&StorePath, &PathInfo> = closure.iter().map(|p| (&p.path, p)).collect();
    let Some(root_info) = by_path.get(root) else {
        return HashSet::new();
    };
    let sw = root_info
        .references
        .iter()
        .find(|r| r.name().starts_with("system-path"))
        .and_then(|r| by_path.get(r))
        .unwrap_or(root_info);
    sw.references
        .iter()
        .map(|r| split_name(r.name()).0)
        .collect()
}

/// Diff two closures (old running, new candidate), roots given.
pub fn package_diff(
    old: &[PathInfo],
    old_root: &StorePath,
    new: &[PathInfo],
    new_root: &StorePath,
) -> PackageDiff {
    let (go, gn) = (group(old, old_root), group(new, new_root));
    let sel: HashSet<String> = selected(new, new_root)
        .union(&selected(old, old_root))
        .cloned()
        .collect();
    let mut changes = Vec::new();
    for name in go.keys().chain(gn.keys()).collect::<BTreeSet<_>>() {
        let change = match (go.get(name), gn.get(name)) {
            (None, Some((v, _))) => Change::Added {
                versions: v.iter().cloned().collect(),
            },
            (Some((v, _)), None) => Change::Removed {
                versions: v.iter().cloned().collect(),
            },
            (Some((vo, po)), Some((vn, pn))) => {
                if vo == vn {
                    if po == pn {
                        continue;
                    }
                    Change::Rebuilt {
                        version: vn.iter().next().cloned(),
                        old: po.difference(pn).cloned().collect(),
                        new: pn.difference(po).cloned().collect(),
                    }
                } else if vo.len() == 1 && vn.len() == 1 {
                    let (a, b) = (
                        vo.iter().next().cloned().unwrap_or_default(),
                        vn.iter().next().cloned().unwrap_or_default(),
                    );
                    match compare_versions(&a, &b) {
                        Ordering::Less => Change::Upgraded { from: a, to: b },
                        Ordering::Greater => Change::Downgraded { from: a, to: b },
                        Ordering::Equal => Change::Changed {
                            from: vec![a],
                            to: vec![b],
                        },
                    }
                } else {
                    Change::Changed {
                        from: vo.iter().cloned().collect(),
                        to: vn.iter().cloned().collect(),
                    }
                }
            }
            (None, None) => continue,
        };
        changes.push(PackageChange {
            selected: sel.contains(name.as_str()),
            name: name.clone(),
            change,
        });
    }
    changes.sort_by(|a, b| {
        b.selected
            .cmp(&a.selected)
            .then_with(|| a.name.cmp(&b.name))
    });
    let old_paths: HashSet<&StorePath> = old.iter().map(|p| &p.path).collect();
    let new_paths: HashSet<&StorePath> = new.iter().map(|p| &p.path).collect();
    let size = SizeDelta {
        paths_added: new.iter().filter(|p| !old_paths.contains(&p.path)).count(),
        paths_removed: old.iter().filter(|p| !new_paths.contains(&p.path)).count(),
        bytes_added: new
            .iter()
            .filter(|p| !old_paths.contains(&p.path))
            .map(|p| p.nar_size)
            .sum(),
        bytes_removed: old
            .iter()
            .filter(|p| !new_paths.contains(&p.path))
            .map(|p| p.nar_size)
            .sum(),
        old_total: old.iter().map(|p| p.nar_size).sum(),
        new_total: new.iter().map(|p| p.nar_size).sum(),
    };
    PackageDiff { changes, size }
}
