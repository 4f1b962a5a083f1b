//! Reading releases back (show, resolve, list) and the checkout state, against
//! real git repositories in temp dirs.

mod release_common;

use nixgate::release::{self, ReleaseError};
use release_common::*;

#[test]
fn resolve_and_show_parse_back_exactly() {
    let repo = Repo::new(true);
    let c = repo.head();
    let mut req = request("web1", &c, T0);
    req.closure = closure(7);
    req.run_id = "20261122T202955Z-beef".into();
    let (tag, _) = released(release::create(&repo.dir, &req).unwrap());

    let shown = release::show(&repo.dir, &tag).unwrap();
    assert_eq!(shown.evidence, evidence());
    let info = &shown.info;
    assert_eq!(info.tag, tag);
    assert_eq!(info.target, "web1");
    assert_eq!(info.commit, c);
    assert_eq!(info.closure, closure(7));
    assert_eq!(info.builder, "builder1");
    assert_eq!(info.run_id, "20261122T202955Z-beef");
    assert_eq!(info.time, "2026-11-22T20:30:00Z");
    assert_eq!(info.time_unix_ns, T0 * 1_000_000_000);
    assert_eq!(info.nixgate_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.tagger, "Release Tester <tester@example.org>");
    assert_eq!(
        shown.message,
        git(&repo.dir, &["tag", "-l", "--format=%(contents)", &tag]).to_owned() + "\n"
    );

    assert_eq!(
        release::show(&repo.dir, &format!("refs/tags/{tag}")).unwrap(),
        shown
    );
    assert_eq!(release::resolve(&repo.dir, &tag).unwrap(), shown);
    assert_eq!(release::resolve(&repo.dir, "release/web1").unwrap(), shown);
    assert_eq!(
        release::resolve(&repo.dir, "refs/heads/release/web1").unwrap(),
        shown
    );

    for missing in [
        "release/db1",
        "release/web1/nope",
        "main",
        "release/",
        "../x",
    ] {
        let err = release::resolve(&repo.dir, missing).unwrap_err();
        assert_eq!(
            err.downcast_ref::<ReleaseError>(),
            Some(&ReleaseError::NotFound {
                spec: missing.into()
            }),
            "{missing}"
        );
    }
}

#[test]
fn branch_tip_without_a_release_tag_is_an_error() {
    let repo = Repo::new(true);
    let c = repo.head();
    release::create(&repo.dir, &request("web1", &c, T0)).unwrap();
    // Someone moves the branch by hand to a commit nixgate never released.
    let d = repo.commit("by hand");
    git(&repo.dir, &["branch", "-f", "release/web1", &d]);
    let err = release::resolve(&repo.dir, "release/web1").unwrap_err();
    assert_eq!(
        err.downcast_ref::<ReleaseError>(),
        Some(&ReleaseError::NoTagOnBranchTip {
            branch: "release/web1".into(),
            target: "web1".into(),
            commit: d,
        })
    );
}

#[test]
fn foreign_tags_under_release_are_not_releases() {
    let repo = Repo::new(true);
    let c = repo.head();
    let (good, _) = released(release::create(&repo.dir, &request("web1", &c, T0)).unwrap());
    git(&repo.dir, &["tag", "release/web1/lightweight"]);
    git(
        &repo.dir,
        &["tag", "-a", "-m", "hand-made", "release/web1/annotated"],
    );
    // A copied record whose target disagrees with the tag name.
    let msg = release::show(&repo.dir, &good).unwrap().message;
    git(&repo.dir, &["tag", "-a", "-m", &msg, "release/db1/copied"]);

    let listed: Vec<String> = release::list(&repo.dir, None)
        .unwrap()
        .into_iter()
        .map(|r| r.tag)
        .collect();
    assert_eq!(listed, [good]);
    for t in [
        "release/web1/lightweight",
        "release/web1/annotated",
        "release/db1/copied",
    ] {
        let err = release::show(&repo.dir, t).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ReleaseError>(),
                Some(ReleaseError::NotARelease { .. })
            ),
            "{t}: {err:#}"
        );
    }
}

#[test]
fn worktree_state_sees_head_and_dirt() {
    let repo = Repo::new(true);
    let c = repo.head();
    let clean = release::worktree_state(&repo.dir).unwrap();
    assert_eq!(
        (clean.commit.as_deref(), clean.dirty),
        (Some(c.as_str()), false)
    );
    // From a subdirectory too (discovery, like a flake in a subdir).
    std::fs::create_dir(repo.dir.join("hosts")).unwrap();
    std::fs::write(repo.dir.join(".gitignore"), "result\n").unwrap();
    git(&repo.dir, &["add", ".gitignore"]);
    git(&repo.dir, &["commit", "-q", "-m", "ignore"]);
    std::fs::write(repo.dir.join("result"), "").unwrap();
    assert!(
        !release::worktree_state(&repo.dir.join("hosts"))
            .unwrap()
            .dirty,
        "ignored files are clean"
    );
    std::fs::write(repo.dir.join("hosts/new.nix"), "{}").unwrap();
    assert!(
        release::worktree_state(&repo.dir).unwrap().dirty,
        "untracked"
    );
    std::fs::remove_file(repo.dir.join("hosts/new.nix")).unwrap();
    std::fs::write(repo.dir.join("flake.nix"), "changed").unwrap();
    assert!(
        release::worktree_state(&repo.dir).unwrap().dirty,
        "modified"
    );

    let tmp = tempfile::tempdir().unwrap();
    git(tmp.path(), &["init", "-q"]);
    let empty = release::worktree_state(tmp.path()).unwrap();
    assert_eq!(empty.commit, None);
}
