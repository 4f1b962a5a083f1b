//! Tests of the known-good record: exact commands, and the real thing on a
//! temporary profile in this machine's Nix store.

use std::time::Duration;

use super::*;
use crate::remote::local::LocalRemote;
use crate::remote::scripted::{ScriptedRemote, ok};

const SYS: &str = "/nix/store/9xcpw0snbkyrmd8lwazw9k4dn5iislil-nixos-system-web1-24.11";
const OTHER: &str = "/nix/store/1d1x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-nixos-system-web1-24.08";

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

/// `LIST`'s line of generation `n`'s record, naming `closure`.
fn record_line(n: u64, closure: &str) -> String {
    let mut r = mark_record(closure);
    r.generation = n;
    format!("NixgateRecord={n}\t{}", serde_json::to_string(&r).unwrap())
}

fn mark_record(closure: &str) -> KnownGoodRecord {
    KnownGoodRecord {
        version: 1,
        host: "web1".into(),
        generation: 0,
        closure: StorePath::parse(closure).unwrap(),
        marked_at: "2024-03-01T12:00:00Z".into(),
        commit: None,
        run_id: RunId::parse("r1").unwrap(),
        gates: Vec::new(),
        replaced: None,
        created: None,
        lineage: None,
        soak_pending: false,
        marked_on_host: None,
        rolled_back_from: None,
    }
}

/// A record of another closure than its generation's (a deleted
/// generation's, its number used again) counts as none.
#[test]
fn a_record_of_another_closure_is_none() {
    let out = [
        "NixgateCurrent=/nix/var/nix/profiles/nixgate-known-good-2-link".to_owned(),
        format!("NixgateGen=1\t{SYS}\tpresent"),
        record_line(1, SYS),
        format!("NixgateGen=2\t{OTHER}\tpresent"),
        record_line(2, SYS),
    ]
    .join("\n");
    let h = parse_history(&out).unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].record.as_ref().map(|r| r.generation), Some(1));
    assert!(h[1].record.is_none() && h[1].current);
    assert!(!h[0].cut_off && !h[1].cut_off, "no leftover, no evidence");
}

/// [`history_of`]'s answer: a record it did not read still counts, when it
/// is of its generation's closure (a mark that finished), so a cut-off mark
/// is flagged as by the whole history.
#[test]
fn records_named_but_not_read_count() {
    let out = [
        "NixgatePending=2".to_owned(),
        format!("NixgateGen=1\t{SYS}\tpresent"),
        format!("NixgateGen=2\t{OTHER}\tpresent"),
        format!("NixgateGen=3\t{SYS}\tpresent"),
        format!("NixgateGen=4\t{OTHER}\tpresent"),
        record_line(2, OTHER),
        format!("NixgateRecordOf=1\t{SYS}"),
        format!("NixgateRecordOf=3\t{OTHER}"),
    ]
    .join("\n");
    let h = parse_history(&out).unwrap();
    let recorded: Vec<_> = h.iter().map(|g| (g.recorded, g.record.is_some())).collect();
    assert_eq!(
        recorded,
        [(true, false), (true, true), (false, false), (false, false)],
        "gen 3's record names another closure"
    );
    let cut: Vec<_> = h
        .iter()
        .filter(|g| g.cut_off)
        .map(|g| g.generation)
        .collect();
    assert_eq!(cut, [3, 4]);
}

/// What a mark cut off before its record left (`.pending-<run>.replaced`,
/// naming the generation the profile was on) flags the generations after
/// that one without a record; an empty one (no profile then), all of them.
#[test]
fn a_mark_cut_off_before_its_record_is_flagged() {
    let gens = [
        format!("NixgateGen=1\t{SYS}\tpresent"),
        format!("NixgateGen=2\t{OTHER}\tpresent"),
        format!("NixgateGen=3\t{OTHER}\tpresent"),
        record_line(3, OTHER),
        format!("NixgateGen=4\t{SYS}\tmissing"),
    ]
    .join("\n");
    let flagged = |pending: &str| {
        let h = parse_history(&format!("{pending}\n{gens}")).unwrap();
        h.iter()
            .filter(|g| g.cut_off)
            .map(|g| g.generation)
            .collect::<Vec<_>>()
    };
    assert_eq!(flagged("NixgatePending=1"), [2, 4]);
    assert_eq!(flagged("NixgatePending=3\nNixgatePending=x"), [4]);
    assert_eq!(flagged("NixgatePending="), [1, 2, 4]);
    assert_eq!(flagged(""), Vec::<u64>::new());
    // Where each stood: the newest generation a leftover names before it.
    let stood = |pending: &str| {
        let h = parse_history(&format!("{pending}\n{gens}")).unwrap();
        h.iter().map(|g| g.stood).collect::<Vec<_>>()
    };
    assert_eq!(
        stood("NixgatePending=1\nNixgatePending=3"),
        [None, Some(1), None, Some(3)]
    );
    assert_eq!(stood("NixgatePending="), [None, None, None, None]);
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
        soak_follows: false,
        rolled_back_from: None,
    }
}

#[tokio::test]
async fn mark_commands() {
    let r = ScriptedRemote::with_stdin("web1", |c, _| {
        assert_eq!(c.argv()[2], MARK);
        ok("NixgateNew=nixgate-known-good-7-link\nNixgateReplaced=6\n")
    });
    let paths = HostPaths::for_os(crate::activation::Os::Linux);
    let mut req = request(SYS, 1_709_294_400);
    req.previous = Some(StorePath::parse(OTHER).unwrap());
    let m = mark(&r, &paths, true, req).await.unwrap();
    assert_eq!((m.generation, m.record.replaced), (7, Some(6)));
    assert_eq!(m.record_path, "/var/lib/nixgate/known-good/7.json");
    // One command: the profile, the record and the baseline together.
    let cmds = r.commands();
    assert_eq!(cmds.len(), 1);
    let stdins = r.stdins();
    let body = &stdins[0].1;
    assert_eq!(
        cmds[0].argv(),
        &[
            "sh",
            "-c",
            MARK,
            "nixgate",
            "/nix/var/nix/profiles/nixgate-known-good",
            "/var/lib/nixgate/known-good",
            SYS,
            "",
            "r1",
            &body.len().to_string(),
            "/nix/var/nix/gcroots/nixgate-baseline",
            "/var/lib/nixgate/baseline.json",
            OTHER,
            "2024-03-01T12:00:00Z",
            "",
        ]
        .map(String::from)
    );
    assert!(cmds[0].is_sudo());
    // The record travels on stdin, never as an argument, without the
    // fields the host fills in.
    let rec: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert!(rec.get("generation").is_none() && rec.get("replaced").is_none());
    assert_eq!(rec["marked_at"], "2024-03-01T12:00:00Z");
    assert_eq!(rec["host"], "web1");
    assert_eq!(rec["commit"], "3f2a9c1");
}

/// A store path made from a file named `name` holding its name.
fn add_to_store(d: &std::path::Path, name: &str) -> String {
    std::fs::write(d.join(name), name).unwrap();
    let out = std::process::Command::new("nix-store")
        .arg("--add")
        .arg(d.join(name))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Host paths for the known-good profile, its records and the baseline
/// under `d` (its `profiles/` made).
fn temp_paths(d: &std::path::Path) -> HostPaths {
    let mut paths = HostPaths::for_os(crate::activation::Os::Linux);
    let at = |p: &str| d.join(p).display().to_string();
    paths.known_good_profile = at("profiles/nixgate-known-good");
    paths.known_good_records = at("records");
    paths.baseline = at("baseline.json");
    paths.baseline_root = at("baseline-root");
    std::fs::create_dir(d.join("profiles")).unwrap();
    paths
}

/// A real store test's scratch: its directory, paths under it, the local
/// "host", and closures added by name.
struct Real {
    dir: tempfile::TempDir,
    paths: HostPaths,
    r: LocalRemote,
}

impl Real {
    fn new() -> Real {
        let dir = tempfile::tempdir().unwrap();
        let paths = temp_paths(dir.path());
        Real {
            dir,
            paths,
            r: LocalRemote::new("local"),
        }
    }

    fn add(&self, name: &str) -> String {
        add_to_store(self.dir.path(), name)
    }
}

/// Real: two marks on a temporary profile; the history lists both
/// generations with their records and knows which is current; re-marking the
/// current closure adds no generation.
#[tokio::test]
#[ignore = "needs Nix and a writable store (root): run scripts/test"]
async fn real_profile_history() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let add = |name: &str| add_to_store(d, name);
    let (a, b) = (add("sys-a"), add("sys-b"));
    let paths = temp_paths(d);
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
    // Another run re-marks the same closure.
    let mut later = request(&b, 300);
    later.run_id = RunId::parse("r2").unwrap();
    let again = mark(&r, &paths, false, later).await.unwrap();
    assert_eq!(again.generation, 2, "same closure: same generation");
    // The host says which mark added its generation (the soak revokes only those).
    let created = [&m1, &m2, &again].map(|m| m.record.created);
    assert_eq!(created, [Some(true), Some(true), Some(false)]);

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
    // And the host's own time of it, comparable with its reverts'.
    let on_host = rec.marked_on_host.as_deref().unwrap_or_default();
    assert!(
        on_host.len() == 20 && on_host.starts_with("20"),
        "{on_host:?}"
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
    assert_eq!((m1.record.replaced, m2.record.replaced), (None, Some(1)));
    // No temporary file left behind (the marks' lock file stays), and the
    // record r2 overwrote kept for an undo until the next mark.
    let names = || {
        let mut names: Vec<_> = std::fs::read_dir(d.join("records"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(),
        [".2.before-r2.json", ".mark.lock", "1.json", "2.json"]
    );
    let mut next = request(&a, 400);
    next.run_id = RunId::parse("r3").unwrap();
    mark(&r, &paths, false, next).await.unwrap();
    assert_eq!(names(), [".mark.lock", "1.json", "2.json", "3.json"]);
}

/// Real: [`history_of`] reads the records of one closure and names every
/// other one's closure, so each generation is recorded or not as in the
/// whole history; one made without a mark (`nix-env --set` alone) is not.
#[tokio::test]
#[ignore = "needs Nix and a writable store (root): run scripts/test"]
async fn real_history_of_one_closure() {
    let t = Real::new();
    let (a, b, c) = (t.add("sys-a"), t.add("sys-b"), t.add("sys-c"));
    for (i, sys) in [&a, &b].into_iter().enumerate() {
        let mut req = request(sys, 100 * (i as u64 + 1));
        req.run_id = RunId::parse(&format!("r{i}")).unwrap();
        mark(&t.r, &t.paths, false, req).await.unwrap();
    }
    let set = std::process::Command::new("nix-env")
        .args(["-p", &t.paths.known_good_profile, "--set", &c])
        .output()
        .unwrap();
    assert!(set.status.success(), "{set:?}");
    let mut req = request(&a, 400);
    req.run_id = RunId::parse("r3").unwrap();
    mark(&t.r, &t.paths, false, req).await.unwrap();

    let whole = history(&t.r, &t.paths).await.unwrap();
    let of_a = history_of(&t.r, &t.paths, &StorePath::parse(&a).unwrap())
        .await
        .unwrap();
    let gens = |h: &[KnownGoodGeneration]| {
        h.iter()
            .map(|g| (g.generation, g.recorded, g.record.is_some(), g.cut_off))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        gens(&whole),
        [
            (1, true, true, false),
            (2, true, true, false),
            (3, false, false, false),
            (4, true, true, false)
        ]
    );
    assert_eq!(
        gens(&of_a),
        [
            (1, true, true, false),
            (2, true, false, false),
            (3, false, false, false),
            (4, true, true, false)
        ]
    );
    assert_eq!(whole[3].record, of_a[3].record);
    assert!(of_a[3].current);

    // A link gone between the listing and the one `readlink` of them all
    // (here: a `readlink` that fails for more than one): read one by one.
    let body = r#"[ "$#" -gt 2 ] && exit 1
exec "$real" "$@""#;
    let path = crate::remote::local::stand_in(&t.dir.path().join("bin"), "readlink", body);
    let list = Command::script(LIST)
        .arg(&t.paths.known_good_profile)
        .arg(&t.paths.known_good_records)
        .arg(&a)
        .env("PATH", &path);
    let out = t.r.exec(&list).await.unwrap();
    assert_eq!(
        gens(&parse_history(&out.stdout_str()).unwrap()),
        gens(&of_a)
    );
}

/// Real: a rollback's re-selection keeps, as `lineage`, where its
/// generation was first marked on (its record's `replaced` then names the
/// generation the rollback left), and a second re-selection keeps it still.
#[tokio::test]
#[ignore = "needs Nix and a writable store (root): run scripts/test"]
async fn real_reselection_keeps_where_its_generation_was_marked() {
    let t = Real::new();
    let sys: Vec<String> = ["sys-a", "sys-b", "sys-c", "sys-d"]
        .iter()
        .map(|n| t.add(n))
        .collect();
    let mut at = 0;
    let mut mark_as = |closure: &str, reselect: Option<u64>| {
        at += 100;
        let mut req = request(closure, at);
        req.run_id = RunId::parse(&format!("r{at}")).unwrap();
        req.reselect = reselect;
        mark(&t.r, &t.paths, false, req)
    };
    for c in &sys[..3] {
        mark_as(c, None).await.unwrap();
    }
    mark_as(&sys[1], Some(2)).await.unwrap();
    mark_as(&sys[3], None).await.unwrap();
    let of = |h: &[KnownGoodGeneration], n: u64| {
        let r = h[n as usize - 1].record.as_ref().unwrap();
        (r.replaced, r.lineage)
    };
    let h = history(&t.r, &t.paths).await.unwrap();
    assert_eq!(of(&h, 2), (Some(3), Some(1)), "re-selected from 3");
    assert_eq!(of(&h, 4), (Some(2), None), "a mark on top of 2");
    mark_as(&sys[1], Some(2)).await.unwrap();
    let h = history(&t.r, &t.paths).await.unwrap();
    assert_eq!(of(&h, 2), (Some(4), Some(1)), "re-selected from 4");
    assert!(h[1].current);
}

/// Real: a rollback's mark keeps the system it took the host away from,
/// read back with the history of the closure the host runs (what the diff
/// gate reads: the other generations' records are not read whole, their
/// closures still named right).
#[tokio::test]
#[ignore = "needs Nix and a writable store (root): run scripts/test"]
async fn real_a_rollback_mark_keeps_the_system_it_left() {
    let t = Real::new();
    let (a, b) = (t.add("sys-a"), t.add("sys-b"));
    mark(&t.r, &t.paths, false, request(&a, 100)).await.unwrap();
    mark(&t.r, &t.paths, false, request(&b, 200)).await.unwrap();
    let mut back = request(&a, 300);
    back.reselect = Some(1);
    back.rolled_back_from = Some(StorePath::parse(&b).unwrap());
    let m = mark(&t.r, &t.paths, false, back).await.unwrap();
    assert_eq!(
        m.record.rolled_back_from.as_ref().map(|p| p.as_str()),
        Some(b.as_str())
    );
    let h = history_of(&t.r, &t.paths, &StorePath::parse(&a).unwrap())
        .await
        .unwrap();
    let r = h[0].record.as_ref().expect("a's record, read whole");
    assert!(h[0].current);
    assert_eq!(
        r.rolled_back_from.as_ref().map(|p| p.as_str()),
        Some(b.as_str())
    );
    assert!(h[1].record.is_none(), "b's record is not read whole");
    assert_eq!(h[1].closure.as_ref().map(|p| p.as_str()), Some(b.as_str()));
}

/// Real: a mark a soak follows is provisional on the host; a later run's
/// re-mark of that closure (its controller killed mid-soak, the next run
/// finding the host already current) re-uses the generation and keeps it
/// provisional (before, `created: false` alone made it look proven); only
/// the marking run's word that its soak passed ([`soak_passed`]) makes it
/// final, and a re-mark or re-selection of a final generation stays final.
/// Through a re-selection's `lineage` too (`soak_of`'s optional field).
#[tokio::test]
#[ignore = "needs Nix and a writable store (root): run scripts/test"]
async fn real_a_mark_stays_provisional_until_its_own_soak_passed() {
    let t = Real::new();
    let (a, b) = (t.add("sys-a"), t.add("sys-b"));
    let (r, paths) = (&t.r, &t.paths);
    let req = |closure: &str, run: &str, soak: bool| {
        let mut q = request(closure, 100);
        q.run_id = RunId::parse(run).unwrap();
        q.soak_follows = soak;
        q
    };
    let pending = |h: &[KnownGoodGeneration], n: u64| h[n as usize - 1].soak_pending();
    let first = mark(r, paths, false, req(&a, "r1", false)).await.unwrap();
    assert!(!first.record.soak_pending, "no soak follows: final");
    let m = mark(r, paths, false, req(&b, "r2", true)).await.unwrap();
    assert_eq!((m.generation, m.record.soak_pending), (2, true));
    // r2 is killed mid-soak; r3 finds b current and marks it again.
    let again = mark(r, paths, false, req(&b, "r3", true)).await.unwrap();
    assert_eq!(again.generation, 2);
    assert_eq!(again.record.created, Some(false));
    assert!(again.record.soak_pending, "no soak ever passed on it");
    let h = history(r, paths).await.unwrap();
    assert!(pending(&h, 2) && !pending(&h, 1));
    // r2's word is no longer what the record holds; r3's soak passed.
    assert!(
        !soak_passed(
            r,
            paths,
            false,
            (2, &RunId::parse("r2").unwrap()),
            Duration::from_secs(5)
        )
        .await
        .unwrap()
    );
    let r3 = RunId::parse("r3").unwrap();
    assert!(
        soak_passed(r, paths, false, (2, &r3), Duration::from_secs(5))
            .await
            .unwrap()
    );
    let h = history(r, paths).await.unwrap();
    assert!(!pending(&h, 2), "{:?}", h[1].record);
    assert_eq!(h[1].record.as_ref().unwrap().replaced, Some(2));
    assert!(
        !soak_passed(r, paths, false, (2, &r3), Duration::from_secs(5))
            .await
            .unwrap(),
        "once"
    );
    // Proven now: a later soaking run's re-mark does not make it provisional.
    let later = mark(r, paths, false, req(&b, "r4", true)).await.unwrap();
    assert!(!later.record.soak_pending);
    // A re-selection of a final generation stays final; of a pending one,
    // pending, its lineage kept when the soak passes.
    let back = mark(
        r,
        paths,
        false,
        MarkRequest {
            reselect: Some(1),
            ..req(&a, "r5", true)
        },
    );
    assert!(!back.await.unwrap().record.soak_pending);
    let c = t.add("sys-c");
    let m = mark(r, paths, false, req(&c, "r6", true)).await.unwrap();
    assert_eq!((m.generation, m.record.soak_pending), (3, true));
    mark(
        r,
        paths,
        false,
        MarkRequest {
            reselect: Some(1),
            ..req(&a, "r7", false)
        },
    )
    .await
    .unwrap();
    let again = mark(
        r,
        paths,
        false,
        MarkRequest {
            reselect: Some(3),
            ..req(&c, "r8", true)
        },
    );
    assert!(again.await.unwrap().record.soak_pending);
    let h = history(r, paths).await.unwrap();
    assert!(pending(&h, 3) && h[2].record.as_ref().unwrap().lineage == Some(1));
    let r8 = RunId::parse("r8").unwrap();
    assert!(
        soak_passed(r, paths, false, (3, &r8), Duration::from_secs(5))
            .await
            .unwrap()
    );
    let h = history(r, paths).await.unwrap();
    assert!(!pending(&h, 3));
    assert_eq!(
        h[2].record.as_ref().unwrap().lineage,
        Some(1),
        "lineage kept"
    );
}

/// Real: the same run's mark twice at once, the first slowed after its
/// `nix-env` (a session dropped mid-mark, the mark tried again while the
/// first still ran). Seen on the fault matrix: the second removed the
/// record the first still needed, and the first then put the profile back.
#[tokio::test]
#[ignore = "needs Nix and a writable store (root): run scripts/test"]
async fn real_mark_twice_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = add_to_store(d, "sys-a");
    let slowed = r#""$real" "$@"; rc=$?; sleep 1; exit $rc"#;
    let slow_path = crate::remote::local::stand_in(&d.join("bin"), "nix-env", slowed);
    std::fs::create_dir(d.join("profiles")).unwrap();
    let prof = d.join("profiles/nixgate-known-good").display().to_string();
    let records = d.join("records").display().to_string();
    let body = b"{\"host\":\"local\",\"run_id\":\"r7\"}\n";
    let len = body.len().to_string();
    let args = [prof.as_str(), &records, &a, "", "r7", &len, "", "", "", ""];
    let spawn = |path: String| {
        let mut c = std::process::Command::new("sh");
        c.args(["-c", MARK, "nixgate"])
            .args(args)
            .env("PATH", path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(body).unwrap();
        child
    };
    let path = std::env::var("PATH").unwrap_or_default();
    let slow = spawn(slow_path);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let second = spawn(path).wait_with_output().unwrap();
    let first = slow.wait_with_output().unwrap();
    for (name, o) in [("first", &first), ("second", &second)] {
        assert!(o.status.success(), "{name}: {o:?}");
    }
    let gen1 = d.join("profiles/nixgate-known-good-1-link");
    assert_eq!(std::fs::read_link(&gen1).unwrap().display().to_string(), a);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("records/1.json")).unwrap()).unwrap();
    assert_eq!(record["run_id"], "r7");
    assert_eq!(record["generation"], 1);
}

/// What a mark by `run` leaves when its host goes down between its
/// `nix-env --set` of `closure` and its record (the profile was on
/// generation 1).
fn cut_off_after_nix_env(d: &std::path::Path, prof: &str, run: &str, closure: &str) {
    std::fs::write(d.join(format!("records/.pending-{run}.replaced")), "1\n").unwrap();
    let set = std::process::Command::new("nix-env")
        .args(["-p", prof, "--set", closure])
        .output()
        .unwrap();
    assert!(set.status.success(), "{set:?}");
}

/// Real: a mark run twice by one run (its answer was lost) stands as first
/// made; a record cut short changes nothing; a mark the deploy gave up on
/// is undone, and an undo by another run touches nothing.
#[tokio::test]
#[ignore = "needs Nix and a writable store (root): run scripts/test"]
async fn real_mark_again_cut_short_and_undone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let add = |name: &str| add_to_store(d, name);
    let (a, b) = (add("sys-a"), add("sys-b"));
    let paths = temp_paths(d);
    let r = LocalRemote::new("local");
    let mut first = request(&a, 100);
    first.previous = Some(StorePath::parse(&b).unwrap());
    assert_eq!(mark(&r, &paths, false, first).await.unwrap().generation, 1);
    let base = baseline(&r, &paths).await.unwrap().expect("a baseline");
    assert_eq!(
        base.closure.as_str(),
        b,
        "the first mark keeps what ran before"
    );

    let mut second = request(&b, 200);
    second.run_id = RunId::parse("r2").unwrap();
    let m = mark(&r, &paths, false, second.clone()).await.unwrap();
    let again = mark(&r, &paths, false, second.clone()).await.unwrap();
    assert_eq!((m.generation, again.generation), (2, 2));
    assert_eq!(again.record.replaced, Some(1), "as first made");
    assert_eq!(
        (m.record.created, again.record.created),
        (Some(true), Some(true))
    );
    assert_eq!(history(&r, &paths).await.unwrap().len(), 2);

    // A record shorter than announced: nothing changes.
    let prof = &paths.known_good_profile;
    let records = paths.known_good_records.as_str();
    let run = |script: &'static str, args: &[&str], stdin: &[u8]| {
        let cmd = Command::script(script).args(args.iter().copied());
        let local = LocalRemote::new("local");
        let stdin = stdin.to_vec();
        async move {
            crate::remote::exec_input(&local, &cmd, &stdin)
                .await
                .unwrap()
        }
    };
    let cut = run(
        MARK,
        &[prof, records, &a, "", "r3", "100", "", "", "", ""],
        b"{\"host\":",
    )
    .await;
    assert_eq!(cut.exit, Exit::Code { code: 6 }, "{}", cut.stderr_str());
    assert_eq!(current(&r, &paths).await.unwrap().unwrap().as_str(), b);

    // Another run's undo leaves this run's mark alone; this run's undo
    // takes it back and keeps its record aside.
    let other = run(UNDO_MARK, &[prof, records, "r9", ""], b"").await;
    assert_eq!(other.stdout_str().trim(), "NixgateUndo=none");
    let undo = run(UNDO_MARK, &[prof, records, "r2", ""], b"").await;
    assert_eq!(undo.stdout_str().trim(), "NixgateUndo=2");
    let h = history(&r, &paths).await.unwrap();
    assert_eq!(h.len(), 1);
    assert!(h[0].current && h[0].closure.as_ref().unwrap().as_str() == a);
    assert!(d.join("records/2.undone.json").exists());
    assert!(!d.join("records/2.json").exists());

    // Cut off between the profile and the record (the host went down):
    // what `MARK` left behind is enough to undo it.
    cut_off_after_nix_env(d, prof, "r4", &b);
    let h = history(&r, &paths).await.unwrap();
    assert!(h.last().unwrap().current && h.last().unwrap().record.is_none());
    // The history reads what it left: that generation is the cut-off mark.
    let flagged: Vec<_> = h
        .iter()
        .filter(|g| g.cut_off)
        .map(|g| g.generation)
        .collect();
    assert_eq!(flagged, [h.last().unwrap().generation]);
    let undo = run(UNDO_MARK, &[prof, records, "r4", ""], b"").await;
    assert!(undo.stdout_str().starts_with("NixgateUndo="), "{undo:?}");
    assert_ne!(undo.stdout_str().trim(), "NixgateUndo=none");
    assert_eq!(current(&r, &paths).await.unwrap().unwrap().as_str(), a);
    assert_eq!(history(&r, &paths).await.unwrap().len(), 1);
    assert!(!d.join("records/.pending-r4.replaced").exists());

    // Cut off there again, and this time the mark is run again when the
    // host is back: it adopts the generation and says what it replaced.
    cut_off_after_nix_env(d, prof, "r5", &b);
    let before = history(&r, &paths).await.unwrap().len();
    let mut again = request(&b, 500);
    again.run_id = RunId::parse("r5").unwrap();
    let m = mark(&r, &paths, false, again).await.unwrap();
    assert_eq!(m.record.replaced, Some(1));
    let h = history(&r, &paths).await.unwrap();
    assert_eq!(h.len(), before, "adopted");
    assert!(h.iter().all(|g| !g.cut_off));
    assert!(!d.join("records/.pending-r5.replaced").exists());
}

/// Real: a mark made after a rollback re-selected an older generation
/// (replaced: 1, while 3 is the newest before it) is revoked back to the
/// generation it replaced, not to the newest before it (the system the
/// rollback moved away from); revoked again, nothing moves.
#[tokio::test]
#[ignore = "needs Nix and a writable store (root): run scripts/test"]
async fn real_revoke_goes_back_to_what_the_mark_replaced() {
    let t = Real::new();
    let (a, b, c, e) = (
        t.add("sys-a"),
        t.add("sys-b"),
        t.add("sys-c"),
        t.add("sys-e"),
    );
    let (paths, r) = (&t.paths, &t.r);
    for (closure, at) in [(&a, 100), (&b, 200), (&c, 300)] {
        mark(r, paths, false, request(closure, at)).await.unwrap();
    }
    let mut back = request(&a, 400);
    back.reselect = Some(1);
    assert_eq!(mark(r, paths, false, back).await.unwrap().generation, 1);
    let m = mark(r, paths, false, request(&e, 500)).await.unwrap();
    assert_eq!((m.generation, m.record.replaced), (4, Some(1)));
    assert_eq!(revoke(r, paths, false, 4).await.unwrap(), Some(1));
    assert_eq!(current(r, paths).await.unwrap().unwrap().as_str(), a);
    // Asked again (its answer lost): nothing moves (before, with the
    // record gone, it went on to the newest before 4: 3, system c).
    assert_eq!(revoke(r, paths, false, 4).await.unwrap(), Some(1));
    assert_eq!(current(r, paths).await.unwrap().unwrap().as_str(), a);
}

/// Real: with an older generation selected (a rollback), a mark of the
/// newest generation's closure makes no generation (`nix-env --set` only
/// compares with the newest); undoing that mark puts the profile back and
/// keeps the generation, known-good before this run (it was deleted).
#[tokio::test]
#[ignore = "needs Nix and a writable store (root): run scripts/test"]
async fn real_undo_keeps_a_generation_the_mark_did_not_make() {
    let t = Real::new();
    let (a, b) = (t.add("sys-a"), t.add("sys-b"));
    let (paths, r) = (&t.paths, &t.r);
    mark(r, paths, false, request(&a, 100)).await.unwrap();
    let mut proof = request(&b, 200);
    proof.run_id = RunId::parse("r2").unwrap();
    mark(r, paths, false, proof).await.unwrap();
    let record = |n: &str| std::fs::read_to_string(t.dir.path().join("records").join(n));
    let proven = record("2.json").unwrap();
    let mut back = request(&a, 300);
    back.reselect = Some(1);
    mark(r, paths, false, back).await.unwrap();
    let mut again = request(&b, 400);
    again.run_id = RunId::parse("r9").unwrap();
    let m = mark(r, paths, false, again.clone()).await.unwrap();
    assert_eq!((m.generation, m.record.replaced), (2, Some(1)));
    assert_eq!(m.record.created, Some(false));
    undo_mark(r, paths, &again, false).await.unwrap();
    assert_eq!(current(r, paths).await.unwrap().unwrap().as_str(), a);
    let h = history(r, paths).await.unwrap();
    let gens: Vec<u64> = h.iter().map(|g| g.generation).collect();
    assert_eq!(gens, [1, 2], "generation 2 was known-good before this run");
    // Its record too: the earlier run's proof, not moved to 2.undone.json
    // (without a record, newer than one with, it was refused for good as
    // a mark that never finished, and a host running it was unvalidated).
    assert_eq!(record("2.json").unwrap(), proven);
    assert!(record(".2.before-r9.json").is_err(), "the copy is gone");

    // The same mark standing: its copy stays for an undo until the next mark.
    let m = mark(r, paths, false, again.clone()).await.unwrap();
    assert_eq!(m.generation, 2);
    assert!(record(".2.before-r9.json").is_ok());
    let mut next = request(&a, 500);
    next.run_id = RunId::parse("r10").unwrap();
    mark(r, paths, false, next).await.unwrap();
    assert!(record(".2.before-r9.json").is_err());
}

/// Real: a rollback's mark re-selecting generation 1 overwrites its record
/// with the run's; its answer lost, the undo puts the profile back and
/// generation 1's own record back (it was refused as unrecorded for good
/// when the undo took it away). Re-selecting the generation the profile is
/// on, the undo keeps the profile there and puts its record back too. A
/// successful re-selection's copy of the record goes with the next mark.
#[tokio::test]
#[ignore = "needs Nix and a writable store (root): run scripts/test"]
async fn real_undo_of_a_reselection_puts_the_record_back() {
    let t = Real::new();
    let (a, b) = (t.add("sys-a"), t.add("sys-b"));
    let (paths, r) = (&t.paths, &t.r);
    mark(r, paths, false, request(&a, 100)).await.unwrap();
    mark(r, paths, false, request(&b, 200)).await.unwrap();
    let before = std::fs::read_to_string(t.dir.path().join("records/1.json")).unwrap();
    let reselect = |run: &str, closure: &str, generation: u64| {
        let mut req = request(closure, 300);
        req.run_id = RunId::parse(run).unwrap();
        req.reselect = Some(generation);
        req
    };
    let kept = |name: &str| t.dir.path().join("records").join(name).exists();
    let back = reselect("r7", &a, 1);
    let m = mark(r, paths, false, back.clone()).await.unwrap();
    assert_eq!((m.generation, m.record.replaced), (1, Some(2)));
    assert_eq!(m.record.created, Some(false), "re-selected, not added");
    undo_mark(r, paths, &back, false).await.unwrap();
    assert_eq!(current(r, paths).await.unwrap().unwrap().as_str(), b);
    let after = std::fs::read_to_string(t.dir.path().join("records/1.json")).unwrap();
    assert_eq!(after, before, "generation 1 has its own record again");
    assert!(kept("1.undone.json") && !kept(".1.before-r7.json"));
    let h = history(r, paths).await.unwrap();
    let running = StorePath::parse(&b).unwrap();
    let target = crate::plan::rollback_target::choose_target(&h, Some(&running), None, None);
    assert_eq!(target.map(|t| t.generation), Ok(Some(1)));

    // Re-selecting what the profile is on (the host ran something else).
    let b2 = std::fs::read_to_string(t.dir.path().join("records/2.json")).unwrap();
    let same = reselect("r8", &b, 2);
    mark(r, paths, false, same.clone()).await.unwrap();
    undo_mark(r, paths, &same, false).await.unwrap();
    assert_eq!(current(r, paths).await.unwrap().unwrap().as_str(), b);
    let after = std::fs::read_to_string(t.dir.path().join("records/2.json")).unwrap();
    assert_eq!(after, b2, "generation 2 has its own record again");
    assert!(!kept(".2.before-r8.json"));

    // A re-selection that stands keeps its copy until the next mark.
    mark(r, paths, false, reselect("r9", &a, 1)).await.unwrap();
    assert!(kept(".1.before-r9.json"));
    let mut next = request(&b, 400);
    next.run_id = RunId::parse("r10").unwrap();
    mark(r, paths, false, next).await.unwrap();
    assert!(!kept(".1.before-r9.json"));
}

/// A mark killed by a signal (a host shutting down sends TERM to its
/// sessions; `timeout` relays it as 143) may have set the profile without
/// its record: it is undone (before: a plain failure, and the known-good
/// stayed on the candidate the run rolled back from).
#[tokio::test]
async fn a_mark_killed_by_a_signal_is_undone() {
    use crate::remote::Exit;
    // 137: `timeout -k` KILLs a mark that ignored the TERM, well before its
    // bound (it was reported as "took over 120 s").
    for exit in [
        Exit::Code { code: 143 },
        Exit::Code { code: 137 },
        Exit::Signal {
            signal: "TERM".into(),
        },
    ] {
        let (e, undone) = mark_answered(exit).await;
        assert!(e.contains("killed on the host"), "{e}");
        assert!(undone);
    }
}

/// A mark stopped by its bound on the host (`timeout`, 124) may have set
/// the profile without its record, as a lost one may have: it is undone,
/// and the error says it took too long.
#[tokio::test]
async fn a_mark_stopped_by_its_bound_is_undone() {
    let (e, undone) = mark_answered(crate::remote::Exit::Code { code: 124 }).await;
    assert!(e.contains("took over 120 s"), "{e}");
    assert!(undone);
}

/// A mark that says it is done but names no generation (a host shutting
/// down under it: its `/nix` unmounted, the profile read as nothing) may
/// have set the profile: it is undone, not left on the candidate.
#[tokio::test]
async fn a_mark_done_naming_no_generation_is_undone() {
    let (e, undone) =
        mark_answered_with(crate::remote::Exit::Code { code: 0 }, "NixgateNew=\n").await;
    assert!(e.contains("not a generation link"), "{e}");
    assert!(e.contains("put back"), "{e}");
    assert!(undone);
}

/// A mark whose command the host answered with `exit` (it must fail): its
/// error, and whether an undo was sent.
async fn mark_answered(exit: crate::remote::Exit) -> (String, bool) {
    mark_answered_with(exit, "").await
}

/// The same, the host's answer saying `stdout`.
async fn mark_answered_with(exit: crate::remote::Exit, stdout: &'static str) -> (String, bool) {
    let undone = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = undone.clone();
    let r = ScriptedRemote::with_stdin("web1", move |cmd, _| {
        let script = cmd.argv().get(2).cloned().unwrap_or_default();
        if script == MARK {
            crate::remote::Output::new(exit.clone(), stdout, "")
        } else if script == UNDO_MARK {
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            ok("NixgateUndo=2\n")
        } else {
            panic!("unexpected {cmd:?}")
        }
    });
    let paths = HostPaths::for_os(crate::activation::settings::Os::Linux);
    let e = mark(&r, &paths, false, request(SYS, 100))
        .await
        .unwrap_err();
    (
        format!("{e:#}"),
        undone.load(std::sync::atomic::Ordering::SeqCst),
    )
}

/// SOAKED, run by this machine's `sh`: a pending mark is made final only
/// while the known-good profile still points at its generation. Another
/// run that took the host over during the soak (this run's lock lost) and
/// marked its own system since: the soak's checks passed on that system,
/// and this mark stays pending.
#[test]
fn a_soak_passed_on_someone_elses_mark_leaves_this_one_pending() {
    for (on, cleared) in [("kg-3-link", true), ("kg-4-link", false)] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let records = format!("{d}/records");
        std::fs::create_dir_all(&records).unwrap();
        let record = r#"{"generation":3,"replaced":2,"created":true,"soak_pending":true,"marked_on_host":"2026-12-05T00:00:00Z","run_id":"r1","closure":"/nix/store/x"}"#;
        std::fs::write(format!("{records}/3.json"), format!("{record}\n")).unwrap();
        std::os::unix::fs::symlink(on, format!("{d}/kg")).unwrap();
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                SOAKED,
                "nixgate",
                &format!("{d}/kg"),
                &records,
                "3",
                "r1",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        let now = std::fs::read_to_string(format!("{records}/3.json")).unwrap();
        assert_eq!(said.contains("NixgateSoaked=3"), cleared, "{said}");
        assert_eq!(!now.contains("soak_pending"), cleared, "{now}");
    }
}
