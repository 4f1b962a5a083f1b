//! Shared helpers of the release tests: real git repositories in temp dirs,
//! git run with no global/system config, and canned release requests.
#![allow(dead_code)] // each test crate uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use nixgate::gates::Gate;
use nixgate::nix::StorePath;
use nixgate::release::{BranchUpdate, Evidence, GateEvidence, ReleaseOutcome, ReleaseRequest};
use serde_json::json;

/// 2026-11-22T20:30:00Z
pub const T0: u64 = 1_795_379_400;

/// Keep the machine's global/system git config (which may set a user) out
/// of both libgit2 and the git CLI, so identities come from the test repo.
pub fn isolate_git_config() -> &'static Path {
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
pub fn git(dir: &Path, args: &[&str]) -> String {
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

pub struct Repo {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Repo {
    /// A repo with one commit; `user` configures user.name/email locally.
    pub fn new(user: bool) -> Repo {
        isolate_git_config();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("config");
        std::fs::create_dir(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        if user {
            git(&dir, &["config", "user.name", "Release Tester"]);
            git(&dir, &["config", "user.email", "tester@example.org"]);
        }
        let r = Repo { tmp, dir };
        r.commit("initial");
        r
    }

    /// Commit a change to `flake.nix` on the current branch; full hex id.
    pub fn commit(&self, msg: &str) -> String {
        std::fs::write(self.dir.join("flake.nix"), format!("# {msg}\n")).unwrap();
        git(&self.dir, &["add", "flake.nix"]);
        git(&self.dir, &["commit", "-q", "-m", msg]);
        self.head()
    }

    pub fn head(&self) -> String {
        git(&self.dir, &["rev-parse", "HEAD"])
    }

    pub fn rev(&self, spec: &str) -> String {
        git(&self.dir, &["rev-parse", "--verify", "--quiet", spec])
    }

    pub fn refs(&self) -> String {
        git(
            &self.dir,
            &["for-each-ref", "--format=%(refname) %(objectname)"],
        )
    }

    pub fn loose_objects(&self) -> String {
        git(&self.dir, &["count-objects"])
    }
}

pub fn closure(n: u8) -> StorePath {
    StorePath::parse(&format!(
        "/nix/store/0123456789abcdfghijklmnpqrsvwxy{}-nixos-system-web1-25.05",
        (b'a' + n) as char
    ))
    .unwrap()
}

pub fn evidence() -> Evidence {
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

pub fn request(target: &str, commit: &str, secs: u64) -> ReleaseRequest {
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

pub fn released(outcome: ReleaseOutcome) -> (String, BranchUpdate) {
    match outcome {
        ReleaseOutcome::Released { tag, update, .. } => (tag, update),
        other => panic!("expected a release, got {other:?}"),
    }
}
