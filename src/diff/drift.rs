//! Accidental input drift: every package that changed, other than those the
//! change is meant to touch (`--expect`), and the causes found for it. A
//! package rebuilt only because one of its dependencies changed is not drift
//! itself; the dependency is judged on its own.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::names::{OUTPUTS, split_name};
use super::packages::{Change, PackageDiff};
use super::structural::{Cause, Structural};

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

/// Every derivation (by name, e.g. `openssl-3.0.13`) in the cause tree with
/// all its causes (its own and its changed inputs).
fn tree_nodes<'a>(causes: &'a [Cause], name: &'a str, out: &mut Vec<(&'a str, &'a [Cause])>) {
    out.push((name, causes));
    for c in causes {
        if let Cause::Input { name, causes, .. } = c {
            tree_nodes(causes, name, out);
        }
    }
}

/// `curl-bin` -> `curl`: a package name without its output.
fn without_output(name: &str) -> &str {
    name.rsplit_once('-')
        .filter(|(_, o)| OUTPUTS.contains(o))
        .map_or(name, |(base, _)| base)
}

/// The derivation names (`<pname>-<version>`, or the bare name of an
/// unversioned path) whose change is accounted for: each changed package is
/// judged on its own, and the expected ones are meant to change.
fn accounted(diff: &PackageDiff, expect: &[String]) -> (HashSet<String>, Vec<String>) {
    let mut names = HashSet::new();
    for pc in &diff.changes {
        let base = without_output(&pc.name);
        let versions: Vec<&String> = match &pc.change {
            Change::Upgraded { to, .. } | Change::Downgraded { to, .. } => vec![to],
            Change::Changed { to, .. } => to.iter().collect(),
            Change::Added { versions } => versions.iter().collect(),
            Change::Rebuilt { version, .. } => version.iter().collect(),
            Change::Removed { .. } => Vec::new(),
        };
        if versions.is_empty() {
            names.insert(base.to_owned());
        }
        names.extend(versions.into_iter().map(|v| format!("{base}-{v}")));
    }
    (names, expect.to_vec())
}

/// What rebuilt a package whose own derivation is unchanged: the nearest
/// changed inputs below it that no changed package of the closure accounts
/// for (a source, patch or compiler that is not in the closure, so never in
/// the package diff), each with its own causes; an input whose causes the
/// walk did not reach counts too. Empty: every change below it is a
/// package judged on its own.
fn build_only(
    causes: &[Cause],
    accounted: &(HashSet<String>, Vec<String>),
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
        if accounted.0.contains(name.as_str())
            || expected(&split_name(name).0, &accounted.1)
            || !seen.insert((old.clone(), new.clone()))
        {
            continue;
        }
        let own: Vec<Cause> = below.iter().filter(|c| c.is_local()).cloned().collect();
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

/// The drift in `diff` given `expect`; unversioned paths (system glue such
/// as `etc`, `system-path`, units) are never drift.
pub fn drift(diff: &PackageDiff, structural: &Structural, expect: &[String]) -> Vec<Drift> {
    let mut nodes = Vec::new();
    if let Structural::Explained { causes, .. } = structural {
        tree_nodes(causes, "", &mut nodes);
    }
    // Each node's name split once, and the nodes by version, so finding a
    // package's node is a lookup rather than a scan of the whole tree.
    let split: Vec<(String, Option<String>)> = nodes.iter().map(|(n, _)| split_name(n)).collect();
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
        // The derivation as the tree names it, `<pname>-<version>` (a split
        // output's package, `curl-bin`, is built by `curl-8.7.1`): the first
        // such node in the tree, with all its causes.
        let base = without_output(&pc.name);
        let node = |v: &str| -> Option<&[Cause]> {
            by_version
                .get(v)?
                .iter()
                .find(|&&i| split[i].0 == pc.name || split[i].0 == base)
                .map(|&i| nodes[i].1)
        };
        let local = |all: &[Cause]| -> Vec<Cause> {
            all.iter().filter(|c| c.is_local()).cloned().collect()
        };
        match &pc.change {
            Change::Rebuilt { version, .. } => {
                let Some(v) = version else { continue };
                let causes = match node(v) {
                    Some(all) => {
                        let own = local(all);
                        if own.is_empty() {
                            let mut below = Vec::new();
                            build_only(all, &accounted, &mut HashSet::new(), &mut below);
                            // Rebuilt only because a package of the closure
                            // changed: not drift itself.
                            if below.is_empty() {
                                continue;
                            }
                            below
                        } else {
                            own
                        }
                    }
                    None => Vec::new(),
                };
                out.push(Drift {
                    package: pc.name.clone(),
                    change: pc.change.clone(),
                    causes,
                });
            }
            Change::Upgraded { to, .. } | Change::Downgraded { to, .. } => {
                let causes = node(to).map(local).unwrap_or_default();
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
            old: format!("/nix/store/old-{name}.drv"),
            new: format!("/nix/store/new-{name}.drv"),
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
        use super::super::structural::{structural_diff_local, tests::drv};
        let p = |h: char, n: &str| format!("/nix/store/{}-{n}", h.to_string().repeat(32));
        let (ssl_a, ssl_b) = (p('a', "openssl-3.0.13.drv"), p('b', "openssl-3.0.14.drv"));
        let (curl_a, curl_b) = (p('c', "curl-8.7.1.drv"), p('d', "curl-8.7.1.drv"));
        let mut m = std::collections::BTreeMap::new();
        m.insert(ssl_a.clone(), drv(&[("version", "3.0.13")], &[]));
        m.insert(ssl_b.clone(), drv(&[("version", "3.0.14")], &[]));
        let env = |h: char, v: &str| format!("{}/lib", p(h, &format!("openssl-{v}")));
        m.insert(
            curl_a.clone(),
            drv(&[("deps", &env('e', "3.0.13"))], &[&ssl_a]),
        );
        m.insert(
            curl_b.clone(),
            drv(&[("deps", &env('f', "3.0.14"))], &[&ssl_b]),
        );
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
}
