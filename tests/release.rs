//! Creating releases against real git repositories in temp dirs: tags and
//! branches are written through libgit2 and checked independently with the
//! `git` CLI.

mod release_common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nixgate::release::{self, BranchUpdate, Refusal, ReleaseError, ReleaseOutcome};
use release_common::*;

#[test]
fn good_release_tags_the_commit_and_creates_the_branch() {
    let repo = Repo::new(true);
    let c = repo.head();
    let out = release::create(&repo.dir, &request("web1", &c, T0)).unwrap();
    assert_eq!(
        out,
        ReleaseOutcome::Released {
            tag: format!("release/web1/20261122T203000Z-{}", &c[..12]),
            branch: "release/web1".into(),
            commit: c.clone(),
            update: BranchUpdate::Created,
        }
    );
    let (tag, _) = released(out);
    assert_eq!(git(&repo.dir, &["cat-file", "-t", &tag]), "tag");
    assert_eq!(repo.rev(&format!("{tag}^{{commit}}")), c);
    assert_eq!(repo.rev("refs/heads/release/web1"), c);
    let body = git(&repo.dir, &["cat-file", "-p", &tag]);
    assert!(body.contains(&format!("tag {tag}\n")), "{body}");
    assert!(
        body.contains("tagger Release Tester <tester@example.org> 1795379400 +0000"),
        "{body}"
    );
    assert!(
        body.contains(&format!("Closure:   {}", closure(0))),
        "{body}"
    );
    assert!(body.contains("Host:      web1"), "{body}");
    assert!(body.contains("Builder:   builder1"), "{body}");
    assert!(body.contains("Released:  2026-11-22T20:30:00Z"), "{body}");
    assert!(
        body.contains(
            "Gates:     diff, dry-activate, live-activate, health-checks, mark-known-good"
        ),
        "{body}"
    );
    assert!(body.contains(&format!("nixgate:   {}", env!("CARGO_PKG_VERSION"))));
    // The working branch is untouched.
    assert_eq!(repo.rev("refs/heads/main"), c);
}

#[test]
fn descendant_fast_forwards_and_list_is_newest_first() {
    let repo = Repo::new(true);
    let c = repo.head();
    let (tag_c, _) = released(release::create(&repo.dir, &request("web1", &c, T0)).unwrap());
    let d = repo.commit("second");
    let (tag_d, update) =
        released(release::create(&repo.dir, &request("web1", &d, T0 + 60)).unwrap());
    assert_eq!(update, BranchUpdate::FastForward { from: c.clone() });
    assert_eq!(repo.rev("release/web1"), d);
    // Another target, released in between, lists separately.
    let (tag_db, _) = released(release::create(&repo.dir, &request("db1", &c, T0 + 30)).unwrap());

    let all = release::list(&repo.dir, None).unwrap();
    let tags: Vec<&str> = all.iter().map(|r| r.tag.as_str()).collect();
    assert_eq!(tags, [tag_db.as_str(), tag_d.as_str(), tag_c.as_str()]);
    assert_eq!(all[1].commit, d);
    assert_eq!(all[2].commit, c);
    assert_eq!(all[1].time, "2026-11-22T20:31:00Z");

    let web = release::list(&repo.dir, Some(&["web1".to_owned()])).unwrap();
    let tags: Vec<&str> = web.iter().map(|r| r.tag.as_str()).collect();
    assert_eq!(tags, [tag_d.as_str(), tag_c.as_str()]);
    assert!(
        release::list(&repo.dir, Some(&["nope".to_owned()]))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn rewinding_or_diverging_is_refused_unless_forced() {
    let repo = Repo::new(true);
    let c = repo.head();
    release::create(&repo.dir, &request("web1", &c, T0)).unwrap();
    let d = repo.commit("second");
    release::create(&repo.dir, &request("web1", &d, T0 + 60)).unwrap();
    // A commit on another line of history.
    git(&repo.dir, &["checkout", "-q", "-b", "side", &c]);
    let e = repo.commit("divergent");

    let before = repo.refs();
    let objects = repo.loose_objects();
    for (old_or_divergent, secs) in [(&c, T0 + 120), (&e, T0 + 180)] {
        let out = release::create(&repo.dir, &request("web1", old_or_divergent, secs)).unwrap();
        assert_eq!(
            out,
            ReleaseOutcome::Refused {
                reason: Refusal::NotFastForward {
                    branch_at: d.clone(),
                    new: old_or_divergent.clone(),
                }
            }
        );
        assert!(
            Refusal::NotFastForward {
                branch_at: d.clone(),
                new: e.clone()
            }
            .to_string()
            .contains("not an ancestor")
        );
    }
    assert_eq!(repo.refs(), before, "a refusal writes no ref");
    assert_eq!(repo.loose_objects(), objects, "a refusal writes no object");

    let mut forced = request("web1", &e, T0 + 240);
    forced.force = true;
    let (tag, update) = released(release::create(&repo.dir, &forced).unwrap());
    assert_eq!(update, BranchUpdate::Forced { from: d.clone() });
    assert_eq!(repo.rev("release/web1"), e);
    let shown = release::show(&repo.dir, &tag).unwrap();
    assert_eq!(shown.info.forced_from.as_deref(), Some(d.as_str()));
    assert!(
        shown
            .message
            .contains(&format!("Forced:    yes (the branch was at {d})"))
    );
    // Unforced releases record that they were not forced.
    let first = release::list(&repo.dir, None).unwrap();
    assert!(first[1..].iter().all(|r| r.forced_from.is_none()));

    // Force on a plain fast-forward is not recorded as forced.
    git(&repo.dir, &["checkout", "-q", "side"]);
    let f = repo.commit("after force");
    let mut ff = request("web1", &f, T0 + 300);
    ff.force = true;
    let (_, update) = released(release::create(&repo.dir, &ff).unwrap());
    assert_eq!(update, BranchUpdate::FastForward { from: e });
}

/// The fast-forward refusal names the flag that moves the branch anyway as
/// `push` spells it (it said `--force`, which no command takes).
#[test]
fn the_fast_forward_refusal_names_the_real_flag() {
    use clap::CommandFactory;
    let cli = nixgate::cli::Cli::command();
    let push = cli.find_subcommand("push").expect("a push command");
    let flag = push
        .get_arguments()
        .find(|a| a.get_id() == "force_release")
        .and_then(|a| a.get_long())
        .expect("push --force-release");
    let text = Refusal::NotFastForward {
        branch_at: "a".into(),
        new: "b".into(),
    }
    .to_string();
    assert!(text.contains(&format!("pass --{flag} ")), "{text}");
}

#[test]
fn dirty_tree_is_refused_and_nothing_is_written() {
    let repo = Repo::new(true);
    let c = repo.head();
    let before = repo.refs();
    let objects = repo.loose_objects();
    let mut dirty = request("web1", &c, T0);
    dirty.dirty = true;
    assert_eq!(
        release::create(&repo.dir, &dirty).unwrap(),
        ReleaseOutcome::Refused {
            reason: Refusal::DirtyTree
        }
    );
    assert_eq!(repo.refs(), before);
    assert_eq!(repo.loose_objects(), objects);
    assert!(release::list(&repo.dir, None).unwrap().is_empty());
}

#[test]
fn same_commit_again_gets_a_new_tag_and_same_second_does_not_collide() {
    let repo = Repo::new(true);
    let c = repo.head();
    let (first, update) = released(release::create(&repo.dir, &request("web1", &c, T0)).unwrap());
    assert_eq!(update, BranchUpdate::Created);
    let (second, update) = released(release::create(&repo.dir, &request("web1", &c, T0)).unwrap());
    assert_eq!(update, BranchUpdate::Unchanged);
    assert_eq!(second, format!("{first}-2"));
    let mut later = request("web1", &c, T0);
    later.at = Some(UNIX_EPOCH + Duration::from_secs(T0) + Duration::from_millis(500));
    let (third, _) = released(release::create(&repo.dir, &later).unwrap());
    assert_eq!(third, format!("{first}-3"));
    assert_eq!(repo.rev("release/web1"), c);

    let tags: Vec<String> = release::list(&repo.dir, None)
        .unwrap()
        .into_iter()
        .map(|r| r.tag)
        .collect();
    assert_eq!(tags, [third.clone(), second.clone(), first]);
    // The branch resolves to the newest validation of its tip.
    assert_eq!(
        release::resolve(&repo.dir, "release/web1")
            .unwrap()
            .info
            .tag,
        third
    );
}

#[test]
fn bad_targets_and_unknown_commits_are_typed_errors() {
    let repo = Repo::new(true);
    let c = repo.head();
    let before = repo.refs();
    for bad in ["", "a/b", "a..b", "x.lock", "x.", "-x", "a b", "a~1", "a:b"] {
        let err = release::create(&repo.dir, &request(bad, &c, T0)).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ReleaseError>(),
                Some(ReleaseError::InvalidTarget { .. })
            ),
            "{bad:?}: {err:#}"
        );
    }
    let tree = git(&repo.dir, &["rev-parse", "HEAD^{tree}"]);
    for missing in [
        "0000000000000000000000000000000000000000",
        "HEAD",
        "main",
        "abc",
        &tree,
    ] {
        let err = release::create(&repo.dir, &request("web1", missing, T0)).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ReleaseError>(),
                Some(ReleaseError::CommitNotFound { .. })
            ),
            "{missing}: {err:#}"
        );
    }
    // A unique prefix is resolved to the full commit.
    let out = release::create(&repo.dir, &request("web1", &c[..10], T0)).unwrap();
    assert!(matches!(out, ReleaseOutcome::Released { commit, .. } if commit == c));
    let after: Vec<String> = repo.refs().lines().map(str::to_owned).collect();
    assert_eq!(after.len(), before.lines().count() + 2);
}

#[test]
fn tagger_defaults_to_nixgate_without_a_configured_user() {
    let repo = Repo::new(false);
    let c = repo.head();
    let (tag, _) = released(release::create(&repo.dir, &request("web1", &c, T0)).unwrap());
    let body = git(&repo.dir, &["cat-file", "-p", &tag]);
    assert!(
        body.contains("tagger nixgate <nixgate@localhost> 1795379400 +0000"),
        "{body}"
    );
    assert_eq!(
        release::show(&repo.dir, &tag).unwrap().info.tagger,
        "nixgate <nixgate@localhost>"
    );
}

/// A lock file left by a git (or nixgate) killed while writing the ref
/// blocks every release until it is removed. It was reported as the branch
/// having "changed while the release was being written: run the release
/// again": nothing had changed, running again failed the same way, and the
/// file to remove was not named.
#[test]
fn a_leftover_lock_file_is_named_for_removal_and_writes_no_ref() {
    let repo = Repo::new(true);
    let c = repo.head();
    let dir = repo.dir.join(".git/refs/heads/release");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = dir.join("web1.lock");
    std::fs::write(&lock, "").unwrap();
    let before = repo.refs();
    for _ in 0..2 {
        let err = release::create(&repo.dir, &request("web1", &c, T0)).unwrap_err();
        let Some(ReleaseError::RefLocked { refname, lock_file }) = err.downcast_ref() else {
            panic!("expected a locked ref, got {err:#}");
        };
        assert_eq!(refname, "refs/heads/release/web1");
        assert_eq!(
            std::fs::canonicalize(lock_file).unwrap(),
            std::fs::canonicalize(&lock).unwrap()
        );
        let words = err.to_string();
        assert!(words.contains(&format!("remove {lock_file}")), "{words}");
        assert!(!words.contains("changed while"), "{words}");
        assert_eq!(repo.refs(), before);
    }
    std::fs::remove_file(&lock).unwrap();
    released(release::create(&repo.dir, &request("web1", &c, T0)).unwrap());
}

#[test]
fn release_time_defaults_to_now() {
    let repo = Repo::new(true);
    let c = repo.head();
    let mut req = request("web1", &c, T0);
    req.at = None;
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let (tag, _) = released(release::create(&repo.dir, &req).unwrap());
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let info = release::show(&repo.dir, &tag).unwrap().info;
    assert!((before..=after).contains(&info.time_unix_ns));
    assert!(tag.starts_with("release/web1/20"), "{tag}");
    assert!(tag.ends_with(&format!("Z-{}", &c[..12])), "{tag}");
}

/// git keeps refs as paths: a branch `release` and a branch `release/web1`
/// cannot both exist. libgit2 does not check this for packed refs: it wrote
/// `refs/heads/release/web1` beside a packed `release` branch (after `git gc`)
/// or `release` tag and reported the release made, after which git refused
/// to touch either ref and a remote with `release` rejected the push. A
/// loose `release` branch failed every release with a filesystem error that
/// named no branch. Now: refused, naming the ref in the way, nothing written.
#[test]
fn a_branch_or_tag_in_the_way_of_the_release_refs_is_refused_and_nothing_is_written() {
    /// What is in the way, how it got there, the ref refused, the one in the way.
    type Case = (&'static str, fn(&Repo), &'static str, &'static str);
    fn gc(repo: &Repo, args: &[&str]) {
        git(&repo.dir, args);
        git(&repo.dir, &["pack-refs", "--all"]);
    }
    let cases: [Case; 5] = [
        (
            "packed branch release (after git gc)",
            |r| gc(r, &["branch", "release"]),
            "refs/heads/release/web1",
            "refs/heads/release",
        ),
        (
            "packed branch release without a reflog",
            |r| {
                gc(r, &["branch", "release"]);
                std::fs::remove_file(r.dir.join(".git/logs/refs/heads/release")).unwrap();
            },
            "refs/heads/release/web1",
            "refs/heads/release",
        ),
        (
            "loose branch release",
            |r| {
                git(&r.dir, &["branch", "release"]);
            },
            "refs/heads/release/web1",
            "refs/heads/release",
        ),
        (
            "packed tag release",
            |r| gc(r, &["tag", "release"]),
            "refs/tags/release/web1/20261122T203000Z-",
            "refs/tags/release",
        ),
        (
            "branch below the release branch",
            |r| {
                git(&r.dir, &["branch", "release/web1/old"]);
            },
            "refs/heads/release/web1",
            "refs/heads/release/web1/old",
        ),
    ];
    for (what, setup, refname, existing) in cases {
        let repo = Repo::new(true);
        let c = repo.head();
        setup(&repo);
        let before = repo.refs();
        let objects = repo.loose_objects();
        let out = release::create(&repo.dir, &request("web1", &c, T0));
        let Ok(ReleaseOutcome::Refused {
            reason:
                reason @ Refusal::RefNameConflict {
                    refname: ours,
                    existing: theirs,
                },
        }) = &out
        else {
            panic!("{what}: expected a name-conflict refusal, got {out:?}");
        };
        assert!(ours.starts_with(refname), "{what}: {ours}");
        assert_eq!(theirs, existing, "{what}");
        let words = reason.to_string();
        let short = existing.split('/').skip(2).collect::<Vec<_>>().join("/");
        assert!(words.contains(existing), "{what}: {words}");
        assert!(
            words.contains(&format!("rename the {} {short}", kind(existing))),
            "{what}: {words}"
        );
        assert_eq!(repo.refs(), before, "{what}: a refusal writes no ref");
        assert_eq!(repo.loose_objects(), objects, "{what}: nor an object");
        // git can still update the ref in the way.
        git(&repo.dir, &["update-ref", existing, &c]);
    }
}

fn kind(refname: &str) -> &'static str {
    if refname.starts_with("refs/tags/") {
        "tag"
    } else {
        "branch"
    }
}
