//! Publishing releases with `git push --atomic` to local bare remotes.

mod release_common;

use nixgate::deploy::releases::NotPublished;
use nixgate::release::{self, PushOutcome, RefRejected};
use nixgate::report::Event;
use release_common::*;

/// [`release::push`], waited for.
fn push(
    repo: &std::path::Path,
    remote: &str,
    tag: &str,
    branch: &str,
    forced_from: Option<&str>,
) -> anyhow::Result<PushOutcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(release::push(repo, remote, tag, branch, forced_from))
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
    let remote = repo.tmp.path().join("remote.git");
    git(
        repo.tmp.path(),
        &["init", "-q", "--bare", remote.to_str().unwrap()],
    );
    git(
        &repo.dir,
        &["remote", "add", "origin", remote.to_str().unwrap()],
    );
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
