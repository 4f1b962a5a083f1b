//! Which flake inputs changed between two `flake.lock` files.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

/// One input's change. `rev` is the locked revision; for a relative path
/// input (which locks none) the git tree id of its directory.
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

/// What a lock node pins: `rev` (for a relative path input, the git tree
/// of its directory, see [`flake_inputs_diff_in`]), `narHash`, `lastModified`.
type Pin = (Option<String>, Option<String>, Option<i64>);

fn locked(v: &serde_json::Value, name: &str, tree: &dyn Fn(&str) -> Option<String>) -> Option<Pin> {
    let l = &v["nodes"][name]["locked"];
    if l.is_null() {
        return None;
    }
    if let Some(dir) = relative_dir(v, name, 0) {
        return Some((tree(&dir), None, None));
    }
    Some((
        l["rev"].as_str().map(str::to_owned),
        l["narHash"].as_str().map(str::to_owned),
        l["lastModified"].as_i64(),
    ))
}

/// Nesting of relative path inputs followed at most (a lock whose
/// `parent`s loop is not followed forever).
const MAX_DEPTH: usize = 32;

/// The directory of a relative path input (Nix 2.26 on: `inputs.x.url =
/// "./sub"` or `"path:./sub"`), relative to the root flake's: a lock node
/// `"locked": {"type": "path", "path": "sub"}` with no `narHash`, its path
/// relative to the flake named by its `parent` (an input path from the
/// root; none or `[]`: the root flake itself). `None` for any other node.
/// Such an input is part of the flake's own source: nothing about it in
/// the lock changes when its files do, so it is identified by its
/// directory, and the caller reads what is there.
fn relative_dir(v: &serde_json::Value, name: &str, depth: usize) -> Option<String> {
    let node = &v["nodes"][name];
    let l = &node["locked"];
    let path = l["path"].as_str()?;
    if l["type"].as_str() != Some("path") || path.starts_with('/') || depth > MAX_DEPTH {
        return None;
    }
    let base = match node["parent"].as_array() {
        Some(parent) if !parent.is_empty() => {
            let parent = follow(v, parent)?;
            relative_dir(v, &parent, depth + 1)?
        }
        _ => String::new(),
    };
    normalize(&format!("{base}/{path}"))
}

/// The node an input path (`["a", "b"]`: input `b` of input `a` of the
/// root) leads to; `follows` edges (a list) are input paths from the root.
fn follow(v: &serde_json::Value, path: &[serde_json::Value]) -> Option<String> {
    let root = v["root"].as_str().unwrap_or("root");
    let mut at = root.to_owned();
    for (i, step) in path.iter().enumerate() {
        at = match &v["nodes"][at.as_str()]["inputs"][step.as_str()?] {
            serde_json::Value::String(n) => n.clone(),
            serde_json::Value::Array(p) if i < MAX_DEPTH => follow(v, p)?,
            _ => return None,
        };
    }
    Some(at)
}

/// `a/./b/../c` as `a/c`; `None` when it leaves the root flake's
/// directory's repository side (more `..` than names).
fn normalize(path: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            p => out.push(p),
        }
    }
    Some(out.join("/"))
}

/// Every input of the lock, by its path from the root (`nixpkgs`,
/// `sops-nix/nixpkgs`), to its node key. Node keys are not names: Nix
/// numbers repeated inputs `nixpkgs`, `nixpkgs_2`, ... by traversal order,
/// so adding `agenix` (with its own nixpkgs) renumbered sops-nix's nixpkgs
/// from `nixpkgs_2` to `nixpkgs_3`, and a diff by key reported sops-nix's
/// nixpkgs as moved to agenix's rev. A `follows` edge (a path from the
/// root) names no node of its own: its target is listed under its path,
/// the shortest one (breadth first) where a node is reached twice.
fn inputs(v: &serde_json::Value) -> BTreeMap<String, String> {
    let root = v["root"].as_str().unwrap_or("root");
    let mut out = BTreeMap::new();
    let mut visited = BTreeSet::from([root.to_owned()]);
    let mut queue = VecDeque::from([(String::new(), root.to_owned())]);
    while let Some((at, key)) = queue.pop_front() {
        let Some(edges) = v["nodes"][key.as_str()]["inputs"].as_object() else {
            continue;
        };
        for (name, node) in edges {
            let Some(node) = node.as_str() else {
                continue;
            };
            if !visited.insert(node.to_owned()) {
                continue;
            }
            let path = if at.is_empty() {
                name.clone()
            } else {
                format!("{at}/{name}")
            };
            out.insert(path.clone(), node.to_owned());
            queue.push_back((path, node.to_owned()));
        }
    }
    out
}

/// [`flake_inputs_diff_in`] for locks without relative path inputs.
pub fn flake_inputs_diff(old_lock: &str, new_lock: &str) -> anyhow::Result<Vec<InputChange>> {
    flake_inputs_diff_in(old_lock, new_lock, &|_| None, &|_| None)
}

/// The inputs that changed between two locks. A relative path input's
/// `rev` is the git tree of its directory on each side (`old_tree`,
/// `new_tree`: the tree id of a directory, relative to the flake's, `""`
/// the flake's own), as the repository has it; `None` where it is not
/// there. Before, such inputs (which lock no hash) never showed a change.
pub fn flake_inputs_diff_in(
    old_lock: &str,
    new_lock: &str,
    old_tree: &dyn Fn(&str) -> Option<String>,
    new_tree: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<InputChange>> {
    let old: serde_json::Value = serde_json::from_str(old_lock)?;
    let new: serde_json::Value = serde_json::from_str(new_lock)?;
    let (old_inputs, new_inputs) = (inputs(&old), inputs(&new));
    let names: BTreeSet<&String> = old_inputs.keys().chain(new_inputs.keys()).collect();
    let mut out = Vec::new();
    for name in names {
        let pin = |v, inputs: &BTreeMap<String, String>, tree| {
            inputs.get(name).and_then(|key| locked(v, key, tree))
        };
        match (
            pin(&old, &old_inputs, old_tree),
            pin(&new, &new_inputs, new_tree),
        ) {
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
        let old = r#"{"nodes":{"root":{"inputs":{"nixpkgs":"nixpkgs","old":"old"}},"nixpkgs":{"locked":{"rev":"a","narHash":"h1","lastModified":1}},"old":{"locked":{"rev":"o"}}}}"#;
        let new = r#"{"nodes":{"root":{"inputs":{"nixpkgs":"nixpkgs","new":"new"}},"nixpkgs":{"locked":{"rev":"b","narHash":"h2","lastModified":2}},"new":{"locked":{"rev":"n"}}}}"#;
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

    /// Nix 2.26 relative path inputs lock no hash: a change in their
    /// directory is read from the repository (here, a map of directory to
    /// tree id per side). `sub` at the root, `leaf` inside `sub` (its
    /// `parent`), `gone` removed, `new` added, `same` unchanged.
    #[test]
    fn relative_path_inputs_are_diffed_by_their_directory() {
        let lock = |names: &[&str]| {
            let mut nodes = serde_json::json!({
                "root": {"inputs": {"sub": "sub", "same": "same", "gone": "gone", "new": "new"}},
                "sub": {"inputs": {"leaf": "leaf"}, "locked": {"path": "./sub", "type": "path"},
                        "original": {"path": "./sub", "type": "path"}, "parent": []},
                "leaf": {"locked": {"path": "leaf", "type": "path"}, "parent": ["sub"]},
                "same": {"locked": {"path": "./same", "type": "path"}, "parent": []},
                "gone": {"locked": {"path": "./gone", "type": "path"}, "parent": []},
                "new": {"locked": {"path": "./new", "type": "path"}, "parent": []},
            });
            let o = nodes.as_object_mut().unwrap();
            o.retain(|k, _| k == "root" || names.contains(&k.as_str()));
            serde_json::json!({"nodes": nodes, "root": "root", "version": 7}).to_string()
        };
        let old_lock = lock(&["sub", "leaf", "same", "gone"]);
        let new_lock = lock(&["sub", "leaf", "same", "new"]);
        let trees = |pairs: &'static [(&'static str, &'static str)]| {
            move |dir: &str| {
                pairs
                    .iter()
                    .find(|(d, _)| *d == dir)
                    .map(|(_, t)| t.to_string())
            }
        };
        let old_tree = trees(&[
            ("sub", "s1"),
            ("sub/leaf", "l1"),
            ("same", "x"),
            ("gone", "g"),
        ]);
        let new_tree = trees(&[
            ("sub", "s2"),
            ("sub/leaf", "l2"),
            ("same", "x"),
            ("new", "n"),
        ]);
        let d = flake_inputs_diff_in(&old_lock, &new_lock, &old_tree, &new_tree).unwrap();
        let updated = |name: &str, a: &str, b: &str| InputChange::Updated {
            name: name.into(),
            old_rev: Some(a.into()),
            new_rev: Some(b.into()),
            old_modified: None,
            new_modified: None,
        };
        assert_eq!(
            d,
            [
                InputChange::Removed {
                    name: "gone".into(),
                    rev: Some("g".into())
                },
                InputChange::Added {
                    name: "new".into(),
                    rev: Some("n".into())
                },
                updated("sub", "s1", "s2"),
                updated("sub/leaf", "l1", "l2"),
            ]
        );
    }

    fn pinned(rev: &str) -> serde_json::Value {
        serde_json::json!({"locked": {"type": "github", "rev": rev, "narHash": format!("h{rev}")}})
    }

    /// Nix renumbers lock nodes: adding `agenix` (its nixpkgs not
    /// followed) makes agenix's nixpkgs `nixpkgs_2` and moves sops-nix's
    /// from `nixpkgs_2` to `nixpkgs_3`. Inputs are compared by path, so
    /// sops-nix's nixpkgs (same rev) is unchanged and agenix's is new.
    #[test]
    fn renumbered_lock_nodes_are_matched_by_their_path() {
        let old = serde_json::json!({"root": "root", "version": 7, "nodes": {
            "root": {"inputs": {"nixpkgs": "nixpkgs", "sops-nix": "sops-nix"}},
            "nixpkgs": pinned("top"),
            "sops-nix": {"inputs": {"nixpkgs": "nixpkgs_2"},
                         "locked": {"rev": "sops", "narHash": "hs"}},
            "nixpkgs_2": pinned("sopsrev"),
        }});
        let new = serde_json::json!({"root": "root", "version": 7, "nodes": {
            "root": {"inputs": {"agenix": "agenix", "nixpkgs": "nixpkgs", "sops-nix": "sops-nix"}},
            "nixpkgs": pinned("top"),
            "agenix": {"inputs": {"nixpkgs": "nixpkgs_2"},
                       "locked": {"rev": "age", "narHash": "ha"}},
            "nixpkgs_2": pinned("agerev"),
            "sops-nix": {"inputs": {"nixpkgs": "nixpkgs_3"},
                         "locked": {"rev": "sops", "narHash": "hs"}},
            "nixpkgs_3": pinned("sopsrev"),
        }});
        let d = flake_inputs_diff(&old.to_string(), &new.to_string()).unwrap();
        assert_eq!(
            d,
            [
                InputChange::Added {
                    name: "agenix".into(),
                    rev: Some("age".into())
                },
                InputChange::Added {
                    name: "agenix/nixpkgs".into(),
                    rev: Some("agerev".into())
                },
            ]
        );
    }

    /// A `follows` input is its target (a path from the root), listed
    /// once under the target's own path: sops-nix's nixpkgs update is one
    /// change named `sops-nix/nixpkgs`, not one more per input following
    /// it (agenix's, through sops-nix; home-manager's, the root's).
    #[test]
    fn a_follows_input_resolves_to_its_target() {
        let lock = |rev: &str| {
            serde_json::json!({"root": "root", "version": 7, "nodes": {
                "root": {"inputs": {"agenix": "agenix", "home-manager": "home-manager",
                                    "nixpkgs": "nixpkgs", "sops-nix": "sops-nix"}},
                "nixpkgs": pinned("top"),
                "sops-nix": {"inputs": {"nixpkgs": "nixpkgs_2"},
                             "locked": {"rev": "sops", "narHash": "hs"}},
                "nixpkgs_2": pinned(rev),
                "agenix": {"inputs": {"nixpkgs": ["sops-nix", "nixpkgs"]},
                           "locked": {"rev": "age", "narHash": "ha"}},
                "home-manager": {"inputs": {"nixpkgs": ["nixpkgs"]},
                                 "locked": {"rev": "hm", "narHash": "hh"}},
            }})
            .to_string()
        };
        let d = flake_inputs_diff(&lock("a"), &lock("b")).unwrap();
        assert_eq!(
            d,
            [InputChange::Updated {
                name: "sops-nix/nixpkgs".into(),
                old_rev: Some("a".into()),
                new_rev: Some("b".into()),
                old_modified: None,
                new_modified: None,
            }]
        );
        let v: serde_json::Value = serde_json::from_str(&lock("a")).unwrap();
        let path = serde_json::json!(["agenix", "nixpkgs"]);
        assert_eq!(
            follow(&v, path.as_array().unwrap()).as_deref(),
            Some("nixpkgs_2")
        );
    }

    /// A relative path resolved through `parent`s, `..` included; one
    /// leaving the repository, or a `parent` loop, resolves to nothing.
    #[test]
    fn a_relative_input_is_found_through_its_parents() {
        let v = serde_json::json!({"root": "root", "nodes": {
            "root": {"inputs": {"a": "a", "b": ["a", "c"], "l": "loop"}},
            "a": {"inputs": {"c": "c"}, "locked": {"path": "./x/a", "type": "path"}},
            "c": {"locked": {"path": "../c", "type": "path"}, "parent": ["a"]},
            "d": {"locked": {"path": "d", "type": "path"}, "parent": ["b"]},
            "out": {"locked": {"path": "../..", "type": "path"}},
            "loop": {"inputs": {"l": "loop"}, "locked": {"path": "l", "type": "path"}, "parent": ["l"]},
            "gh": {"locked": {"type": "github", "owner": "o", "repo": "r", "rev": "1"}},
            "abs": {"locked": {"type": "path", "path": "/nix/store/x-source", "narHash": "h"}}
        }});
        assert_eq!(relative_dir(&v, "a", 0).as_deref(), Some("x/a"));
        assert_eq!(relative_dir(&v, "c", 0).as_deref(), Some("x/c"));
        assert_eq!(relative_dir(&v, "d", 0).as_deref(), Some("x/c/d"));
        for none in ["out", "loop", "gh", "abs"] {
            assert_eq!(relative_dir(&v, none, 0), None, "{none}");
        }
    }
}
