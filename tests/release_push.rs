//! Publishing releases with `git push --atomic` to local bare remotes.

mod release_common;

use nixgate::deploy::releases::NotPublished;
use nixgate::release::{self, BranchUpdate, Lease, PushOutcome, RefRejected};
use nixgate::report::Event;
use release_common::*;

/// `fut`, waited for.
fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(fut)
}

/// [`release::push`], waited for; `forced_from`: leased on that commit.
fn push(
    repo: &std::path::Path,
    remote: &str,
    tag: &str,
    branch: &str,
    forced_from: Option<&str>,
) -> anyhow::Result<PushOutcome> {
    let lease = forced_from.map(|from| Lease::At(from.to_owned()));
    block_on(release::push(repo, remote, tag, branch, lease.as_ref()))
}

/// A forced release published as a run publishes it: the lease is what
/// the remote has (one `ls-remote`), if that overwrites no one else's
/// release; `Ok(None)`: refused, nothing pushed.
fn publish_forced(
    repo: &std::path::Path,
    (tag, branch): (&str, &str),
    (from, new): (&str, &str),
) -> anyhow::Result<Option<PushOutcome>> {
    let heads = block_on(release::remote_branches(repo, "origin"))?;
    let remote_at = heads.get(branch).map(String::as_str);
    let Some(lease) = release::lease(repo, (from, new), remote_at)? else {
        return Ok(None);
    };
    block_on(release::push(repo, "origin", tag, branch, Some(&lease))).map(Some)
}

/// A repository with a bare remote `origin`; the remote's path.
fn with_remote(repo: &Repo) -> std::path::PathBuf {
    let remote = repo.tmp.path().join("remote.git");
    git(
        repo.tmp.path(),
        &["init", "-q", "--bare", remote.to_str().unwrap()],
    );
    git(
        &repo.dir,
        &["remote", "add", "origin", remote.to_str().unwrap()],
    );
    remote
}

/// The forced release of `c` (the local branch moves back to it); its tag
/// and the commit the branch moved from.
fn force_back(repo: &Repo, c: &str, secs: u64) -> (String, String) {
    let mut back = request("web1", c, secs);
    back.force = true;
    match released(release::create(&repo.dir, &back).unwrap()) {
        (tag, BranchUpdate::Forced { from }) => (tag, from),
        other => panic!("expected a forced release, got {other:?}"),
    }
}

/// The line a person (or the journal) gets for a push that failed.
fn not_published_line(tag: &str, outcome: PushOutcome) -> String {
    let PushOutcome::Failed { remote, .. } = &outcome else {
        panic!("expected a failed push, got {outcome:?}");
    };
    nixgate::report::human::describe(&Event::NotPublished {
        host: "web1".into(),
        remote: remote.clone(),
        tag: tag.into(),
        why: NotPublished::Rejected { outcome },
    })
    .expect("a not-published event has a line")
}

#[test]
fn push_lands_tag_and_branch_on_a_bare_remote() {
    let repo = Repo::new(true);
    let remote = with_remote(&repo);
    let c = repo.head();
    let (tag, _) = released(release::create(&repo.dir, &request("web1", &c, T0)).unwrap());

    let out = push(&repo.dir, "origin", &tag, "release/web1", None).unwrap();
    assert_eq!(
        out,
        PushOutcome::Pushed {
            remote: "origin".into(),
            tag: tag.clone(),
            branch: "release/web1".into()
        }
    );
    assert_eq!(
        git(&remote, &["cat-file", "-t", &format!("refs/tags/{tag}")]),
        "tag"
    );
    assert_eq!(
        git(&remote, &["rev-parse", &format!("{tag}^{{commit}}")]),
        c
    );
    assert_eq!(git(&remote, &["rev-parse", "refs/heads/release/web1"]), c);
    // The remote's copy parses as the same release.
    assert_eq!(
        release::show(&remote, &tag).unwrap(),
        release::show(&repo.dir, &tag).unwrap()
    );

    // After a forced (rewinding) release the remote refuses a plain push,
    // atomically: the new tag does not land either.
    let d = repo.commit("second");
    let (tag_d, _) = released(release::create(&repo.dir, &request("web1", &d, T0 + 60)).unwrap());
    push(&repo.dir, "origin", &tag_d, "release/web1", None).unwrap();
    let mut back = request("web1", &c, T0 + 120);
    back.force = true;
    let (tag_back, _) = released(release::create(&repo.dir, &back).unwrap());
    let out = push(&repo.dir, "origin", &tag_back, "release/web1", None).unwrap();
    match &out {
        PushOutcome::Failed {
            exit,
            reason,
            rejected,
            ..
        } => {
            assert_eq!(*exit, Some(1));
            assert!(
                rejected.contains(&RefRejected {
                    refname: "refs/heads/release/web1".into(),
                    status: "rejected".into(),
                    reason: "non-fast-forward".into(),
                }),
                "{rejected:?}"
            );
            assert_eq!(reason, "release/web1 rejected (non-fast-forward)");
        }
        other => panic!("expected a rejected push, got {other:?}"),
    }
    // The person running it is told why (it said only `To <url>`, or git's
    // `error: atomic push failed for ref ... status: 2`).
    assert_eq!(
        not_published_line(&tag_back, out),
        format!("web1: {tag_back} not pushed to origin: release/web1 rejected (non-fast-forward)")
    );
    let remote_tags = git(&remote, &["tag", "-l"]);
    assert!(!remote_tags.contains(&tag_back), "{remote_tags}");
    assert_eq!(git(&remote, &["rev-parse", "refs/heads/release/web1"]), d);
    // Forced from a commit the remote branch is no longer on (someone
    // pushed a release since): refused, nothing overwritten.
    let out = push(&repo.dir, "origin", &tag_back, "release/web1", Some(&c)).unwrap();
    assert!(
        matches!(&out, PushOutcome::Failed { reason, .. }
            if reason == "release/web1 rejected (stale info)"),
        "{out:?}"
    );
    assert_eq!(git(&remote, &["rev-parse", "refs/heads/release/web1"]), d);
    // Forced from where the remote branch is: it moves.
    let out = push(&repo.dir, "origin", &tag_back, "release/web1", Some(&d)).unwrap();
    assert!(matches!(out, PushOutcome::Pushed { .. }), "{out:?}");
    assert_eq!(git(&remote, &["rev-parse", "refs/heads/release/web1"]), c);
}

#[test]
fn push_to_a_missing_remote_is_a_failed_outcome_with_gits_message() {
    let repo = Repo::new(true);
    let c = repo.head();
    let (tag, _) = released(release::create(&repo.dir, &request("web1", &c, T0)).unwrap());
    let missing = repo.tmp.path().join("no-such-remote.git");
    let out = push(
        &repo.dir,
        missing.to_str().unwrap(),
        &tag,
        "release/web1",
        None,
    )
    .unwrap();
    match out {
        PushOutcome::Failed {
            exit,
            stderr_tail,
            remote,
            reason,
            rejected,
        } => {
            assert_eq!(remote, missing.to_str().unwrap());
            assert_eq!(exit, Some(128));
            assert!(
                stderr_tail.contains("does not appear to be a git repository"),
                "{stderr_tail}"
            );
            assert!(
                reason.starts_with("fatal: ")
                    && reason.contains("does not appear to be a git repository"),
                "{reason}"
            );
            assert_eq!(rejected, []);
        }
        other => panic!("expected a failed push, got {other:?}"),
    }
    // Arguments that would be options or non-release refs are refused up front.
    assert!(push(&repo.dir, "--upload-pack=x", &tag, "release/web1", None).is_err());
    assert!(push(&repo.dir, "origin", "v1.0", "release/web1", None).is_err());
    assert!(push(&repo.dir, "origin", &tag, "main", None).is_err());
}

/// `[release] remote` set after releases were made (or every earlier
/// publish failed): the remote has no `release/web1`. A forced release is
/// published, leased on the branch not existing (it leased the local
/// branch's old commit, and git refused it as `stale info` for ever).
#[test]
fn a_forced_release_lands_where_the_remote_has_no_release_branch() {
    let repo = Repo::new(true);
    let c = repo.head();
    released(release::create(&repo.dir, &request("web1", &c, T0)).unwrap());
    let d = repo.commit("second");
    released(release::create(&repo.dir, &request("web1", &d, T0 + 60)).unwrap());
    let remote = with_remote(&repo);
    let (tag, from) = force_back(&repo, &c, T0 + 120);
    assert_eq!(from, d);

    let out = publish_forced(&repo.dir, (&tag, "release/web1"), (&from, &c)).unwrap();
    assert!(matches!(out, Some(PushOutcome::Pushed { .. })), "{out:?}");
    assert_eq!(git(&remote, &["rev-parse", "refs/heads/release/web1"]), c);
    assert_eq!(
        git(&remote, &["rev-parse", &format!("{tag}^{{commit}}")]),
        c
    );
}

/// The remote is behind: an earlier release (`d`) was not published (the
/// remote was down), so the remote is still on the one before (`c`). A
/// forced release from `d` is published, leased on `c`, where the remote
/// is; a release someone else published there (a commit this repository
/// does not have) is not overwritten.
#[test]
fn a_forced_release_lands_where_the_remote_is_behind_and_never_over_anothers() {
    let repo = Repo::new(true);
    let remote = with_remote(&repo);
    let b = repo.head();
    let c = repo.commit("second");
    let (tag_c, _) = released(release::create(&repo.dir, &request("web1", &c, T0)).unwrap());
    push(&repo.dir, "origin", &tag_c, "release/web1", None).unwrap();
    let d = repo.commit("third");
    released(release::create(&repo.dir, &request("web1", &d, T0 + 60)).unwrap());
    // Its publish failed: the remote is still on c.
    let (tag, from) = force_back(&repo, &b, T0 + 120);
    assert_eq!(from, d);

    let out = publish_forced(&repo.dir, (&tag, "release/web1"), (&from, &b)).unwrap();
    assert!(matches!(out, Some(PushOutcome::Pushed { .. })), "{out:?}");
    assert_eq!(git(&remote, &["rev-parse", "refs/heads/release/web1"]), b);

    // Someone else publishes a release this repository never saw; the
    // next forced release is refused before any push, the remote kept.
    let other = repo.tmp.path().join("other");
    git(
        repo.tmp.path(),
        &["clone", "-q", remote.to_str().unwrap(), "other"],
    );
    git(&other, &["config", "user.name", "Someone Else"]);
    git(&other, &["config", "user.email", "else@example.org"]);
    git(&other, &["checkout", "-q", "release/web1"]);
    git(&other, &["commit", "-q", "--allow-empty", "-m", "theirs"]);
    git(&other, &["push", "-q", "origin", "release/web1"]);
    let theirs = git(&other, &["rev-parse", "HEAD"]);
    let e = repo.commit("fourth");
    released(release::create(&repo.dir, &request("web1", &e, T0 + 180)).unwrap());
    let (tag, from) = force_back(&repo, &c, T0 + 240);
    let out = publish_forced(&repo.dir, (&tag, "release/web1"), (&from, &c)).unwrap();
    assert_eq!(out, None);
    assert_eq!(
        git(&remote, &["rev-parse", "refs/heads/release/web1"]),
        theirs
    );
}

/// Not forced, the remote behind or without the branch: a plain push
/// fast-forwards or creates it (no lease needed).
#[test]
fn a_fast_forward_release_lands_where_the_remote_is_behind_or_has_none() {
    let repo = Repo::new(true);
    let remote = with_remote(&repo);
    let c = repo.head();
    let (tag_c, _) = released(release::create(&repo.dir, &request("web1", &c, T0)).unwrap());
    let d = repo.commit("second");
    released(release::create(&repo.dir, &request("web1", &d, T0 + 60)).unwrap());
    // The remote has no release/web1: created.
    let out = push(&repo.dir, "origin", &tag_c, "release/web1", None).unwrap();
    assert!(matches!(out, PushOutcome::Pushed { .. }), "{out:?}");
    assert_eq!(git(&remote, &["rev-parse", "refs/heads/release/web1"]), d);
    // Remote on d, local moves on twice (the first publish lost): forward.
    let e = repo.commit("third");
    released(release::create(&repo.dir, &request("web1", &e, T0 + 120)).unwrap());
    let f = repo.commit("fourth");
    let (tag_f, _) = released(release::create(&repo.dir, &request("web1", &f, T0 + 180)).unwrap());
    let out = push(&repo.dir, "origin", &tag_f, "release/web1", None).unwrap();
    assert!(matches!(out, PushOutcome::Pushed { .. }), "{out:?}");
    assert_eq!(git(&remote, &["rev-parse", "refs/heads/release/web1"]), f);
}
