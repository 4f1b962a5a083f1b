//! Tests of the known-good record: exact commands, and the real thing on a
//! temporary profile in this machine's Nix store.

use std::time::Duration;

use super::*;
use crate::remote::local::LocalRemote;
use crate::remote::scripted::{ScriptedRemote, ok};

const SYS: &str = "/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-nixos-system-web1-24.11";

#[test]
fn utc_format() {
    let at = |s| utc_rfc3339(UNIX_EPOCH + Duration::from_secs(s));
    assert_eq!(at(0), "1970-01-01T00:00:00Z");
    assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(at(1_709_294_400), "2024-03-01T12:00:00Z");
    assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
}

#[test]
fn generation_links() {
    assert_eq!(generation_of("nixgate-known-good-12-link"), Some(12));
    assert_eq!(
        generation_of("/nix/var/nix/profiles/nixgate-known-good-3-link"),
        Some(3)
    );
    assert_eq!(generation_of("/nix/store/abc-x"), None);
}

fn request(closure: &str, at: u64) -> MarkRequest {
    MarkRequest {
        closure: StorePath::parse(closure).unwrap(),
        reselect: None,
        commit: Some("3f2a9c1".into()),
        run_id: RunId::parse("r1").unwrap(),
        gates: vec![GateRecord::new(
            Gate::HealthChecks,
            &serde_json::json!([{"command": "true", "attempts": [{"kind": "passed"}]}]),
        )],
        at: UNIX_EPOCH + Duration::from_secs(at),
        previous: None,
        patience: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn mark_commands() {
    let r = ScriptedRemote::with_stdin("web1", |c, _| {
        if c.argv()[2] == SET_AND_READ {
            ok("NixgateOld=nixgate-known-good-6-link\nNixgateNew=nixgate-known-good-7-link\n")
        } else if c.argv()[2] == READ_GENERATION {
            ok("nixgate-known-good-6-link\n")
        } else {
            ok("")
        }
    });
    let paths = HostPaths::for_os(crate::activation::Os::Linux);
    let m = mark(&r, &paths, true, request(SYS, 1_709_294_400))
        .await
        .unwrap();
    assert_eq!(m.generation, 7);
    assert_eq!(m.record_path, "/var/lib/nixgate/known-good/7.json");
    let mut cmds = r.commands();
    assert_eq!(cmds.len(), 3);
    // First, the generation it is on (no root needed to read a link).
    assert_eq!(
        cmds.remove(0).argv(),
        &[
            "sh",
            "-c",
            READ_GENERATION,
            "nixgate",
            "/nix/var/nix/profiles/nixgate-known-good"
        ]
        .map(String::from)
    );
    assert_eq!(
        cmds[0].argv(),
        &[
            "sh",
            "-c",
            SET_AND_READ,
            "nixgate",
            "/nix/var/nix/profiles/nixgate-known-good",
            SYS,
            ""
        ]
        .map(String::from)
    );
    assert!(cmds[0].is_sudo());
    assert_eq!(
        cmds[1].argv(),
        &[
            "sh",
            "-c",
            WRITE_RECORD,
            "nixgate",
            "/var/lib/nixgate/known-good",
            "7"
        ]
        .map(String::from)
    );
    assert!(cmds[1].is_sudo());
    // The record travels on stdin, never as an argument.
    let stdins = r.stdins();
    assert_eq!(stdins.len(), 1);
    let rec: KnownGoodRecord = serde_json::from_slice(&stdins[0].1).unwrap();
    assert_eq!(rec.marked_at, "2024-03-01T12:00:00Z");
    assert_eq!(rec.host, "web1");
    assert_eq!(rec.commit.as_deref(), Some("3f2a9c1"));
}

/// Real: two marks on a temporary profile; the history lists both
/// generations with their records and knows which is current; re-marking the
/// current closure adds no generation.
#[tokio::test]
#[ignore = "needs Nix and a writable store (root): run scripts/test"]
async fn real_profile_history() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let add = |name: &str| {
        std::fs::write(d.join(name), name).unwrap();
        let out = std::process::Command::new("nix-store")
            .arg("--add")
            .arg(d.join(name))
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (a, b) = (add("sys-a"), add("sys-b"));
    let mut paths = HostPaths::for_os(crate::activation::Os::Linux);
    paths.known_good_profile = d.join("profiles/nixgate-known-good").display().to_string();
    paths.known_good_records = d.join("records").display().to_string();
    std::fs::create_dir(d.join("profiles")).unwrap();
    let r = LocalRemote::new("local");
    assert!(history(&r, &paths).await.unwrap().is_empty());
    assert_eq!(current(&r, &paths).await.unwrap(), None);

    // The evidence of a large change: far above the 128 KiB one argument may be.
    let mut big = request(&a, 100);
    big.gates.push(GateRecord::new(
        Gate::Diff,
        &serde_json::json!({ "packages": "x".repeat(512 * 1024) }),
    ));
    let m1 = mark(&r, &paths, false, big).await.unwrap();
    let m2 = mark(&r, &paths, false, request(&b, 200)).await.unwrap();
    assert_eq!((m1.generation, m2.generation), (1, 2));
    let again = mark(&r, &paths, false, request(&b, 300)).await.unwrap();
    assert_eq!(again.generation, 2, "same closure: same generation");

    let h = history(&r, &paths).await.unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].closure.as_ref().unwrap().as_str(), a);
    assert!(!h[0].current && h[1].current);
    let rec = h[1].record.as_ref().unwrap();
    assert_eq!(rec.closure.as_str(), b);
    assert_eq!(
        rec.marked_at, "1970-01-01T00:05:00Z",
        "re-mark rewrote the record"
    );
    assert_eq!(rec.gates[0].gate, Gate::HealthChecks);
    assert_eq!(current(&r, &paths).await.unwrap().unwrap().as_str(), b);
    let first = h[0]
        .record
        .as_ref()
        .expect("the large record was written whole");
    assert_eq!(
        first.gates[1].value()["packages"].as_str().map(str::len),
        Some(512 * 1024)
    );
    // No temporary file left behind.
    let names: Vec<_> = std::fs::read_dir(d.join("records"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
