//! The package-version diff between two closures: upgraded, downgraded,
//! changed, added, removed, and rebuilt at the same version (what nvd and dix
//! miss), each marked as directly selected (in the system's `sw`) or not,
//! plus the closure size delta.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use super::names::{compare_versions, package_name, split_name_parts};
use crate::nix::StorePath;
use crate::nix::closure::PathInfo;
use crate::nix::store_path::PathMap;

/// How one package changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageChange {
    pub name: String,
    pub change: Change,
    /// In the system's `sw` (a system package), not only a dependency.
    pub selected: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeDelta {
    pub paths_added: usize,
    pub paths_removed: usize,
    pub bytes_added: u64,
    pub bytes_removed: u64,
    pub old_total: u64,
    pub new_total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// A store path as a hash key: hashed by its 32-character hash only (which
/// already tells paths apart), compared whole.
#[derive(PartialEq, Eq)]
struct Key<'a>(&'a StorePath);

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash().hash(state)
    }
}

/// Paths of a closure by path.
type ByPath<'a> = PathMap<Key<'a>, &'a PathInfo>;

/// A package path: not a derivation, not the root (the system toplevel,
/// which changes with every change).
fn is_package(p: &PathInfo, root: &StorePath) -> bool {
    !p.path.is_derivation() && p.path != *root
}

/// The packages of `names`, by name, with their versions and paths.
fn group(closure: &[PathInfo], root: &StorePath, names: &HashSet<String>) -> Versions {
    let mut out: Versions = BTreeMap::new();
    let mut buf = String::new();
    for p in closure.iter().filter(|p| is_package(p, root)) {
        let name = package_name(p.path.name(), &mut buf);
        if !names.contains(name) {
            continue;
        }
        let e = out.entry(name.to_owned()).or_default();
        if let (_, _, Some(v)) = split_name_parts(p.path.name()) {
            e.0.insert(v.to_owned());
        }
        e.1.insert(p.path.clone());
    }
    out
}

/// Package names among `names` directly in the system's `sw` (the root's
/// `system-path` reference, or the root itself when there is none).
fn selected(
    by_path: &ByPath<'_>,
    root: &StorePath,
    names: &HashSet<String>,
    out: &mut HashSet<String>,
) {
    let Some(root_info) = by_path.get(&Key(root)) else {
        return;
    };
    let sw = root_info
        .references
        .iter()
        .find(|r| r.name().starts_with("system-path"))
        .and_then(|r| by_path.get(&Key(r)))
        .unwrap_or(root_info);
    let mut buf = String::new();
    for r in &sw.references {
        let name = package_name(r.name(), &mut buf);
        if names.contains(name) && !out.contains(name) {
            out.insert(name.to_owned());
        }
    }
}

/// Diff two closures (old running, new candidate), roots given.
///
/// Only the packages with a path on one side alone can change: a package
/// whose paths are all in both closures has the same versions and paths on
/// both sides. So the closures are compared by path first (hash lookups),
/// and names are grouped only for the paths that differ.
pub fn package_diff(
    old: &[PathInfo],
    old_root: &StorePath,
    new: &[PathInfo],
    new_root: &StorePath,
) -> PackageDiff {
    let old_paths: ByPath<'_> = old.iter().map(|p| (Key(&p.path), p)).collect();
    let new_paths: ByPath<'_> = new.iter().map(|p| (Key(&p.path), p)).collect();
    let mut size = SizeDelta::default();
    // Names with a package path on one side only.
    let mut names: HashSet<String> = HashSet::new();
    let mut buf = String::new();
    for (side, root, other, other_root, added) in [
        (old, old_root, &new_paths, new_root, false),
        (new, new_root, &old_paths, old_root, true),
    ] {
        for p in side {
            let total = if added {
                &mut size.new_total
            } else {
                &mut size.old_total
            };
            *total += p.nar_size;
            let in_other = other.contains_key(&Key(&p.path));
            if !in_other {
                if added {
                    size.paths_added += 1;
                    size.bytes_added += p.nar_size;
                } else {
                    size.paths_removed += 1;
                    size.bytes_removed += p.nar_size;
                }
            }
            if is_package(p, root) && (!in_other || p.path == *other_root) {
                let name = package_name(p.path.name(), &mut buf);
                if !names.contains(name) {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    let (go, gn) = (group(old, old_root, &names), group(new, new_root, &names));
    let mut sel: HashSet<String> = HashSet::new();
    selected(&new_paths, new_root, &names, &mut sel);
    selected(&old_paths, old_root, &names, &mut sel);
    PackageDiff {
        changes: changes(&go, &gn, &sel),
        size,
    }
}

/// Every package's change, selected packages first, then by name.
fn changes(old: &Versions, new: &Versions, selected: &HashSet<String>) -> Vec<PackageChange> {
    let mut out = Vec::new();
    for name in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
        for change in classify(old.get(name), new.get(name)) {
            out.push(PackageChange {
                selected: selected.contains(name.as_str()),
                name: name.clone(),
                change,
            });
        }
    }
    out.sort_by(|a, b| {
        b.selected
            .cmp(&a.selected)
            .then_with(|| a.name.cmp(&b.name))
    });
    out
}

/// One package's change from its versions and paths on each side (none:
/// unchanged; several: rebuilds of several versions present on both sides,
/// one change each).
fn classify(
    old: Option<&(BTreeSet<String>, BTreeSet<StorePath>)>,
    new: Option<&(BTreeSet<String>, BTreeSet<StorePath>)>,
) -> Vec<Change> {
    if let (Some((vo, po)), Some((vn, pn))) = (old, new)
        && vo == vn
    {
        return rebuilds(po, pn);
    }
    classify_move(old, new).into_iter().collect()
}

/// Same versions on both sides: each version whose paths differ was
/// rebuilt. One change per version, so that each is explained (and
/// allowed by `--expect`) on its own: python3 3.11.9 and 3.12.4 in both
/// closures, only 3.12.4 rebuilt, was labelled 3.11.9 (the smallest), and
/// the drift gate then looked for the cause of a rebuild that did not
/// happen.
fn rebuilds(po: &BTreeSet<StorePath>, pn: &BTreeSet<StorePath>) -> Vec<Change> {
    let version = |p: &StorePath| split_name_parts(p.name()).2.map(str::to_owned);
    let mut by_version: BTreeMap<Option<String>, (Vec<StorePath>, Vec<StorePath>)> =
        BTreeMap::new();
    for p in po.difference(pn) {
        by_version.entry(version(p)).or_default().0.push(p.clone());
    }
    for p in pn.difference(po) {
        by_version.entry(version(p)).or_default().1.push(p.clone());
    }
    by_version
        .into_iter()
        .map(|(version, (old, new))| Change::Rebuilt { version, old, new })
        .collect()
}

/// A package whose versions moved, appeared or went.
fn classify_move(
    old: Option<&(BTreeSet<String>, BTreeSet<StorePath>)>,
    new: Option<&(BTreeSet<String>, BTreeSet<StorePath>)>,
) -> Option<Change> {
    Some(match (old, new) {
        (None, Some((v, _))) => Change::Added {
            versions: v.iter().cloned().collect(),
        },
        (Some((v, _)), None) => Change::Removed {
            versions: v.iter().cloned().collect(),
        },
        (Some((vo, _)), Some((vn, _))) => {
            if vo.len() == 1 && vn.len() == 1 {
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
        (None, None) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::names::split_name;
    use super::*;
    use crate::nix::closure::PathRecord;
    use proptest::prelude::*;

    /// The straightforward version (group every path by name): the fast one
    /// must give the same result.
    fn reference(
        old: &[PathInfo],
        old_root: &StorePath,
        new: &[PathInfo],
        new_root: &StorePath,
    ) -> PackageDiff {
        fn group(closure: &[PathInfo], root: &StorePath) -> Versions {
            let mut out: Versions = BTreeMap::new();
            for p in closure.iter().filter(|p| is_package(p, root)) {
                let (name, version) = split_name(p.path.name());
                let e = out.entry(name).or_default();
                if let Some(v) = version {
                    e.0.insert(v);
                }
                e.1.insert(p.path.clone());
            }
            out
        }
        fn selected(closure: &[PathInfo], root: &StorePath) -> HashSet<String> {
            let by_path: BTreeMap<&StorePath, &PathInfo> =
                closure.iter().map(|p| (&p.path, p)).collect();
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
        let (go, gn) = (group(old, old_root), group(new, new_root));
        let sel: HashSet<String> = selected(new, new_root)
            .union(&selected(old, old_root))
            .cloned()
            .collect();
        let changes = changes(&go, &gn, &sel);
        let old_paths: HashSet<&StorePath> = old.iter().map(|p| &p.path).collect();
        let new_paths: HashSet<&StorePath> = new.iter().map(|p| &p.path).collect();
        let (added, removed): (Vec<&PathInfo>, Vec<&PathInfo>) = (
            new.iter()
                .filter(|p| !old_paths.contains(&p.path))
                .collect(),
            old.iter()
                .filter(|p| !new_paths.contains(&p.path))
                .collect(),
        );
        let size = SizeDelta {
            paths_added: added.len(),
            paths_removed: removed.len(),
            bytes_added: added.iter().map(|p| p.nar_size).sum(),
            bytes_removed: removed.iter().map(|p| p.nar_size).sum(),
            old_total: old.iter().map(|p| p.nar_size).sum(),
            new_total: new.iter().map(|p| p.nar_size).sum(),
        };
        PackageDiff { changes, size }
    }

    const NAMES: &[&str] = &[
        "nginx-1.24.0",
        "nginx-1.25.0",
        "openssl-3.0.13",
        "openssl-3.0.14",
        "openssl-3.0.13-dev",
        "openssl-dev-3.0.13",
        "python3.11-foo-1.0",
        "glibc-2.39-5",
        "etc",
        "system-path",
        "nixos-system-a-24.05",
        "nginx-1.24.0.drv",
    ];

    fn path(hash: usize, name: usize) -> StorePath {
        let h = ['a', 'b', 'c', 'd'][hash].to_string().repeat(32);
        StorePath::parse(&format!("/nix/store/{h}-{}", NAMES[name])).unwrap()
    }

    type Spec = Vec<(usize, usize, u64, Vec<usize>)>;

    fn spec() -> impl Strategy<Value = (Spec, usize)> {
        (
            proptest::collection::vec(
                (
                    0..4usize,
                    0..NAMES.len(),
                    0..100u64,
                    proptest::collection::vec(0..12usize, 0..5),
                ),
                0..12,
            ),
            0..13usize,
        )
    }

    /// A closure (references to other entries) and its root: an entry, or
    /// (past the end) a path that is not in it.
    fn closure((spec, root): &(Spec, usize)) -> (Vec<PathInfo>, StorePath) {
        let paths: Vec<StorePath> = spec.iter().map(|(h, n, _, _)| path(*h, *n)).collect();
        let infos = spec
            .iter()
            .zip(&paths)
            .map(|((_, _, size, refs), p)| {
                PathInfo::from(PathRecord {
                    path: p.clone(),
                    nar_size: *size,
                    nar_hash: None,
                    references: refs.iter().filter_map(|r| paths.get(*r).cloned()).collect(),
                    deriver: None,
                })
            })
            .collect();
        let root = paths.get(*root).cloned().unwrap_or_else(|| path(3, 10));
        (infos, root)
    }

    /// python3 3.11.9 and 3.12.4 in both closures, only 3.12.4 rebuilt:
    /// the rebuild is 3.12.4's (it was labelled 3.11.9, the smallest).
    #[test]
    fn a_rebuild_names_the_version_rebuilt() {
        let info = |h: char, name: &str| {
            PathInfo::from(PathRecord {
                path: StorePath::parse(&format!("/nix/store/{}-{name}", h.to_string().repeat(32)))
                    .unwrap(),
                nar_size: 1,
                nar_hash: None,
                references: Vec::new(),
                deriver: None,
            })
        };
        let root = |h| info(h, "nixos-system-a-24.05");
        let old = vec![
            root('a'),
            info('b', "python3-3.11.9"),
            info('c', "python3-3.12.4"),
        ];
        let new = vec![
            root('d'),
            info('b', "python3-3.11.9"),
            info('f', "python3-3.12.4"),
        ];
        let d = package_diff(&old, &old[0].path, &new, &new[0].path);
        let rebuilt: Vec<(&str, Option<&str>, usize, usize)> = d
            .changes
            .iter()
            .map(|c| match &c.change {
                Change::Rebuilt { version, old, new } => {
                    (c.name.as_str(), version.as_deref(), old.len(), new.len())
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(rebuilt, [("python3", Some("3.12.4"), 1, 1)]);
        // Both rebuilt: one change each.
        let new = vec![
            root('d'),
            info('g', "python3-3.11.9"),
            info('f', "python3-3.12.4"),
        ];
        let d = package_diff(&old, &old[0].path, &new, &new[0].path);
        let versions: Vec<Option<&str>> = (d.changes.iter())
            .map(|c| match &c.change {
                Change::Rebuilt { version, .. } => version.as_deref(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(versions, [Some("3.11.9"), Some("3.12.4")]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn same_as_grouping_every_path(old in spec(), new in spec()) {
            let ((old, old_root), (new, new_root)) = (closure(&old), closure(&new));
            prop_assert_eq!(
                package_diff(&old, &old_root, &new, &new_root),
                reference(&old, &old_root, &new, &new_root)
            );
        }
    }
}
