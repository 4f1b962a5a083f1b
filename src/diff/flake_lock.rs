//! Which flake inputs changed between two `flake.lock` files.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InputChange {
    Added {
        name: String,
        rev: Option<String>,
    },
    Removed {
        name: String,
        rev: Option<String>,
    },
    Updated {
        name: String,
        old_rev: Option<String>,
        new_rev: Option<String>,
        old_modified: Option<i64>,
        new_modified: Option<i64>,
    },
}

/// Why the flake inputs' change between two commits is not known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InputsUnknown {
    /// The commit the host's system was built from is not in the local
    /// clone of the configuration repository.
    BaseNotInClone { commit: String },
    /// The repository or a `flake.lock` could not be read.
    Unreadable { error: String },
}

impl std::fmt::Display for InputsUnknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputsUnknown::BaseNotInClone { commit } => {
                write!(f, "base commit {commit} not in this clone: git fetch")
            }
            InputsUnknown::Unreadable { error } => f.write_str(error),
        }
    }
}

fn locked(
    v: &serde_json::Value,
    name: &str,
) -> Option<(Option<String>, Option<String>, Option<i64>)> {
    let l = &v["nodes"][name]["locked"];
    if l.is_null() {
        return None;
    }
    Some((
        l["rev"].as_str().map(str::to_owned),
        l["narHash"].as_str().map(str::to_owned),
        l["lastModified"].as_i64(),
    ))
}

fn inputs(v: &serde_json::Value) -> BTreeSet<String> {
    v["nodes"]
        .as_object()
        .map(|o| o.keys().filter(|k| *k != "root").cloned().collect())
        .unwrap_or_default()
}

pub fn flake_inputs_diff(old_lock: &str, new_lock: &str) -> anyhow::Result<Vec<InputChange>> {
    let old: serde_json::Value = serde_json::from_str(old_lock)?;
    let new: serde_json::Value = serde_json::from_str(new_lock)?;
    let mut out = Vec::new();
    for name in inputs(&old).union(&inputs(&new)) {
        match (locked(&old, name), locked(&new, name)) {
            (None, Some((rev, ..))) => out.push(InputChange::Added {
                name: name.clone(),
                rev,
            }),
            (Some((rev, ..)), None) => out.push(InputChange::Removed {
                name: name.clone(),
                rev,
            }),
            (Some((r1, h1, m1)), Some((r2, h2, m2)))
                if (r1.as_ref(), h1.as_ref()) != (r2.as_ref(), h2.as_ref()) =>
            {
                out.push(InputChange::Updated {
                    name: name.clone(),
                    old_rev: r1,
                    new_rev: r2,
                    old_modified: m1,
                    new_modified: m2,
                })
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_updated_added_removed() {
        let old = r#"{"nodes":{"root":{},"nixpkgs":{"locked":{"rev":"a","narHash":"h1","lastModified":1}},"old":{"locked":{"rev":"o"}}}}"#;
        let new = r#"{"nodes":{"root":{},"nixpkgs":{"locked":{"rev":"b","narHash":"h2","lastModified":2}},"new":{"locked":{"rev":"n"}}}}"#;
        let d = flake_inputs_diff(old, new).unwrap();
        assert_eq!(d.len(), 3);
        assert!(d.contains(&InputChange::Updated {
            name: "nixpkgs".into(),
            old_rev: Some("a".into()),
            new_rev: Some("b".into()),
            old_modified: Some(1),
            new_modified: Some(2)
        }));
        assert!(d.contains(&InputChange::Added {
            name: "new".into(),
            rev: Some("n".into())
        }));
        assert!(d.contains(&InputChange::Removed {
            name: "old".into(),
            rev: Some("o".into())
        }));
    }
}
