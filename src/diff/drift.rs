//! Accidental input drift: every package that changed, other than those the
//! change is meant to touch (`--expect`), and the causes found for it. A
//! package rebuilt only because one of its dependencies changed is not drift
//! itself; the dependency is judged on its own.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::names::{OUTPUTS, split_name};
use super::packages::{Change, PackageDiff};
use super::structural::{Cause, Structural, drv_base};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    pub package: String,
    pub change: Change,
    /// The package's own causes, from the structural diff (empty if unknown).
    pub causes: Vec<Cause>,
}

fn expected(name: &str, expect: &[String]) -> bool {
    expect.iter().any(|e| {
        name == e
            || name
                .strip_prefix(e.as_str())
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|o| OUTPUTS.contains(&o))
    })
}

/// One derivation of the cause tree: its name (`openssl-3.0.13`), all its
/// causes (its own and its changed inputs), and whether it is one version
/// moved to another (its old derivation had another name) rather than one
/// version rebuilt.
struct Node<'a> {
    name: &'a str,
    causes: &'a [Cause],
    moved: bool,
}

/// A node's causes of its own (not inherited from a changed input).
fn own_causes(causes: &[Cause]) -> Vec<Cause> {
    causes.iter().filter(|c| c.is_local()).cloned().collect()
}

/// Every derivation in the cause tree.
fn tree_nodes<'a>(causes: &'a [Cause], name: &'a str, moved: bool, out: &mut Vec<Node<'a>>) {
    out.push(Node {
        name,
        causes,
        moved,
    });
    for c in causes {
        if let Cause::Input {
            name,
            old,
            new,
            causes,
        } = c
        {
            tree_nodes(causes, name, drv_base(old) != drv_base(new), out);
        }
    }
}

/// `curl-bin` -> `curl`: a package name without its output.
fn without_output(name: &str) -> &str {
    name.rsplit_once('-')
        .filter(|(_, o)| OUTPUTS.contains(o))
        .map_or(name, |(base, _)| base)
}

/// What accounts for a changed input: each changed package of the closure
/// is judged on its own, and the expected ones are meant to change.
struct Accounted {
    /// Derivation names (`<pname>-<version>`) of the changed packages' new
    /// sides. Not the bare name of an unversioned one: a `source` path of
    /// the closure that changed (a flake's nixpkgs source, on every bump)
    /// excused every input named `source`, each package's own fetched
    /// source among them: a package rebuilt at its version from a changed
    /// source passed `--expect` unseen. An unversioned input is judged by
    /// what changed below it ([`build_only`]).
    names: HashSet<String>,
    /// `(pname, from, to)`: the version moves of changed packages. An input
    /// moved from one version to another is accounted for only by such a
    /// move (both versions may be in both closures, each rebuilt: a
    /// dependent switching between them is its own change).
    moves: HashSet<(String, String, String)>,
    expect: Vec<String>,
}

fn accounted(diff: &PackageDiff, expect: &[String]) -> Accounted {
    let mut names = HashSet::new();
    let mut moves = HashSet::new();
    for pc in &diff.changes {
        let base = without_output(&pc.name);
        let (from, to): (Vec<&String>, Vec<&String>) = match &pc.change {
            Change::Upgraded { from, to } | Change::Downgraded { from, to } => {
                (vec![from], vec![to])
            }
            Change::Changed { from, to } => (from.iter().collect(), to.iter().collect()),
            Change::Added { versions } => (Vec::new(), versions.iter().collect()),
            Change::Rebuilt { version, .. } => (Vec::new(), version.iter().collect()),
            Change::Removed { .. } => (Vec::new(), Vec::new()),
        };
        for f in &from {
            for t in &to {
                moves.insert((base.to_owned(), (*f).clone(), (*t).clone()));
            }
        }
        names.extend(to.into_iter().map(|v| format!("{base}-{v}")));
    }
    Accounted {
        names,
        moves,
        expect: expect.to_vec(),
    }
}

impl Accounted {
    /// Whether the change of the input `old` -> `new` (derivation paths)
    /// named `name` is accounted for.
    fn covers(&self, name: &str, old: &str, new: &str) -> bool {
        if expected(&split_name(name).0, &self.expect) {
            return true;
        }
        let ((old_pname, old_v), (_, new_v)) =
            (split_name(drv_base(old)), split_name(drv_base(new)));
        match (old_v, new_v) {
            (Some(a), Some(b)) if a != b => self.moves.contains(&(old_pname, a, b)),
            _ => self.names.contains(name),
        }
    }
}

/// What rebuilt a package whose own derivation is unchanged: the nearest
/// changed inputs below it that no changed package of the closure accounts
/// for (a source, patch or compiler that is not in the closure, so never in
/// the package diff), each with its own causes; an input whose causes the
/// walk did not reach counts too. Empty: every change below it is a
/// package judged on its own.
fn build_only(
    causes: &[Cause],
    accounted: &Accounted,
    seen: &mut HashSet<(String, String)>,
    out: &mut Vec<Cause>,
) {
    for c in causes {
        let Cause::Input {
            name,
            old,
            new,
            causes: below,
        } = c
        else {
            continue;
        };
        if accounted.covers(name, old, new) || !seen.insert((old.clone(), new.clone())) {
            continue;
        }
        let own = own_causes(below);
        if own.is_empty() && !below.is_empty() {
            build_only(below, accounted, seen, out);
        } else {
            out.push(Cause::Input {
                name: name.clone(),
                old: old.clone(),
                new: new.clone(),
                causes: own,
            });
        }
    }
}

/// Why a package was rebuilt at its version, from its node's causes: its
/// own, else the build-only changes below it ([`build_only`]); `None`
/// when only changed packages of the closure account for it (not drift
/// itself).
fn rebuild_causes(all: &[Cause], accounted: &Accounted) -> Option<Vec<Cause>> {
    let own = own_causes(all);
    if !own.is_empty() {
        return Some(own);
    }
    let mut below = Vec::new();
    build_only(all, accounted, &mut HashSet::new(), &mut below);
    (!below.is_empty()).then_some(below)
}

/// The drift in `diff` given `expect`; unversioned paths (system glue such
/// as `etc`, `system-path`, units) are never drift.
pub fn drift(diff: &PackageDiff, structural: &Structural, expect: &[String]) -> Vec<Drift> {
    let mut nodes = Vec::new();
    if let Structural::Explained { causes, .. } = structural {
        tree_nodes(causes, "", false, &mut nodes);
    }
    // Each node's name split once, and the nodes by version, so finding a
    // package's node is a lookup rather than a scan of the whole tree.
    let split: Vec<(String, Option<String>)> = nodes.iter().map(|n| split_name(n.name)).collect();
    let mut by_version: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, (_, v)) in split.iter().enumerate() {
        if let Some(v) = v {
            by_version.entry(v.as_str()).or_default().push(i);
        }
    }
    let accounted = accounted(diff, expect);
    let mut out = Vec::new();
    for pc in &diff.changes {
        if expected(&pc.name, expect) {
            continue;
        }
        // The derivations as the tree names them, `<pname>-<version>` (a
        // split output's package, `curl-bin`, is built by `curl-8.7.1`),
        // each with all its causes; for a rebuild, those of that version
        // rebuilt (a dependent's switch from another version to this one is
        // a node of that name too). Every one: two derivations of one name
        // and version (a package and an override of it) are one entry of
        // the package diff, and judging the first alone let the second's
        // own change (its patches) pass when the first was accounted for.
        let base = without_output(&pc.name);
        let rebuild = matches!(pc.change, Change::Rebuilt { .. });
        let node_causes = |v: &str| -> Vec<&[Cause]> {
            let found = by_version.get(v).into_iter().flatten();
            found
                .filter(|&&i| {
                    (split[i].0 == pc.name || split[i].0 == base) && !(rebuild && nodes[i].moved)
                })
                .map(|&i| nodes[i].causes)
                .collect()
        };
        match &pc.change {
            Change::Rebuilt { version, .. } => {
                let Some(v) = version else { continue };
                let found = node_causes(v);
                let unaccounted: Vec<Vec<Cause>> = (found.iter())
                    .filter_map(|all| rebuild_causes(all, &accounted))
                    .collect();
                if !found.is_empty() && unaccounted.is_empty() {
                    continue;
                }
                out.push(Drift {
                    package: pc.name.clone(),
                    change: pc.change.clone(),
                    causes: distinct(unaccounted.into_iter().flatten()),
                });
            }
            Change::Upgraded { to, .. } | Change::Downgraded { to, .. } => {
                let causes = distinct(node_causes(to).into_iter().flat_map(own_causes));
                out.push(Drift {
                    package: pc.name.clone(),
                    change: pc.change.clone(),
                    causes,
                });
            }
            Change::Added { versions } | Change::Removed { versions } if versions.is_empty() => {}
            _ => out.push(Drift {
                package: pc.name.clone(),
                change: pc.change.clone(),
                causes: Vec::new(),
            }),
        }
    }
    out
}

/// Causes without repeats, in their first order (two nodes of one package
/// often share them).
fn distinct(causes: impl Iterator<Item = Cause>) -> Vec<Cause> {
    let mut out: Vec<Cause> = Vec::new();
    for c in causes {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::packages::{PackageChange, SizeDelta};
    use super::*;
    use crate::nix::StorePath;

    fn rebuilt(name: &str, version: &str) -> PackageChange {
        PackageChange {
            name: name.into(),
            change: Change::Rebuilt {
                version: Some(version.into()),
                old: Vec::new(),
                new: Vec::new(),
            },
            selected: true,
        }
    }

    fn diff(changes: Vec<PackageChange>) -> PackageDiff {
        PackageDiff {
            changes,
            size: SizeDelta::default(),
        }
    }

    fn input(name: &str, causes: Vec<Cause>) -> Cause {
        Cause::Input {
            name: name.into(),
            old: format!("/nix/store/{}-{name}.drv", "a".repeat(32)),
            new: format!("/nix/store/{}-{name}.drv", "b".repeat(32)),
            causes,
        }
    }

    fn env(key: &str) -> Cause {
        Cause::Env {
            key: key.into(),
            old: Some("a".into()),
            new: Some("b".into()),
        }
    }

    fn tree(causes: Vec<Cause>) -> Structural {
        let drv = |n: &str| StorePath::parse(&format!("/nix/store/{}-{n}.drv", "a".repeat(32)));
        Structural::Explained {
            old_drv: drv("old").unwrap(),
            new_drv: drv("new").unwrap(),
            causes,
        }
    }

    fn drifting(d: &PackageDiff, s: &Structural, expect: &[&str]) -> Vec<String> {
        let expect: Vec<String> = expect.iter().map(|e| e.to_string()).collect();
        drift(d, s, &expect)
            .into_iter()
            .map(|d| {
                let causes: Vec<String> = d
                    .causes
                    .iter()
                    .map(|c| match c {
                        Cause::Input { name, .. } => format!("input {name}"),
                        Cause::Env { key, .. } => format!("env {key}"),
                        other => format!("{other:?}"),
                    })
                    .collect();
                format!("{}: {}", d.package, causes.join(", "))
            })
            .collect()
    }

    /// A package rebuilt because an expected package of the closure
    /// changed is not drift; one rebuilt because its source (not in the
    /// closure, so never in the package diff) changed at the same version
    /// is, with that input as its cause.
    #[test]
    fn a_rebuild_is_drift_unless_a_changed_package_accounts_for_it() {
        let d = diff(vec![
            rebuilt("openssl", "3.0.13"),
            rebuilt("curl", "8.7.1"),
            rebuilt("nginx", "1.25.3"),
        ]);
        let s = tree(vec![
            input(
                "curl-8.7.1",
                vec![input("openssl-3.0.13", vec![env("src")])],
            ),
            input(
                "nginx-1.25.3",
                vec![
                    input("openssl-3.0.13", vec![env("src")]),
                    input("nginx-1.25.3.tar.gz", vec![env("outputHash")]),
                ],
            ),
        ]);
        assert_eq!(
            drifting(&d, &s, &["openssl"]),
            vec!["nginx: input nginx-1.25.3.tar.gz"]
        );
        // A change below a build-only input is found where it is.
        let s = tree(vec![input(
            "nginx-1.25.3",
            vec![input(
                "stdenv-linux",
                vec![input("gcc-13.2.0", vec![env("patches")])],
            )],
        )]);
        let d = diff(vec![rebuilt("nginx", "1.25.3")]);
        assert_eq!(drifting(&d, &s, &[]), vec!["nginx: input gcc-13.2.0"]);
        assert_eq!(drifting(&d, &s, &["gcc"]), Vec::<String>::new());
    }

    /// A `source` path of the closure that changed (a flake's nixpkgs
    /// source, bumped) says nothing of a package rebuilt at its version
    /// from a changed source of its own (both named `source`): drift, its
    /// source the cause. Before, the closure's `source` excused it.
    #[test]
    fn a_changed_source_in_the_closure_excuses_no_other_source() {
        let unversioned = PackageChange {
            name: "source".into(),
            change: Change::Rebuilt {
                version: None,
                old: Vec::new(),
                new: Vec::new(),
            },
            selected: false,
        };
        let d = diff(vec![
            rebuilt("openssl", "3.0.13"),
            rebuilt("foo", "1.0"),
            unversioned,
        ]);
        let s = tree(vec![
            input("source", vec![env("narHash")]),
            input("foo-1.0", vec![input("source", vec![env("outputHash")])]),
        ]);
        assert_eq!(drifting(&d, &s, &["openssl"]), vec!["foo: input source"]);
        // An unversioned input whose change comes from an expected package
        // below it is still no drift.
        let s = tree(vec![input(
            "foo-1.0",
            vec![input(
                "make-wrapper-hook",
                vec![input("openssl-3.0.13", vec![env("src")])],
            )],
        )]);
        let d = diff(vec![rebuilt("openssl", "3.0.13"), rebuilt("foo", "1.0")]);
        assert_eq!(drifting(&d, &s, &["openssl"]), Vec::<String>::new());
    }

    /// Two derivations of one name and version (a package and an override
    /// of it) changed: one rebuilt for the expected openssl, the other for
    /// its own patches. Every one is judged: drift, the patches its cause.
    /// Before, only the first found was, and the package passed.
    #[test]
    fn every_derivation_of_a_package_is_judged() {
        let d = diff(vec![rebuilt("openssl", "3.0.13"), rebuilt("foo", "1.0")]);
        let s = tree(vec![
            input("foo-1.0", vec![input("openssl-3.0.13", vec![env("src")])]),
            input("app-2.0", vec![input("foo-1.0", vec![env("patches")])]),
        ]);
        assert_eq!(
            drifting(&d, &s, &["openssl", "app"]),
            vec!["foo: env patches"]
        );
    }

    /// A split output (`curl-8.7.1-bin`, the package `curl-bin`) is built
    /// by the derivation `curl-8.7.1`: rebuilt because of an expected
    /// package, it is not drift (it always was, with no cause).
    #[test]
    fn a_split_output_is_judged_by_its_derivation() {
        let d = diff(vec![
            rebuilt("openssl", "3.0.13"),
            rebuilt("curl", "8.7.1"),
            rebuilt("curl-bin", "8.7.1"),
        ]);
        let s = tree(vec![input(
            "curl-8.7.1",
            vec![input("openssl-3.0.13", vec![env("src")])],
        )]);
        assert_eq!(drifting(&d, &s, &["openssl"]), Vec::<String>::new());
        let s = tree(vec![input("curl-8.7.1", vec![env("patches")])]);
        assert_eq!(
            drifting(&d, &s, &["openssl"]),
            vec!["curl: env patches", "curl-bin: env patches"]
        );
    }

    /// `--expect openssl` for its version bump: the packages built with it
    /// (rebuilt at their own versions) are not drift.
    #[tokio::test]
    async fn an_expected_version_bump_leaves_its_dependents_alone() {
        use super::super::structural::structural_diff_local;
        use super::super::structural::tests::{drv, openssl_bump_under_curl, p};
        let (mut m, curl_a, curl_b) = openssl_bump_under_curl();
        let (top_a, top_b) = (p('g', "system.drv"), p('h', "system.drv"));
        m.insert(top_a.clone(), drv(&[], &[&curl_a]));
        m.insert(top_b.clone(), drv(&[], &[&curl_b]));
        let causes = structural_diff_local(&m, &top_a, &top_b).await.unwrap();
        let d = diff(vec![
            PackageChange {
                name: "openssl".into(),
                change: Change::Upgraded {
                    from: "3.0.13".into(),
                    to: "3.0.14".into(),
                },
                selected: false,
            },
            rebuilt("curl", "8.7.1"),
        ]);
        assert_eq!(
            drifting(&d, &tree(causes.clone()), &["openssl"]),
            Vec::<String>::new()
        );
        assert_eq!(
            drifting(&d, &tree(causes), &[]),
            vec!["openssl: env version"]
        );
    }

    /// Both python3 versions in both closures, each rebuilt (an expected
    /// openssl bump): a package switching from one to the other changed
    /// by itself, whatever pairs its inputs (an input moved between two
    /// versions is accounted for only by a package that moved so).
    #[test]
    fn switching_between_two_versions_present_on_both_sides_is_drift() {
        let h = |c: char, n: &str| format!("/nix/store/{}-{n}.drv", c.to_string().repeat(32));
        let d = diff(vec![
            rebuilt("openssl", "3.0.13"),
            rebuilt("python3", "3.11.9"),
            rebuilt("python3", "3.12.4"),
            rebuilt("app", "1.0"),
        ]);
        let switched = Cause::Input {
            name: "python3-3.12.4".into(),
            old: h('a', "python3-3.11.9"),
            new: h('b', "python3-3.12.4"),
            causes: vec![env("version")],
        };
        let openssl = || input("openssl-3.0.13", vec![env("src")]);
        let s = tree(vec![
            input("python3-3.11.9", vec![openssl()]),
            input("python3-3.12.4", vec![openssl()]),
            input("app-1.0", vec![switched]),
        ]);
        assert_eq!(
            drifting(&d, &s, &["openssl"]),
            vec!["app: input python3-3.12.4"]
        );
        // python3 itself upgraded from 3.11.9 to 3.12.4: accounted for.
        let up = diff(vec![
            PackageChange {
                name: "python3".into(),
                change: Change::Upgraded {
                    from: "3.11.9".into(),
                    to: "3.12.4".into(),
                },
                selected: false,
            },
            rebuilt("app", "1.0"),
        ]);
        assert_eq!(drifting(&up, &s, &["python3"]), Vec::<String>::new());
    }
}
