//! Accidental input drift: every package that changed, other than those the
//! change is meant to touch (`--expect`), and the causes found for it. A
//! package rebuilt only because one of its dependencies changed is not drift
//! itself; the dependency is judged on its own.

use std::collections::HashMap;

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
/// its local causes.
fn local_causes(causes: &[Cause], name: &str, out: &mut Vec<(String, Vec<Cause>)>) {
    let own: Vec<Cause> = causes.iter().filter(|c| c.is_local()).cloned().collect();
    out.push((name.to_owned(), own));
    for c in causes {
        if let Cause::Input { name, causes, .. } = c {
            local_causes(causes, name, out);
        }
    }
}

/// The drift in `diff` given `expect`; unversioned paths (system glue such
/// as `etc`, `system-path`, units) are never drift.
pub fn drift(diff: &PackageDiff, structural: &Structural, expect: &[String]) -> Vec<Drift> {
    let mut nodes = Vec::new();
    if let Structural::Explained { causes, .. } = structural {
        local_causes(causes, "", &mut nodes);
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
    let mut out = Vec::new();
    for pc in &diff.changes {
        if expected(&pc.name, expect) {
            continue;
        }
        // Name of the derivation as the tree names it: `<pname>-<version>`;
        // the first such node in the tree.
        let own = |version: &Option<String>| -> Option<Vec<Cause>> {
            let v = version.as_ref()?;
            let base = split_name(&format!("{}-{v}", pc.name)).0;
            by_version
                .get(v.as_str())?
                .iter()
                .find(|&&i| split[i].0 == pc.name || split[i].0 == base)
                .map(|&i| nodes[i].1.clone())
        };
        match &pc.change {
            Change::Rebuilt { version, .. } => {
                if version.is_none() {
                    continue;
                }
                match own(version) {
                    // Rebuilt only because a dependency changed: not drift itself.
                    Some(c) if c.is_empty() => continue,
                    Some(c) => out.push(Drift {
                        package: pc.name.clone(),
                        change: pc.change.clone(),
                        causes: c,
                    }),
                    None => out.push(Drift {
                        package: pc.name.clone(),
                        change: pc.change.clone(),
                        causes: Vec::new(),
                    }),
                }
            }
            Change::Upgraded { to, .. } | Change::Downgraded { to, .. } => {
                let causes = own(&Some(to.clone())).unwrap_or_default();
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
