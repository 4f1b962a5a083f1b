//! The git tree of a directory of the configuration's source, at a commit
//! or as the working tree has it: what identifies a relative path flake
//! input (`inputs.sub.url = "./sub"`, Nix 2.26 on), which locks no hash of
//! its own (see [`super::flake_lock::flake_inputs_diff_in`]).
//!
//! The working tree's is computed here, not written: its files as a dirty
//! build ships them (`nix::source`: those git tracks and those it does not
//! ignore, with the contents on disk; the builder evaluates the shipped
//! directory as a `path:` flake, which sees every file) are hashed into a
//! tree id (`git2::Oid::hash_object`: no object is written to the
//! repository), equal to the commit's tree id when nothing in the directory
//! changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository};

/// The repository holding `dir`, and `dir`'s path inside its work tree.
fn open(dir: &Path) -> Option<(Repository, PathBuf)> {
    let repo = Repository::discover(dir).ok()?;
    let workdir = repo.workdir()?.canonicalize().ok()?;
    let rel = dir
        .canonicalize()
        .ok()?
        .strip_prefix(&workdir)
        .ok()?
        .to_path_buf();
    Some((repo, rel))
}

/// `path` (relative to `dir`, normalised: no `.` or `..`) inside the
/// repository, with `/` separators; `""` for its root.
fn in_repo(rel: &Path, path: &str) -> String {
    let joined = rel.join(path);
    joined.to_string_lossy().trim_matches('/').to_owned()
}

/// The tree id of `path` (a directory relative to `dir`) at `commit`;
/// `None` when the commit or the directory is not there.
pub fn tree_at(dir: &Path, commit: &str, path: &str) -> Option<String> {
    let (repo, rel) = open(dir)?;
    let tree = repo.revparse_single(commit).ok()?.peel_to_tree().ok()?;
    let at = in_repo(&rel, path);
    if at.is_empty() {
        return Some(tree.id().to_string());
    }
    let entry = tree.get_path(Path::new(&at)).ok()?;
    (entry.kind() == Some(ObjectType::Tree)).then(|| entry.id().to_string())
}

/// One entry of a tree being hashed.
enum Node {
    Blob { mode: i32, id: Oid },
    Tree(BTreeMap<String, Node>),
}

/// The tree id `path` (relative to `dir`) would have if the working tree
/// were committed as a dirty build ships it (`git add -A`): the files the
/// index tracks there and the untracked ones git does not ignore, with
/// their contents on disk (one deleted from disk is left out, as the
/// shipped tar leaves it out); `None` when there is none.
pub fn worktree_tree(dir: &Path, path: &str) -> Option<String> {
    let (repo, rel) = open(dir)?;
    let workdir = repo.workdir()?.to_path_buf();
    let at = in_repo(&rel, path);
    let prefix = if at.is_empty() { at } else { format!("{at}/") };
    let mut root = BTreeMap::new();
    let index = repo.index().ok()?;
    let tracked = (index.iter()).map(|e| {
        (
            String::from_utf8_lossy(&e.path).into_owned(),
            e.mode as i32,
            e.id,
        )
    });
    for (name, mode, id) in tracked.chain(untracked(&repo)?) {
        let Some(inner) = name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(blob) = on_disk(&workdir.join(&name), mode, id) else {
            continue;
        };
        let mut parts: Vec<&str> = inner.split('/').collect();
        let file = parts.pop()?;
        let mut at = &mut root;
        for p in parts {
            let node = at
                .entry(p.to_owned())
                .or_insert(Node::Tree(BTreeMap::new()));
            at = match node {
                Node::Tree(t) => t,
                Node::Blob { .. } => return None,
            };
        }
        at.insert(file.to_owned(), blob);
    }
    (!root.is_empty()).then(|| hash_tree(&root).to_string())
}

/// The untracked files git does not ignore (each as an index entry of a
/// regular file: [`on_disk`] reads its mode and contents).
fn untracked(repo: &Repository) -> Option<Vec<(String, i32, Oid)>> {
    let mut opts = git2::StatusOptions::new();
    opts.include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false);
    let statuses = repo.statuses(Some(&mut opts)).ok()?;
    let new = (statuses.iter())
        .filter(|s| s.status().contains(git2::Status::WT_NEW))
        .filter_map(|s| s.path().ok().map(str::to_owned))
        .map(|p| (p, 0o100644, Oid::ZERO_SHA1))
        .collect();
    Some(new)
}

/// An index entry as the disk has it now (`None`: gone from disk).
fn on_disk(file: &Path, index_mode: i32, index_id: Oid) -> Option<Node> {
    use std::os::unix::fs::PermissionsExt;
    const GITLINK: i32 = 0o160000;
    if index_mode == GITLINK {
        return Some(Node::Blob {
            mode: GITLINK,
            id: index_id,
        });
    }
    let meta = std::fs::symlink_metadata(file).ok()?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(file).ok()?;
        let id = Oid::hash_object(ObjectType::Blob, target.as_os_str().as_encoded_bytes()).ok()?;
        return Some(Node::Blob { mode: 0o120000, id });
    }
    let mode = if meta.permissions().mode() & 0o111 != 0 {
        0o100755
    } else {
        0o100644
    };
    let id = Oid::hash_file(ObjectType::Blob, file).ok()?;
    Some(Node::Blob { mode, id })
}

/// A tree's id as git computes it: entries ordered by name, a subtree's
/// name compared as if it ended in `/`.
fn hash_tree(entries: &BTreeMap<String, Node>) -> Oid {
    let mut sorted: Vec<(String, &Node)> = entries
        .iter()
        .map(|(name, node)| match node {
            Node::Tree(_) => (format!("{name}/"), node),
            Node::Blob { .. } => (name.clone(), node),
        })
        .collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut bytes = Vec::new();
    for (key, node) in sorted {
        let (mode, name, id) = match node {
            Node::Tree(t) => (0o40000, key.trim_end_matches('/'), hash_tree(t)),
            Node::Blob { mode, id } => (*mode, key.as_str(), *id),
        };
        bytes.extend_from_slice(format!("{mode:o} {name}\0").as_bytes());
        bytes.extend_from_slice(id.as_bytes());
    }
    Oid::hash_object(ObjectType::Tree, &bytes).expect("hashing bytes in memory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::test_git;

    /// The working tree's id of a directory equals the commit's while
    /// nothing there changed (nested directories, an executable, a
    /// symlink, a name sorting after its directory's), and moves with an
    /// edit to a tracked file, and with an untracked one not ignored (a
    /// dirty build ships it: `git add -A`'s tree), not an ignored one.
    #[test]
    fn the_working_trees_id_is_the_commits_until_a_tracked_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        test_git(repo, &["init", "-q", "-b", "main"]);
        for (f, text) in [
            ("flake.nix", "{}"),
            ("sub/default.nix", "1"),
            ("sub/a/b.nix", "2"),
            ("sub/a.nix", "3"),
            ("sub/a-b", "4"),
            ("other/x", "5"),
        ] {
            std::fs::create_dir_all(repo.join(f).parent().unwrap()).unwrap();
            std::fs::write(repo.join(f), text).unwrap();
        }
        crate::remote::local::executable(repo.join("sub/run.sh"), "#!/bin/sh\n");
        std::os::unix::fs::symlink("a.nix", repo.join("sub/link")).unwrap();
        test_git(repo, &["add", "."]);
        test_git(repo, &["commit", "-q", "-m", "one"]);
        let head = test_git(repo, &["rev-parse", "HEAD"]);
        let committed = tree_at(repo, &head, "sub").unwrap();
        assert_eq!(committed, test_git(repo, &["rev-parse", "HEAD:sub"]));
        assert_eq!(
            worktree_tree(repo, "sub").as_deref(),
            Some(committed.as_str())
        );
        assert_eq!(
            worktree_tree(repo, "").unwrap(),
            test_git(repo, &["rev-parse", "HEAD^{tree}"])
        );
        std::fs::write(repo.join(".gitignore"), "*.ignored\n").unwrap();
        std::fs::write(repo.join("sub/x.ignored"), "x").unwrap();
        std::fs::write(repo.join("other/x"), "6").unwrap();
        assert_eq!(
            worktree_tree(repo, "sub").as_deref(),
            Some(committed.as_str())
        );
        std::fs::create_dir_all(repo.join("sub/new")).unwrap();
        std::fs::write(repo.join("sub/new/untracked.nix"), "x").unwrap();
        let with_new = worktree_tree(repo, "sub").unwrap();
        test_git(repo, &["add", "-A"]);
        assert_eq!(with_new, test_git(repo, &["write-tree", "--prefix=sub/"]));
        test_git(repo, &["reset", "-q"]);
        std::fs::remove_dir_all(repo.join("sub/new")).unwrap();
        std::fs::write(repo.join("sub/a/b.nix"), "changed").unwrap();
        let edited = worktree_tree(repo, "sub").unwrap();
        assert_ne!(edited, committed);
        test_git(repo, &["commit", "-q", "-am", "two"]);
        assert_eq!(edited, test_git(repo, &["rev-parse", "HEAD:sub"]));
        assert_eq!(tree_at(repo, &head, "nothing"), None);
        assert_eq!(tree_at(repo, "0000000", "sub"), None);
    }
}
