//! Release pointers against real git repositories in temp dirs: tags and
//! branches are written through libgit2 and checked independently with the
//! `git` CLI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nixgate::gates::Gate;
use nixgate::nix::StorePath;
use nixgate::release::{
    self, BranchUpdate, Evidence, GateEvidence, PushOutcome, Refusal, ReleaseError, ReleaseOutcome,
    ReleaseRequest,
};
use serde_json::json;

/// 2026-11-22T20:30:00Z
const T0: u64 = 1_795_379_400;

/// Keep the machine's global/system git config (which may set a user) out
/// of both libgit2 and the git CLI, so identities come from the test repo.
fn isolate_git_config() -> &'static Path {
    static EMPTY: OnceLock<PathBuf> = OnceLock::new();
    EMPTY.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("nixgate-release-no-config-{}", std::process::id()));
        // Never created: libgit2 finds no config file there.
        for level in [
            git2::ConfigLevel::System,
            git2::ConfigLevel::XDG,
            git2::ConfigLevel::Global,
            git2::ConfigLevel::ProgramData,
        ] {
            // SAFETY: runs once, before any test touches libgit2: every test
            // calls this first, and `OnceLock` blocks the others until done.
            unsafe { git2::opts::set_search_path(level, dir.as_os_str()).unwrap() };
        }
        dir
    })
}

/// Run git with no global/system config; panic with its stderr on failure.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.org")
        .env("GIT_COMMITTER_NAME", "Author")
        .env("GIT_COMMITTER_EMAIL", "author@example.org")
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
}

struct Repo {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Repo {
    /// A repo with one commit; `user` configures user.name/email locally.
    fn new(user: bool) -> Repo {
        isolate_git_config();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("config");
        std::fs::create_dir(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        if user {
            git(&dir, &["config", "user.name", "Release Tester"]);
            git(&dir, &["config", "user.email", "tester@example.org"]);
        }
        let r = Repo { _tmp: tmp, dir };
        r.commit("initial");
        r
    }

    /// Commit a change to `flake.nix` on the current branch; full hex id.
    fn commit(&self, msg: &str) -> String {
        std::fs::write(self.dir.join("flake.nix"), format!("# {msg}\n")).unwrap();
        git(&self.dir, &["add", "flake.nix"]);
        git(&self.dir, &["commit", "-q", "-m", msg]);
        self.head()
    }

    fn head(&self) -> String {
        git(&self.dir, &["rev-parse", "HEAD"])
    }

    fn rev(&self, spec: &str) -> String {
        git(&self.dir, &["rev-parse", "--verify", "--quiet", spec])
    }

    fn refs(&self) -> String {
        git(
            &self.dir,
            &["for-each-ref", "--format=%(refname) %(objectname)"],
        )
    }

    fn loose_objects(&self) -> String {
        git(&self.dir, &["count-objects"])
    }
}

fn closure(n: u8) -> StorePath {
    StorePath::parse(&format!(
        "/nix/store/0123456789abcdfghijklmnpqrsvwxy{}-nixos-system-web1-25.05",
        (b'a' + n) as char
    ))
    .unwrap()
}

fn evidence() -> Evidence {
    Evidence {
        gates: vec![
            GateEvidence {
                gate: Gate::Diff,
                detail: json!({"added": ["nginx-1.27.1"], "removed": [], "changed": 3}),
            },
            GateEvidence {
                gate: Gate::DryActivate,
                detail: json!({"would_restart": ["nginx.service"], "would_start": []}),
            },
            GateEvidence {
                gate: Gate::LiveActivate,
                detail: json!({"verified": "/run/current-system matches"}),
            },
            GateEvidence {
                gate: Gate::HealthChecks,
                detail: json!([{"name": "http", "ok": true, "ms": 12}]),
            },
            GateEvidence {
                gate: Gate::MarkKnownGood,
                detail: json!(null),
            },
        ],
    }
}

fn request(target: &str, commit: &str, secs: u64) -> ReleaseRequest {
    ReleaseRequest {
        target: target.into(),
        commit: commit.into(),
        dirty: false,
        closure: closure(0),
        builder: "builder1".into(),
        run_id: "20261122T202900Z-3f9a".into(),
        evidence: evidence(),
        force: false,
        at: Some(UNIX_EPOCH + Duration::from_secs(secs)),
    }
}

fn released(outcome: ReleaseOutcome) -> (String, BranchUpdate) {
    match outcome {
        ReleaseOutcome::Released { tag, update, .. } => (tag, update),
        other => panic!("expected a release, got {other:?}"),
    }
}

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

#[test]
fn a_locked_ref_is_a_concurrent_update_and_writes_no_ref() {
    let repo = Repo::new(true);
    let c = repo.head();
    let lock = repo.dir.join(".git/refs/heads/release");
    std::fs::create_dir_all(&lock).unwrap();
    std::fs::write(lock.join("web1.lock"), "").unwrap();
    let before = repo.refs();
    let err = release::create(&repo.dir, &request("web1", &c, T0)).unwrap_err();
    assert_eq!(
        err.downcast_ref::<ReleaseError>(),
        Some(&ReleaseError::ConcurrentUpdate {
            refname: "refs/heads/release/web1".into()
        }),
        "{err:#}"
    );
    assert_eq!(repo.refs(), before);
    std::fs::remove_file(lock.join("web1.lock")).unwrap();
    released(release::create(&repo.dir, &request("web1", &c, T0)).unwrap());
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

#[test]
fn push_lands_tag_and_branch_on_a_bare_remote() {
    let repo = Repo::new(true);
    let remote = repo._tmp.path().join("remote.git");
    git(
        repo._tmp.path(),
        &["init", "-q", "--bare", remote.to_str().unwrap()],
    );
    git(
        &repo.dir,
        &["remote", "add", "origin", remote.to_str().unwrap()],
    );
    let c = repo.head();
    let (tag, _) = released(release::create(&repo.dir, &request("web1", &c, T0)).unwrap());

    let out = release::push(&repo.dir, "origin", &tag, "release/web1", false).unwrap();
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
    release::push(&repo.dir, "origin", &tag_d, "release/web1", false).unwrap();
    let mut back = request("web1", &c, T0 + 120);
    back.force = true;
    let (tag_back, _) = released(release::create(&repo.dir, &back).unwrap());
    let out = release::push(&repo.dir, "origin", &tag_back, "release/web1", false).unwrap();
    match out {
        PushOutcome::Failed {
            exit, stderr_tail, ..
        } => {
            assert_eq!(exit, Some(1));
            assert!(stderr_tail.contains("release/web1"), "{stderr_tail}");
        }
        other => panic!("expected a rejected push, got {other:?}"),
    }
    let remote_tags = git(&remote, &["tag", "-l"]);
    assert!(!remote_tags.contains(&tag_back), "{remote_tags}");
    assert_eq!(git(&remote, &["rev-parse", "refs/heads/release/web1"]), d);
    // An explicit forced push moves it.
    let out = release::push(&repo.dir, "origin", &tag_back, "release/web1", true).unwrap();
    assert!(matches!(out, PushOutcome::Pushed { .. }), "{out:?}");
    assert_eq!(git(&remote, &["rev-parse", "refs/heads/release/web1"]), c);
}

#[test]
fn push_to_a_missing_remote_is_a_failed_outcome_with_gits_message() {
    let repo = Repo::new(true);
    let c = repo.head();
    let (tag, _) = released(release::create(&repo.dir, &request("web1", &c, T0)).unwrap());
    let missing = repo._tmp.path().join("no-such-remote.git");
    let out = release::push(
        &repo.dir,
        missing.to_str().unwrap(),
        &tag,
        "release/web1",
        false,
    )
    .unwrap();
    match out {
        PushOutcome::Failed {
            exit,
            stderr_tail,
            remote,
        } => {
            assert_eq!(remote, missing.to_str().unwrap());
            assert_eq!(exit, Some(128));
            assert!(
                stderr_tail.contains("does not appear to be a git repository"),
                "{stderr_tail}"
            );
        }
        other => panic!("expected a failed push, got {other:?}"),
    }
    // Arguments that would be options or non-release refs are refused up front.
    assert!(release::push(&repo.dir, "--upload-pack=x", &tag, "release/web1", false).is_err());
    assert!(release::push(&repo.dir, "origin", "v1.0", "release/web1", false).is_err());
    assert!(release::push(&repo.dir, "origin", &tag, "main", false).is_err());
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
