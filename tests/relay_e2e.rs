//! The relay copy on a real fleet: one `nix-store --serve` read on the
//! builder feeds every host, each path to exactly the hosts that lack it,
//! over the hosts' shared connections; a host that cannot import is dropped
//! while the others finish; a NAR that does not match the builder's
//! database (the host checks), or a path the builder lacks, fails loudly and
//! registers nothing.

mod support;

use std::collections::HashSet;

use nixgate::fleet::{Machine, Sessions};
use nixgate::inventory::Inventory;
use nixgate::nix::StorePath;
use nixgate::nix::closure::{self, PathInfo, PathRecord};
use nixgate::nix::copy::{CopyProgress, lacking, verify_complete};
use nixgate::nix::fanout::{self, Target};
use nixgate::ssh::{HostKeyPolicy, SshSession};
use serde_json::json;
use support::fleet::{Fleet, FleetSpec};

/// The inventory's default `copy_stall_timeout`.
const STALL: std::time::Duration = nixgate::inventory::load::DEFAULT_COPY_STALL_TIMEOUT;

fn connections(fleet: &Fleet, host: &str) -> usize {
    let log = std::fs::read_to_string(fleet.dir().join("hosts").join(host).join("sshd.log"))
        .unwrap_or_default();
    log.matches("Connection from").count()
}

struct World {
    fleet: Fleet,
    builder: SshSession,
    hosts: Vec<SshSession>,
    toplevels: Vec<StorePath>,
    closures: Vec<Vec<PathInfo>>,
}

async fn world(light: usize, filler: usize) -> World {
    let fleet = Fleet::start(FleetSpec {
        light,
        systemd: 0,
        builder: true,
    })
    .unwrap();
    fleet
        .commit_config(|v| {
            v["defaults"]["filler"] = json!({"count": filler, "sizeKiB": 16, "salt": "relay"});
            v["defaults"]["packages"]["hello"]["version"] = json!("2.12.2");
        })
        .unwrap();
    let inv = Inventory::load(&fleet.inventory_path()).unwrap();
    let sessions = Sessions::new(&inv, HostKeyPolicy::Strict);
    let builder = sessions.get(Machine::Builder).await.unwrap();
    let mut hosts = Vec::new();
    let mut toplevels = Vec::new();
    for i in 1..=light {
        let name = format!("light{i}");
        hosts.push(sessions.get(Machine::Host(&name)).await.unwrap());
        toplevels.push(StorePath::parse(&fleet.build_on_builder(&name).unwrap()).unwrap());
    }
    let all = closure::closures(&builder, &toplevels).await.unwrap();
    let closures = toplevels.iter().map(|t| all[t].clone()).collect();
    World {
        fleet,
        builder,
        hosts,
        toplevels,
        closures,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
async fn one_builder_read_feeds_every_host_and_a_failing_host_is_dropped_alone() {
    // 100 x 16 KiB: more than the relay sends a host before it waits for
    // the host's acknowledgements (1 MiB), so the waiting is exercised,
    // with the failing host's acknowledgements ending early.
    let w = world(3, 100).await;
    // light3 cannot create anything in its store (immutable even for root).
    w.fleet.in_host_ok("light3", "chattr +i /nix/store");
    // Each host is asked what it lacks in the serve session that then adds
    // it; the answer is nix-store --check-validity's.
    let mut lacks: Vec<HashSet<StorePath>> = Vec::new();
    let mut sessions = Vec::new();
    for (h, c) in w.hosts.iter().zip(&w.closures) {
        let (asked, session) = fanout::ask_lacking(h, c, STALL).await.unwrap();
        assert_eq!(asked, lacking(h, c).await.unwrap());
        lacks.push(asked);
        sessions.push(session);
    }
    assert!(lacks.iter().all(|l| l.len() > 100), "{:?}", lacks[0].len());
    let seen = std::sync::Mutex::new(Vec::<CopyProgress>::new());
    let progress = |p: CopyProgress| seen.lock().unwrap().push(p);
    let targets: Vec<Target<SshSession>> = w
        .hosts
        .iter()
        .zip(&lacks)
        .zip(sessions)
        .map(|((h, l), session)| Target {
            remote: h,
            lacking: l,
            progress: &progress,
            session: Some(session),
            stall: STALL,
        })
        .collect();
    let slices: Vec<&[PathInfo]> = w.closures.iter().map(Vec::as_slice).collect();
    let order = fanout::union(&slices).unwrap();
    let before: Vec<usize> = ["builder", "light1", "light2", "light3"]
        .iter()
        .map(|h| connections(&w.fleet, h))
        .collect();

    let results = fanout::relay(&w.builder, targets, &order).await;
    w.fleet.in_host_ok("light3", "chattr -i /nix/store");

    // The builder was read once, on one new connection; the hosts' imports
    // ran on the connections they already had.
    let after: Vec<usize> = ["builder", "light1", "light2", "light3"]
        .iter()
        .map(|h| connections(&w.fleet, h))
        .collect();
    assert_eq!(after[0], before[0] + 1, "builder connections");
    assert_eq!(&after[1..], &before[1..], "host connections");
    for i in 0..2 {
        let got = results[i].as_ref().unwrap();
        assert_eq!(got.paths, lacks[i].len() as u64);
        assert!(got.bytes > 100 * 16 * 1024, "{got:?}");
        // Everything but the host's own toplevel (and what differs by host)
        // came from the read the other hosts got too.
        assert_eq!(got.shared.hosts, 3);
        assert!(
            got.shared.paths >= 100 && got.shared.paths < got.paths,
            "{got:?}"
        );
        verify_complete(&w.hosts[i], &w.closures[i]).await.unwrap();
        let verify = w.fleet.ssh(
            &format!("light{}", i + 1),
            &format!(
                "nix-store --verify-path $(nix-store -qR {}) && echo verified",
                w.toplevels[i]
            ),
        );
        assert_eq!(String::from_utf8_lossy(&verify.stdout).trim(), "verified");
    }
    let err = format!("{:#}", results[2].as_ref().unwrap_err());
    assert!(err.contains("light3"), "{err}");
    assert!(
        !lacking(&w.hosts[2], &w.closures[2])
            .await
            .unwrap()
            .is_empty(),
        "light3 cannot have everything"
    );
    // Progress was reported with the host's total.
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .any(|p| p.total_paths == lacks[0].len() as u64 && p.paths == p.total_paths),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (sshd, namespaces, nspawn): run scripts/test"]
async fn a_nar_unlike_the_builders_record_or_a_path_it_lacks_registers_nothing() {
    let w = world(1, 5).await;
    let closure = &w.closures[0];
    let lacks = lacking(&w.hosts[0], closure).await.unwrap();
    let noop = |_: CopyProgress| {};
    // The builder's record of one lacking path claims another hash.
    let mut forged = closure.clone();
    let victim = forged
        .iter_mut()
        .find(|p| lacks.contains(&p.path) && p.path.name().starts_with("filler-"))
        .unwrap();
    *victim = PathInfo::from(PathRecord {
        nar_hash: Some([7u8; 32]),
        ..(**victim).clone()
    });
    let victim = victim.path.clone();
    let target = Target {
        remote: &w.hosts[0],
        lacking: &lacks,
        progress: &noop,
        session: None,
        stall: STALL,
    };
    let err = format!(
        "{:#}",
        fanout::relay_one(&w.builder, None, target, &forged)
            .await
            .unwrap_err()
    );
    // The host checks every NAR against the builder's record as it adds it.
    assert!(err.contains("hash mismatch"), "{err}");
    assert!(err.contains(victim.as_str()), "{err}");
    let still = lacking(&w.hosts[0], closure).await.unwrap();
    assert!(still.contains(&victim), "the forged path was registered");
    assert!(still.contains(&w.toplevels[0]));

    // A path the builder does not have: the builder's own message comes back.
    let ghost = StorePath::parse("/nix/store/00000000000000000000000000000000-ghost").unwrap();
    let mut with_ghost = closure.clone();
    with_ghost.insert(
        0,
        PathInfo::from(PathRecord {
            path: ghost.clone(),
            nar_size: 0,
            nar_hash: None,
            references: Vec::new(),
            deriver: None,
        }),
    );
    let mut lacks_ghost = lacks.clone();
    lacks_ghost.insert(ghost);
    let target = Target {
        remote: &w.hosts[0],
        lacking: &lacks_ghost,
        progress: &noop,
        session: None,
        stall: STALL,
    };
    let err = format!(
        "{:#}",
        fanout::relay_one(&w.builder, None, target, &with_ghost)
            .await
            .unwrap_err()
    );
    assert!(
        err.contains("builder") && err.contains("ghost"),
        "the builder's complaint is shown: {err}"
    );

    // And the honest copy then goes through, in the session that was
    // asked what the host lacks (the forged path is lacking still).
    // The builder's side started meanwhile, as a one-host copy does.
    let (asked, started) = tokio::join!(
        fanout::ask_lacking(&w.hosts[0], closure, STALL),
        fanout::serve_builder(&w.builder)
    );
    let (asked, session) = asked.unwrap();
    assert_eq!(asked, lacks);
    let target = Target {
        remote: &w.hosts[0],
        lacking: &lacks,
        progress: &noop,
        session: Some(session),
        stall: STALL,
    };
    let got = fanout::relay_one(&w.builder, Some(started), target, closure)
        .await
        .unwrap();
    assert_eq!(got.paths, lacks.len() as u64);
    assert_eq!(got.shared.hosts, 1);
    verify_complete(&w.hosts[0], closure).await.unwrap();
}
